package daemon

import (
	"bytes"
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/sshagent"
	"github.com/keywarden/keywarden/internal/transit"
)

// A reload applies the limits that may change at run time, together, and
// names the ones that need a restart with the reason; the server keeps
// those.
func TestReloadLimits(t *testing.T) {
	srv, err := server.New(server.Config{Limits: server.Limits{MaxInFlight: 32}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	cur := Config{Limits: server.Limits{MaxInFlight: 32},
		Settings: map[string]string{"max-in-flight": "32", "max-connections-per-uid": "0", "max-message-bytes": "0"}}
	cur.Reload = func() (Config, error) {
		return Config{Limits: server.Limits{MaxInFlight: 8, MaxConnectionsPerUID: 3, MaxMessageBytes: 512 << 10},
			Settings: map[string]string{"max-in-flight": "8", "max-connections-per-uid": "3", "max-message-bytes": "524288"}}, nil
	}
	before := srv.Limits()
	reload(&cur, &running{srv: srv}, log)
	got := srv.Limits()
	if got.MaxInFlight != 8 || got.MaxConnectionsPerUID != 3 {
		t.Errorf("after the reload: in flight %d, connections per uid %d; want 8 and 3", got.MaxInFlight, got.MaxConnectionsPerUID)
	}
	if got.MaxMessageBytes != before.MaxMessageBytes {
		t.Errorf("max message bytes changed by a reload: %d", got.MaxMessageBytes)
	}
	out := logged.String()
	for _, want := range []string{"applied=\"[max-connections-per-uid max-in-flight]\"", "restart_needed=[max-message-bytes]", "max-message-bytes=\"sizes every"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %s in the log:\n%s", want, out)
		}
	}
	if cur.Settings["max-message-bytes"] != "0" || cur.Settings["max-in-flight"] != "8" {
		t.Errorf("settings after the reload: %v", cur.Settings)
	}
}

// A reload reads the transit principals file again, changed path or not,
// and keeps the previous mapping when the file does not parse.
func TestReloadPrincipals(t *testing.T) {
	srv, err := server.New(server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	file := filepath.Join(t.TempDir(), "principals")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("cn:a 1000\n")
	f, _ := os.Open(file)
	pr, err := transit.ParsePrincipals(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	cur := Config{HTTPPrincipals: file, Settings: map[string]string{"http-principals": file}}
	cur.Reload = func() (Config, error) {
		return Config{HTTPPrincipals: file, Settings: map[string]string{"http-principals": file}}, nil
	}
	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	write("cn:b 1001\n")
	reload(&cur, &running{srv: srv, principals: pr}, log)
	if _, ok := lookupCN(pr, "b"); !ok {
		t.Fatalf("cn:b not mapped after the reload:\n%s", logged.String())
	}
	if _, ok := lookupCN(pr, "a"); ok {
		t.Fatal("cn:a still mapped after the reload")
	}
	write("cn:c 0\n") // refused: a certificate never acts as root
	reload(&cur, &running{srv: srv, principals: pr}, log)
	if _, ok := lookupCN(pr, "b"); !ok || !strings.Contains(logged.String(), "previous mapping stays") {
		t.Fatalf("a bad file replaced the mapping:\n%s", logged.String())
	}
}

// A reload never lets a certificate act as an administrator: neither a
// new --admin uid that a certificate maps to, nor a new mapping to an
// administrator, nor to the daemon's own uid, is applied.
func TestReloadPrincipalNeverAdmin(t *testing.T) {
	srv, err := server.New(server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	file := filepath.Join(t.TempDir(), "principals")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("cn:a 1000\n")
	pr, err := loadPrincipals(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	var nextAdmins []uint32
	cur := Config{HTTPPrincipals: file, Settings: map[string]string{"http-principals": file, "admin": ""}}
	cur.Reload = func() (Config, error) {
		return Config{HTTPPrincipals: file, Admins: nextAdmins,
			Settings: map[string]string{"http-principals": file, "admin": fmt.Sprint(nextAdmins)}}, nil
	}
	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	r := &running{srv: srv, principals: pr}

	// 1000, which cn:a acts as, made an administrator: refused.
	nextAdmins = []uint32{1000}
	reload(&cur, r, log)
	if slices.Contains(cur.Admins, 1000) || !strings.Contains(logged.String(), "reload refused") {
		t.Fatalf("uid 1000 made an administrator while a certificate acts as it (admins %v):\n%s", cur.Admins, logged.String())
	}
	// A new mapping to an administrator (2000), or to the daemon's uid: refused.
	cur.Admins, nextAdmins = []uint32{2000}, []uint32{2000}
	cur.Settings["admin"] = fmt.Sprint(nextAdmins)
	for _, uid := range []int{2000, os.Getuid()} {
		if uid == 0 {
			continue // ParsePrincipals refuses root itself
		}
		logged.Reset()
		write(fmt.Sprintf("cn:b %d\n", uid))
		reload(&cur, r, log)
		if _, ok := lookupCN(pr, "b"); ok {
			t.Fatalf("a certificate mapped to administrator uid %d by a reload:\n%s", uid, logged.String())
		}
		if _, ok := lookupCN(pr, "a"); !ok {
			t.Fatalf("the previous mapping is gone:\n%s", logged.String())
		}
	}
}

func lookupCN(p *transit.Principals, cn string) (transit.Principal, bool) {
	return p.Lookup(&x509.Certificate{Subject: pkix.Name{CommonName: cn}})
}

// A reload gives the ssh-agent front the new confirmation program.
func TestReloadAskpass(t *testing.T) {
	srv, err := server.New(server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	agent := sshagent.New(sshagent.Config{Server: srv})
	defer agent.Close()
	cur := Config{Settings: map[string]string{"ssh-askpass": ""}}
	cur.Reload = func() (Config, error) {
		return Config{SSHAskpass: "/usr/bin/true", Settings: map[string]string{"ssh-askpass": "/usr/bin/true"}}, nil
	}
	var logged bytes.Buffer
	reload(&cur, &running{srv: srv, agent: agent}, slog.New(slog.NewTextHandler(&logged, nil)))
	if cur.SSHAskpass != "/usr/bin/true" || !strings.Contains(logged.String(), "applied=[ssh-askpass]") {
		t.Fatalf("ssh-askpass not applied: %q\n%s", cur.SSHAskpass, logged.String())
	}
}

// The principals file says which uid each client certificate acts as: one
// that another user could write (group- or world-writable, or theirs) is
// refused, at start and at a reload, so that they cannot map their own
// certificate to a uid whose keys they want.
func TestLoadPrincipalsRefusesWritableByOthers(t *testing.T) {
	file := filepath.Join(t.TempDir(), "principals")
	if err := os.WriteFile(file, []byte("cn:a 1000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadPrincipals(file, nil); err != nil {
		t.Fatalf("a file of this user, mode 0644: %v", err)
	}
	for _, mode := range []os.FileMode{0o666, 0o664, 0o646} {
		os.Chmod(file, mode)
		if _, err := loadPrincipals(file, nil); err == nil || !strings.Contains(err.Error(), "writable by group or others") {
			t.Fatalf("mode %04o: %v; want refused", mode, err)
		}
	}
	os.Chmod(file, 0o644)
	if os.Geteuid() != 0 {
		return
	}
	if err := os.Chown(file, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := loadPrincipals(file, nil); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
		t.Fatalf("a file of uid 65534: %v; want refused", err)
	}
}
