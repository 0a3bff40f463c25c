package server

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/keywarden/keywarden/internal/wire"
)

// TestCopyResultsEveryField: copyResults gives what proto.Clone gives for a
// result with every field set, for each member of value (empty, nil and
// set), and with unknown fields: a field it missed would be dropped from
// the reply without a word.
func TestCopyResultsEveryField(t *testing.T) {
	base := func() *wire.Result {
		return &wire.Result{Status: wire.Status_STATUS_INVALID_ARGUMENT, Message: "m", Data: []byte("data"),
			KeyVersion: 3, OutputLength: 7}
	}
	var cases []*wire.Result
	cases = append(cases, base(), &wire.Result{}, &wire.Result{Data: []byte{}})
	oneof := (&wire.Result{}).ProtoReflect().Descriptor().Oneofs().ByName("value")
	fields := oneof.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		empty := base()
		empty.ProtoReflect().Set(fd, protoreflect.ValueOfMessage(empty.ProtoReflect().NewField(fd).Message()))
		cases = append(cases, empty)
		only := &wire.Result{}
		only.ProtoReflect().Set(fd, protoreflect.ValueOfMessage(only.ProtoReflect().NewField(fd).Message()))
		cases = append(cases, only)
	}
	// A member of value whose message is nil: proto.Clone keeps it (it is
	// encoded as an empty message).
	cases = append(cases, &wire.Result{Value: &wire.Result_Key{}}, &wire.Result{Value: &wire.Result_Generation{}},
		&wire.Result{Data: []byte("x"), Value: &wire.Result_DataKey{}})
	unknown := base()
	unknown.ProtoReflect().SetUnknown(protoreflect.RawFields{0xf8, 0x07, 0x01}) // field 127, varint 1
	cases = append(cases, unknown)
	got := copyResults(append(cases, nil))
	if got[len(cases)] != nil {
		t.Error("a nil result copied as non-nil")
	}
	for i, res := range cases {
		want := proto.Clone(res).(*wire.Result)
		if !proto.Equal(got[i], want) {
			t.Errorf("case %d: copy %v, proto.Clone %v", i, got[i], want)
		}
		if got[i] == res {
			t.Errorf("case %d: not a copy", i)
		}
		wb, _ := proto.MarshalOptions{Deterministic: true}.Marshal(want)
		gb, _ := proto.MarshalOptions{Deterministic: true}.Marshal(got[i])
		if string(wb) != string(gb) {
			t.Errorf("case %d: copy encodes as %x, proto.Clone as %x", i, gb, wb)
		}
	}
}
