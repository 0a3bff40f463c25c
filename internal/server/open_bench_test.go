package server

import (
	"testing"

	"github.com/keywarden/keywarden/internal/wire"
)

// BenchmarkOpenByName compares the answers to opening a key by name: a
// name that does not exist, another user's key (refused from its record,
// NOT_FOUND like the first), and the owner's own open, which loads the
// key, for scale. The key is not loaded between opens.
//
//	go test -run '^$' -bench OpenByName ./internal/server
func BenchmarkOpenByName(b *testing.B) {
	for _, typ := range []wire.KeyType{wire.KeyType_KEY_TYPE_AES256_GCM, wire.KeyType_KEY_TYPE_RSA_4096} {
		s := mustNew(b, Config{})
		cn := testConn(b, s, benchConn(b), 1)
		owner := Identity{UID: 1, GID: 1, Pidfd: -1}
		_, res, err := cn.dispatch(&wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
			Type: typ, Name: "k"}}}}, owner, &arena{}, &wire.Result{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := cn.opClose(res.GetKey().GetHandle()); err != nil {
			b.Fatal(err)
		}
		open := func(name string) *wire.Op {
			return &wire.Op{Op: &wire.Op_Open{Open: &wire.Open{Key: &wire.Open_Name{Name: &wire.NameRef{Name: name, OwnerUid: new(uint32(1))}}}}}
		}
		other := Identity{UID: 2, GID: 2, Pidfd: -1}
		for _, c := range []struct {
			name string
			op   *wire.Op
			id   Identity
			want wire.Status
		}{
			{"missing", open("nothing"), other, wire.Status_STATUS_NOT_FOUND},
			{"others", open("k"), other, wire.Status_STATUS_NOT_FOUND},
			{"owner", open("k"), owner, wire.Status_STATUS_OK},
		} {
			b.Run(typ.String()[len("KEY_TYPE_"):]+"/"+c.name, func(b *testing.B) {
				var out wire.Result
				for b.Loop() {
					_, res, err := cn.dispatch(c.op, c.id, &arena{}, &out)
					if wire.StatusOf(err) != c.want {
						b.Fatalf("%v, want %v", err, c.want)
					}
					if err == nil {
						cn.opClose(res.GetKey().GetHandle())
					}
				}
				if n := s.store.Loaded(); n != 0 {
					b.Fatalf("%d keys left loaded", n)
				}
			})
		}
	}
}
