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
