package keystore

import "github.com/keywarden/keywarden/internal/key"

// The nonce budget of copies. An AES-GCM version may make at most its
// limit of encryptions with random nonces (DefaultEncryptionLimit), and
// the count is kept per version of one object. Copies of one key's
// material (an unwrap, even of the same blob again; a derivation repeated
// with the same inputs; an import of known bytes) are other objects, each
// with its own count: left alone, N copies would make N times the budget
// under one AES key. So copies share one budget, and the first holder has
// it: a new object that may encrypt, with AES-GCM material that another
// live key object already holds (encrypting or not, loaded or not), gets
// its budget for that material spent. It may decrypt at once; its first
// encryption gives it a new version of fresh material (or, with
// refuse-when-spent, is refused until it is rotated). docs/security.md
// ("Nonce budgets") states the rule and what it does not cover.

// spendCopyBudgets spends, before o is added to the store, the budget of
// every version of o whose material another key object holds. It returns
// how many versions it spent. s.mu is held.
func (m *materials) spendCopyBudgets(o *Object) int {
	if o.Spec.Family != key.FamilyAES || !o.Attrs().Usage.Has(key.Encrypt) {
		return 0
	}
	n := 0
	var held []holder
	for _, v := range o.Versions() {
		if !v.hasFP {
			continue
		}
		held = m.holders(held[:0], v.fp)
		for _, h := range held {
			if h.id != o.ID {
				v.close()
				n++
				break
			}
		}
	}
	return n
}

// close closes v at its count: it counts no more encryptions, and its
// reservation and limit become what it counted. The count is frozen
// first, in the same compare and swap that reads it: a goroutine that
// checked the bounds before they were lowered then fails its own compare
// and swap, and finds the version closed, rather than counting one past
// the closing limit.
func (v *Version) close() {
	for {
		u := v.used.Load()
		if hookClosing != nil {
			hookClosing(v)
		}
		if v.used.CompareAndSwap(u, u|closedCount) {
			u &^= closedCount
			v.reserved.Store(u)
			v.limit.Store(u)
			return
		}
	}
}
