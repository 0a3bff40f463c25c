package genid

import "fmt"

// BudgetPolicy says what a change does to usage budgets that count towards
// a nonce bound (an AES-GCM key with random nonces may seal about 2^32
// messages). After a clone two machines spend what was one budget, so what
// is left must be treated as possibly shared. The key store applies it in
// its hook (docs/genid.md, "Nonce budgets").
type BudgetPolicy int

const (
	// BudgetHalve keeps a key in use with half of its remaining budget:
	// two clones together then stay within the bound.
	BudgetHalve BudgetPolicy = iota
	// BudgetRotate retires the budget at once: the key must be rotated
	// before it encrypts again.
	BudgetRotate
)

// ParseBudgetPolicy parses "halve" or "rotate".
func ParseBudgetPolicy(s string) (BudgetPolicy, error) {
	switch s {
	case "halve", "":
		return BudgetHalve, nil
	case "rotate":
		return BudgetRotate, nil
	}
	return 0, fmt.Errorf("unknown budget policy %q (want halve or rotate)", s)
}

func (p BudgetPolicy) String() string {
	if p == BudgetRotate {
		return "rotate"
	}
	return "halve"
}

// Remaining applies the policy to a remaining budget.
func (p BudgetPolicy) Remaining(n uint64) uint64 {
	if p == BudgetRotate {
		return 0
	}
	return n / 2
}
