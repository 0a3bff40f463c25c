package transit

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A replaced mapping (a configuration reload) is used by the next TLS
// handshake: a certificate it adds is served, one it drops is refused.
// A connection opened before goes on only while its certificate maps to
// the same principal: one the new mapping sends to another uid is refused
// on that connection and served, as the new uid, once it connects again.
func TestPrincipalsReload(t *testing.T) {
	tf := newTestFront(t, Config{})
	p := newTestPKI(t)
	parse := func(s string) *Principals {
		t.Helper()
		pr, err := ParsePrincipals(strings.NewReader(s))
		if err != nil {
			t.Fatal(err)
		}
		return pr
	}
	pr := parse("uri:spiffe://example.org/app 4242\n")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go tf.ServeTLS(l, TLSConfig{Certificate: p.server, ClientCAs: p.pool, Principals: pr})
	base := "https://" + l.Addr().String() + "/v1/transit/"
	post := func(c *http.Client, path, body string) (int, map[string]any, error) {
		resp, err := c.Post(base+path, "application/json", strings.NewReader(body))
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var m map[string]any
		json.Unmarshal(b, &m)
		return resp.StatusCode, m, nil
	}
	appCert := p.client("spiffe://example.org/app", time.Hour, t)
	newCert := p.client("spiffe://example.org/new", time.Hour, t)
	const enc = `{"plaintext":"eA=="}`

	app := tlsClient(p, appCert)
	if code, m, err := post(app, "encrypt/k", enc); err != nil || code != 200 {
		t.Fatalf("mapped client: %d %v %v", code, m, err)
	}
	if _, _, err := post(tlsClient(p, newCert), "encrypt/k", enc); err == nil {
		t.Fatal("a client the mapping does not name was served")
	}

	pr.Replace(parse("uri:spiffe://example.org/new 4300\nuri:spiffe://example.org/app 4343\n"))
	if code, m, err := post(tlsClient(p, newCert), "encrypt/k", enc); err != nil || code != 200 {
		t.Fatalf("a client the new mapping names, on a new connection: %d %v %v", code, m, err)
	}
	// The connection app opened as uid 4242 does not go on as 4242.
	if code, _, err := post(app, "encrypt/k", enc); err == nil && code != http.StatusForbidden {
		t.Fatalf("a remapped client on its old connection: %d, want 403 or a closed connection", code)
	}
	if code, m, err := post(tlsClient(p, appCert), "encrypt/k", enc); err != nil || code != 200 {
		t.Fatalf("the remapped client, connecting again: %d %v %v", code, m, err)
	}
	uids := map[uint32]bool{}
	for _, r := range tf.records(t) {
		if r.Op == "encrypt" && r.Caller.Principal == "uri:spiffe://example.org/app" {
			uids[r.Caller.UID] = true
		}
	}
	if !uids[4242] || !uids[4343] || len(uids) != 2 {
		t.Errorf("the app's requests were recorded as uids %v, want 4242 then 4343", uids)
	}

	// Dropped from the mapping: refused at the handshake, and on the
	// connection it had.
	newc := tlsClient(p, newCert)
	if code, _, err := post(newc, "encrypt/k", enc); err != nil || code != 200 {
		t.Fatalf("new client: %d %v", code, err)
	}
	pr.Replace(parse("uri:spiffe://example.org/app 4343\n"))
	if _, _, err := post(tlsClient(p, newCert), "encrypt/k", enc); err == nil {
		t.Error("a client the new mapping dropped was served on a new connection")
	}
	if code, _, err := post(newc, "encrypt/k", enc); err == nil && code != http.StatusForbidden {
		t.Errorf("a client the new mapping dropped, on its old connection: %d", code)
	}
}
