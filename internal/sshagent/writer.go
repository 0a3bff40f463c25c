package sshagent

import (
	"encoding/binary"
	"net"

	"github.com/keywarden/keywarden/internal/unixsock"
)

// writer sends a connection's replies, each framed in one buffer and
// written in one system call (unixsock.Writer): only a reply the socket
// has no room for waits, until writeTimeout passes.
type writer struct {
	*unixsock.Writer
	// buf is the frame: 4 bytes of length, then the reply; a handler
	// builds its reply in buf[4:] (start), and it is sent without a copy.
	// Its length is at least 4.
	buf []byte
}

func newWriter(uc *net.UnixConn) (*writer, error) {
	uw, err := unixsock.NewWriter(uc, writeTimeout)
	if err != nil {
		return nil, err
	}
	return &writer{Writer: uw, buf: make([]byte, 4, 4<<10)}, nil
}

// start returns the empty slice in which a reply may be built: a reply
// that begins there, and has not outgrown it, is sent in place.
func (w *writer) start() []byte { return w.buf[4:4] }

// send frames body and writes it.
func (w *writer) send(body []byte) error {
	var frame []byte
	if len(body) > 0 && cap(w.buf) >= 4+len(body) && &body[0] == &w.buf[4:5][0] {
		frame = w.buf[:4+len(body)]
	} else {
		w.buf = append(w.buf[:4], body...)
		frame = w.buf
	}
	binary.BigEndian.PutUint32(frame, uint32(len(body)))
	return w.Write(frame)
}
