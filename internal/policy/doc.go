// Package policy decides. Every rule of the key model that can refuse an
// operation lives here, as pure functions of their inputs: who is asking
// (the identity the kernel attested for that message), the key's owner,
// ACL and attributes, and what is asked. No I/O, no clocks, no key
// material, no locks: the same inputs always give the same Decision, which
// is what the table tests pin down.
//
// Roles holds the rules that depend on who the caller is rather than on
// a key: which uids administer the daemon (its master key and store),
// bump the machine generation, or have their generation watchers counted
// for everyone. The daemon's operation table says which operations need
// which role; the server asks Roles before running them.
//
// A Decision carries two reasons: Public, deliberately vague, for the
// client; Reason, precise, for the daemon's log and audit record.
package policy
