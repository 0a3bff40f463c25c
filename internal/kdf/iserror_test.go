package kdf

import (
	"errors"
	"fmt"
	"testing"

	"github.com/keywarden/keywarden/internal/wire"
)

// IsError matches an error by the sentinel it was made from, never by its
// text: another package's error that happens to read the same is not
// ErrClosed.
func TestIsErrorMatchesSentinelNotText(t *testing.T) {
	lookalike := wire.Errorf(ErrClosed.Status, "%s", ErrClosed.Public)
	if IsError(lookalike, ErrClosed) {
		t.Error("an error with ErrClosed's text is taken for ErrClosed")
	}
	cause := errors.New("context canceled")
	err := fmt.Errorf("derive: %w", ErrClosed.WithDetail("%w", cause))
	if !IsError(err, ErrClosed) || IsError(err, ErrTimeout) || !errors.Is(err, cause) {
		t.Error("a detailed ErrClosed is not matched, or loses its cause")
	}
}
