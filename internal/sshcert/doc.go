// Package sshcert builds OpenSSH certificates (PROTOCOL.certkeys) for the
// daemon's ssh-certify operation: it checks the key to certify and the
// certificate's fields, and signs through a function the caller gives,
// so that the authority's private key stays where it is (in the daemon,
// in package mech).
//
// It never holds key bytes and draws no randomness of its own: the
// certificate's nonce comes from the reader its caller passes.
package sshcert
