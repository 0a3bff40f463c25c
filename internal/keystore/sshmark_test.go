package keystore

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/policy"
)

// A key's SSH mark is kept across a restart, shows in its info, and can be
// taken off again.
func TestSSHMarkPersists(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	o := must(NewObject("login", 1000, mustGen(t, aesSpec), &key.Attrs{Usage: key.Encrypt | key.Decrypt}, false, time.Now(), persist.Origin_ORIGIN_GENERATED))
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	if o.Meta().SSH {
		t.Fatal("a new key is marked for SSH")
	}
	yes, no := true, false
	if err := s.SetLifecycle(o, Lifecycle{SSH: &yes}); err != nil {
		t.Fatal(err)
	}
	if !o.Info(policy.Caller{UID: 1000}).Lifecycle.Ssh {
		t.Fatal("the mark is not in the key's info")
	}
	s = reopen(t, s, dir)
	got, err := s.Lookup(1000, "login")
	if err != nil {
		t.Fatal(err)
	}
	if !got.Meta().SSH {
		t.Fatal("the mark was lost in a restart")
	}
	if err := s.SetLifecycle(got, Lifecycle{SSH: &no}); err != nil {
		t.Fatal(err)
	}
	s.Release(got)
	s = reopen(t, s, dir)
	got, err = s.Lookup(1000, "login")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release(got)
	if got.Meta().SSH {
		t.Fatal("the mark, taken off, came back after a restart")
	}
}
