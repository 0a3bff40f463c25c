package stress

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"

	keywarden "github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/kdf"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/store"
)

// The daemon under test: what internal/daemon builds for a persistent
// store, in this process, minus the KDF worker processes (Argon2id runs
// here, at test costs) and the audit log.

const passphrase = "stress passphrase"

// testArgon2 are the master passphrase's costs: milliseconds, not seconds.
var testArgon2 = keywarden.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}

// inProcessKDF runs Argon2id here: tests only (the daemon runs it in a
// worker process).
type inProcessKDF struct{}

func (inProcessKDF) Derive(_ context.Context, p kdf.Params, pass, salt []byte, n int) ([]byte, error) {
	return argon2.IDKey(pass, salt, p.Time, p.MemoryKiB, p.Threads, uint32(n)), nil
}

type daemon struct {
	sock string
	db   *store.Bolt
	keys *keystore.Store
	srv  *server.Server
	logs *logCapture
}

// startDaemon starts a daemon with a new store in a temporary directory,
// initialized under passphrase and unsealed.
func startDaemon(t *testing.T, maxKeys int) *daemon {
	t.Helper()
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	db, err := store.OpenBolt(state, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logCapture{}
	log := slog.New(logs)
	m, err := seal.Open(seal.Config{Store: db, KDF: inProcessKDF{}, Logger: log, InsecureKDF: true})
	if err != nil {
		t.Fatal(err)
	}
	ks := keystore.New(keystore.Config{MaxPerUser: maxKeys, DB: db, Master: m, Logger: log})
	srv, err := server.New(server.Config{Logger: log, Store: ks, StateDir: state, Limits: server.Limits{MaxKeysPerUser: maxKeys}})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "keywarden.sock")
	l, err := seqpacket.Listen(sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	d := &daemon{sock: sock, db: db, keys: ks, srv: srv, logs: logs}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-served
		ks.Close()
		db.Close()
	})
	c := d.dial(t)
	defer c.Close()
	if _, err := c.Admin().Init(context.Background(), keywarden.MasterSealing{Passphrase: []byte(passphrase), Argon2: testArgon2}, nil); err != nil {
		t.Fatalf("init: %v", err)
	}
	return d
}

func (d *daemon) dial(t testing.TB) *keywarden.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := keywarden.Dial(ctx, d.sock)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	return c
}

// records returns the ids of the key records in the store.
func (d *daemon) records() (map[keywarden.KeyID]bool, error) {
	ids := map[keywarden.KeyID]bool{}
	err := d.db.View(func(tx store.Tx) error {
		return tx.ForEach(persist.BucketKeys, nil, func(k, _ []byte) error {
			var id keywarden.KeyID
			if len(k) != len(id) {
				return fmt.Errorf("a key record named %x", k)
			}
			copy(id[:], k)
			ids[id] = true
			return nil
		})
	})
	return ids, err
}

// logCapture keeps the daemon's warnings and errors; an error that says a
// request panicked or key memory was corrupted is a finding.
type logCapture struct {
	mu    sync.Mutex
	lines []string
	bad   []string
}

func (h *logCapture) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *logCapture) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	line := b.String()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.lines) < 400 {
		h.lines = append(h.lines, line)
	}
	if r.Level >= slog.LevelError && (strings.Contains(r.Message, "panicked") || strings.Contains(r.Message, "corrupted")) {
		h.bad = append(h.bad, line)
	}
	return nil
}

func (h *logCapture) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logCapture) WithGroup(string) slog.Handler      { return h }

// take returns the lines logged since the last call, and the findings.
func (h *logCapture) take() (lines, bad []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	lines, bad = h.lines, h.bad
	h.lines, h.bad = nil, nil
	return lines, bad
}
