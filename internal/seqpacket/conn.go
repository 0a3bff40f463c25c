package seqpacket

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Socket options and control messages that golang.org/x/sys does not name
// yet (asm-generic values, Linux 6.5+).
const (
	soPassPidfd = 76 // SO_PASSPIDFD
	soPeerPidfd = 77 // SO_PEERPIDFD
	scmPidfd    = 0x4
)

// ErrClosed is returned by operations on a closed Conn or Listener.
var ErrClosed = errors.New("seqpacket: use of closed connection")

// SendBufferBytes is the send buffer size requested on every socket. A
// SOCK_SEQPACKET message must fit in the sender's buffer whole; Linux
// doubles the value asked for, up to twice net.core.wmem_max.
const SendBufferBytes = 512 << 10

// Conn is one connected SOCK_SEQPACKET socket. Send and Recv may be called
// concurrently with each other and with Close; a message is always sent
// and received whole.
type Conn struct {
	fd int
	// spin and lastWait drive adaptive polling (see SetSpin); they are used
	// only by the goroutine that receives.
	spin     time.Duration
	lastWait time.Duration
	// state holds the number of system calls in progress on fd in its low
	// bits and closedBit once Close was called. fd is closed by whoever
	// leaves state at exactly closedBit, so no call ever sees a reused fd.
	state atomic.Int64
}

const closedBit = 1 << 62

func newConn(fd int) *Conn { return &Conn{fd: fd} }

// acquire registers a system call on fd.
func (c *Conn) acquire() bool {
	for {
		s := c.state.Load()
		if s&closedBit != 0 {
			return false
		}
		if c.state.CompareAndSwap(s, s+1) {
			return true
		}
	}
}

func (c *Conn) release() {
	if c.state.Add(-1) == closedBit {
		unix.Close(c.fd)
	}
}

// Close shuts the socket down, which wakes any goroutine blocked on it,
// and closes the descriptor once the last call on it has returned.
func (c *Conn) Close() error {
	for {
		s := c.state.Load()
		if s&closedBit != 0 {
			return nil
		}
		if c.state.CompareAndSwap(s, s|closedBit) {
			unix.Shutdown(c.fd, unix.SHUT_RDWR)
			if s == 0 {
				unix.Close(c.fd)
			}
			return nil
		}
	}
}

// closeKeepSocket is Close without shutdown(2): the descriptor is closed
// once no call uses it, and a socket that other processes share (a
// listening socket passed by systemd) stays usable for them.
func (c *Conn) closeKeepSocket() {
	for {
		s := c.state.Load()
		if s&closedBit != 0 {
			return
		}
		if c.state.CompareAndSwap(s, s|closedBit) {
			if s == 0 {
				unix.Close(c.fd)
			}
			return
		}
	}
}

// Shutdown stops further sends and receives and wakes blocked callers, but
// keeps the descriptor until Close.
func (c *Conn) Shutdown() {
	if c.acquire() {
		unix.Shutdown(c.fd, unix.SHUT_RDWR)
		c.release()
	}
}

// ShutdownRead stops further receives and wakes a blocked receiver; sends
// still work, so replies in progress can go out.
func (c *Conn) ShutdownRead() {
	if c.acquire() {
		unix.Shutdown(c.fd, unix.SHUT_RD)
		c.release()
	}
}

// ShutdownWrite tells the peer that no more messages follow (its
// receive returns ErrPeerClosed once it has read those sent); receives
// still work, so replies can still come in.
func (c *Conn) ShutdownWrite() {
	if c.acquire() {
		unix.Shutdown(c.fd, unix.SHUT_WR)
		c.release()
	}
}

// Send sends b as one message. It blocks while the socket's send buffer is
// full.
func (c *Conn) Send(b []byte) error {
	if !c.acquire() {
		return ErrClosed
	}
	defer c.release()
	for {
		_, err := unix.SendmsgN(c.fd, b, nil, nil, unix.MSG_NOSIGNAL)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return opError("send", err)
		}
		return nil
	}
}

// SendFDs sends b as one message with descriptors attached (SCM_RIGHTS):
// the peer receives duplicates of them, and the caller keeps its own.
func (c *Conn) SendFDs(b []byte, fds []int) error {
	if !c.acquire() {
		return ErrClosed
	}
	defer c.release()
	oob := unix.UnixRights(fds...)
	for {
		_, err := unix.SendmsgN(c.fd, b, oob, nil, unix.MSG_NOSIGNAL)
		if err == unix.EINTR {
			continue
		}
		return opError("send", err)
	}
}

