package server

import (
	"fmt"
	"testing"

	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/wire"
)

// A failed decryption is told by its identity (mech.ErrDecryption), not
// by its message: another error that happens to read the same is not
// worth trying the next version with.
func TestIsCryptoFailure(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{mech.ErrDecryption, true},
		{mech.ErrDecryption.WithDetail("tag mismatch"), true},
		{fmt.Errorf("version 2: %w", mech.ErrDecryption.WithDetail("")), true},
		{wire.Errorf(wire.Status_STATUS_VERIFICATION_FAILED, "signature does not verify"), true},
		{wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "decryption failed"), false},
		{wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "unsupported hash algorithm"), false},
		{fmt.Errorf("decryption failed"), false},
	} {
		if got := isCryptoFailure(c.err); got != c.want {
			t.Errorf("isCryptoFailure(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
