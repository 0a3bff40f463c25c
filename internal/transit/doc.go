// Package transit is the daemon's transit front: an HTTP API compatible
// with the transit secrets engine of Vault and OpenBao (docs/transit.md),
// so that programs in any language use keywarden's keys through the
// clients they already have (the Vault and OpenBao Go api packages, hvac,
// curl).
//
// It is an adapter, as the ssh-agent front is: each HTTP connection is
// one core session (server.NewSession, front "transit"), opened with the
// identity the kernel gave for the connecting process when it was
// accepted (SO_PEERCRED and a pidfd, SO_PEERPIDFD), and every transit
// path turns into requests of the daemon's own protocol handed to
// Session.Do, which authorizes them, writes their audit records and runs
// them. What the front refuses itself (an unknown path, a malformed body,
// a parameter it does not offer, a body over its cap) it records through
// the core (Session.Refuse) before it answers; if that fails, it answers
// 503 and closes the connection. A key's name in a transit path is the
// name of one of the caller's own keys: another uid's keys are not
// reachable by name, and the core refuses what the caller may not do.
//
// It never holds key bytes but in passing: an exported key is converted
// to the form transit gives and wiped, as are plaintexts once answered.
//
// Files:
//
//	front.go    Front: listeners, accepting with the kernel's identity, limits
//	conn.go     one connection's core session and its handles
//	router.go   the path table, request decoding, Vault's response shapes
//	keys.go     keys/:name and its config, rotate, trim, delete, list, export
//	crypt.go    encrypt, decrypt, rewrap, datakey
//	sign.go     sign, verify, hmac
//	misc.go     hash, random, wrapping_key, import
package transit
