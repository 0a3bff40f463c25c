package bench

import (
	"context"

	"github.com/keywarden/keywarden"
)

// Daemon is a private daemon, for the benchmarks.
type Daemon struct{ d *daemon }

// StartDaemon starts a private daemon.
func StartDaemon(ctx context.Context, executable string, env []string) (*Daemon, error) {
	d, err := startDaemon(ctx, executable, env)
	if err != nil {
		return nil, err
	}
	return &Daemon{d}, nil
}

func (d *Daemon) Socket() string { return d.d.socket }
func (d *Daemon) Stop() error    { return d.d.stop() }

// Op is an operation, for the benchmarks.
type Op struct {
	Name string
	Size int
	op   operation
}

// Ops returns every operation.
func Ops() []Op {
	var out []Op
	for _, op := range operations {
		out = append(out, Op{Name: op.name, Size: op.size, op: op})
	}
	return out
}

// Local returns one in-process call of the operation, or nil.
func (o Op) Local() (func() error, error) {
	if o.op.local == nil {
		return nil, nil
	}
	return o.op.local()
}

// Remote prepares the operation on c.
func (o Op) Remote(ctx context.Context, c *keywarden.Client) (one func(context.Context) error, queue func(*keywarden.Batch) *keywarden.BatchResult, closeKey func(context.Context), err error) {
	r, err := o.op.remote(ctx, c)
	if err != nil {
		return nil, nil, nil, err
	}
	return r.one, r.queue, r.close, nil
}

// Percentile exposes percentile.
func Percentile(sorted []int64, p float64) float64 { return percentile(sorted, p, 1) }

// StartServe starts "keywarden serve" with args.
func StartServe(ctx context.Context, executable string, env, args []string) (*Daemon, error) {
	d, err := startServe(ctx, serveSpec{executable: executable, env: env, args: args})
	if err != nil {
		return nil, err
	}
	return &Daemon{d}, nil
}
