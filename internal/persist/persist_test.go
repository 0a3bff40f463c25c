package persist

import (
	"bytes"
	"crypto/rand"
	"testing"
)

func TestAccIsASetSum(t *testing.T) {
	macs := make([][]byte, 50)
	for i := range macs {
		macs[i] = make([]byte, 32)
		rand.Read(macs[i])
	}
	macs[0] = bytes.Repeat([]byte{0xff}, 32) // carries all the way
	var a, b Acc
	for _, m := range macs {
		a.Add(m)
	}
	for i := len(macs) - 1; i >= 0; i-- { // order does not matter
		b.Add(macs[i])
	}
	if a != b {
		t.Fatal("sum depends on order")
	}
	for _, m := range macs {
		a.Sub(m)
	}
	if a != (Acc{}) {
		t.Fatalf("adding then subtracting every MAC leaves %x", a)
	}
	var one, max Acc
	one[31] = 1
	max.Sub(one[:])
	if !bytes.Equal(max[:], bytes.Repeat([]byte{0xff}, 32)) {
		t.Fatalf("0 - 1 = %x, want 2^256-1", max)
	}
	max.Add(one[:])
	if max != (Acc{}) {
		t.Fatalf("2^256-1 + 1 = %x, want 0", max)
	}
}

func TestBlobAADCoversEveryAttribute(t *testing.T) {
	base := func() *KeyRecord {
		return &KeyRecord{
			Id: bytes.Repeat([]byte{1}, 16), Owner: 1000, Type: 1, Class: 1, Usage: 3,
			Exportable: true, Wrappable: true, Acl: []*AclEntry{{Id: 7, Usage: 1}}, Rev: 9,
		}
	}
	store := bytes.Repeat([]byte{2}, 16)
	ref := BlobAAD(nil, store, base(), 1, 1)
	changes := map[string]func(r *KeyRecord) (ver uint32, gen uint64, storeID []byte){
		"id":               func(r *KeyRecord) (uint32, uint64, []byte) { r.Id[0] ^= 1; return 1, 1, store },
		"version":          func(r *KeyRecord) (uint32, uint64, []byte) { return 2, 1, store },
		"type":             func(r *KeyRecord) (uint32, uint64, []byte) { r.Type = 2; return 1, 1, store },
		"class":            func(r *KeyRecord) (uint32, uint64, []byte) { r.Class = 2; return 1, 1, store },
		"usage":            func(r *KeyRecord) (uint32, uint64, []byte) { r.Usage = 1; return 1, 1, store },
		"exportable":       func(r *KeyRecord) (uint32, uint64, []byte) { r.Exportable = false; return 1, 1, store },
		"wrappable":        func(r *KeyRecord) (uint32, uint64, []byte) { r.Wrappable = false; return 1, 1, store },
		"never exportable": func(r *KeyRecord) (uint32, uint64, []byte) { r.NeverExportable = true; return 1, 1, store },
		"trusted":          func(r *KeyRecord) (uint32, uint64, []byte) { r.Trusted = true; return 1, 1, store },
		"owner":            func(r *KeyRecord) (uint32, uint64, []byte) { r.Owner = 0; return 1, 1, store },
		"acl id":           func(r *KeyRecord) (uint32, uint64, []byte) { r.Acl[0].Id = 8; return 1, 1, store },
		"acl kind":         func(r *KeyRecord) (uint32, uint64, []byte) { r.Acl[0].Group = true; return 1, 1, store },
		"acl usage":        func(r *KeyRecord) (uint32, uint64, []byte) { r.Acl[0].Usage = 2; return 1, 1, store },
		"acl entry added": func(r *KeyRecord) (uint32, uint64, []byte) {
			r.Acl = append(r.Acl, &AclEntry{Id: 8})
			return 1, 1, store
		},
		"rev":           func(r *KeyRecord) (uint32, uint64, []byte) { r.Rev = 10; return 1, 1, store },
		"mk generation": func(r *KeyRecord) (uint32, uint64, []byte) { return 1, 2, store },
		"store": func(r *KeyRecord) (uint32, uint64, []byte) {
			return 1, 1, bytes.Repeat([]byte{3}, 16)
		},
	}
	for name, change := range changes {
		r := base()
		v, g, s := change(r)
		if bytes.Equal(BlobAAD(nil, s, r, v, g), ref) {
			t.Errorf("changing the %s does not change the associated data", name)
		}
	}
}
