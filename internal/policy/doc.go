// Package policy decides. Every rule of the key model that can refuse an
// operation lives here, as pure functions of their inputs: who is asking
// (the identity the kernel attested for that message), the key's owner,
// ACL and attributes, and what is asked. No I/O, no clocks, no key
// material, no locks: the same inputs always give the same Decision, which
// is what the table tests pin down.
//
// A Decision carries two reasons: Public, deliberately vague, for the
// client; Reason, precise, for the daemon's log and audit record.
package policy
