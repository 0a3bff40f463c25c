package audit

import (
	"bytes"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"crypto/ed25519"
	"errors"
	"github.com/keywarden/keywarden/internal/linuxaudit"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestAppendVerify(t *testing.T) {
	for _, mode := range []SyncMode{SyncGrouped, SyncAlways} {
		t.Run(mode.String(), func(t *testing.T) {
			l := openLog(t, Options{Sync: mode, Keys: testKeys(t), CheckpointEvery: 10})
			appendN(t, l, 95)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			rep := verifyPath(t, l.opts.Path, VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)}, Keys: []*Keys{testKeys(t)}, RequireClosed: true})
			mustIntact(t, rep)
			// 1 segment + 95 requests + 9 count checkpoints + the final one.
			if rep.Records != 106 || rep.Checkpoints != 10 || !rep.Closed || rep.TrustedThrough != rep.LastSeq || rep.MACsChecked != rep.Records {
				t.Fatalf("report %+v", rep)
			}
		})
	}
}

func TestReopenContinues(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	for i := range 3 {
		l := openLog(t, Options{Path: path, Keys: testKeys(t)})
		appendN(t, l, 10+i)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	rep := verifyPath(t, path, VerifyOptions{Keys: []*Keys{testKeys(t)}})
	mustIntact(t, rep)
	if rep.Records != 3*2+33 {
		t.Fatalf("%d records", rep.Records)
	}
}

func TestConcurrentAppend(t *testing.T) {
	for _, mode := range []SyncMode{SyncGrouped, SyncAlways} {
		t.Run(mode.String(), func(t *testing.T) {
			l := openLog(t, Options{Sync: mode, Keys: testKeys(t), CheckpointEvery: 50, RotateBytes: 64 << 10})
			var wg sync.WaitGroup
			for g := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 200 {
						if err := l.Append(request(g*1000 + i)); err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			rep := verifyPath(t, l.opts.Path, VerifyOptions{Keys: []*Keys{testKeys(t)}, RequireClosed: true})
			mustIntact(t, rep)
			if len(rep.Files) < 3 {
				t.Fatalf("no rotation: %d files", len(rep.Files))
			}
			n := 0
			for _, path := range logFiles(t, l.opts.Path) {
				for _, line := range readLines(t, path) {
					r, err := ParseRecord(line)
					if err != nil {
						t.Fatal(err)
					}
					if r.Kind == KindRequest {
						n++
					}
				}
			}
			if n != 16*200 {
				t.Fatalf("%d requests in the log, want %d", n, 16*200)
			}
		})
	}
}

func TestAppendAfterClose(t *testing.T) {
	l := openLog(t, Options{})
	l.Close()
	err := l.Append(request(1))
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	if err := l.Ready(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ready after close: %v", err)
	}
}

// TestOpenDamaged: a log whose last complete line is damaged is kept
// aside as evidence, and the chain continues from its last valid record:
// the new file holds the valid records, then a recovery segment.
func TestOpenDamaged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openLog(t, Options{Path: path, Keys: testKeys(t)})
	appendN(t, l, 5)
	l.Close()
	lines := readLines(t, path)
	good, _ := ParseRecord(lines[len(lines)-3])
	lines[len(lines)-2] = []byte("{\"v\":1,\"garbage\":true}\n")
	writeLines(t, path, lines)

	l = openLog(t, Options{Path: path, Keys: testKeys(t)})
	appendN(t, l, 1)
	l.Close()
	aside, _ := filepath.Glob(path + ".damaged-*")
	if len(aside) != 1 {
		t.Fatalf("damaged file kept as %v", aside)
	}
	// The new file holds the valid records, then continues from the last.
	now := readLines(t, path)
	if !slices.EqualFunc(now[:good.Seq], lines[:good.Seq], bytes.Equal) {
		t.Fatal("the valid records were not kept")
	}
	seg, _ := ParseRecord(now[good.Seq])
	if seg.Seq != good.Seq+1 || seg.Kind != KindSegment || seg.Segment.Prev != good.Hash || seg.Segment.Reason != "recovery" {
		t.Fatalf("after the valid records %+v, last good seq %d", seg, good.Seq)
	}
	if countOps(t, path, OpAuditRecovered) != 1 {
		t.Fatal("recovery not recorded")
	}
	mustIntact(t, verifyPath(t, path, strict(t)))
	// The damage itself shows when the evidence is verified.
	rep, _ := VerifyFiles([]string{aside[0]}, VerifyOptions{Keys: []*Keys{testKeys(t)}})
	mustBroken(t, rep, "malformed")
}

// TestOpenAfterHalfRotation: a crash after the active file was renamed
// but before the new one was created; the log continues from the rotated
// file.
func TestOpenAfterHalfRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openLog(t, Options{Path: path, Keys: testKeys(t)})
	appendN(t, l, 3)
	l.Close()
	if err := os.Rename(path, rotatedName(path, 1)); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, Options{Path: path, Keys: testKeys(t)})
	appendN(t, l, 3)
	l.Close()
	rep := verifyPath(t, path, strict(t))
	mustIntact(t, rep)
	if len(rep.Files) != 2 || rep.FirstSeq != 1 {
		t.Fatalf("report %+v", rep)
	}
}

