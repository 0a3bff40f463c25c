package p11front

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/sockpoll"
	"github.com/keywarden/keywarden/internal/unixsock"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/wire"
)

// A frame's rest must arrive within bodyTimeout of its header, and a
// reply be taken within writeTimeout. A connection may stay idle between
// frames as long as it likes (a program keeps its module loaded).
const (
	bodyTimeout  = 10 * time.Second
	writeTimeout = 10 * time.Second
)

// conn is one connection of p11-kit's client: one C_Initialize of one
// process, one core session.
type conn struct {
	f  *Front
	c  *net.UnixConn
	ss *server.Session
	// id is the connecting process as the kernel saw it at accept; every
	// request of the connection is made with it, and every write on the
	// connection must come from its pid.
	id server.Identity

	// Touched only by the connection's goroutine.
	rd          *credReader
	nextReq     uint64
	initialized bool
	loggedIn    bool
	sessions    map[uint64]*session
	nextSession uint64
	objects     map[uint64]*object
	byKey       map[objectKey]uint64
	nextObject  uint64
	keys        map[string]*keyState // by key id
	// Calls deferred to be combined (combine.go): collecting, the frame
	// being handled may be; pend, the calls whose operations wait for
	// the core; held, the replies waiting for them, in order.
	collecting bool
	pend       []*deferred
	held       []heldReply
	// closing: a refusal could not be recorded; the connection closes
	// once its reply is sent (the front fails closed).
	closing bool
}

func newConn(f *Front, uc *net.UnixConn, ss *server.Session, id server.Identity) *conn {
	return &conn{f: f, c: uc, ss: ss, id: id, sessions: map[uint64]*session{}, objects: map[uint64]*object{},
		byKey: map[objectKey]uint64{}, keys: map[string]*keyState{}, nextSession: 1, nextObject: 1}
}

func (c *conn) serve() {
	defer func() {
		c.ss.Close()
		c.c.Close()
	}()
	rd, err := newCredReader(c.c, c.id.PID, &c.f.busy)
	if err != nil {
		return
	}
	c.rd = rd
	defer rd.done()
	wr, err := unixsock.NewWriter(c.c, writeTimeout)
	if err != nil {
		return
	}
	// The version byte: the front speaks version 0, which every p11-kit
	// client accepts (later ones fall back to it).
	var v [1]byte
	if _, err := io.ReadFull(c.rd, v[:]); err != nil {
		c.closedBy(err)
		return
	}
	defer func() {
		clear(c.rd.buf)
		c.dropHeld()
	}()
	if err := wr.Write([]byte{0}); err != nil {
		return
	}
	var hdr [frameHeader]byte
	var out []byte
	for {
		if _, err := io.ReadFull(c.rd, hdr[:1]); err != nil {
			c.closedBy(err)
			return
		}
		// The rest of a frame is mostly read with its first byte: the
		// deadline is set (a timer of the runtime's) only when some of it
		// has yet to come.
		waiting := !c.rd.restBuffered(hdr[0])
		if waiting {
			c.c.SetReadDeadline(time.Now().Add(bodyTimeout))
		}
		if _, err := io.ReadFull(c.rd, hdr[1:]); err != nil {
			c.closedBy(err)
			return
		}
		code, olen, blen, err := parseHeader(hdr[:])
		var body []byte
		var dc *deferred
		if err != nil {
			// Longer than the front takes: read through and answered
			// with an error, the connection going on (oversized).
			c.exec()
			if body, err = c.oversized(olen, blen); err != nil {
				c.closedBy(err)
				return
			}
		} else {
			buf := make([]byte, olen+blen)
			if _, err := io.ReadFull(c.rd, buf); err != nil {
				c.closedBy(err)
				return
			}
			if len(c.pend) > 0 && !c.independent(buf[olen:]) {
				c.exec()
			}
			c.collecting = len(c.pend) > 0 || c.rd.frameBuffered()
			body, dc = c.handle(buf[olen:])
			c.collecting = false
			if dc != nil {
				dc.buf = buf // cleared once its reply is written
			} else {
				clear(buf) // it may have held data to encrypt or a key to import
			}
		}
		if waiting {
			c.c.SetReadDeadline(time.Time{})
		}
		if dc != nil || len(c.held) > 0 {
			c.held = append(c.held, heldReply{code: code, body: body, d: dc})
		} else {
			out = appendFrame(out, code, body)
		}
		if len(c.pend) == 0 && len(c.held) > 0 {
			out = c.appendHeld(out) // the deferred calls ran before this frame
		}
		if !c.closing && len(out) < maxHeldReplies && len(c.held) < maxCombined && c.rd.frameBuffered() {
			// The client sent the next request with this one (the
			// module sends a deferred C_*Init with the call after it,
			// and threads that call at once send theirs together):
			// the replies go in one write.
			continue
		}
		out = c.appendHeld(out)
		err = wr.Write(out)
		clear(out)
		out = out[:0]
		if err != nil || c.closing {
			return
		}
	}
}

