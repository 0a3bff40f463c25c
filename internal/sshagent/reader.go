package sshagent

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/sockpoll"
	"github.com/keywarden/keywarden/internal/unixsock"
)

// reader takes a connection's messages from its socket, as few reads as
// it can: a read takes whatever the socket holds, usually a whole message,
// so a message costs one system call rather than one for its length and
// one for its body. It polls the socket briefly before it sleeps, as
// sockpoll.Poll decides (as the PKCS #11 front's reader does): on a
// virtual machine, waking a sleeping thread can cost more than a round
// trip.
//
// A read only peeks (MSG_PEEK, at the socket's peek offset): a message
// stays in the socket until it is answered, and is taken from it
// (consume) once a read finds the socket empty. Taking bytes from a Unix
// stream socket frees the sender's buffer space, and the kernel then
// wakes every thread sleeping on the sender's socket, including a client
// blocked reading its reply, as OpenSSH's programs are: it wakes for
// nothing and sleeps again, a context switch on each side. A client with
// no request in the socket has no reply to wait for: it is not asleep
// there.
type reader struct {
	// pid is the process that connected: every byte must be its.
	pid      int32
	uc       *net.UnixConn
	rc       syscall.RawConn
	buf      []byte
	r, w     int  // buf[r:w] is read and not yet taken
	deadline bool // a read deadline is set (a message is under way)
	oob      []byte
	// poll decides whether a read polls the socket before it sleeps; it
	// counts the front's connections handling a message (a read polls
	// only while none is: when another has work, polling takes a
	// processor from it and from the clients, and the runtime finds this
	// one's next message anyway).
	poll sockpoll.Poll
	// The read under way (readSome), kept here with its arguments so
	// that a read, and each poll of the socket, allocates nothing.
	n, oobn int
	err     error
	readFn  func(fd uintptr) bool // rd.readSome, made once
	// peek: the socket has a peek offset (SO_PEEK_OFF), and reads leave
	// what they take in the socket (MSG_PEEK) until the message is
	// answered (consume). held is how many bytes at the head of the
	// socket are already in the buffer: buf[w-held:w].
	peek      bool
	held      int
	consumeFn func(fd uintptr) bool // rd.consumeHeld, made once
	// empty counts the reads that found the socket empty, takes those
	// that took held bytes (for the tests).
	empty, takes int
}

func newReader(uc *net.UnixConn, pid int32, busy *atomic.Int32) (*reader, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	rd := &reader{pid: pid, poll: sockpoll.New(busy), uc: uc, rc: rc, buf: make([]byte, 16<<10), oob: make([]byte, unixsock.OOBSize)}
	rd.readFn = rd.readSome
	rd.consumeFn = rd.consumeHeld
	rc.Control(func(fd uintptr) {
		// A byte sent out of band (MSG_OOB) is read in line: a peek past
		// the start of the socket reads it so, and a read that takes
		// bytes skips it otherwise, so that consume would take one byte
		// more than the reader peeked (or wait for it).
		rd.peek = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_OOBINLINE, 1) == nil &&
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0) == nil
	})
	return rd, nil
}

// errTooLarge: the message's length is 0 or over MaxMessage.
var errTooLarge = errors.New("sshagent: message length out of bounds")

// next returns the next message's body (valid until the next call, which
// wipes it: it may hold a private key) and its length as announced. At
// the end of the connection between messages, it returns io.EOF; cut
// short inside one, io.ErrUnexpectedEOF or the read deadline's error; a
// length out of bounds, errTooLarge with that length.
func (rd *reader) next() (msg []byte, n uint32, err error) {
	if rd.r > 0 {
		clear(rd.buf[:rd.r])
		copy(rd.buf, rd.buf[rd.r:rd.w])
		rd.w -= rd.r
		rd.r = 0
		if rd.held >= maxHeld {
			if err := rd.consume(); err != nil {
				return nil, 0, err
			}
		}
	}
	for rd.w < 4 {
		if err := rd.fill(rd.w > 0); err != nil {
			return nil, 0, err
		}
	}
	n = binary.BigEndian.Uint32(rd.buf[:4])
	if n == 0 || n > MaxMessage {
		return nil, n, errTooLarge
	}
	need := 4 + int(n)
	if need > len(rd.buf) {
		grown := make([]byte, need)
		copy(grown, rd.buf[:rd.w])
		clear(rd.buf)
		rd.buf = grown
	}
	for rd.w < need {
		if err := rd.fill(true); err != nil {
			return nil, n, err
		}
	}
	if rd.deadline {
		rd.uc.SetReadDeadline(time.Time{})
		rd.deadline = false
	}
	rd.r = need
	return rd.buf[4:need], n, nil
}

