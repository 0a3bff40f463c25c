// Package server is the daemon's request path: it serves connections on a
// SOCK_SEQPACKET listener, takes each request's caller identity from the
// credentials the kernel attached to that message, decodes the request,
// authorizes every operation with package policy, runs it with package
// mech on objects from package keystore, and sends the reply.
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
//	front_seqpacket.go  the SOCK_SEQPACKET front: Serve, ServeConn, the
//	                    receive loop, hang-up watch, reply encoding
//	conn.go             the core's entry for one received request: admit
//	                    (limits, credentials, decoding, generation), then
//	                    runInline or runConcurrently, each executing the
//	                    request (execute) and recording it before the
//	                    reply leaves (record, queueReply)
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
//	peruid.go           per-uid limits and fair turns for heavy work
//
// A new request type is one row of opTable and its handler; TestOpTable
// fails until the row declares every field.
//
// A request's work ends with its connection: each connection has a
// context, cancelled when the client hangs up or the connection ends,
// which the Argon2id derivations, the waits for heavy slots and the long
// polls watch.
//
// One goroutine serves each connection with blocking receives and, for
// all but the slowest operations, computes and replies inline, so a round
// trip costs two system calls and no goroutine hand-off. Per-connection
// state (handles, sessions) dies with the connection.
//
// The server never lets a panic reach a client, never sends key bytes
// unless the key is exportable, and never logs key material or plaintext:
// refusals are logged with their precise reason, clients get a vague one.
package server
