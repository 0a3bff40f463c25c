package seal

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/kdf"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/shamir"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// hookKDF is fakeKDF that runs during once, in the first derivation
// after it is set: a fault point inside the Argon2id run of an unseal.
type hookKDF struct {
	fakeKDF
	during func()
}

func (h *hookKDF) Derive(ctx context.Context, p kdf.Params, pass, salt []byte, n int) ([]byte, error) {
	if fn := h.during; fn != nil {
		h.during = nil
		fn()
	}
	return h.fakeKDF.Derive(ctx, p, pass, salt, n)
}

// hookMaster is passMaster with a hookKDF.
func hookMaster(t *testing.T) (*Master, *hookKDF) {
	t.Helper()
	h := &hookKDF{}
	m, err := Open(Config{Store: store.NewMemory(), KDF: h})
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.PrepareInit(context.Background(), Sealing{Passphrase: []byte("passphrase"), Params: DefaultParams}, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CommitInit(p, func(*Keys) ([]byte, error) { return []byte("header"), nil }); err != nil {
		t.Fatal(err)
	}
	m.Seal()
	return m, h
}

// reissue changes the master record of m, unsealed, as the daemon itself
// would have written it (its MAC made anew under m's keys), and leaves m
// sealed with the record read again.
func reissue(t *testing.T, m *Master, edit func(r *persist.MasterRecord)) {
	t.Helper()
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

func unsealPass(m *Master, pass string) error {
	return m.UnsealPassphrase(context.Background(), []byte(pass), nil)
}

// TestUnsealPassphraseFailures: each way an unseal with the passphrase can
// fail leaves the daemon sealed with the error the wire reports for it;
// only a wrong secret counts as a failed attempt (and delays the next),
// and the right passphrase unseals once the cause is gone.
func TestUnsealPassphraseFailures(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup returns the master, sealed, and the unseal to try; after,
		// if set, removes the cause before the final unseal.
		setup func(t *testing.T) (m *Master, try func() error, after func())
		want  wire.Status
		msg   string
		// limited: the failure counts against the limiter; unsealed: the
		// daemon is unsealed after it all the same (by someone else);
		// retry: the right passphrase unseals once after has run.
		limited, unsealed, retry bool
	}{
		{
			name: "wrong passphrase",
			setup: func(t *testing.T) (*Master, func() error, func()) {
				m, _ := hookMaster(t)
				return m, func() error { return unsealPass(m, "wrong") }, nil
			},
			want: wire.Status_STATUS_PERMISSION_DENIED, msg: "wrong passphrase or shares", limited: true,
		},
		{
			name: "right passphrase right after a failure",
			setup: func(t *testing.T) (*Master, func() error, func()) {
				m, h := hookMaster(t)
				now := time.Now()
				m.now = func() time.Time { return now }
				unsealPass(m, "wrong")
				calls := len(h.calls)
				return m, func() error {
						err := unsealPass(m, "passphrase")
						if len(h.calls) != calls {
							t.Error("an unseal refused by the limiter ran Argon2id")
						}
						return err
					}, func() {
						now = now.Add(time.Second + time.Millisecond)
					}
			},
			want: wire.Status_STATUS_RESOURCE_EXHAUSTED, msg: "try again in 1s", limited: true, retry: true,
		},
		{
			name: "no master key",
			setup: func(t *testing.T) (*Master, func() error, func()) {
				m, err := Open(Config{Store: store.NewMemory(), KDF: &fakeKDF{}})
				if err != nil {
					t.Fatal(err)
				}
				return m, func() error { return unsealPass(m, "passphrase") }, nil
			},
			want: wire.Status_STATUS_UNAVAILABLE, msg: "no master key yet",
		},
		{
			name: "already unsealed",
			setup: func(t *testing.T) (*Master, func() error, func()) {
				m, _ := hookMaster(t)
				if err := unsealPass(m, "passphrase"); err != nil {
					t.Fatal(err)
				}
				return m, func() error { return unsealPass(m, "passphrase") }, nil
			},
			want: wire.Status_STATUS_ALREADY_EXISTS, unsealed: true,
		},
		{
			name: "no passphrase slot (shares only)",
			setup: func(t *testing.T) (*Master, func() error, func()) {
				m, _, _ := sharedMaster(t, 2, 3)
				m.kdf = &fakeKDF{}
				return m, func() error { return unsealPass(m, "passphrase") }, nil
			},
			want: wire.Status_STATUS_INVALID_ARGUMENT, msg: "not sealed with a passphrase",
		},
		{
			name: "no KDF worker",
			setup: func(t *testing.T) (*Master, func() error, func()) {
				m, h := hookMaster(t)
				m.kdf = nil
				return m, func() error { return unsealPass(m, "passphrase") }, func() { m.kdf = h }
			},
			want: wire.Status_STATUS_UNAVAILABLE, msg: "key derivation is not available", retry: true,
		},
		{
			name: "slot bound to another store id",
			setup: func(t *testing.T) (*Master, func() error, func()) {
				m, _ := hookMaster(t)
				unsealPass(m, "passphrase")
				// The slot's associated data names the store: a slot moved
				// from another store does not open, even with its passphrase.
				other, _ := hookMaster(t)
				unsealPass(other, "passphrase")
				reissue(t, m, func(r *persist.MasterRecord) { r.Passphrase = other.Record().Passphrase })
				return m, func() error { return unsealPass(m, "passphrase") }, nil
			},
			want: wire.Status_STATUS_PERMISSION_DENIED, limited: true,
		},
		{
			name: "check value of another master key",
			setup: func(t *testing.T) (*Master, func() error, func()) {
				m, _ := hookMaster(t)
				unsealPass(m, "passphrase")
				reissue(t, m, func(r *persist.MasterRecord) { r.Check[0] ^= 1 })
				return m, func() error { return unsealPass(m, "passphrase") }, nil
			},
			want: wire.Status_STATUS_PERMISSION_DENIED, limited: true,
		},
		{
			name: "keyring of another master key",
			setup: func(t *testing.T) (*Master, func() error, func()) {
				m, _ := hookMaster(t)
				unsealPass(m, "passphrase")
				other, _ := hookMaster(t)
				unsealPass(other, "passphrase")
				reissue(t, m, func(r *persist.MasterRecord) { r.Keyring = other.Record().Keyring })
				return m, func() error { return unsealPass(m, "passphrase") }, nil
			},
			want: wire.Status_STATUS_INTERNAL, msg: "the keyring does not open",
		},
		{
			name: "record changed outside the daemon",
			setup: func(t *testing.T) (*Master, func() error, func()) {
				m, _ := hookMaster(t)
				unsealPass(m, "passphrase")
				m.Seal()
				// A field the MAC covers, changed without the key that makes
				// it: by hand, on the disk.
				editRecord(t, m, m.st, func(r *persist.MasterRecord) { r.Shares = &persist.ShareSet{Threshold: 2, Shares: 3} })
				return m, func() error { return unsealPass(m, "passphrase") }, nil
			},
			want: wire.Status_STATUS_INTERNAL, msg: "integrity check",
		},
		{
			name: "previous master key of a rotation does not open",
			setup: func(t *testing.T) (*Master, func() error, func()) {
				m, _ := hookMaster(t)
				unsealPass(m, "passphrase")
				rotate(t, m, "passphrase", 0)
				reissue(t, m, func(r *persist.MasterRecord) { r.Rotation.PreviousSealed[0] ^= 1 })
				return m, func() error { return unsealPass(m, "passphrase") }, nil
			},
			want: wire.Status_STATUS_INTERNAL, msg: "previous master key does not open",
		},
		{
			name: "the store check refuses",
			setup: func(t *testing.T) (*Master, func() error, func()) {
				m, _ := hookMaster(t)
				return m, func() error {
					return m.UnsealPassphrase(context.Background(), []byte("passphrase"), func(*Keys) error {
						return wire.Errorf(wire.Status_STATUS_VERIFICATION_FAILED, "the store does not match")
					})
				}, nil
			},
			want: wire.Status_STATUS_VERIFICATION_FAILED, msg: "the store does not match", retry: true,
		},
		{
			name: "sealed while checking the store",
			setup: func(t *testing.T) (*Master, func() error, func()) {
				m, _ := hookMaster(t)
				return m, func() error {
					return m.UnsealPassphrase(context.Background(), []byte("passphrase"), func(*Keys) error {
						m.Seal()
						return nil
					})
				}, nil
			},
			want: wire.Status_STATUS_UNAVAILABLE, msg: "sealed while this unseal was checking", retry: true,
		},
		{
			name: "store restored during the Argon2id run",
			setup: func(t *testing.T) (*Master, func() error, func()) {
				m, h := hookMaster(t)
				h.during = func() {
					err := m.Replace(func() error { m.Seal(); return nil }, func() error { return nil })
					if err != nil {
						t.Errorf("restore: %v", err)
					}
				}
				return m, func() error { return unsealPass(m, "passphrase") }, nil
			},
			want: wire.Status_STATUS_UNAVAILABLE, msg: "replaced (restored) during this unseal", retry: true,
		},
		{
			name: "another unseal finishes first",
			setup: func(t *testing.T) (*Master, func() error, func()) {
				m, h := hookMaster(t)
				h.during = func() {
					if err := unsealPass(m, "passphrase"); err != nil {
						t.Errorf("the other unseal: %v", err)
					}
				}
				return m, func() error { return unsealPass(m, "passphrase") }, nil
			},
			want: wire.Status_STATUS_ALREADY_EXISTS, unsealed: true,
		},
		{
			name: "a write begun before the seal still runs",
			setup: func(t *testing.T) (*Master, func() error, func()) {
				m, _ := hookMaster(t)
				m.SealWait = 20 * time.Millisecond
				unsealPass(m, "passphrase")
				l, err := m.Acquire()
				if err != nil {
					t.Fatal(err)
				}
				m.Seal()
				return m, func() error { return unsealPass(m, "passphrase") }, l.Release
			},
			want: wire.Status_STATUS_UNAVAILABLE, msg: "operations begun before the last seal still run", retry: true,
		},
		{
			name: "a write under the keys a rotation replaced still runs",
			setup: func(t *testing.T) (*Master, func() error, func()) {
				m, _ := hookMaster(t)
				m.SealWait = 20 * time.Millisecond
				unsealPass(m, "passphrase")
				l, err := m.Acquire()
				if err != nil {
					t.Fatal(err)
				}
				rotate(t, m, "passphrase", 0)
				m.Seal()
				return m, func() error { return unsealPass(m, "passphrase") }, l.Release
			},
			want: wire.Status_STATUS_UNAVAILABLE, msg: "operations begun before the last seal still run", retry: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, try, after := tc.setup(t)
			err := try()
			if wire.StatusOf(err) != tc.want || !strings.Contains(errString(err), tc.msg) {
				t.Fatalf("unseal: %v, want %v %q", err, tc.want, tc.msg)
			}
			if _, kerr := m.Keys(); (kerr == nil) != tc.unsealed {
				t.Fatalf("after the failure, Keys: %v (want unsealed %v)", kerr, tc.unsealed)
			}
			if tc.unsealed {
				return
			}
			if st := m.State(); (st.RetryAfter > 0) != tc.limited {
				t.Fatalf("after the failure, retry after %v (want a delay: %v)", st.RetryAfter, tc.limited)
			}
			if !tc.retry {
				return
			}
			if after != nil {
				after()
			}
			if err := unsealPass(m, "passphrase"); err != nil {
				t.Fatalf("the right passphrase once the cause is gone: %v", err)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestUnsealShareFailures: each share an unseal cannot take is refused
// with its reason, the shares already held are kept unless the
// combination itself failed, and the daemon stays sealed.
func TestUnsealShareFailures(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup returns the master (k=3 of 5, sealed) and the shares to
		// submit, in order; the last one's result is checked.
		setup func(t *testing.T) (*Master, []shamir.Share)
		want  wire.Status
		msg   string
		held  int // shares held after the last submission
	}{
		{
			name: "too few shares",
			setup: func(t *testing.T) (*Master, []shamir.Share) {
				m, sh, _ := sharedMaster(t, 3, 5)
				return m, []shamir.Share{sh[0], sh[3]}
			},
			want: wire.Status_STATUS_OK, held: 2,
		},
		{
			name: "the same share twice",
			setup: func(t *testing.T) (*Master, []shamir.Share) {
				m, sh, _ := sharedMaster(t, 3, 5)
				return m, []shamir.Share{sh[0], sh[1], sh[1]}
			},
			want: wire.Status_STATUS_ALREADY_EXISTS, msg: "already submitted", held: 2,
		},
		{
			name: "share of another split",
			setup: func(t *testing.T) (*Master, []shamir.Share) {
				m, sh, _ := sharedMaster(t, 3, 5)
				_, other, _ := sharedMaster(t, 3, 5)
				return m, []shamir.Share{sh[0], other[1]}
			},
			want: wire.Status_STATUS_INVALID_ARGUMENT, msg: "another split", held: 1,
		},
		{
			name: "share claiming another threshold",
			setup: func(t *testing.T) (*Master, []shamir.Share) {
				m, sh, _ := sharedMaster(t, 3, 5)
				bad := cp(sh[1])
				bad.Threshold = 2
				return m, []shamir.Share{sh[0], bad}
			},
			want: wire.Status_STATUS_INVALID_ARGUMENT, msg: "malformed share", held: 1,
		},
		{
			name: "share number 0",
			setup: func(t *testing.T) (*Master, []shamir.Share) {
				m, sh, _ := sharedMaster(t, 3, 5)
				bad := cp(sh[1])
				bad.X = 0
				return m, []shamir.Share{bad}
			},
			want: wire.Status_STATUS_INVALID_ARGUMENT, msg: "malformed share",
		},
		{
			name: "share of the wrong length",
			setup: func(t *testing.T) (*Master, []shamir.Share) {
				m, sh, _ := sharedMaster(t, 3, 5)
				bad := cp(sh[1])
				bad.Y = bad.Y[:KeyLen-1]
				return m, []shamir.Share{bad}
			},
			want: wire.Status_STATUS_INVALID_ARGUMENT, msg: "malformed share",
		},
		{
			name: "share number beyond the split",
			setup: func(t *testing.T) (*Master, []shamir.Share) {
				m, sh, _ := sharedMaster(t, 3, 5)
				bad := cp(sh[1])
				bad.X = 6
				return m, []shamir.Share{sh[0], bad}
			},
			want: wire.Status_STATUS_INVALID_ARGUMENT, msg: "only 5 shares", held: 1,
		},
		{
			name: "share not the one issued",
			setup: func(t *testing.T) (*Master, []shamir.Share) {
				m, sh, _ := sharedMaster(t, 3, 5)
				bad := cp(sh[4])
				bad.Y[0] ^= 1
				return m, []shamir.Share{sh[0], sh[1], bad}
			},
			want: wire.Status_STATUS_INVALID_ARGUMENT, msg: "not the share that was issued", held: 2,
		},
		{
			name: "damaged share without commitments",
			setup: func(t *testing.T) (*Master, []shamir.Share) {
				m, sh, _ := sharedMaster(t, 3, 5)
				editRecordAsIssued(t, m, sh[:3], func(r *persist.MasterRecord) { r.Shares.Commitments = nil })
				bad := cp(sh[4])
				bad.Y[0] ^= 1
				return m, []shamir.Share{sh[0], sh[1], bad}
			},
			want: wire.Status_STATUS_PERMISSION_DENIED, msg: "wrong passphrase or shares",
		},
		{
			name: "check value of another master key",
			setup: func(t *testing.T) (*Master, []shamir.Share) {
				m, sh, _ := sharedMaster(t, 3, 5)
				editRecordAsIssued(t, m, sh[:3], func(r *persist.MasterRecord) { r.Check[0] ^= 1 })
				return m, []shamir.Share{sh[0], sh[1], sh[2]}
			},
			want: wire.Status_STATUS_PERMISSION_DENIED, msg: "wrong passphrase or shares",
		},
		{
			name: "no shares (passphrase only)",
			setup: func(t *testing.T) (*Master, []shamir.Share) {
				m, _ := hookMaster(t)
				_, sh, _ := sharedMaster(t, 3, 5)
				return m, []shamir.Share{sh[0]}
			},
			want: wire.Status_STATUS_INVALID_ARGUMENT, msg: "not split into shares",
		},
		{
			name: "no master key",
			setup: func(t *testing.T) (*Master, []shamir.Share) {
				m, err := Open(Config{Store: store.NewMemory()})
				if err != nil {
					t.Fatal(err)
				}
				_, sh, _ := sharedMaster(t, 3, 5)
				return m, []shamir.Share{sh[0]}
			},
			want: wire.Status_STATUS_UNAVAILABLE, msg: "no master key yet",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, shares := tc.setup(t)
			var (
				held, need int
				done       bool
				err        error
			)
			for i, sh := range shares {
				held, need, done, err = m.UnsealShare(cp(sh), nil)
				if i < len(shares)-1 && err != nil {
					t.Fatalf("share %d of %d: %v", i+1, len(shares), err)
				}
			}
			if done {
				t.Fatalf("unsealed (%d of %d held)", held, need)
			}
			if wire.StatusOf(err) != tc.want || !strings.Contains(errString(err), tc.msg) {
				t.Fatalf("last share: %v, want %v %q", err, tc.want, tc.msg)
			}
			if held != tc.held || m.State().SharesHeld != tc.held {
				t.Fatalf("%d shares held (state: %d), want %d", held, m.State().SharesHeld, tc.held)
			}
			if _, err := m.Keys(); err == nil {
				t.Fatal("unsealed")
			}
		})
	}
}

// rotate rotates m, unsealed, to a new generation sealed under pass, with
// total records to re-wrap.
func rotate(t *testing.T, m *Master, pass string, total uint64) {
	t.Helper()
	p, err := m.PrepareRotation(context.Background(), Sealing{Passphrase: []byte(pass), Params: DefaultParams})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CommitRotation(p, total, func(store.Tx, *Keys, *Keys) error { return nil }); err != nil {
		t.Fatal(err)
	}
}
