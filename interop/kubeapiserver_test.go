package interop

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	"k8s.io/apiserver/pkg/storage/value"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
)

// kubeAPIServer is what kube-apiserver builds from its
// --encryption-provider-config: the transformers of the resources it
// encrypts and the health check of its KMS providers. They are made by
// the API server's own code (k8s.io/apiserver's encryptionconfig package,
// which dials the plugin with the envelope package's gRPC client, primes
// the data encryption key seed with a Status and an Encrypt call, and
// rotates it when Status names another key_id); only the HTTP server and
// etcd around them are missing, no kube-apiserver binary being
// installable here.
type kubeAPIServer struct {
	secrets value.Transformer
	health  func() error
	cancel  context.CancelFunc
}

// kmsPrefix is what the API server writes before a KMS v2 provider's
// stored objects: the provider's name follows.
const kmsPrefix = "k8s:enc:kms:v2:keywarden:"

// encryptionConfig is docs/kubernetes.md's EncryptionConfiguration for the
// plugin socket at sock.
func encryptionConfig(t *testing.T, sock string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "encryption.yaml")
	cfg := fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
    providers:
      - kms:
          apiVersion: v2
          name: keywarden
          endpoint: unix://%s
          timeout: 3s
      - identity: {}
`, sock)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startKubeAPIServer loads the EncryptionConfiguration at path as
// kube-apiserver does at start.
func startKubeAPIServer(t *testing.T, path string) *kubeAPIServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ec, err := encryptionconfig.LoadEncryptionConfig(ctx, path, false, "interop-apiserver")
	if err != nil {
		cancel()
		t.Fatalf("loading the encryption configuration: %v", err)
	}
	t.Cleanup(cancel)
	tr := ec.Transformers[schema.GroupResource{Resource: "secrets"}]
	if tr == nil || len(ec.HealthChecks) != 1 {
		t.Fatalf("transformers %v, health checks %d", ec.Transformers, len(ec.HealthChecks))
	}
	hc := ec.HealthChecks[0]
	return &kubeAPIServer{secrets: tr, cancel: cancel, health: func() error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "/healthz/kms-providers", nil)
		return hc.Check(req)
	}}
}

// store is a Secret's write to etcd: the bytes the API server stores.
func (k *kubeAPIServer) store(t *testing.T, key string, obj []byte) []byte {
	t.Helper()
	out, err := k.secrets.TransformToStorage(context.Background(), obj, value.DefaultContext(key))
	if err != nil {
		t.Fatalf("storing %s: %v", key, err)
	}
	return out
}

// load is a Secret's read from etcd.
func (k *kubeAPIServer) load(key string, stored []byte) ([]byte, bool, error) {
	return k.secrets.TransformFromStorage(context.Background(), stored, value.DefaultContext(key))
}

// storedKeyID is the key_id an object stored by the KMS v2 provider names.
func storedKeyID(t *testing.T, stored []byte) string {
	t.Helper()
	if !bytes.HasPrefix(stored, []byte(kmsPrefix)) {
		t.Fatalf("stored object without the provider's prefix: %q", stored[:min(len(stored), 40)])
	}
	var o kmstypes.EncryptedObject
	if err := proto.Unmarshal(stored[len(kmsPrefix):], &o); err != nil {
		t.Fatalf("stored object: %v", err)
	}
	if o.EncryptedDEKSourceType != kmstypes.EncryptedDEKSourceType_HKDF_SHA256_XNONCE_AES_GCM_SEED {
		t.Errorf("stored object's DEK source type %v", o.EncryptedDEKSourceType)
	}
	return o.KeyID
}

func waitSocket(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no socket at %s", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKubeAPIServerEnvelope drives the plugin with kube-apiserver's own
// KMS v2 code: encryption configuration, priming, Secrets written and read
// through the envelope transformer, a key rotation seen through Status by
// the provider's health check (which makes a new seed under the new
// key_id, as the API server does every minute), older objects still read,
// and a sealed daemon making the provider unhealthy.
func TestKubeAPIServerEnvelope(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "kms.sock")
	d := startDaemon(t, "--kms-v2", sock, "--kms-key", "kube-secrets")
	waitSocket(t, sock)
	cli := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(keywardenBin, append(args, "--socket", d.socket)...).CombinedOutput()
		if err != nil {
			t.Fatalf("keywarden %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	cli("key", "generate", "--type", "aes256-gcm", "--name", "kube-secrets")
	cfg := encryptionConfig(t, sock)
	api := startKubeAPIServer(t, cfg)
	if err := api.health(); err != nil {
		t.Fatalf("the provider's health check: %v", err)
	}

	secret := []byte(`{"kind":"Secret","apiVersion":"v1","data":{"password":"aHVudGVyMg=="}}`)
	s1 := api.store(t, "/registry/secrets/default/one", secret)
	if bytes.Contains(s1, []byte("aHVudGVyMg")) {
		t.Fatal("the stored object holds the plaintext")
	}
	v1 := storedKeyID(t, s1)
	if !strings.HasPrefix(v1, "keywarden:") || !strings.HasSuffix(v1, ":v1") {
		t.Fatalf("key_id %q", v1)
	}
	got, stale, err := api.load("/registry/secrets/default/one", s1)
	if err != nil || stale || !bytes.Equal(got, secret) {
		t.Fatalf("reading back: %q stale=%v %v", got, stale, err)
	}
	// The object is bound to its etcd key: moved under another, it does not
	// read.
	if _, _, err := api.load("/registry/secrets/default/other", s1); err == nil {
		t.Error("an object read under another etcd key")
	}

	// Another API server (a restart, or a second replica) reads it through
	// the plugin, with no seed in its cache.
	api2 := startKubeAPIServer(t, cfg)
	if got, _, err := api2.load("/registry/secrets/default/one", s1); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("another API server reading: %q %v", got, err)
	}

	// Rotation: the key's next version changes key_id. The running API
	// server sees it at its next Status poll; its health check caches a
	// healthy answer for 20 s (kube-apiserver polls every minute), so the
	// test waits that long.
	cli("key", "rotate", "kube-secrets")
	s2 := api.store(t, "/registry/secrets/default/two", secret)
	if id := storedKeyID(t, s2); id != v1 {
		t.Fatalf("before the next Status poll, written under %q, want the seed of %q", id, v1)
	}
	deadline := time.Now().Add(60 * time.Second)
	var v2 string
	for {
		if err := api.health(); err != nil {
			t.Fatalf("the provider's health check after rotation: %v", err)
		}
		s3 := api.store(t, "/registry/secrets/default/three", secret)
		if v2 = storedKeyID(t, s3); v2 != v1 {
			if got, stale, err := api.load("/registry/secrets/default/three", s3); err != nil || stale || !bytes.Equal(got, secret) {
				t.Fatalf("reading an object of the new key_id: %q stale=%v %v", got, stale, err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the API server never saw the rotation")
		}
		time.Sleep(time.Second)
	}
	if v2 != strings.TrimSuffix(v1, ":v1")+":v2" {
		t.Fatalf("key_id after rotation %q (before %q)", v2, v1)
	}
	// An object of the old key_id is stale for the running API server (it
	// rewrites it under the new one when asked to), and still reads, also
	// on an API server that never saw it.
	if got, stale, err := api.load("/registry/secrets/default/one", s1); err != nil || !stale || !bytes.Equal(got, secret) {
		t.Fatalf("an object of the old key_id: %q stale=%v %v", got, stale, err)
	}
	api3 := startKubeAPIServer(t, cfg)
	if got, _, err := api3.load("/registry/secrets/default/one", s1); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("a new API server reading an object of the old key_id: %q %v", got, err)
	}
	if id := storedKeyID(t, api3.store(t, "/registry/secrets/default/four", secret)); id != v2 {
		t.Fatalf("a new API server writes under %q, want %q", id, v2)
	}

	// Retired versions no longer decrypt: the old object fails on an API
	// server that has not cached its seed.
	cli("key", "lifecycle", "kube-secrets", "--min-version", "2")
	api4 := startKubeAPIServer(t, cfg)
	if _, _, err := api4.load("/registry/secrets/default/one", s1); err == nil {
		t.Error("an object of a retired version read")
	}
}

// TestKubeAPIServerSealed: a sealed daemon makes the provider unhealthy
// for the API server, which then cannot prime a seed: writes fail.
func TestKubeAPIServerSealed(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sock, pass := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "pass")
	if err := os.WriteFile(pass, []byte("correct horse battery staple\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "--state", filepath.Join(dir, "state"), "--kdf-max-memory", "65536", "--insecure-master-kdf",
		"--kms-v2", sock, "--kms-key", "kube-secrets")
	waitSocket(t, sock)
	cli := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(keywardenBin, append(args, "--socket", d.socket)...).CombinedOutput(); err != nil {
			t.Fatalf("keywarden %v: %v\n%s", args, err, out)
		}
	}
	cli("init", "--passphrase-file", pass, "--time", "1", "--memory", "8192", "--threads", "1")
	cli("key", "generate", "--type", "aes256-gcm", "--name", "kube-secrets")
	cfg := encryptionConfig(t, sock)
	if err := startKubeAPIServer(t, cfg).health(); err != nil {
		t.Fatalf("the provider's health check, unsealed: %v", err)
	}
	cli("seal")
	api := startKubeAPIServer(t, cfg)
	err := api.health()
	if err == nil || !strings.Contains(err.Error(), "sealed") {
		t.Fatalf("health check of a sealed daemon: %v", err)
	}
	if _, err := api.secrets.TransformToStorage(context.Background(), []byte("x"), value.DefaultContext("/registry/secrets/a/b")); err == nil {
		t.Fatal("a write succeeded with a sealed daemon")
	}
}