// maxHeldReplies bounds the replies held back to be written with the
// next one.
const maxHeldReplies = 64 << 10

// closedBy logs why a read ended the connection.
func (c *conn) closedBy(err error) {
	var ow unixsock.OtherWriter
	switch {
	case errors.As(err, &ow):
		c.f.log.Warn("connection closed: another process than the one that connected wrote on it",
			"uid", c.id.UID, "pid", c.id.PID, "writer_pid", ow.PID)
		c.refuse("request", nil, wire.Status_STATUS_PERMISSION_DENIED,
			fmt.Sprintf("another process (pid %d) wrote on the connection: it is closed", ow.PID))
	case errors.Is(err, io.EOF):
	case errors.Is(err, os.ErrDeadlineExceeded):
		c.f.log.Info("connection closed: message cut short", "uid", c.id.UID, "pid", c.id.PID)
	default:
		c.f.log.Info("connection closed", "uid", c.id.UID, "pid", c.id.PID, "err", err)
	}
}

// handle answers one request body, or defers it (combine.go): then the
// call's reply is the deferred call's, once it has run.
func (c *conn) handle(body []byte) ([]byte, *deferred) {
	id, d, err := parseRequest(body)
	if err != nil {
		c.refuse("request", nil, wire.Status_STATUS_INVALID_ARGUMENT, "malformed PKCS #11 request")
		return errorResponse(ckrDeviceError), nil
	}
	h := handlers[id]
	if h == nil {
		return errorResponse(ckrFunctionNotSupported), nil
	}
	if id != callInitialize && !c.initialized {
		return errorResponse(ckrCryptokiNotInitialized), nil
	}
	e := newResponse(id)
	rv := h(c, d, e)
	switch rv {
	case ckrOK:
		return e.b, nil
	case rvDeferred:
		return nil, c.pend[len(c.pend)-1]
	case rvParse:
		c.refuse("request", nil, wire.Status_STATUS_INVALID_ARGUMENT, "malformed "+calls[id].name+" request")
		return errorResponse(ckrDeviceError), nil
	}
	return errorResponse(rv), nil
}

// rvParse is what a handler returns for a request that does not decode.
const rvParse = ^uint64(0)

// refuse records a refusal the front decides itself through the core.
// If it cannot be recorded, the connection closes once its reply is sent.
func (c *conn) refuse(op string, keyID []byte, st wire.Status, reason string) {
	c.exec() // recorded after the calls of the frames before
	c.nextReq++
	err := c.ss.Refuse(c.f.ctx, c.id, server.Refusal{Op: op, Key: keyID, Request: c.nextReq, Status: st, Reason: reason})
	if err != nil {
		c.f.log.Error("a refusal could not be recorded: the connection closes", "uid", c.id.UID, "pid", c.id.PID, "op", op, "err", err)
		c.closing = true
	}
}

// credReader reads the connection, checking that every part read was
// written by the process that connected: the listener has SO_PASSCRED,
// so the kernel attaches the writer's credentials to every write and
// never joins in one read what two processes wrote.
//
// It polls the socket briefly before it sleeps, as sockpoll.Poll decides
// (as the ssh-agent front's reader does): a client that sends its next
// request within microseconds of its reply (one call after another)
// finds the connection's goroutine still running, where waking a
// sleeping thread of the daemon, on a virtual machine, can cost more
// than the round trip.
type credReader struct {
	uc  *net.UnixConn
	rc  syscall.RawConn
	pid int32
	oob []byte
	// buf[r:w] is read from the socket and not yet returned.
	buf  []byte
	r, w int
	// busy counts the front's connections handling a request; counted:
	// this connection is counted in it (from the read of a request to
	// the next wait for the socket).
	busy    *atomic.Int32
	counted bool
	// poll decides whether a refill polls the socket before it sleeps.
	poll sockpoll.Poll
	// The refill under way (readSome), kept here so that neither a read
	// nor a poll of the socket allocates.
	n, oobn int
	err     error
	readFn  func(fd uintptr) bool // r.readSome, made once
	// empty counts the reads that found the socket empty (for the tests).
	empty atomic.Int32
}

