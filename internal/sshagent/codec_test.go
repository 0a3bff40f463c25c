package sshagent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

func TestFrame(t *testing.T) {
	if got := frame([]byte{msgSuccess}); !bytes.Equal(got, []byte{0, 0, 0, 1, msgSuccess}) {
		t.Fatalf("frame: %x", got)
	}
	if got := frame(nil); !bytes.Equal(got, []byte{0, 0, 0, 0}) {
		t.Fatalf("frame of nothing: %x", got)
	}
}

// readString takes a string only if all its announced bytes are there,
// and leaves the input as it was otherwise.
func TestReadString(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		ok   bool
		want string
	}{
		{[]byte{0, 0, 0, 3, 'a', 'b', 'c'}, true, "abc"},
		{[]byte{0, 0, 0, 0}, true, ""},
		{[]byte{0, 0, 0, 4, 'a', 'b', 'c'}, false, ""},   // cut short
		{[]byte{0, 0, 3}, false, ""},                     // no length
		{[]byte{0xff, 0xff, 0xff, 0xff, 'a'}, false, ""}, // length beyond the input
		{[]byte{0x80, 0, 0, 0}, false, ""},               // length that is negative as int32
	} {
		s := cryptobyte.String(tc.in)
		var out []byte
		if ok := readString(&s, &out); ok != tc.ok || ok && string(out) != tc.want {
			t.Errorf("readString(%x) = %q %v, want %q %v", tc.in, out, ok, tc.want, tc.ok)
		}
	}
	// Two strings back to back.
	s := cryptobyte.String([]byte{0, 0, 0, 1, 'x', 0, 0, 0, 2, 'y', 'z'})
	var a, b []byte
	if !readString(&s, &a) || !readString(&s, &b) || string(a) != "x" || string(b) != "yz" || !s.Empty() {
		t.Fatalf("two strings: %q %q rest %x", a, b, []byte(s))
	}
}

// readMPInt takes only non-negative mpints.
func TestReadMPInt(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		ok   bool
		want int64
	}{
		{[]byte{0, 0, 0, 0}, true, 0},
		{[]byte{0, 0, 0, 1, 0x7f}, true, 127},
		{[]byte{0, 0, 0, 2, 0, 0x80}, true, 128},
		{[]byte{0, 0, 0, 1, 0x80}, false, 0}, // negative
		{[]byte{0, 0, 0, 2, 0x01}, false, 0}, // cut short
	} {
		s := cryptobyte.String(tc.in)
		var n *big.Int
		if ok := readMPInt(&s, &n); ok != tc.ok || ok && n.Int64() != tc.want {
			t.Errorf("readMPInt(%x) = %v %v, want %d %v", tc.in, n, ok, tc.want, tc.ok)
		}
	}
}

// closed reports whether the agent closed c without a reply.
func closed(t *testing.T, c net.Conn) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	var b [1]byte
	_, err := c.Read(b[:])
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the connection stayed open")
	}
	return errors.Is(err, io.EOF) || err != nil
}

// Framing on a connection: a message of exactly 256 KiB is read and
// answered; one longer, or empty, closes the connection unanswered (and
// is recorded); messages sent together are answered in order; a message
// cut short is never answered.
func TestServeFraming(t *testing.T) {
	ta := newTestAgent(t, Config{})

	c := ta.dial(t)
	big := make([]byte, MaxMessage)
	big[0] = 200 // an unknown type, MaxMessage bytes long in all
	if r, err := roundTrip(c, frame(big)); err != nil || !bytes.Equal(r, replyFailure) {
		t.Fatalf("a message of MaxMessage bytes: %x %v", r, err)
	}
	// Two messages in one write, two replies in order.
	two := append(msg(msgRequestIdentities), msg(99)...)
	c.Write(two)
	if r, err := readReply(c); err != nil || r[0] != msgIdentitiesAnswer {
		t.Fatalf("first of two: %x %v", r, err)
	}
	if r, err := readReply(c); err != nil || !bytes.Equal(r, replyFailure) {
		t.Fatalf("second of two: %x %v", r, err)
	}

	for _, n := range []uint32{MaxMessage + 1, 0, 0xffffffff} {
		c := ta.dial(t)
		c.Write(binary.BigEndian.AppendUint32(nil, n))
		if !closed(t, c) {
			t.Fatalf("a message of %d bytes was answered", n)
		}
	}
	ta.mustRefusal(t, "request", "RESOURCE_EXHAUSTED", "a message of 262145 bytes")
	ta.mustRefusal(t, "request", "RESOURCE_EXHAUSTED", "a message of 0 bytes")

	// Cut short: the agent waits for the rest, and answers nothing when
	// the client gives up.
	c = ta.dial(t)
	c.Write(append(binary.BigEndian.AppendUint32(nil, 100), make([]byte, 10)...))
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	var b [1]byte
	if n, err := c.Read(b[:]); n != 0 || err == nil {
		t.Fatalf("a message cut short was answered: %d %v", n, err)
	}
	c.(*net.UnixConn).CloseWrite()
	if !closed(t, c) {
		t.Fatal("a connection whose message was cut short stayed open")
	}
	// The agent goes on serving.
	if r, err := roundTrip(ta.dial(t), msg(msgRequestIdentities)); err != nil || r[0] != msgIdentitiesAnswer {
		t.Fatalf("list after bad framing: %x %v", r, err)
	}
}

// An unknown message is refused, recorded, and the connection goes on.
func TestUnknownMessage(t *testing.T) {
	ta := newTestAgent(t, Config{})
	c := ta.dial(t)
	for _, typ := range []byte{0, 1, 99, 255} {
		if r, err := roundTrip(c, msg(typ)); err != nil || !bytes.Equal(r, replyFailure) {
			t.Fatalf("type %d: %x %v", typ, r, err)
		}
	}
	ta.mustRefusal(t, "request", "UNIMPLEMENTED", "unknown message type 99")
	if r, err := roundTrip(c, msg(msgRequestIdentities)); err != nil || r[0] != msgIdentitiesAnswer {
		t.Fatalf("list after unknown messages: %x %v", r, err)
	}
}
