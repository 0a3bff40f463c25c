package server

import (
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/wire"
)

// The Argon2id operations need the daemon's supervisor, whose workers
// the e2e tests drive; here, what holds without one.

func kdfOps() []*wire.Op {
	return []*wire.Op{
		{Op: &wire.Op_DerivePassphrase{DerivePassphrase: &wire.DeriveFromPassphrase{Passphrase: []byte("pw"), Salt: []byte("saltsalt"),
			Template: &wire.KeyTemplate{Type: wire.KeyType_KEY_TYPE_AES256_GCM, Ephemeral: true}}}},
		{Op: &wire.Op_PasswordHash{PasswordHash: &wire.PasswordHash{Password: []byte("pw")}}},
		{Op: &wire.Op_PasswordVerify{PasswordVerify: &wire.PasswordVerify{Password: []byte("pw"), Phc: "$argon2id$"}}},
		{Op: &wire.Op_KdfCalibrate{KdfCalibrate: &wire.KdfCalibrate{TargetMs: 100}}},
	}
}

// TestKDFRunsConcurrently: every Argon2id operation makes its request
// run concurrently, since it waits for the budget and a worker.
func TestKDFRunsConcurrently(t *testing.T) {
	for _, op := range kdfOps() {
		if !isHeavy(&wire.Request{Ops: []*wire.Op{{Op: &wire.Op_Ping{Ping: &wire.Ping{}}}, op}}) {
			t.Errorf("%s runs inline", opName(op))
		}
	}
}

// TestKDFUnavailable: a server configured without a supervisor refuses
// the Argon2id operations with UNAVAILABLE and serves the rest.
func TestKDFUnavailable(t *testing.T) {
	_, c := pair(t, Config{})
	send(t, c, 1, kdfOps()...)
	rep := recv(t, c)
	if len(rep.Results) != 4 {
		t.Fatalf("%d results", len(rep.Results))
	}
	for i, r := range rep.Results {
		if r.Status != wire.Status_STATUS_UNAVAILABLE || r.Message != "key derivation is not available in this daemon" {
			t.Errorf("op %d: %v %q", i, r.Status, r.Message)
		}
	}
}

// TestKDFRecordInInfo: a key's info carries the record of its passphrase
// derivation, and only that key's.
func TestKDFRecordInInfo(t *testing.T) {
	spec := key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM)
	mat, err := mech.FromSecret(spec, make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	o := must(keystore.NewObject("", 1, mat, &key.Attrs{Usage: key.Encrypt}, true, time.Now(), persist.Origin_ORIGIN_GENERATED))
	defer keystore.Discard(o)
	rec := &wire.PassphraseKdf{Algorithm: "argon2id", Version: 19, Salt: []byte("saltsalt")}
	o.KDF = rec
	if o.Info(policyCaller(1)).GetKdf() != rec {
		t.Fatal("info without its kdf record")
	}
	mat2, _ := mech.FromSecret(spec, make([]byte, 32))
	o2 := must(keystore.NewObject("", 1, mat2, &key.Attrs{Usage: key.Encrypt}, true, time.Now(), persist.Origin_ORIGIN_GENERATED))
	defer keystore.Discard(o2)
	if o2.Info(policyCaller(1)).GetKdf() != nil {
		t.Fatal("a kdf record on another key")
	}
}

func policyCaller(uid uint32) policy.Caller { return policy.Caller{UID: uid, GID: uid} }
