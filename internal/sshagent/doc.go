// Package sshagent is the daemon's ssh-agent front: it serves OpenSSH's
// agent protocol (draft-miller-ssh-agent, with OpenSSH's extensions
// session-bind@openssh.com and restrict-destination-v00@openssh.com) on
// Unix stream sockets, so that ssh, ssh-add, ssh-keygen and git use
// keywarden's keys as they use ssh-agent's.
//
// It is an adapter: each agent connection is one core session
// (server.NewSession, front "ssh-agent"), opened with the identity the
// kernel gave for the connecting process when it was accepted
// (SO_PEERCRED and a pidfd, SO_PEERPIDFD), and every list, sign, add and
// remove is a request of the daemon's own protocol handed to
// Session.Do, which authorizes it, writes its audit record and runs it.
// What the agent refuses itself, by a rule of its protocol the core does
// not know (the lock, a destination or confirmation refused, a SHA-1
// signature, a malformed or unknown message), it records through the
// core (Session.Refuse) before it answers; if that fails, it answers
// SSH_AGENT_FAILURE and closes the connection.
// A stream socket carries no credentials per message, unlike the daemon's
// SOCK_SEQPACKET socket: every request of a connection is the accepting
// process's, which is the ssh, ssh-add or git process that connected.
//
// What the agent protocol adds to the core it keeps here, per uid and
// in memory, as ssh-agent does: which keys ssh-add gave it (each an
// ephemeral key of a session of its own, so that it dies with its
// lifetime, with ssh-add -d or -D, or when the daemon stops), their
// constraints (lifetime, confirmation, destinations), the lock, and each
// connection's session bindings. It never holds key bytes but in passing:
// a key given by ssh-add is converted to PKCS #8 and imported, and both
// copies are wiped.
//
// Files:
//
//	agent.go    Agent: listeners, accepting, per-uid state, shutdown
//	conn.go     one connection: limits, dispatch
//	reader.go   its messages, framed, and who wrote them
//	writer.go   its replies
//	keys.go     listing and signing through the core
//	add.go      ssh-add: keys added, removed, their constraints, the lock
//	bind.go     session-bind and destination constraints
//	confirm.go  the confirmation program (ssh-add -c)
//	codec.go    the protocol's messages
package sshagent
