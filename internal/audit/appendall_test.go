package audit

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestAppendAll: records appended together are consecutive, in order, in
// the chain, with every field as Append would write it; a failed write
// fails all of them and leaves none in the log.
func TestAppendAll(t *testing.T) {
	for _, mode := range []SyncMode{SyncGrouped, SyncAlways} {
		t.Run(mode.String(), func(t *testing.T) {
			var failing atomic.Bool
			l := openLog(t, Options{Sync: mode, Keys: testKeys(t), CheckpointEvery: 7, RetryInterval: 5 * time.Millisecond})
			l.hookWrite = func(fd int, b []byte, off int64) error {
				if failing.Load() {
					return unix.EIO
				}
				return pwriteAll(fd, b, off)
			}
			appendN(t, l, 3)
			var rs []*Record
			for i := range 20 {
				rs = append(rs, request(100+i))
			}
			if err := l.AppendAll(rs); err != nil {
				t.Fatal(err)
			}
			for i := 1; i < len(rs); i++ {
				// Checkpoints (every 7 records) may fall between them.
				if rs[i].Seq <= rs[i-1].Seq || rs[i].Request != uint64(100+i) {
					t.Fatalf("record %d: seq %d after %d", i, rs[i].Seq, rs[i-1].Seq)
				}
			}
			if err := l.AppendAll(nil); err != nil {
				t.Fatal(err)
			}
			failing.Store(true)
			err := l.AppendAll([]*Record{request(200), request(201)})
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("AppendAll with a failing write: %v", err)
			}
			failing.Store(false)
			waitFor(t, "recovery", func() bool { return l.Ready() == nil })
			if err := l.AppendAll([]*Record{{Kind: KindSegment}}); !errors.Is(err, ErrKind) {
				t.Fatalf("AppendAll of a segment: %v", err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			rep := verifyPath(t, l.opts.Path, VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)}, Keys: []*Keys{testKeys(t)}, RequireClosed: true})
			mustIntact(t, rep)
			b, err := os.ReadFile(l.opts.Path)
			if err != nil {
				t.Fatal(err)
			}
			var seen200 bool
			Scan(bytes.NewReader(b), Filter{}, func(r *Record) error {
				if r.Request == 200 || r.Request == 201 {
					seen200 = true
				}
				return nil
			})
			if seen200 {
				t.Fatal("a record whose write failed is in the log")
			}
		})
	}
}
