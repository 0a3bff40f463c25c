// Package server is the daemon's request path. Its fronts take requests
// from clients: the SOCK_SEQPACKET front serves connections on a listener
// and takes each request's caller identity from the credentials the
// kernel attached to that message. Its core authorizes every operation
// with package policy, records it in the audit log, runs it with package
// mech on objects from package keystore, and gives the front the reply.
//
// # Layout
//
// A request crosses two layers. A front owns a transport: it receives,
// takes the caller's identity from the kernel, frames, and sends. The
// core owns everything per caller: the handle and session tables,
// admission limits, authorization, the audit record, execution and the
// generation a request is pinned to. A front never touches key bytes,
// decides nothing and writes no audit record.
//
//	front_seqpacket.go  the SOCK_SEQPACKET front (the daemon's own
//	                    protocol): Serve, ServeConn, seqConn (one
//	                    connection over a Session), the receive loop,
//	                    hang-up watch, decoding, reply batching (queueReply,
//	                    flush: records before replies), reply encoding
//	session.go          the core's entry: Session, one caller's state;
//	                    NewSession, Do, Refuse and Close for the other
//	                    fronts; the admission steps every front goes
//	                    through (admitCaller, enter, checkRequest,
//	                    admitHeavy), record and refusalReply
//	execute.go          execute: every operation of a request, in runs
//	                    where it can, each through safeDispatch
//	optable.go          the operation table: one row per request type
//	                    (handler, inline or concurrent, store writes,
//	                    reply bound, path, access, seal need, audit name)
//	dispatch.go         runs one operation from its row; the
//	                    administrators' operations are refused there,
//	                    through policy.Roles
//	keys.go, versions.go, sessions.go, wrapops.go, storeops.go, kdf.go,
//	generation.go       the operations' handlers, by subject
//	runs.go             runs of small operations on one key in a batch
//	audit.go            audit records of requests and refusals
//	peer.go             who opened a session, for the audit
//	peruid.go           per-uid limits and fair turns for heavy work
//
// A new front is a file front_<name>.go that owns its transport and, for
// each caller, opens a Session (NewSession, with the opener's identity
// from the kernel), hands it each request with that request's identity
// (Session.Do, which returns the reply once its audit record is written),
// records a request it refuses itself, by a rule of its own protocol,
// before it answers (Session.Refuse, the same audit path; if that fails,
// the front fails closed), and closes it when the caller goes
// (Session.Close). Its records name it ("front" in the audit log). It
// needs nothing else of the core: no policy, no audit, no keys of its
// own.
//
// A new request type is one row of opTable and its handler; TestOpTable
// fails until the row declares every field.
//
// A request's work ends with its session: each session has a context,
// cancelled when the client hangs up or the session ends, which the
// Argon2id derivations, the waits for heavy slots and the long polls
// watch; a request taken through Do also ends with Do's context.
//
// The SOCK_SEQPACKET front serves each connection on one goroutine with
// blocking receives and, for all but the slowest operations, computes and
// replies inline, so a round trip costs two system calls and no goroutine
// hand-off. Per-session state (handles, streaming sessions) dies with the
// session.
//
// The server never lets a panic reach a client, never sends key bytes
// unless the key is exportable, and never logs key material or plaintext:
// refusals are logged with their precise reason, clients get a vague one.
package server
