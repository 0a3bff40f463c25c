package server

import (
	"maps"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/wire"
)

// TestOpTable walks the Op oneof: every request type has a row in the
// operation table, with every field declared, and its audit name is the
// field's name with dashes (master_rotate is master-key-rotate): names in
// the audit log never change.
func TestOpTable(t *testing.T) {
	od := (&wire.Op{}).ProtoReflect().Descriptor().Oneofs().ByName("op")
	names := map[string]protoreflect.Name{}
	for i := 0; i < od.Fields().Len(); i++ {
		f := od.Fields().Get(i)
		spec, ok := opTable[f.Name()]
		if !ok {
			t.Errorf("operation %s (field %d of Op) has no row in the operation table", f.Name(), f.Number())
			continue
		}
		if miss := spec.missingFields(); len(miss) > 0 {
			t.Errorf("operation %s: its row does not declare %s", f.Name(), strings.Join(miss, ", "))
		}
		want := strings.ReplaceAll(string(f.Name()), "_", "-")
		if f.Name() == "master_rotate" {
			want = audit.OpMasterKeyRotate
		}
		if spec.name != want {
			t.Errorf("operation %s: audit name %q, want %q", f.Name(), spec.name, want)
		}
		if other, dup := names[spec.name]; dup {
			t.Errorf("operations %s and %s share the audit name %q", other, f.Name(), spec.name)
		}
		names[spec.name] = f.Name()
	}
	for name := range opTable {
		if od.Fields().ByName(name) == nil {
			t.Errorf("the operation table has a row for %s, which is no field of Op", name)
		}
	}
	if errOpTable != nil {
		t.Fatalf("the table's index is not built: %v", errOpTable)
	}
	// Every row is found from its operation.
	for i := 0; i < od.Fields().Len(); i++ {
		f := od.Fields().Get(i)
		op := &wire.Op{}
		m := op.ProtoReflect()
		m.Set(f, m.NewField(f))
		if r := rowOf(op); r == nil || r.field != f {
			t.Errorf("operation %s: rowOf does not find its row", f.Name())
		}
	}
	if rowOf(&wire.Op{}) != nil {
		t.Error("an empty operation has a row")
	}
}

// TestOpTableRefusesMissingRow: the table's index is not built when a
// request type has no row, so a daemon cannot start half-wired.
func TestOpTableRefusesMissingRow(t *testing.T) {
	table := maps.Clone(opTable)
	delete(table, "mac_verify")
	if _, err := loadOpRows(table); err == nil || !strings.Contains(err.Error(), "mac_verify") {
		t.Errorf("a table without mac_verify: %v", err)
	}
	table = maps.Clone(opTable)
	table["no_such_op"] = opTable["ping"]
	if _, err := loadOpRows(table); err == nil || !strings.Contains(err.Error(), "no_such_op") {
		t.Errorf("a table with a row of no operation: %v", err)
	}
	spec := opTable["generate"]
	spec.bound = nil
	spec.apartIf = nil
	if miss := spec.missingFields(); strings.Join(miss, ",") != "apartIf,bound" {
		t.Errorf("a row without bound and apartIf misses %v", miss)
	}
}

// TestOpNames: operations are named in the daemon's log as in the
// audit log.
func TestOpNames(t *testing.T) {
	for op, want := range map[*wire.Op]string{
		{Op: &wire.Op_MacVerify{MacVerify: &wire.MacVerify{}}}:             "mac-verify",
		{Op: &wire.Op_MasterRotate{MasterRotate: &wire.MasterRotate{}}}:    "master-key-rotate",
		{Op: &wire.Op_SetAttributes{SetAttributes: &wire.SetAttributes{}}}: "set-attributes",
		{}: "none",
	} {
		if got := opName(op); got != want {
			t.Errorf("%T: named %q, want %q", op.Op, got, want)
		}
	}
}

// TestRowOfFastPath: the rows rowOf finds without the map are the map's.
func TestRowOfFastPath(t *testing.T) {
	for _, op := range []*wire.Op{
		{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{}}},
		{Op: &wire.Op_Decrypt{Decrypt: &wire.Decrypt{}}},
		{Op: &wire.Op_Mac{Mac: &wire.Mac{}}},
	} {
		want := opRows[reflect.TypeOf(op.Op)]
		if got := rowOf(op); got == nil || got != want {
			t.Errorf("%T: row %v, the map's %v", op.Op, got, want)
		}
	}
}
