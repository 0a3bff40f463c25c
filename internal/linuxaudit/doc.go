// Package linuxaudit sends user messages to the kernel's audit subsystem
// over NETLINK_AUDIT, so that keywarden's key-management events reach the
// system audit trail (auditd, ausearch) alongside sshd's and other
// cryptographic services'.
//
// Messages are AUDIT_CRYPTO_KEY_USER (2404) and AUDIT_CRYPTO_FAILURE_USER
// (2405) in the key=value form that libaudit's audit_log_user_message
// produces and that sshd uses for its key events:
//
//	op=generate kind=ed25519 fp=9f0c... direction=? spid=4242 suid=1000 rport=? laddr=? lport=? exe="/usr/bin/keywarden" hostname=? addr=? terminal=? res=success
//
// The kernel adds who sent the message (the daemon's pid, uid, auid, ses
// and security context); spid and suid name the client the daemon acted
// for.
//
// Sending needs CAP_AUDIT_WRITE and a kernel that accepts audit messages
// from this process (not from a container's user namespace, for
// instance). Where either is missing the Sender does nothing and says why
// in its Status. Messages are queued and sent by a goroutine of their
// own, so a slow audit daemon never delays a request; when the queue is
// full a message is dropped and counted. This feed is a copy for the
// system's tooling: the daemon's own audit log (package audit) is the
// record that is complete and fail-closed.
package linuxaudit