// Recv receives one message into buf. n is the message's real length: if
// it exceeds len(buf) the message was truncated and its tail is lost.
// When the peer has closed the connection Recv returns ErrPeerClosed; when
// the timeout set with SetRecvTimeout elapses, ErrTimeout.
func (c *Conn) Recv(buf []byte) (n int, err error) {
	if !c.acquire() {
		return 0, ErrClosed
	}
	defer c.release()
	for {
		n, _, flags, err := c.recvmsg(buf, nil)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, ErrTimeout
		case err != nil:
			return 0, opError("recv", err)
		case n == 0 && flags&unix.MSG_TRUNC == 0:
			return 0, ErrPeerClosed
		}
		return n, nil
	}
}

// SetSpin lets receives poll the socket for up to d before they block,
// when the previous message arrived within 2d of being waited for.
//
// Sleeping in recvmsg costs a wake-up when the message arrives, and on a
// virtual machine waking an idle virtual CPU can take longer than a whole
// round trip. A peer in a request-reply loop answers within microseconds,
// so polling briefly catches its message without any sleep; a peer that
// is slow to answer (or idle) does not make us poll, so no CPU is burnt
// waiting for it. Set it before the first receive; 0 never polls.
func (c *Conn) SetSpin(d time.Duration) { c.spin = d }

// recvmsg receives one message, polling first when SetSpin says so.
func (c *Conn) recvmsg(buf, oob []byte) (n, oobn, flags int, err error) {
	const fl = unix.MSG_CMSG_CLOEXEC | unix.MSG_TRUNC
	if c.spin == 0 {
		n, oobn, flags, _, err = unix.Recvmsg(c.fd, buf, oob, fl)
		return n, oobn, flags, err
	}
	start := time.Now()
	// A wait that was a little longer than the spin (it ended in a sleep and
	// a wake-up, which lengthens it) still says the peer is answering
	// quickly; only a clearly slow peer stops the polling.
	if c.lastWait < 2*c.spin {
		for {
			n, oobn, flags, _, err = unix.Recvmsg(c.fd, buf, oob, fl|unix.MSG_DONTWAIT)
			if err != unix.EAGAIN {
				c.lastWait = time.Since(start)
				return n, oobn, flags, err
			}
			if time.Since(start) > c.spin {
				break
			}
			runtime.Gosched() // polling must not starve other goroutines
		}
	}
	n, oobn, flags, _, err = unix.Recvmsg(c.fd, buf, oob, fl)
	c.lastWait = time.Since(start)
	return n, oobn, flags, err
}

// Cred is the identity the kernel attached to one received message.
type Cred struct {
	PID int32
	UID uint32
	GID uint32
	// Pidfd refers to the sending process (SCM_PIDFD, Linux 6.5+), or is -1.
	// The receiver owns it and must close it.
	Pidfd int
}

// Message is one message received with RecvMsg.
type Message struct {
	// N is the message's length; larger than the buffer means truncated.
	N int
	// Cred is valid when HasCred is set: the socket has SO_PASSCRED and the
	// kernel attached SCM_CREDENTIALS.
	Cred    Cred
	HasCred bool
	// FD is the first descriptor the peer passed with the message
	// (SCM_RIGHTS), or -1; the receiver owns it and must close it. Any
	// others were closed.
	FD int
}

// ErrPeerClosed is returned by Recv when the peer has closed the
// connection (or Shutdown was called).
var ErrPeerClosed = errors.New("seqpacket: connection closed by peer")

// ErrTimeout is returned by Recv when the receive timeout elapsed.
var ErrTimeout = errors.New("seqpacket: receive timeout")

// OOBSize is the control buffer size RecvMsg needs: credentials, a pidfd,
// and room for a few unwanted descriptors, which are closed.
const OOBSize = 256

// RecvMsg receives one message with its credentials. oob must have at
// least OOBSize bytes. Of the descriptors a peer passes with SCM_RIGHTS
// the first is kept in Message.FD and the others are closed at once.
func (c *Conn) RecvMsg(buf, oob []byte) (Message, error) {
	if !c.acquire() {
		return Message{}, ErrClosed
	}
	defer c.release()
	for {
		n, oobn, flags, err := c.recvmsg(buf, oob)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return Message{}, ErrTimeout
		case err != nil:
			return Message{}, opError("recv", err)
		}
		m := Message{N: n, Cred: Cred{Pidfd: -1}, FD: -1}
		parseControl(oob[:oobn], &m)
		if n == 0 && flags&unix.MSG_TRUNC == 0 && oobn == 0 {
			return Message{}, ErrPeerClosed
		}
		return m, nil
	}
}

// ErrWouldBlock is returned by TryRecvMsg when no message is waiting.
var ErrWouldBlock = errors.New("seqpacket: no message waiting")

