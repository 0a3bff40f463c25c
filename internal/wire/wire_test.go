package wire

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"
)

func TestStatusOf(t *testing.T) {
	e := Errorf(Status_STATUS_NOT_FOUND, "no such key").WithDetail("id %d", 7)
	if StatusOf(nil) != Status_STATUS_OK || StatusOf(e) != Status_STATUS_NOT_FOUND ||
		StatusOf(fmt.Errorf("wrapped: %w", e)) != Status_STATUS_NOT_FOUND || StatusOf(errors.New("x")) != Status_STATUS_INTERNAL {
		t.Fatal("StatusOf")
	}
	if e.Public != "no such key" || e.Error() != "no such key: id 7" {
		t.Fatalf("%q %q", e.Public, e.Error())
	}
}

// The fast codec and the reference codec agree byte for byte.
func TestCodecsAgree(t *testing.T) {
	req := &Request{Version: 1, Id: 99, Ops: []*Op{
		{Op: &Op_Encrypt{Encrypt: &Encrypt{Handle: 3, Plaintext: []byte("p"), Aad: []byte("a")}}},
		{Op: &Op_Open{Open: &Open{Key: &Open_Name{Name: &NameRef{Name: "n", OwnerUid: proto.Uint32(0)}}}}},
	}}
	fast, err := AppendMarshal(make([]byte, 3), req)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if string(fast) != string(ref) {
		t.Fatalf("fast %x\nref  %x", fast, ref)
	}
	var back Request
	if err := back.UnmarshalVT(fast); err != nil || !proto.Equal(&back, req) {
		t.Fatalf("round trip: %v", err)
	}
}
