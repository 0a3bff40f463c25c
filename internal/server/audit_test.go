package server

import (
	"testing"

	"github.com/keywarden/keywarden/internal/wire"
)

// TestDataHandleMatchesReflection: the data-path operations that
// noteBefore reads without reflection name their key by the handle it
// reads and by nothing else (no target, no session).
func TestDataHandleMatchesReflection(t *testing.T) {
	ops := []*wire.Op{
		{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: 7}}},
		{Op: &wire.Op_Decrypt{Decrypt: &wire.Decrypt{Handle: 7}}},
		{Op: &wire.Op_Sign{Sign: &wire.Sign{Handle: 7}}},
		{Op: &wire.Op_Verify{Verify: &wire.Verify{Handle: 7}}},
		{Op: &wire.Op_Mac{Mac: &wire.Mac{Handle: 7}}},
		{Op: &wire.Op_MacVerify{MacVerify: &wire.MacVerify{Handle: 7}}},
	}
	for _, op := range ops {
		r := rowOf(op)
		m := op.ProtoReflect().Get(r.field).Message()
		h, ok := dataHandle(op)
		if !ok || h != 7 {
			t.Errorf("%s: dataHandle = %d, %v", r.name, h, ok)
		}
		if r.handle == nil || m.Get(r.handle).Uint() != 7 || r.target != nil || r.session != nil {
			t.Errorf("%s: names its key otherwise than by its handle alone; noteBefore's fast path must follow", r.name)
		}
	}
	if _, ok := dataHandle(&wire.Op{Op: &wire.Op_Destroy{Destroy: &wire.Destroy{Handle: 7}}}); ok {
		t.Error("dataHandle takes destroy for a data-path operation")
	}
}