// TryRecvMsg is RecvMsg that does not wait: it returns ErrWouldBlock at
// once when no message is queued. A server that answers several queued
// requests together uses it to see whether another is there.
func (c *Conn) TryRecvMsg(buf, oob []byte) (Message, error) {
	if !c.acquire() {
		return Message{}, ErrClosed
	}
	defer c.release()
	for {
		n, oobn, flags, _, err := unix.Recvmsg(c.fd, buf, oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_TRUNC|unix.MSG_DONTWAIT)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return Message{}, ErrWouldBlock
		case err != nil:
			return Message{}, opError("recv", err)
		}
		m := Message{N: n, Cred: Cred{Pidfd: -1}, FD: -1}
		parseControl(oob[:oobn], &m)
		if n == 0 && flags&unix.MSG_TRUNC == 0 && oobn == 0 {
			return Message{}, ErrPeerClosed
		}
		return m, nil
	}
}

// RecvFDs receives one message into buf, like Recv, and returns the
// descriptors the peer passed with it (SCM_RIGHTS), which the caller owns.
// oob must have at least OOBSize bytes. Passed descriptors that did not
// fit in oob were closed by the kernel. Credentials and pidfds are
// dropped: this is the client's receive, for the rare reply that carries
// a descriptor; Recv stays the allocation-free path for all others.
func (c *Conn) RecvFDs(buf, oob []byte) (n int, fds []int, err error) {
	if !c.acquire() {
		return 0, nil, ErrClosed
	}
	defer c.release()
	for {
		n, oobn, flags, err := c.recvmsg(buf, oob)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, nil, ErrTimeout
		case err != nil:
			return 0, nil, opError("recv", err)
		}
		fds = rightsOf(oob[:oobn])
		if n == 0 && flags&unix.MSG_TRUNC == 0 && oobn == 0 {
			return 0, nil, ErrPeerClosed
		}
		return n, fds, nil
	}
}

// rightsOf returns the descriptors of the SCM_RIGHTS messages in b and
// closes any pidfd that came with them.
func rightsOf(b []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(b)
	if err != nil {
		return nil
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET {
			continue
		}
		switch m.Header.Type {
		case unix.SCM_RIGHTS:
			if r, err := unix.ParseUnixRights(&m); err == nil {
				fds = append(fds, r...)
			}
		case scmPidfd:
			if len(m.Data) >= 4 {
				unix.Close(int(int32(binary.NativeEndian.Uint32(m.Data[0:4]))))
			}
		}
	}
	return fds
}

// parseControl reads SCM_CREDENTIALS, SCM_PIDFD and the first passed
// descriptor from b without allocating, and closes any other descriptors
// it finds.
func parseControl(b []byte, m *Message) {
	const hdr = unix.SizeofCmsghdr
	for len(b) >= hdr {
		l := int(binary.NativeEndian.Uint64(b[0:8]))
		level := int32(binary.NativeEndian.Uint32(b[8:12]))
		typ := int32(binary.NativeEndian.Uint32(b[12:16]))
		if l < hdr || l > len(b) {
			return
		}
		data := b[hdr:l]
		if level == unix.SOL_SOCKET {
			switch typ {
			case unix.SCM_CREDENTIALS:
				if len(data) >= 12 {
					m.Cred.PID = int32(binary.NativeEndian.Uint32(data[0:4]))
					m.Cred.UID = binary.NativeEndian.Uint32(data[4:8])
					m.Cred.GID = binary.NativeEndian.Uint32(data[8:12])
					m.HasCred = true
				}
			case scmPidfd:
				if len(data) >= 4 {
					fd := int(int32(binary.NativeEndian.Uint32(data[0:4])))
					if m.Cred.Pidfd >= 0 {
						unix.Close(m.Cred.Pidfd)
					}
					m.Cred.Pidfd = fd
				}
			case unix.SCM_RIGHTS:
				for i := 0; i+4 <= len(data); i += 4 {
					fd := int(int32(binary.NativeEndian.Uint32(data[i : i+4])))
					if m.FD < 0 {
						m.FD = fd
					} else {
						unix.Close(fd)
					}
				}
			}
		}
		next := (l + 7) &^ 7 // CMSG_ALIGN on 64-bit
		if next > len(b) {
			return
		}
		b = b[next:]
	}
}

// EnableCredentials sets SO_PASSCRED, so every message received carries
// the sender's pid, uid and gid as the kernel sees them when it is sent,
// and, where the kernel offers it, SO_PASSPIDFD, so it also carries a
// pidfd for the sender. It reports whether pidfds are on.
func (c *Conn) EnableCredentials() (pidfd bool, err error) {
	if !c.acquire() {
		return false, ErrClosed
	}
	defer c.release()
	if err := unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		return false, opError("setsockopt SO_PASSCRED", err)
	}
	return unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, soPassPidfd, 1) == nil, nil
}

