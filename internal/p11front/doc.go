// Package p11front serves PKCS #11 to C programs: it speaks p11-kit's RPC
// protocol on a Unix stream socket, so that libkeywarden-pkcs11.so (or
// p11-kit's own client module, with the mechanisms it forwards) loaded
// into OpenSSL, OpenSSH, GnuTLS or pkcs11-tool reaches the daemon's keys
// (docs/pkcs11.md).
//
// It is a front: each connection is one core session (server.Session),
// opened with the identity the kernel gives for the process that
// connected (SO_PEERCRED, and a pidfd where the kernel has
// SO_PEERPIDFD), and every write on it must come from that process
// (SCM_CREDENTIALS). Every PKCS #11 call that touches a key becomes an
// operation of the core, under the core's policy and audit. The front
// owns the PKCS #11 view only: sessions, object handles, attributes,
// operations in progress. It never holds a key's bytes: CKA_VALUE of a
// key is returned only when the core exports it, and a key's private or
// secret half never leaves the core otherwise.
package p11front
