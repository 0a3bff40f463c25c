package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The etcd cluster's request size reaches the store's configuration from
// the command line, and from a configuration file.
func TestServeEtcdMaxRequestBytes(t *testing.T) {
	e := &env{stdin: strings.NewReader(""), stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, getenv: func(string) string { return "" }}
	base := []string{"--state", t.TempDir(), "--store", "etcd", "--etcd-endpoints", "http://127.0.0.1:2379"}
	cfg, _, err := serveConfig(e, append(base, "--etcd-max-request-bytes", "3145728"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Etcd == nil || cfg.Etcd.MaxRequestBytes != 3145728 {
		t.Fatalf("etcd config from the flag: %+v", cfg.Etcd)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "keywarden.toml")
	if err := os.WriteFile(file, []byte("etcd-max-request-bytes = 2097152\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _, err = serveConfig(e, append(base, "--config", file))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Etcd == nil || cfg.Etcd.MaxRequestBytes != 2097152 {
		t.Fatalf("etcd config from the file: %+v", cfg.Etcd)
	}
}
