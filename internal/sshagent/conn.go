package sshagent

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/unixsock"
	"github.com/keywarden/keywarden/internal/wire"
)

// A message's body must arrive within bodyTimeout of its length, and a
// reply be taken by the client within writeTimeout: a client that stalls
// mid-message, or never reads, loses its connection and holds nothing
// any other client waits for. A connection may stay idle between messages
// as long as it likes (ssh keeps its agent connection for a session).
const bodyTimeout = 10 * time.Second

// writeTimeout is a variable for the tests.
var writeTimeout = 10 * time.Second

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
	// closing: a refusal could not be recorded; the connection closes once
	// its failure reply is sent (the front fails closed).
	closing bool
	// out is where a handler may build its reply (writer.start): a reply
	// that begins at out[0] is sent without a copy.
	out []byte
	// signReq is the core's request of a signature, reused from one to
	// the next (Session.Do keeps no part of it).
	signReq signRequest
}

func (c *conn) serve() {
	defer func() {
		c.ss.Close()
		c.c.Close()
	}()
	rd, err := newReader(c.c, c.id.PID, &c.a.busy)
	if err != nil {
		c.a.log.Warn("connection closed: cannot read its socket", "uid", c.id.UID, "pid", c.id.PID, "err", err)
		return
	}
	defer rd.close() // a message may have held a private key
	w, err := newWriter(c.c)
	if err != nil {
		c.a.log.Warn("connection closed: cannot write on its socket", "uid", c.id.UID, "pid", c.id.PID, "err", err)
		return
	}
	for {
		msg, n, err := rd.next()
		switch {
		case errors.Is(err, errTooLarge):
			c.refuse("request", nil, wire.Status_STATUS_RESOURCE_EXHAUSTED,
				fmt.Sprintf("a message of %d bytes (at most %d, at least 1): connection closed", n, MaxMessage))
			return
		case errors.Is(err, io.EOF), c.closedBy(err):
			return
		case err != nil:
			c.a.log.Info("connection closed: message cut short", "uid", c.id.UID, "pid", c.id.PID, "length", n, "err", errText(err))
			return
		}
		c.a.busy.Add(1)
		c.out = w.start()
		reply := c.handle(msg)
		err = w.send(reply)
		c.a.busy.Add(-1)
		if err != nil {
			c.a.log.Info("connection closed: the client does not take its reply", "uid", c.id.UID, "pid", c.id.PID, "err", errText(err))
			return
		}
		if c.closing {
			return
		}
	}
}

// refuse records a refusal the agent decides itself (op, the key's
// persistent id if known, status, the precise reason) through the core,
// and returns the failure reply. If the refusal cannot be recorded, the
// connection closes once the failure is sent: nothing the audit log
// does not know of is answered.
func (c *conn) refuse(op string, keyID []byte, st wire.Status, reason string) []byte {
	err := c.ss.Refuse(c.a.ctx, c.ident(), server.Refusal{Op: op, Key: keyID, Request: c.reqID(), Status: st, Reason: reason})
	if err != nil {
		c.a.log.Error("a refusal could not be recorded: the connection closes", "uid", c.id.UID, "pid", c.id.PID, "op", op, "err", err)
		c.closing = true
	}
	return replyFailure
}

// done records something the agent did itself (op, the key's persistent
// id if known, what it did) through the core, and returns the success
// reply; if it cannot be recorded, the failure reply, and the connection
// closes once it is sent.
func (c *conn) done(op string, keyID []byte, what string) []byte {
	err := c.ss.Record(c.a.ctx, c.ident(), server.Refusal{Op: op, Key: keyID, Request: c.reqID(), Status: wire.Status_STATUS_OK, Reason: what})
	if err != nil {
		c.a.log.Error("an agent operation could not be recorded: the connection closes", "uid", c.id.UID, "pid", c.id.PID, "op", op, "err", err)
		c.closing = true
		return replyFailure
	}
	return replySuccess
}

// refusal is a refusal of the agent's own, with its status.
type refusal struct {
	status wire.Status
	msg    string
}

func (r *refusal) Error() string { return r.msg }

func refusedf(st wire.Status, format string, args ...any) error {
	return &refusal{status: st, msg: fmt.Sprintf(format, args...)}
}

// refuseErr is refuse for err: its status if it is a refusal, else
// INVALID_ARGUMENT (the message was not one the agent takes).
func (c *conn) refuseErr(op string, keyID []byte, err error) []byte {
	st := wire.Status_STATUS_INVALID_ARGUMENT
	var r *refusal
	if errors.As(err, &r) {
		st = r.status
	}
	return c.refuse(op, keyID, st, err.Error())
}

// opNames name the agent's messages in the audit log: the core's
// operation where there is one.
var opNames = map[byte]string{
	msgRequestIdentities:   "list",
	msgSignRequest:         "sign",
	msgAddIdentity:         "import",
	msgAddIDConstrained:    "import",
	msgRemoveIdentity:      "destroy",
	msgRemoveAllIdentities: "destroy",
	msgRemoveAllV1:         "destroy",
	msgLock:                "lock",
	msgUnlock:              "unlock",
	msgExtension:           "extension",
}

func opOf(typ byte) string {
	if op, ok := opNames[typ]; ok {
		return op
	}
	return "request"
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
			if c.refuse("list", nil, wire.Status_STATUS_PERMISSION_DENIED, "the agent is locked: nothing listed"); c.closing {
				return replyFailure
			}
			return []byte{msgIdentitiesAnswer, 0, 0, 0, 0}
		}
		return c.refuse(opOf(typ), nil, wire.Status_STATUS_PERMISSION_DENIED, fmt.Sprintf("the agent is locked (message %d)", typ))
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
	return c.refuse("request", nil, wire.Status_STATUS_UNIMPLEMENTED, fmt.Sprintf("unknown message type %d", typ))
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

// viaIdent is ident for a request run on a key's own session (a key
// ssh-add gave the agent, which no process opened): the caller is read
// against the connection's session, as a persistent key's request is.
func (c *conn) viaIdent() server.Identity {
	id := c.ident()
	id.Via = c.ss
	return id
}

// closedBy logs why the connection closes when err is an otherWriter,
// and reports whether it was.
func (c *conn) closedBy(err error) bool {
	var ow unixsock.OtherWriter
	if !errors.As(err, &ow) {
		return false
	}
	c.a.log.Warn("connection closed: another process than the one that connected wrote on it",
		"uid", c.id.UID, "pid", c.id.PID, "writer_pid", ow.PID)
	// Recorded as a refusal of the connection's opener, whose connection
	// it is: the audit records callers the kernel vouches for.
	c.refuse("request", nil, wire.Status_STATUS_PERMISSION_DENIED,
		fmt.Sprintf("another process (pid %d) wrote on the connection: it is closed", ow.PID))
	return true
}
