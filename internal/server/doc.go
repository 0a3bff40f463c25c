// Package server is the daemon's request path: it serves connections on a
// SOCK_SEQPACKET listener, takes each request's caller identity from the
// credentials the kernel attached to that message, decodes the request,
// authorizes every operation with package policy, runs it with package
// mech on objects from package keystore, and sends the reply.
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
