// Package daemon runs keywarden as a service: it prepares the socket
// directory, takes the socket (refusing one another daemon holds,
// replacing a stale one), runs the start-up self-tests, serves until
// SIGTERM or SIGINT, and shuts down cleanly, wiping every key.
//
// It owns the process-wide concerns of the daemon; the request path is
// package server's.
package daemon