// fill reads what the socket holds into the buffer's free space. Inside a
// message (started), the rest must come within bodyTimeout. The listener
// has SO_PASSCRED, so the kernel attaches the writer's credentials to
// every write and never joins in one read what two processes wrote: a
// part written by another process than the one that connected (one the
// connection was passed to, or that inherited it) fails the read with an
// otherWriter error, before anything of it is used.
func (rd *reader) fill(started bool) error {
	if started && !rd.deadline {
		rd.uc.SetReadDeadline(time.Now().Add(bodyTimeout))
		rd.deadline = true
	}
	rd.poll.Start()
	err := rd.rc.Read(rd.readFn)
	rd.poll.Done()
	n, oobn := rd.n, rd.oobn
	switch {
	case err != nil:
		return err
	case rd.err != nil:
		return rd.err
	}
	if pid := unixsock.WriterPID(rd.oob[:oobn]); n > 0 && pid != rd.pid {
		clear(rd.buf[rd.w : rd.w+n])
		return unixsock.OtherWriter{PID: pid}
	}
	switch {
	case n == 0 && started:
		return io.ErrUnexpectedEOF
	case n == 0:
		return io.EOF
	}
	rd.w += n
	if rd.peek {
		rd.held += n
	}
	return nil
}

// maxHeld bounds what the socket keeps of answered messages while
// requests keep coming: past it they are taken at once, so that a client
// that writes many requests before it reads does not wait for room.
const maxHeld = 16 << 10

// consume takes from the socket what peeks took of it.
func (rd *reader) consume() error {
	if rd.held == 0 {
		return nil
	}
	if err := rd.rc.Read(rd.consumeFn); err != nil {
		return err
	}
	return rd.err
}

// consumeHeld reads again, for good, the rd.held bytes at the head of the
// socket that peeks took, into the buffer's free space, or into a spare
// buffer when that space is smaller than they and than it (a client that
// sends all of a large message but its last byte leaves one free byte:
// taking it all a byte a read would cost a system call a byte). It clears
// what it reads (it may hold a private key). The socket never blocks.
func (rd *reader) consumeHeld(fd uintptr) bool {
	rd.err = nil
	var spare *[takeSize]byte
	defer func() {
		if spare != nil {
			takeBufs.Put(spare)
		}
	}()
	for rd.held > 0 {
		free := rd.buf[rd.w:]
		if len(free) < rd.held && len(free) < takeSize {
			if spare == nil {
				spare = takeBufs.Get().(*[takeSize]byte)
			}
			free = spare[:]
		}
		if len(free) > rd.held {
			free = free[:rd.held]
		}
		n, err := unix.Read(int(fd), free)
		rd.takes++
		clear(free[:max(n, 0)])
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			rd.err = err
			return true
		case n == 0:
			rd.err = io.ErrUnexpectedEOF
			return true
		}
		rd.held -= n
	}
	return true
}

// takeSize is the size of the spare buffers consumeHeld reads into.
const takeSize = 16 << 10

// takeBufs holds the spare buffers of consumeHeld, cleared.
var takeBufs = sync.Pool{New: func() any { return new([takeSize]byte) }}

// readSome reads once what the socket holds (rd.n bytes, rd.oobn of
// credentials, or rd.err); when it holds nothing, it reads it again while
// rd.poll says so, and then has the runtime wait until it is readable
// (it returns false).
func (rd *reader) readSome(fd uintptr) bool {
	for {
		rd.n, rd.oobn, rd.err = rd.recv(fd)
		if rd.err == unix.EINTR {
			continue
		}
		if rd.err != unix.EAGAIN {
			return true
		}
		rd.empty++
		if rd.held > 0 {
			// The socket is empty: what was answered, and what came of a
			// message under way, is taken now, before the reader waits,
			// so that a sender waiting for room can write the rest.
			if rd.consumeHeld(fd); rd.err != nil {
				return true
			}
		}
		if !rd.poll.Again() {
			return false // sleep until the socket is readable
		}
	}
}

// recv is one recvmsg(2) into the buffer's free space, with the
// credentials into oob, that never waits. It is the standard library's
// call, which allocates nothing (the sender's address only if it has
// one, which a client's unbound socket has not), not unix.Recvmsg, whose
// buffer for that address escapes: an allocation on every read, polls
// included.
func (rd *reader) recv(fd uintptr) (n, oobn int, err error) {
	flags := unix.MSG_DONTWAIT | unix.MSG_CMSG_CLOEXEC
	if rd.peek {
		flags |= unix.MSG_PEEK
	}
	n, oobn, _, _, err = syscall.Recvmsg(int(fd), rd.buf[rd.w:], rd.oob, flags)
	if errno, ok := err.(unix.Errno); ok {
		return 0, 0, errno
	}
	return n, oobn, err
}

// close takes from the socket what the reader has answered, so that the
// client reads the end of the connection after its last reply rather
// than a reset (what a Unix socket closed with unread bytes gives), and
// clears everything the reader holds.
func (rd *reader) close() {
	clear(rd.buf)
	rd.r, rd.w = 0, 0
	rd.consume()
}
