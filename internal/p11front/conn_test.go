package p11front

import (
	"encoding/binary"
	"io"
	"testing"
	"time"
)

// restBuffered says whether a frame's rest is read with its first byte,
// so that serve sets no deadline for it.
func TestRestBuffered(t *testing.T) {
	frame := appendFrame(nil, 7, []byte("body"))
	big := binary.BigEndian.AppendUint32(nil, 7)
	big = binary.BigEndian.AppendUint32(big, 0)
	big = binary.BigEndian.AppendUint32(big, maxBody+1)
	for _, tc := range []struct {
		name string
		read []byte // what the reader holds, the frame's first byte first
		want bool
	}{
		{"the whole frame", frame, true},
		{"the frame and the next one's start", append(append([]byte(nil), frame...), 0, 0), true},
		{"the header only", frame[:frameHeader], false},
		{"part of the header", frame[:5], false},
		{"the first byte only", frame[:1], false},
		{"all but the body's last byte", frame[:len(frame)-1], false},
		{"a header over the limits", big, false},
	} {
		r := &credReader{buf: append([]byte(nil), tc.read...), r: 1, w: len(tc.read)}
		if got := r.restBuffered(tc.read[0]); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// A frame written in pieces, with pauses between them, is answered as
// one written whole.
func TestFrameInPieces(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	cl.code++
	frame := appendFrame(nil, cl.code, request(callGetInfo, nil))
	for _, piece := range [][]byte{frame[:1], frame[1:6], frame[6:frameHeader], frame[frameHeader : frameHeader+3], frame[frameHeader+3:]} {
		if _, err := cl.c.Write(piece); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var h [frameHeader]byte
	if _, err := io.ReadFull(cl.c, h[:]); err != nil {
		t.Fatal(err)
	}
	if code, _, _, err := parseHeader(h[:]); err != nil || code != cl.code {
		t.Fatalf("response header: code %d (want %d) %v", code, cl.code, err)
	}
}