// PeerCred returns the identity of the process that connected (SO_PEERCRED)
// and, where the kernel offers it, a pidfd for it (SO_PEERPIDFD), else -1.
// The caller owns the pidfd.
func (c *Conn) PeerCred() (Cred, error) {
	if !c.acquire() {
		return Cred{}, ErrClosed
	}
	defer c.release()
	uc, err := unix.GetsockoptUcred(c.fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return Cred{}, opError("getsockopt SO_PEERCRED", err)
	}
	cr := Cred{PID: uc.Pid, UID: uc.Uid, GID: uc.Gid, Pidfd: -1}
	if fd, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, soPeerPidfd); err == nil {
		cr.Pidfd = fd
	}
	return cr, nil
}

// PeerUcred returns the identity the kernel recorded for the peer when the
// connection was made (SO_PEERCRED): for a client, that of the process
// that called listen(2) on the daemon's socket. Its Pidfd is -1.
func (c *Conn) PeerUcred() (Cred, error) {
	if !c.acquire() {
		return Cred{}, ErrClosed
	}
	defer c.release()
	uc, err := unix.GetsockoptUcred(c.fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return Cred{}, opError("getsockopt SO_PEERCRED", err)
	}
	return Cred{PID: uc.Pid, UID: uc.Uid, GID: uc.Gid, Pidfd: -1}, nil
}

// SetRecvTimeout bounds how long Recv blocks (SO_RCVTIMEO); 0 means
// forever.
func (c *Conn) SetRecvTimeout(d time.Duration) error {
	if !c.acquire() {
		return ErrClosed
	}
	defer c.release()
	tv := unix.NsecToTimeval(d.Nanoseconds())
	return opError("setsockopt SO_RCVTIMEO", unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv))
}

func setBuffers(fd int) {
	// Best effort: the kernel caps the value at net.core.wmem_max/rmem_max.
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, SendBufferBytes)
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, SendBufferBytes)
}

// MaxMessage reports the largest message this socket can send, which the
// kernel bounds by the send buffer.
func (c *Conn) MaxMessage() int {
	if !c.acquire() {
		return 0
	}
	defer c.release()
	n, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
	if err != nil {
		return 0
	}
	return n - 32 // the kernel keeps 32 bytes of the buffer for itself
}

// Dial connects to the SOCK_SEQPACKET socket at path. It retries while the
// daemon's accept queue is full, until ctx is done.
func Dial(ctx context.Context, path string) (*Conn, error) {
	if len(path) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("socket path too long (%d bytes, at most %d)", len(path), len(unix.RawSockaddrUnix{}.Path)-1)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, opError("socket", err)
	}
	setBuffers(fd)
	delay := 100 * time.Microsecond
	for {
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
		if err != unix.EAGAIN && err != unix.EINTR {
			break
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			unix.Close(fd)
			return nil, ctx.Err()
		case <-t.C:
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
	if err != nil {
		unix.Close(fd)
		return nil, &DialError{Path: path, Err: err}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, opError("fcntl", err)
	}
	return newConn(fd), nil
}

// DialError reports a failed connect.
type DialError struct {
	Path string
	Err  error
}

func (e *DialError) Error() string {
	switch e.Err {
	case unix.ENOENT:
		return fmt.Sprintf("no keywarden daemon at %s (socket does not exist)", e.Path)
	case unix.ECONNREFUSED:
		return fmt.Sprintf("no keywarden daemon at %s (connection refused)", e.Path)
	case unix.EACCES:
		return fmt.Sprintf("permission denied connecting to %s", e.Path)
	case unix.EPROTOTYPE:
		return fmt.Sprintf("%s is not a keywarden socket (wrong socket type)", e.Path)
	}
	return fmt.Sprintf("connect %s: %v", e.Path, e.Err)
}

func (e *DialError) Unwrap() error { return e.Err }

func opError(op string, err error) error {
	if err == nil {
		return nil
	}
	if errno, ok := err.(syscall.Errno); ok && (errno == unix.EPIPE || errno == unix.ECONNRESET) {
		return ErrPeerClosed
	}
	return fmt.Errorf("seqpacket: %s: %w", op, err)
}

// Pair returns two connected sockets, as socketpair(2) makes them: for
// tests and for serving a connection inherited from another process.
func Pair() (*Conn, *Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, opError("socketpair", err)
	}
	setBuffers(fds[0])
	setBuffers(fds[1])
	return newConn(fds[0]), newConn(fds[1]), nil
}

// ProbeMaxMessage returns the largest message this process can send on a
// socket with the buffers this package requests (the kernel caps them at
// twice net.core.wmem_max), or 0 if it cannot tell.
func ProbeMaxMessage() int {
	a, b, err := Pair()
	if err != nil {
		return 0
	}
	defer a.Close()
	defer b.Close()
	return a.MaxMessage()
}
