package keystore

import (
	"bytes"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// readStored returns key id's record as stored, and its MAC.
func readStored(t *testing.T, s *Store, id key.ID) (*persist.KeyRecord, []byte) {
	t.Helper()
	mac, rb, err := persist.SplitValue(value(t, s, id))
	if err != nil {
		t.Fatal(err)
	}
	r := &persist.KeyRecord{}
	if err := r.UnmarshalVT(rb); err != nil {
		t.Fatal(err)
	}
	return r, mac
}

// Every field of a key record is bound to its blobs: whoever could forge a
// record's MAC but not seal a blob (the index key's holder) cannot change
// what decides how the key may be used (its origin, and with it whether
// it is trusted to wrap; its minimum version; its encryption budget, and
// with it the nonces' safety; its rotation settings) without the blob
// failing to open.
func TestRecordFieldsBoundToBlobs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(r *persist.KeyRecord)
	}{
		{"origin", func(r *persist.KeyRecord) { r.Origin = persist.Origin_ORIGIN_GENERATED }},
		{"min_version", func(r *persist.KeyRecord) { r.MinVersion = 0 }},
		{"next_version", func(r *persist.KeyRecord) { r.NextVersion = 1 }},
		{"budget_policy", func(r *persist.KeyRecord) { r.BudgetPolicy = persist.BudgetPolicy_BUDGET_POLICY_ROTATE }},
		{"rotate_after", func(r *persist.KeyRecord) { r.RotateAfterSeconds = 0 }},
		{"wrapped_out", func(r *persist.KeyRecord) { r.WrappedOut = false }},
		{"base_always_sensitive", func(r *persist.KeyRecord) { r.BaseAlwaysSensitive = true }},
		{"base_never_extractable", func(r *persist.KeyRecord) { r.BaseNeverExtractable = true }},
		{"ever_wrappable", func(r *persist.KeyRecord) { r.EverWrappable = !r.EverWrappable }},
		{"encryptions_reserved", func(r *persist.KeyRecord) { r.Versions[0].EncryptionsReserved = 0 }},
		{"encryptions_limit", func(r *persist.KeyRecord) { r.Versions[0].EncryptionsLimit = 1 << 40 }},
		{"created", func(r *persist.KeyRecord) { r.CreatedUnixNano++ }},
		{"name", func(r *persist.KeyRecord) { r.Name = "other" }},
		{"fingerprint", func(r *persist.KeyRecord) { r.Versions[0].Fingerprint[0] ^= 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := dev(t, 10)
			o := obj(t, 1, "k", false)
			o.meta.Store(&Meta{Origin: persist.Origin_ORIGIN_IMPORTED, MinVersion: 1, NextVersion: 2,
				Budget: persist.BudgetPolicy_BUDGET_POLICY_REFUSE, RotateAfter: time.Hour, WrappedOut: true})
			if err := s.Add(o); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Encrypting(o, 1); err != nil { // a reservation
				t.Fatal(err)
			}
			s.Release(o)
			k, _ := s.Master().Keys()
			r, _ := readStored(t, s, o.ID)
			tc.change(r)
			rb, _ := r.MarshalVT()
			put(t, s, o.ID, persist.JoinValue(forgeRecordMAC(t, k, rb), rb))
			s.mu.Lock()
			delete(s.bad, o.ID)
			s.mu.Unlock()
			if _, err := s.objectFrom(k, r); err == nil {
				t.Fatalf("a record whose %s was changed, with a forged MAC, opens", tc.name)
			}
		})
	}
}

// The MACs of key records, of the store header and of the accumulator's
// summands are made under one key, each with its own label before the
// data, so that none can be taken for another.
func TestMACsAreDomainSeparated(t *testing.T) {
	s := dev(t, 10)
	o := obj(t, 1, "k", false)
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	k, _ := s.Master().Keys()
	_, rb, _ := persist.SplitValue(value(t, s, o.ID))
	mac, _, _ := persist.SplitValue(value(t, s, o.ID))
	if bytes.Equal(mac, rawIndexMAC(t, k, rb)) {
		t.Error("a record's MAC is the index key's HMAC of its bytes alone")
	}
	h := storedHeader(t, s)
	mac = h.Mac
	h.Mac = nil
	in, _ := h.MarshalVT()
	if bytes.Equal(mac, rawIndexMAC(t, k, in)) {
		t.Error("the header's MAC is the index key's HMAC of its bytes alone")
	}
}

// A record's blobs are sealed under a key of that record's write (HKDF of
// the id and revision), not under the storage key shared by every record:
// every write of every record re-seals all of its versions, and the 2^32
// bound on AES-GCM invocations with random nonces applies per key.
func TestBlobsNotUnderSharedStorageKey(t *testing.T) {
	s := dev(t, 10)
	o := obj(t, 1, "k", false)
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	k, _ := s.Master().Keys()
	var r *persist.KeyRecord
	s.db.View(func(tx store.Tx) error {
		_, rb, _ := persist.SplitValue(tx.Get(persist.BucketKeys, o.ID[:]))
		r = &persist.KeyRecord{}
		return r.UnmarshalVT(rb)
	})
	if err := openUnderStorageKey(k, r, 0); err == nil {
		t.Error("a blob opens under the storage key shared by every record")
	}
	_ = wire.Status_STATUS_OK
}
