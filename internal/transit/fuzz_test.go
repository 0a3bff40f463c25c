package transit

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/keywarden/keywarden/internal/server"
)

// FuzzRequest feeds the front arbitrary paths, methods and bodies: every
// answer is Vault's JSON shape (or none), with a status the front
// documents, and nothing panics.
func FuzzRequest(f *testing.F) {
	for _, s := range []struct {
		method, path, body string
	}{
		{"POST", "keys/k", `{"type":"ed25519"}`},
		{"POST", "encrypt/k", `{"plaintext":"aGk=","associated_data":"eA=="}`},
		{"POST", "encrypt/k", `{"batch_input":[{"plaintext":"aGk="},{"plaintext":"!"},{}]}`},
		{"POST", "decrypt/k", `{"ciphertext":"vault:v1:AAAA"}`},
		{"POST", "sign/k/sha2-384", `{"input":"aGk=","marshaling_algorithm":"jws"}`},
		{"POST", "verify/k", `{"input":"aGk=","signature":"vault:v99999999999:AA"}`},
		{"POST", "hmac/k", `{"input":"aGk="}`},
		{"POST", "keys/k/config", `{"min_decryption_version":"x","exportable":"maybe"}`},
		{"GET", "export/signing-key/k/latest", ``},
		{"LIST", "keys", ``},
		{"POST", "random/platform/7", `{"format":"hex"}`},
		{"POST", "keys/k/import", `{"ciphertext":"AAAA","hash_function":"SHA1"}`},
		{"DELETE", "keys/k", ``},
	} {
		f.Add(s.method, s.path, []byte(s.body))
	}
	tf := newTestFront(f, Config{MaxBatch: 16})
	id := server.Identity{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Pidfd: -1}
	ss, err := tf.srv.NewSession(context.Background(), FrontName, id)
	if err != nil {
		f.Fatal(err)
	}
	cc := newClientConn(tf.Front, ss, id)
	f.Cleanup(cc.close)
	allowed := map[int]bool{200: true, 204: true, 400: true, 403: true, 404: true, 405: true, 411: true, 413: true, 429: true, 503: true}
	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		req := httptest.NewRequest("GET", "/", bytes.NewReader(body))
		req.Method = method
		req.URL.Path = "/v1/transit/" + path
		req = req.WithContext(context.WithValue(req.Context(), connKey{}, cc))
		w := httptest.NewRecorder()
		tf.ServeHTTP(w, req)
		if !allowed[w.Code] {
			t.Fatalf("%s %q %q: status %d: %s", method, path, body, w.Code, w.Body)
		}
		if w.Body.Len() > 0 && !json.Valid(w.Body.Bytes()) {
			t.Fatalf("%s %q: not JSON: %q", method, path, w.Body)
		}
		if w.Code >= 400 {
			// An error, or, as Vault answers a batch whose every item
			// failed, the batch's results.
			var e struct {
				Errors []string
				Data   struct {
					BatchResults []any `json:"batch_results"`
				}
			}
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Errors == nil && e.Data.BatchResults == nil {
				t.Fatalf("%s %q: error without Vault's shape: %q", method, path, w.Body)
			}
		}
		if w.Code == http.StatusOK {
			var e struct{ Data any }
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
				t.Fatal(err)
			}
		}
	})
}
