package sshagent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/server"
)

// A message's body must arrive within bodyTimeout of its length, and a
// reply be taken by the client within writeTimeout: a client that stalls
// mid-message, or never reads, loses its connection and holds nothing
// any other client waits for. A connection may stay idle between messages
// as long as it likes (ssh keeps its agent connection for a session).
const (
	bodyTimeout  = 10 * time.Second
	writeTimeout = 10 * time.Second
)

// conn is one agent connection: one core session, opened with the
// identity of the process that connected.
type conn struct {
	a  *Agent
	c  *net.UnixConn
	ss *server.Session
	// id is the connecting process as the kernel saw it at accept; its
	// pidfd belongs to ss and is open until ss is closed. Every request of
	// the connection is made with it (with SSHDest set from binds).
	id server.Identity
	u  *user

	// Touched only by the connection's goroutine.
	binds   []bind               // session-bind@openssh.com, in order
	opened  map[string]openedKey // persistent key id → its handle on ss
	listed  map[string]listed    // public key blob → key, from the last listing
	nextReq uint64
}

func (c *conn) serve() {
	defer func() {
		c.ss.Close()
		c.c.Close()
	}()
	var hdr [4]byte
	for {
		c.c.SetReadDeadline(time.Time{})
		if err := c.readFull(hdr[:1]); err != nil {
			c.closedBy(err)
			return
		}
		c.c.SetReadDeadline(time.Now().Add(bodyTimeout))
		if err := c.readFull(hdr[1:]); err != nil {
			if !c.closedBy(err) {
				c.a.log.Info("connection closed: message header cut short", "uid", c.id.UID, "pid", c.id.PID)
			}
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n == 0 || n > MaxMessage {
			c.a.log.Warn("connection closed: message length out of bounds", "uid", c.id.UID, "pid", c.id.PID, "length", n, "max", MaxMessage)
			return
		}
		msg := make([]byte, n)
		if err := c.readFull(msg); err != nil {
			clear(msg)
			if !c.closedBy(err) {
				c.a.log.Info("connection closed: message cut short", "uid", c.id.UID, "pid", c.id.PID, "length", n, "err", errText(err))
			}
			return
		}
		reply := c.handle(msg)
		clear(msg) // it may have held a private key
		c.c.SetWriteDeadline(time.Now().Add(writeTimeout))
		_, err := c.c.Write(frame(reply))
		if err != nil {
			c.a.log.Info("connection closed: the client does not take its reply", "uid", c.id.UID, "pid", c.id.PID, "err", errText(err))
			return
		}
	}
}

// readFull reads len(b) bytes of the connection, every one written by the
// process that connected. The listener has SO_PASSCRED, so the kernel
// attaches the writer's credentials to every write and never joins in one
// read what two processes wrote: a part written by another process (one
// the connection was passed to, or that inherited it) fails the read
// with an otherWriter error, before anything of it is used.
func (c *conn) readFull(b []byte) error {
	oob := make([]byte, oobSize)
	for n := 0; n < len(b); {
		m, oobn, _, _, err := c.c.ReadMsgUnix(b[n:], oob)
		pid := writerPID(oob[:oobn])
		if m > 0 && pid != c.id.PID {
			return otherWriter{pid: pid}
		}
		n += m
		switch {
		case err != nil:
			return err
		case m == 0:
			return io.EOF
		}
	}
	return nil
}

// oobSize holds the writer's credentials, and descriptors a client passes
// (which are closed unused).
var oobSize = unix.CmsgSpace(unix.SizeofUcred) + unix.CmsgSpace(16*4)

// writerPID returns the pid in the credentials of oob (0: none), and
// closes any descriptor passed with them.
func writerPID(oob []byte) int32 {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	var pid int32
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Level != unix.SOL_SOCKET {
			continue
		}
		switch m.Header.Type {
		case unix.SCM_CREDENTIALS:
			if cr, err := unix.ParseUnixCredentials(m); err == nil {
				pid = cr.Pid
			}
		case unix.SCM_RIGHTS:
			fds, _ := unix.ParseUnixRights(m)
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}
	return pid
}

// otherWriter: a message was written by another process than the one
// that connected (pid 0: one the daemon cannot see).
type otherWriter struct{ pid int32 }

func (e otherWriter) Error() string {
	return fmt.Sprintf("written by pid %d, not by the process that connected", e.pid)
}

// closedBy logs why the connection closes when err is an otherWriter,
// and reports whether it was.
func (c *conn) closedBy(err error) bool {
	var ow otherWriter
	if !errors.As(err, &ow) {
		return false
	}
	c.a.log.Warn("connection closed: another process than the one that connected wrote on it",
		"uid", c.id.UID, "pid", c.id.PID, "writer_pid", ow.pid)
	return true
}

func errText(err error) string {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return "timed out"
	}
	return err.Error()
}

// handle answers one message.
func (c *conn) handle(msg []byte) []byte {
	typ, body := msg[0], msg[1:]
	if c.u.isLocked() && typ != msgUnlock {
		// As ssh-agent: a locked agent lists nothing and refuses the rest.
		if typ == msgRequestIdentities {
			return []byte{msgIdentitiesAnswer, 0, 0, 0, 0}
		}
		c.a.log.Info("request refused: the agent is locked", "uid", c.id.UID, "pid", c.id.PID, "type", typ)
		return replyFailure
	}
	switch typ {
	case msgRequestIdentities:
		return c.identities()
	case msgSignRequest:
		return c.sign(body)
	case msgAddIdentity, msgAddIDConstrained:
		return c.add(body, typ == msgAddIDConstrained)
	case msgRemoveIdentity:
		return c.remove(body)
	case msgRemoveAllIdentities, msgRemoveAllV1:
		return c.removeAll()
	case msgLock, msgUnlock:
		return c.lock(body, typ == msgLock)
	case msgExtension:
		return c.extension(body)
	}
	c.a.log.Info("unknown message refused", "uid", c.id.UID, "pid", c.id.PID, "type", typ)
	return replyFailure
}

// reqID numbers the connection's requests to the core.
func (c *conn) reqID() uint64 {
	c.nextReq++
	return c.nextReq
}

// ident is the identity a request of the connection is made with.
func (c *conn) ident() server.Identity {
	id := c.id
	if n := len(c.binds); n > 0 {
		id.SSHDest = c.binds[n-1].fp
	}
	return id
}
