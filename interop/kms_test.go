package interop

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"
)

// TestKMSv2Daemon drives serve --kms-v2 with the k8s.io/kms v2 client, as
// kube-apiserver does: the key made with the CLI, a rotation with the
// CLI, and the ciphertexts of both versions.
func TestKMSv2Daemon(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "kms.sock")
	d := startDaemon(t, "--kms-v2", sock, "--kms-key", "kube-secrets")
	cli := func(args ...string) {
		t.Helper()
		cmd := exec.Command(keywardenBin, append(args, "--socket", d.socket)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("keywarden %v: %v\n%s", args, err, out)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no KMS socket")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := kmsapi.NewKeyManagementServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if st, err := c.Status(ctx, &kmsapi.StatusRequest{}); err != nil || st.Healthz == "ok" {
		t.Fatalf("status before the key exists: %v %v", st, err)
	}
	cli("key", "generate", "--type", "aes256-gcm", "--name", "kube-secrets")
	st, err := c.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil || st.Healthz != "ok" || st.Version != "v2" {
		t.Fatalf("status: %v %v", st, err)
	}
	seed := []byte("a data encryption key seed, 32B")
	e1, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "1"})
	if err != nil {
		t.Fatal(err)
	}
	cli("key", "rotate", "kube-secrets")
	st2, err := c.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil || st2.KeyId == st.KeyId || !strings.HasSuffix(st2.KeyId, ":v2") {
		t.Fatalf("status after rotation: %v %v", st2, err)
	}
	e2, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "2"})
	if err != nil || e2.KeyId != st2.KeyId {
		t.Fatalf("encrypt after rotation: %v %v", e2, err)
	}
	for _, e := range []*kmsapi.EncryptResponse{e1, e2} {
		p, err := c.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: e.Ciphertext, KeyId: e.KeyId, Uid: "3"})
		if err != nil || string(p.Plaintext) != string(seed) {
			t.Fatalf("decrypt of %s: %v %v", e.KeyId, p, err)
		}
	}
}
