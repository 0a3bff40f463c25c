package server

import (
	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/audit"
)

// The process that opened a connection, for the audit (docs/audit.md,
// "Who asked"). Decisions use each message's own credentials; but the pid
// in them is the kernel's word only when the sender could not have chosen
// it: a process with CAP_SYS_ADMIN over its pid namespace (which the
// creator of a user and pid namespace has, without any privilege outside
// it) may name any process of that namespace in SCM_CREDENTIALS, and a
// process with CAP_SETUID over its user namespace any uid the namespace
// maps. The record therefore also gives the connect-time peer, which the
// sender cannot choose (SO_PEERCRED), when the message names another
// process, and marks the identity claimed when it names another process
// or comes from another user or pid namespace than the daemon's.

// peer is the process that opened a connection, as the kernel saw it
// when it connected, with what the daemon read of it then.
type peer struct {
	audit.Peer
	// otherUser and otherPID: it was in another user, or pid, namespace
	// than the daemon.
	otherUser, otherPID bool
}

// readPeer records who opened the connection (SO_PEERCRED, read when it
// was accepted), and, through its pidfd, its executable and namespaces.
// Only the audit uses it.
func (ss *Session) readPeer() {
	cr := ss.opener
	ss.log.Debug("connected", "pid", cr.PID, "uid", cr.UID, "gid", cr.GID, "pidfd", cr.Pidfd >= 0, "admin", ss.acct != nil && ss.acct.admin)
	if ss.s.resolver == nil || cr.PID <= 0 {
		return
	}
	c := audit.Caller{PID: cr.PID, UID: cr.UID, GID: cr.GID}
	ss.s.resolver.Fill(&c, cr.Pidfd)
	ss.s.resolver.FillNamespaces(&c, cr.Pidfd)
	ss.peer = peer{Peer: audit.Peer{PID: cr.PID, UID: cr.UID, GID: cr.GID, Exe: c.Exe},
		otherUser: c.OtherUserNS, otherPID: c.OtherPIDNS}
}

// openerAlive reports whether the process that opened the connection
// still exists (a zombie counts: its pid is not free yet). While it
// does, no other process can have its pid.
func (ss *Session) openerAlive() bool {
	if ss.opener.Pidfd < 0 {
		return false
	}
	return unix.PidfdSendSignal(ss.opener.Pidfd, 0, nil, 0) == nil
}

// callerOf is the audit's view of who sent a message on this connection:
// the server's (callerOf), marked against the connection's peer.
//
// A message that names the opener's pid is read through the opener's
// pidfd rather than its own: if the opener still lives after /proc was
// read, the pid has been the opener's since it connected, so the message
// (sent before) named the opener, and what was read is the opener's. That
// one check also stands for markCaller's (openerAlive), which saves a
// system call per message. If the opener is gone, the message's own
// pidfd decides, as for any other message. A request that came on
// another session's connection (id.Via, which enterVia has checked and
// holds open) is read as that session reads its own.
func (ss *Session) callerOf(id Identity) audit.Caller {
	if v := id.Via; v != nil {
		id.Via = nil
		return v.callerOf(id)
	}
	var c audit.Caller
	openerLives := false
	if ss.s.resolver != nil && id.Pidfd >= 0 && id.PID > 0 && id.PID == ss.opener.PID && ss.opener.Pidfd >= 0 {
		c = audit.Caller{PID: id.PID, UID: id.UID, GID: id.GID}
		ss.s.resolver.Fill(&c, ss.opener.Pidfd)
		openerLives = !c.Exited
	}
	if !openerLives {
		c = ss.s.callerOf(id)
	}
	ss.markCaller(&c, id.Pidfd, openerLives)
	c.SSHDest = id.SSHDest
	c.Principal = id.Principal
	return c
}

// markCaller sets c's namespaces, Claimed and Peer. pidfd is the
// message's.
//
// A message from the process that connected, with the ids and the program
// it connected with, has the namespaces read at connect time: a process's
// pid namespace never changes. That holds only while the process lives:
// once it is gone, another process (in another namespace) may take its
// pid, so the daemon keeps the opener's pidfd and checks it is still
// alive (openerLives: callerOf found it alive after reading c). Any
// other message has them read now, which costs two system calls. A
// process that moved to another user namespace since it connected
// (unshare) keeps the ids the kernel gives it, which are the ones
// recorded; its new namespace is not marked.
func (ss *Session) markCaller(c *audit.Caller, pidfd int, openerLives bool) {
	if ss.s.resolver == nil {
		return
	}
	p := &ss.peer
	if !p.IsZero() && c.PID == p.PID && c.UID == p.UID && c.GID == p.GID && c.Exe == p.Exe && !c.Exited && (openerLives || ss.openerAlive()) {
		c.OtherUserNS, c.OtherPIDNS = p.otherUser, p.otherPID
	} else {
		ss.s.resolver.FillNamespaces(c, pidfd)
	}
	c.Claimed = c.OtherUserNS || c.OtherPIDNS || (!p.IsZero() && c.PID != p.PID)
	if !p.IsZero() && (c.PID != p.PID || (c.Exe != "" && p.Exe != "" && c.Exe != p.Exe)) {
		c.Peer = p.Peer
	}
}
