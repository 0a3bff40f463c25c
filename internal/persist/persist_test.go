package persist

import (
	"bytes"
	"crypto/rand"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
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

// Format 1's associated data, which blobs not yet re-written still have.
func TestLegacyBlobAADCoversEveryAttribute(t *testing.T) {
	base := func() *KeyRecord {
		return &KeyRecord{
			Id: bytes.Repeat([]byte{1}, 16), Owner: 1000, Type: 1, Class: 1, Usage: 3,
			Exportable: true, Wrappable: true, Acl: []*AclEntry{{Id: 7, Usage: 1}}, Rev: 9,
		}
	}
	store := bytes.Repeat([]byte{2}, 16)
	ref := LegacyBlobAAD(nil, store, base(), 1, 1)
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
		if bytes.Equal(LegacyBlobAAD(nil, s, r, v, g), ref) {
			t.Errorf("changing the %s does not change the associated data", name)
		}
	}
}

// The associated data of a blob of format 2 covers every field of its
// record, present and future, but the blobs themselves: each field of a
// KeyRecord, and of its KeyVersion and AclEntry messages, is set in turn to
// a value it did not have, and the record hash must change.
func TestRecordHashCoversEveryField(t *testing.T) {
	base := func() *KeyRecord {
		return &KeyRecord{
			Id: bytes.Repeat([]byte{1}, 16), Name: "k", Owner: 1000, Type: 1, Class: 1, Usage: 3, Format: Format,
			Acl:             []*AclEntry{{Id: 7, Usage: 1}},
			Versions:        []*KeyVersion{{Version: 1, MkGeneration: 1, Blob: []byte("blob"), Fingerprint: bytes.Repeat([]byte{5}, 16)}},
			AllowedPrograms: []*Program{{Path: "/usr/bin/ssh"}},
		}
	}
	ref, err := RecordHash(base())
	if err != nil {
		t.Fatal(err)
	}
	changed := func(name string, m protoreflect.Message, f protoreflect.FieldDescriptor, r *KeyRecord) {
		t.Helper()
		switch {
		case f.IsList():
			l := m.Mutable(f).List()
			l.Append(l.NewElement())
		case f.Kind() == protoreflect.BoolKind:
			m.Set(f, protoreflect.ValueOfBool(!m.Get(f).Bool()))
		case f.Kind() == protoreflect.BytesKind:
			m.Set(f, protoreflect.ValueOfBytes(append(bytes.Clone(m.Get(f).Bytes()), 9)))
		case f.Kind() == protoreflect.StringKind:
			m.Set(f, protoreflect.ValueOfString(m.Get(f).String()+"x"))
		case f.Kind() == protoreflect.EnumKind:
			m.Set(f, protoreflect.ValueOfEnum(m.Get(f).Enum()+1))
		case f.Kind() == protoreflect.Int64Kind:
			m.Set(f, protoreflect.ValueOfInt64(m.Get(f).Int()+1))
		case f.Kind() == protoreflect.Uint32Kind:
			m.Set(f, protoreflect.ValueOfUint32(uint32(m.Get(f).Uint())+1))
		case f.Kind() == protoreflect.Uint64Kind:
			m.Set(f, protoreflect.ValueOfUint64(m.Get(f).Uint()+1))
		default:
			t.Fatalf("%s: a field of kind %v: teach this test to change it", name, f.Kind())
		}
		h, err := RecordHash(r)
		if err != nil {
			t.Fatal(err)
		}
		if blob := name == "versions.blob"; (h == ref) != blob {
			if blob {
				t.Errorf("the record hash covers the blob itself")
			} else {
				t.Errorf("changing %s does not change the record hash", name)
			}
		}
	}
	fields := base().ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		r := base()
		changed(string(f.Name()), r.ProtoReflect(), f, r)
		if f.Message() != nil { // and each field of its first element
			sub := f.Message().Fields()
			for j := range sub.Len() {
				r := base()
				m := r.ProtoReflect().Get(f).List().Get(0).Message()
				changed(string(f.Name())+"."+string(sub.Get(j).Name()), m, sub.Get(j), r)
			}
		}
	}
	if b := base(); !bytes.Equal(b.Versions[0].Blob, []byte("blob")) {
		t.Fatal("RecordHash changed the record")
	}
}

func TestBlobAADCoversItsPlace(t *testing.T) {
	var h [32]byte
	store, id := bytes.Repeat([]byte{2}, 16), bytes.Repeat([]byte{1}, 16)
	ref := BlobAAD(nil, store, id, 1, &h)
	h2 := h
	h2[31] = 1
	for name, aad := range map[string][]byte{
		"store":   BlobAAD(nil, bytes.Repeat([]byte{3}, 16), id, 1, &h),
		"key id":  BlobAAD(nil, store, bytes.Repeat([]byte{4}, 16), 1, &h),
		"version": BlobAAD(nil, store, id, 2, &h),
		"record":  BlobAAD(nil, store, id, 1, &h2),
	} {
		if bytes.Equal(aad, ref) {
			t.Errorf("changing the %s does not change the associated data", name)
		}
	}
}

// No label is a prefix of another, and none can start a protobuf
// encoding of the store's messages (whose first byte is a field tag of
// field 1 to 22: 0x08 to 0xb2, never 'k'): the MACs under one index key
// are of disjoint inputs.
func TestLabelsArePrefixFree(t *testing.T) {
	labels := []string{LabelRecord, LabelHeader, LabelSum, LabelSumPad, LabelMaster, "keywarden material v1\x00"}
	for i, a := range labels {
		if strings.Count(a, "\x00") != 1 || !strings.HasSuffix(a, "\x00") {
			t.Errorf("label %q: one zero byte, at its end", a)
		}
		for j, b := range labels {
			if i != j && strings.HasPrefix(b, a) {
				t.Errorf("%q is a prefix of %q", a, b)
			}
		}
	}
}
