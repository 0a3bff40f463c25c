package seal

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// storedRecord reads the master record as the store holds it.
func storedRecord(t *testing.T, m *Master) *persist.MasterRecord {
	t.Helper()
	r := &persist.MasterRecord{}
	err := m.st.View(func(tx store.Tx) error { return r.UnmarshalVT(tx.Get(persist.BucketMeta, persist.MetaMaster)) })
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func noHeader(store.Tx, *Keys, *Keys) error { return nil }

// step records a re-wrap batch with k as the re-wrap does: RotationStep
// in the batch's transaction, RotationCommitted once it committed.
func step(m *Master, k *Keys, cursor string, done uint64) error {
	var rec *persist.MasterRecord
	err := m.st.Update(func(tx store.Tx) error {
		var err error
		rec, err = m.RotationStep(tx, k, []byte(cursor), done)
		return err
	})
	if err == nil {
		m.RotationCommitted(rec)
	}
	return err
}

func none(store.Tx) (uint64, error) { return 0, nil }

// TestRotationFailures: each refusal of a rotation step changes nothing,
// in memory or in the store: the generation and the rotation's progress
// stay as they were, and the keys that were published stay so.
func TestRotationFailures(t *testing.T) {
	for _, tc := range []struct {
		name string
		// run gets an unsealed master of generation 1 (passphrase
		// "passphrase") and tries the step that fails.
		run  func(t *testing.T, m *Master) error
		want wire.Status
		msg  string
		// gen and rotating: the state after the failure; sealed: the
		// daemon is left sealed (the test sealed it).
		gen      uint64
		rotating bool
		sealed   bool
	}{
		{
			name: "prepare while sealed",
			run: func(t *testing.T, m *Master) error {
				m.Seal()
				_, err := m.PrepareRotation(context.Background(), Sealing{Passphrase: []byte("new")})
				return err
			},
			want: wire.Status_STATUS_UNAVAILABLE, msg: "sealed", gen: 1, sealed: true,
		},
		{
			name: "prepare with neither passphrase nor shares",
			run: func(t *testing.T, m *Master) error {
				_, err := m.PrepareRotation(context.Background(), Sealing{})
				return err
			},
			want: wire.Status_STATUS_INVALID_ARGUMENT, msg: "passphrase, shares, or both", gen: 1,
		},
		{
			name: "prepare while a rotation re-wraps",
			run: func(t *testing.T, m *Master) error {
				rotate(t, m, "passphrase", 3)
				_, err := m.PrepareRotation(context.Background(), Sealing{Passphrase: []byte("new")})
				return err
			},
			want: wire.Status_STATUS_UNAVAILABLE, msg: "still re-wrapping", gen: 2, rotating: true,
		},
		{
			name: "commit after a seal",
			run: func(t *testing.T, m *Master) error {
				p, err := m.PrepareRotation(context.Background(), Sealing{Passphrase: []byte("new")})
				if err != nil {
					t.Fatal(err)
				}
				m.Seal()
				return m.CommitRotation(p, 0, noHeader)
			},
			want: wire.Status_STATUS_UNAVAILABLE, msg: "sealed meanwhile", gen: 1, sealed: true,
		},
		{
			name: "commit after another rotation",
			run: func(t *testing.T, m *Master) error {
				p, err := m.PrepareRotation(context.Background(), Sealing{Passphrase: []byte("new")})
				if err != nil {
					t.Fatal(err)
				}
				rotate(t, m, "passphrase", 0)
				if err := m.FinishRotation(mustKeys(t, m), none); err != nil {
					t.Fatal(err)
				}
				return m.CommitRotation(p, 0, noHeader)
			},
			want: wire.Status_STATUS_UNAVAILABLE, msg: "changed or was sealed meanwhile", gen: 2,
		},
		{
			name: "commit whose header fails",
			run: func(t *testing.T, m *Master) error {
				p, err := m.PrepareRotation(context.Background(), Sealing{Passphrase: []byte("new")})
				if err != nil {
					t.Fatal(err)
				}
				return m.CommitRotation(p, 0, func(store.Tx, *Keys, *Keys) error { return errors.New("disk full") })
			},
			want: wire.Status_STATUS_UNAVAILABLE, msg: "writing the master record failed", gen: 1,
		},
		{
			name: "commit whose header refuses the store",
			run: func(t *testing.T, m *Master) error {
				p, err := m.PrepareRotation(context.Background(), Sealing{Passphrase: []byte("new")})
				if err != nil {
					t.Fatal(err)
				}
				return m.CommitRotation(p, 0, func(store.Tx, *Keys, *Keys) error {
					return wire.Errorf(wire.Status_STATUS_INTERNAL, "a record does not match the header")
				})
			},
			want: wire.Status_STATUS_INTERNAL, msg: "does not match the header", gen: 1,
		},
		{
			name: "re-wrap step with keys sealed away",
			run: func(t *testing.T, m *Master) error {
				rotate(t, m, "passphrase", 3)
				old := mustKeys(t, m)
				m.Seal()
				if err := unsealPass(m, "passphrase"); err != nil {
					t.Fatal(err)
				}
				return step(m, old, "b", 2)
			},
			want: wire.Status_STATUS_UNAVAILABLE, msg: "sealed", gen: 2, rotating: true,
		},
		{
			name: "finish with records left",
			run: func(t *testing.T, m *Master) error {
				rotate(t, m, "passphrase", 3)
				err := m.FinishRotation(mustKeys(t, m), func(store.Tx) (uint64, error) { return 1, nil })
				var left *ErrRecordsLeft
				if !errors.As(err, &left) || left.N != 1 {
					t.Errorf("FinishRotation: %v, want 1 record left", err)
				}
				return err
			},
			want: wire.Status_STATUS_INTERNAL, msg: "1 key records are not yet", gen: 2, rotating: true,
		},
		{
			name: "finish whose count fails",
			run: func(t *testing.T, m *Master) error {
				rotate(t, m, "passphrase", 3)
				return m.FinishRotation(mustKeys(t, m), func(store.Tx) (uint64, error) {
					return 0, wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "the store is closing")
				})
			},
			want: wire.Status_STATUS_UNAVAILABLE, msg: "the store is closing", gen: 2, rotating: true,
		},
		{
			name: "finish with keys sealed away",
			run: func(t *testing.T, m *Master) error {
				rotate(t, m, "passphrase", 3)
				old := mustKeys(t, m)
				m.Seal()
				if err := unsealPass(m, "passphrase"); err != nil {
					t.Fatal(err)
				}
				return m.FinishRotation(old, none)
			},
			want: wire.Status_STATUS_UNAVAILABLE, msg: "sealed", gen: 2, rotating: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, _ := hookMaster(t)
			if err := unsealPass(m, "passphrase"); err != nil {
				t.Fatal(err)
			}
			err := tc.run(t, m)
			if wire.StatusOf(err) != tc.want || !strings.Contains(errString(err), tc.msg) {
				t.Fatalf("%v, want %v %q", err, tc.want, tc.msg)
			}
			st := m.State()
			if st.Generation != tc.gen || st.Rotating != tc.rotating || st.Sealed != tc.sealed {
				t.Fatalf("state after the failure: %+v; want generation %d, rotating %v, sealed %v", st, tc.gen, tc.rotating, tc.sealed)
			}
			r := storedRecord(t, m)
			if r.Generation != tc.gen || (r.Rotation != nil) != tc.rotating {
				t.Fatalf("stored record after the failure: generation %d, rotation %v; want %d, rotating %v", r.Generation, r.Rotation, tc.gen, tc.rotating)
			}
			if tc.rotating && (r.Rotation.Done != 0 || r.Rotation.Cursor != nil) {
				t.Fatalf("a refused step recorded progress: %v", r.Rotation)
			}
			if !tc.sealed {
				k := mustKeys(t, m)
				if !k.HasGeneration(tc.gen) || k.HasGeneration(tc.gen-1) != tc.rotating {
					t.Fatalf("generations held: %d %v, %d %v", tc.gen, k.HasGeneration(tc.gen), tc.gen-1, k.HasGeneration(tc.gen-1))
				}
			}
			// Whatever failed, the store unseals as it stands.
			m.Seal()
			if err := unsealPass(m, "passphrase"); err != nil {
				t.Fatalf("unseal after the failure: %v", err)
			}
		})
	}
}

