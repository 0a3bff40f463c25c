// Package keywarden is the Go client of the keywarden daemon, a local
// service that holds cryptographic keys so that the processes using them
// never do.
//
// A Client talks to the daemon over its Unix socket. Keys are created,
// imported and opened by name or id, and then used by handle: encrypt,
// decrypt, sign, verify, MAC and derive run inside the daemon, and the key
// bytes never reach this process unless the key was created exportable.
// Asymmetric private keys implement crypto.Signer and crypto.MessageSigner
// (and RSA keys give a crypto.Decrypter with Key.Decrypter), so
// crypto/x509, crypto/tls and golang.org/x/crypto/ssh use them unchanged;
// each call has a form that takes a context (SignContext,
// SignMessageContext, DecryptContext).
//
// The calls that manage the daemon itself (the master key, backups and
// restores, the machine generation) are for its administrators and live
// apart, on Client.Admin.
//
// A Client is safe for concurrent use. Concurrent calls are pipelined on
// one connection; a Batch sends many small operations in one message,
// and Batch.Send and Batch.Wait keep one batch in the daemon while the
// caller prepares the next.
//
// This package imports only the protocol and transport packages of the
// module, never the daemon's internals; a test enforces it.
package keywarden