func newCredReader(uc *net.UnixConn, pid int32, busy *atomic.Int32) (*credReader, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &credReader{uc: uc, rc: rc, pid: pid, busy: busy, poll: sockpoll.New(busy), buf: make([]byte, 16<<10), oob: make([]byte, unixsock.OOBSize)}
	r.readFn = r.readSome
	return r, nil
}

// done ends the reader's part in busy.
func (r *credReader) done() {
	if r.counted {
		r.busy.Add(-1)
		r.counted = false
	}
}

// frameBuffered reports whether a whole frame has been read and not yet
// returned: handling it needs no wait for the client.
func (r *credReader) frameBuffered() bool {
	b := r.buf[r.r:r.w]
	if len(b) < frameHeader {
		return false
	}
	_, olen, blen, err := parseHeader(b[:frameHeader])
	return err == nil && len(b)-frameHeader >= int(olen)+int(blen)
}

// restBuffered reports whether the rest of a frame whose first byte was
// just returned has been read too: its header's other bytes and all it
// announces (which a frame longer than the front takes never is: it is
// read through, under the deadline, by oversized).
func (r *credReader) restBuffered(first byte) bool {
	b := r.buf[r.r:r.w]
	if len(b) < frameHeader-1 {
		return false
	}
	var h [frameHeader]byte
	h[0] = first
	copy(h[1:], b)
	_, olen, blen, err := parseHeader(h[:])
	return err == nil && len(b)-(frameHeader-1) >= int(olen)+int(blen)
}

// Read returns what the buffer holds, refilling it with one recvmsg when
// empty: a request the client wrote in three writes (header, options,
// body) is then mostly read in one call.
func (r *credReader) Read(p []byte) (int, error) {
	if r.r == r.w {
		clear(r.buf[:r.w])
		r.r, r.w = 0, 0
		n, oobn, err := r.refill()
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return 0, io.EOF
		}
		if pid := unixsock.WriterPID(r.oob[:oobn]); pid != r.pid {
			clear(r.buf[:n])
			return 0, unixsock.OtherWriter{PID: pid}
		}
		r.w = n
	}
	n := copy(p, r.buf[r.r:r.w])
	r.r += n
	return n, nil
}

// refill is one recvmsg(2) into the empty buffer, with the credentials
// into oob, once the socket holds something: polled first if r.poll says
// so, then waited for by the runtime (under the read deadline, if one is
// set).
func (r *credReader) refill() (n, oobn int, err error) {
	r.done()
	r.poll.Start()
	err = r.rc.Read(r.readFn)
	r.poll.Done()
	n, oobn = r.n, r.oobn
	if err == nil && r.err != nil {
		err = &net.OpError{Op: "read", Net: "unix", Err: os.NewSyscallError("recvmsg", r.err)}
	}
	if err == nil && n > 0 && r.busy != nil {
		r.busy.Add(1)
		r.counted = true
	}
	return n, oobn, err
}

// readSome reads once what the socket holds (r.n bytes, r.oobn of
// credentials, or r.err); when it holds nothing, it reads it again while
// r.poll says so, and then has the runtime wait until it is readable (it
// returns false).
func (r *credReader) readSome(fd uintptr) bool {
	for {
		var err error
		r.n, r.oobn, _, _, err = unix.Recvmsg(int(fd), r.buf, r.oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		r.err = nil
		if errno, ok := err.(unix.Errno); ok {
			r.err = errno
		} else if err != nil {
			r.err = err
		}
		if r.err == unix.EINTR {
			continue
		}
		if r.err != unix.EAGAIN {
			return true
		}
		r.empty.Add(1)
		if !r.poll.Again() {
			return false // sleep until the socket is readable
		}
	}
}
