package seal

import (
	"context"
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/kdf"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/shamir"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// fakeKDF stands in for Argon2id: a hash of the parameters, passphrase
// and salt (what matters here is which parameters are used, not their
// cost). It records the parameters of every derivation.
type fakeKDF struct{ calls []kdf.Params }

func (f *fakeKDF) Derive(_ context.Context, p kdf.Params, pass, salt []byte, n int) ([]byte, error) {
	f.calls = append(f.calls, p)
	h := sha256.New()
	h.Write([]byte(p.String()))
	h.Write(pass)
	h.Write(salt)
	return h.Sum(nil)[:n], nil
}

// passMaster makes a master key sealed under passphrase at params, sealed
// (ready for UnsealPassphrase), in the returned store.
func passMaster(t *testing.T, f *fakeKDF, params kdf.Params) (*Master, store.Store) {
	t.Helper()
	st := store.NewMemory()
	m, err := Open(Config{Store: st, KDF: f})
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.PrepareInit(context.Background(), Sealing{Passphrase: []byte("passphrase"), Params: params}, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CommitInit(p, func(*Keys) ([]byte, error) { return []byte("header"), nil }); err != nil {
		t.Fatal(err)
	}
	m.Seal()
	return m, st
}

// editRecordAsIssued changes the master record of m, a split master key,
// the way the daemon itself would have written it (its MAC made anew): it
// unseals m with shares, edits, and seals it again.
func editRecordAsIssued(t *testing.T, m *Master, shares []shamir.Share, edit func(r *persist.MasterRecord)) {
	t.Helper()
	for _, sh := range shares {
		if _, _, _, err := m.UnsealShare(cp(sh), nil); err != nil {
			t.Fatal(err)
		}
	}
	m.mu.Lock()
	r := m.rec.CloneVT()
	edit(r)
	b, err := marshalMaster(m.keys, r)
	m.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.st.Update(func(tx store.Tx) error { return tx.Put(persist.BucketMeta, persist.MetaMaster, b) }); err != nil {
		t.Fatal(err)
	}
	m.Seal()
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
}

// editRecord changes the stored master record and has m read it again.
func editRecord(t *testing.T, m *Master, st store.Store, edit func(r *persist.MasterRecord)) {
	t.Helper()
	r := m.Record()
	edit(r)
	b, err := r.MarshalVT()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Update(func(tx store.Tx) error { return tx.Put(persist.BucketMeta, persist.MetaMaster, b) }); err != nil {
		t.Fatal(err)
	}
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
}

// TestSlotThreadsNotTruncated: the slot keeps the lane count as a 32-bit
// integer and Argon2id takes a byte. A stored count above 255 is refused
// as damage, not truncated (260 is 4 modulo 256: the slot below, sealed
// with 4 lanes, would open with the count it records replaced by 260).
func TestSlotThreadsNotTruncated(t *testing.T) {
	f := &fakeKDF{}
	params := DefaultParams // 4 lanes
	m, st := passMaster(t, f, params)
	for _, threads := range []uint32{260, 256, 0, 1 << 31} {
		editRecord(t, m, st, func(r *persist.MasterRecord) { r.Passphrase.Threads = threads })
		f.calls = nil
		err := m.UnsealPassphrase(context.Background(), []byte("passphrase"), nil)
		if wire.StatusOf(err) != wire.Status_STATUS_INTERNAL || !strings.Contains(err.Error(), "passphrase slot is damaged") {
			t.Fatalf("a slot recording %d lanes: %v, want it refused as damaged", threads, err)
		}
		if len(f.calls) != 0 {
			t.Fatalf("a slot recording %d lanes derived with %v", threads, f.calls)
		}
		if _, err := m.Keys(); err == nil {
			t.Fatalf("unsealed with a slot recording %d lanes", threads)
		}
	}
	editRecord(t, m, st, func(r *persist.MasterRecord) { r.Passphrase.Threads = 4 })
	if err := m.UnsealPassphrase(context.Background(), []byte("passphrase"), nil); err != nil {
		t.Fatalf("the slot as sealed: %v", err)
	}
	if len(f.calls) != 1 || f.calls[0] != params {
		t.Fatalf("derived with %v, want %v", f.calls, params)
	}
}

// TestPassphraseFloor: init and rotation refuse Argon2id costs below
// MinParams (RFC 9106's second recommended option) before any
// derivation, and take the floor, the defaults, and as much work with
// fewer passes over more memory. InsecureKDF, for tests, takes anything.
func TestPassphraseFloor(t *testing.T) {
	const MiB = 1024
	below := []kdf.Params{
		{Time: 1, MemoryKiB: 8 * MiB, Threads: 1}, // what init took before
		{Time: 1, MemoryKiB: 64 * MiB, Threads: 4},
		{Time: 2, MemoryKiB: 64 * MiB, Threads: 4},
		{Time: 1, MemoryKiB: 192*MiB - 1, Threads: 1},
		{Time: 10, MemoryKiB: 64*MiB - 1, Threads: 1}, // more work, too little memory
		{Time: 1 << 20, MemoryKiB: 8, Threads: 1},
	}
	atOrAbove := []kdf.Params{
		{}, // DefaultParams
		{Time: 3, MemoryKiB: 64 * MiB, Threads: 1},
		{Time: 2, MemoryKiB: 96 * MiB, Threads: 1},
		{Time: 1, MemoryKiB: 192 * MiB, Threads: 1},
		{Time: 1, MemoryKiB: 2048 * MiB, Threads: 4}, // RFC 9106's first option
		{MemoryKiB: 64 * MiB},                        // 3 passes by default
	}
	seal := func(m *Master, p kdf.Params) error {
		pend, err := m.PrepareInit(context.Background(), Sealing{Passphrase: []byte("passphrase"), Params: p}, false)
		pend.Discard()
		return err
	}
	for _, insecure := range []bool{false, true} {
		f := &fakeKDF{}
		m, err := Open(Config{Store: store.NewMemory(), KDF: f, InsecureKDF: insecure})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range below {
			err := seal(m, p)
			switch {
			case insecure && err != nil:
				t.Errorf("InsecureKDF, %v: %v", p, err)
			case !insecure && (wire.StatusOf(err) != wire.Status_STATUS_INVALID_ARGUMENT || !strings.Contains(err.Error(), "below the floor")):
				t.Errorf("%v: %v, want it refused below the floor", p, err)
			}
			if err := CheckFloor(slotDefaults(p)); err == nil {
				t.Errorf("CheckFloor(%v) passed", p)
			}
		}
		if !insecure && len(f.calls) != 0 {
			t.Errorf("refused costs were derived: %v", f.calls)
		}
		for _, p := range atOrAbove {
			if err := seal(m, p); err != nil {
				t.Errorf("%v: %v", p, err)
			}
		}
	}

	// Rotation keeps the floor too.
	f := &fakeKDF{}
	m, _ := passMaster(t, f, DefaultParams)
	if err := m.UnsealPassphrase(context.Background(), []byte("passphrase"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := m.PrepareRotation(context.Background(), Sealing{Passphrase: []byte("new"), Params: below[0]}); wire.StatusOf(err) != wire.Status_STATUS_INVALID_ARGUMENT {
		t.Fatalf("rotation below the floor: %v", err)
	}
	p, err := m.PrepareRotation(context.Background(), Sealing{Passphrase: []byte("new"), Params: MinParams})
	if err != nil {
		t.Fatalf("rotation at the floor: %v", err)
	}
	p.Discard()
}