// TestRotationFailure: writing the first record of a new file fails; the
// log refuses, then recovers, and the series has no gap.
func TestRotationFailure(t *testing.T) {
	var failures atomic.Int32
	failures.Store(2)
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openLog(t, Options{Path: path, Keys: testKeys(t), RotateBytes: 2 << 10, RetryInterval: time.Millisecond})
	l.hookWrite = func(fd int, b []byte, off int64) error {
		if off == 0 && failures.Add(-1) >= 0 {
			return unix.EIO
		}
		return pwriteAll(fd, b, off)
	}
	refused := 0
	for i := range 40 {
		if err := l.Append(request(i)); err != nil {
			if !errors.Is(err, ErrUnavailable) {
				t.Fatal(err)
			}
			refused++
			waitFor(t, "recovery", func() bool { return l.Ready() == nil })
		}
	}
	l.Close()
	if refused == 0 {
		t.Fatal("no failure happened")
	}
	mustIntact(t, verifyPath(t, path, strict(t)))
}

func TestNewSegment(t *testing.T) {
	l := openLog(t, Options{Keys: testKeys(t)})
	appendN(t, l, 2)
	if err := l.NewSegment("generation 2"); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 2)
	l.Close()
	mustIntact(t, verifyPath(t, l.opts.Path, strict(t)))
	var segs []*Record
	ScanFiles([]string{l.opts.Path}, Filter{HasKind: true, Kind: KindSegment}, func(r *Record) error {
		segs = append(segs, r)
		return nil
	})
	if len(segs) != 2 || segs[1].Segment.Reason != "generation 2" || segs[0].Segment.Nonce == segs[1].Segment.Nonce {
		t.Fatalf("segments %+v %+v", segs[0].Segment, segs[1].Segment)
	}
}

func TestStatusAndCheckpoint(t *testing.T) {
	var published []Checkpoint
	l := openLog(t, Options{Keys: testKeys(t), OnCheckpoint: func(c Checkpoint) { published = append(published, c) }})
	appendN(t, l, 3)
	cp, err := l.Checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	st := l.Status()
	if !st.Healthy || !st.Keyed || st.Seq != cp.Seq || st.LastCheckpoint != cp || st.FileBytes == 0 ||
		len(published) != 1 || published[0] != cp {
		t.Fatalf("status %+v, checkpoint %+v, published %v", st, cp, published)
	}
	l.Close()
	rep := verifyPath(t, l.opts.Path, VerifyOptions{Expect: []Checkpoint{cp}})
	mustIntact(t, rep)
}

// TestLinuxForwarding: key-management records reach the Linux audit
// sender once written (sent where the kernel takes them, else counted as
// dropped); other records do not.
func TestLinuxForwarding(t *testing.T) {
	s := linuxaudit.New(nil)
	defer s.Close()
	l := openLog(t, Options{Keys: testKeys(t), Linux: s})
	appendN(t, l, 3) // encrypt: not forwarded
	g := request(1)
	g.Op, g.Alg = OpGenerate, "ed25519"
	if err := l.Append(g); err != nil {
		t.Fatal(err)
	}
	b := request(2)
	b.Op = OpBatch
	b.AddOp(OpEntry{Op: "encrypt", Status: "OK"})
	b.AddOp(OpEntry{Op: OpDestroy, Status: "PERMISSION_DENIED"})
	if err := l.Append(b); err != nil {
		t.Fatal(err)
	}
	l.Close()
	waitFor(t, "the sender", func() bool {
		st := s.Status()
		return st.Sent+st.Dropped+st.Failed >= 2
	})
	if st := s.Status(); st.Sent+st.Dropped+st.Failed != 2 {
		t.Fatalf("sender status %+v, want 2 messages", st)
	}
}
