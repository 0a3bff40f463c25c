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

// A recycled request leaves no slice pointing into the buffer it was
// decoded from: a later decode that copies must not write into it.
func TestRecycleClearsAliases(t *testing.T) {
	buf, _ := (&Request{Version: 1, Id: 1, Ops: []*Op{
		{Op: &Op_Encrypt{Encrypt: &Encrypt{Handle: 1, Plaintext: []byte("plaintext one"), Aad: []byte("aad")}}},
		{Op: &Op_Mac{Mac: &Mac{Handle: 2, Data: []byte("data to mac")}}},
	}}).MarshalVT()
	keep := append([]byte(nil), buf...)
	for range 50 {
		req := RequestFromVTPool()
		if err := req.UnmarshalVTUnsafe(buf); err != nil {
			t.Fatal(err)
		}
		Recycle(req)
		other, _ := (&Request{Version: 1, Id: 2, Ops: []*Op{
			{Op: &Op_Encrypt{Encrypt: &Encrypt{Handle: 9, Plaintext: []byte("XXXXXXXXXXXXX"), Aad: []byte("YYY")}}},
			{Op: &Op_Mac{Mac: &Mac{Handle: 8, Data: []byte("ZZZZZZZZZZZ")}}},
		}}).MarshalVT()
		copied := RequestFromVTPool()
		if err := copied.UnmarshalVT(other); err != nil {
			t.Fatal(err)
		}
		Recycle(copied)
	}
	if string(buf) != string(keep) {
		t.Fatal("a copying decode wrote into the buffer of a recycled request")
	}
}

// A copy made by WithDetail still matches its sentinel, and only it; the
// cause its detail wraps stays reachable.
func TestErrorMatchesSentinelAndKeepsCause(t *testing.T) {
	errA := Errorf(Status_STATUS_UNAVAILABLE, "a")
	errB := Errorf(Status_STATUS_UNAVAILABLE, "a") // same status and text, another sentinel
	cause := errors.New("pipe closed")
	e := errA.WithDetail("worker %d: %w", 7, cause)
	if !errors.Is(e, errA) || !errors.Is(fmt.Errorf("ctx: %w", e), errA) {
		t.Error("a copy does not match its sentinel")
	}
	if errors.Is(e, errB) || errors.Is(errB, errA) {
		t.Error("an error matches another sentinel with the same text")
	}
	if !errors.Is(e, cause) || !errors.Is(e.WithDetail("again: %w", e), errA) {
		t.Error("the cause or the sentinel is lost")
	}
	if e.Error() != "a: worker 7: pipe closed" {
		t.Errorf("Error() = %q", e.Error())
	}
	if errors.Unwrap(errA.WithDetail("%v", cause)) != nil {
		t.Error("a detail made with a verb other than w wraps its argument")
	}
	var pe *Error
	if !errors.As(e, &pe) || pe.Public != "a" {
		t.Error("errors.As")
	}
}
