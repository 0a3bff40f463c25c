package server

import (
	"testing"

	"github.com/keywarden/keywarden/internal/wire"
)

// TestAuditOpNames: the fast path names operations as the general one
// does, and every operation has a name.
func TestAuditOpNames(t *testing.T) {
	opInfosOnce.Do(loadOpInfos)
	fast := []*wire.Op{
		{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{}}}, {Op: &wire.Op_Decrypt{Decrypt: &wire.Decrypt{}}},
		{Op: &wire.Op_Sign{Sign: &wire.Sign{}}}, {Op: &wire.Op_Verify{Verify: &wire.Verify{}}},
		{Op: &wire.Op_Mac{Mac: &wire.Mac{}}}, {Op: &wire.Op_MacVerify{MacVerify: &wire.MacVerify{}}},
		{Op: &wire.Op_Hash{Hash: &wire.Hash{}}}, {Op: &wire.Op_Ping{Ping: &wire.Ping{}}},
	}
	for _, op := range fast {
		oi, _ := infoOf(op)
		if got := auditOpName(op); got != oi.name {
			t.Errorf("%T: fast name %q, reflected %q", op.Op, got, oi.name)
		}
	}
	for num, oi := range opInfos {
		if oi.name == "" || oi.name == "none" {
			t.Errorf("field %d has no name", num)
		}
	}
	if got := auditOpName(&wire.Op{Op: &wire.Op_MasterRotate{MasterRotate: &wire.MasterRotate{}}}); got != "master-key-rotate" {
		t.Errorf("master_rotate is %q", got)
	}
	if got := auditOpName(&wire.Op{Op: &wire.Op_SetAttributes{SetAttributes: &wire.SetAttributes{}}}); got != "set-attributes" {
		t.Errorf("set_attributes is %q", got)
	}
}

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
		oi, m := infoOf(op)
		h, ok := dataHandle(op)
		if !ok || h != 7 {
			t.Errorf("%s: dataHandle = %d, %v", oi.name, h, ok)
		}
		if oi.handle == nil || m.Get(oi.handle).Uint() != 7 || oi.target != nil || oi.session != nil {
			t.Errorf("%s: names its key otherwise than by its handle alone; noteBefore's fast path must follow", oi.name)
		}
	}
	if _, ok := dataHandle(&wire.Op{Op: &wire.Op_Destroy{Destroy: &wire.Destroy{Handle: 7}}}); ok {
		t.Error("dataHandle takes destroy for a data-path operation")
	}
}