func mustKeys(t *testing.T, m *Master) *Keys {
	t.Helper()
	k, err := m.Keys()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestRotationInterrupted: a rotation interrupted (sealed, the daemon
// stopped) after each of its steps unseals where it stopped: before the
// commit under the old passphrase only, after it under the new one only
// with both generations' keys and the progress last committed, and after
// the finish with the new generation's alone. A blob sealed under the
// old generation opens until the finish, and never after it; one of a
// generation never made never opens.
func TestRotationInterrupted(t *testing.T) {
	const (
		oldPass = "passphrase"
		newPass = "new passphrase"
	)
	id, aad, pt := bytes.Repeat([]byte{7}, 16), []byte("aad"), []byte("key bytes")
	m, _ := hookMaster(t)
	if err := unsealPass(m, oldPass); err != nil {
		t.Fatal(err)
	}
	var blob []byte
	err := mustKeys(t, m).SealBlobs(id, 1, func(seal BlobSealer) error {
		var err error
		blob, err = seal(nil, aad, pt)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	opens := func(g uint64) error {
		return mustKeys(t, m).OpenBlobs(g, id, 1, func(open BlobOpener) error {
			got, err := open(aad, blob)
			if err == nil && !bytes.Equal(got, pt) {
				t.Fatal("the blob opened to other bytes")
			}
			return err
		})
	}
	// interrupt seals; want is the passphrase that unseals afterwards
	// (the other must fail as a wrong one), then checks the state.
	interrupt := func(stage, want string, gen uint64, rotating bool, done uint64, cursor string) {
		t.Helper()
		m.Seal()
		wrong := oldPass
		if want == oldPass {
			wrong = newPass
		}
		if err := unsealPass(m, wrong); wire.StatusOf(err) != wire.Status_STATUS_PERMISSION_DENIED {
			t.Fatalf("%s: the other passphrase: %v", stage, err)
		}
		m.lim.reset()
		if err := unsealPass(m, want); err != nil {
			t.Fatalf("%s: %v", stage, err)
		}
		st, k := m.State(), mustKeys(t, m)
		if st.Generation != gen || k.Generation != gen || st.Rotating != rotating || st.RotationDone != done {
			t.Fatalf("%s: state %+v, want generation %d, rotating %v, %d done", stage, st, gen, rotating, done)
		}
		if rotating && string(m.Record().Rotation.Cursor) != cursor {
			t.Fatalf("%s: cursor %q, want %q", stage, m.Record().Rotation.Cursor, cursor)
		}
		if err := opens(1); (err == nil) != (gen == 1 || rotating) {
			t.Fatalf("%s: the blob of generation 1: %v", stage, err)
		}
		if err := opens(9); !errors.Is(err, errGeneration) {
			t.Fatalf("%s: a blob of generation 9: %v", stage, err)
		}
	}

	// Prepared, not committed: nothing changed.
	p, err := m.PrepareRotation(context.Background(), Sealing{Passphrase: []byte(newPass), Params: DefaultParams})
	if err != nil {
		t.Fatal(err)
	}
	interrupt("prepared", oldPass, 1, false, 0, "")
	p.Discard()

	// Committed: generation 2, both generations, nothing re-wrapped.
	p, err = m.PrepareRotation(context.Background(), Sealing{Passphrase: []byte(newPass), Params: DefaultParams})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CommitRotation(p, 3, noHeader); err != nil {
		t.Fatal(err)
	}
	interrupt("committed", newPass, 2, true, 0, "")

	// A batch committed: its progress is kept.
	if err := step(m, mustKeys(t, m), "b", 2); err != nil {
		t.Fatal(err)
	}
	interrupt("one batch re-wrapped", newPass, 2, true, 2, "b")

	// A batch whose transaction rolled back: its progress is not.
	err = m.st.Update(func(tx store.Tx) error {
		if _, err := m.RotationStep(tx, mustKeys(t, m), []byte("c"), 3); err != nil {
			return err
		}
		return errors.New("the batch failed")
	})
	if err == nil {
		t.Fatal("the batch did not fail")
	}
	interrupt("a batch rolled back", newPass, 2, true, 2, "b")

	// Finished: the previous generation is gone.
	if err := step(m, mustKeys(t, m), "c", 3); err != nil {
		t.Fatal(err)
	}
	if err := m.FinishRotation(mustKeys(t, m), none); err != nil {
		t.Fatal(err)
	}
	interrupt("finished", newPass, 2, false, 0, "")
	if r := storedRecord(t, m); r.Rotation != nil {
		t.Fatalf("the finished rotation is still stored: %v", r.Rotation)
	}
}
