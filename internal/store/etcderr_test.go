package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A deadline that runs out during a call to the cluster is ErrUnavailable,
// whichever form the client library gives it.
func TestEtcdDeadlineIsUnavailable(t *testing.T) {
	e := &Etcd{ctx: context.Background(), timeout: 2 * time.Second}
	for _, err := range []error{
		context.DeadlineExceeded,
		status.Error(codes.DeadlineExceeded, "context deadline exceeded"),
		status.Error(codes.Unavailable, "connection refused"),
		status.Error(codes.Unknown, "context deadline exceeded"),
	} {
		if got := e.wrapErr(err); !errors.Is(got, ErrUnavailable) {
			t.Errorf("%v: %v, want ErrUnavailable", err, got)
		}
	}
	if got := e.wrapErr(status.Error(codes.Unknown, "something else")); errors.Is(got, ErrUnavailable) {
		t.Errorf("an unknown error taken for ErrUnavailable: %v", got)
	}
}
