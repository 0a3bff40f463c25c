package audit

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestFilter(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := &Record{Kind: KindRequest, Time: t0, Op: OpBatch, Status: "OK", Caller: Caller{UID: 1000}}
	r.Key[0] = 0xab
	var other KeyID
	other[0] = 0xcd
	r.AddOp(OpEntry{Op: "sign", Key: other, Status: "PERMISSION_DENIED"})
	cases := []struct {
		f    Filter
		want bool
	}{
		{Filter{}, true},
		{Filter{Key: "ab"}, true},
		{Filter{Key: "AB00"}, true},
		{Filter{Key: "cd"}, true}, // a batch entry's key
		{Filter{Key: "ef"}, false},
		{Filter{UID: 1000, HasUID: true}, true},
		{Filter{UID: 0, HasUID: true}, false},
		{Filter{Op: "sign"}, true},
		{Filter{Op: OpBatch}, true},
		{Filter{Op: "encrypt"}, false},
		{Filter{Failed: true}, true},
		{Filter{Status: "PERMISSION_DENIED"}, true},
		{Filter{Status: "NOT_FOUND"}, false},
		{Filter{Since: t0}, true},
		{Filter{Since: t0.Add(time.Nanosecond)}, false},
		{Filter{Until: t0}, false},
		{Filter{Until: t0.Add(time.Second)}, true},
		{Filter{HasKind: true, Kind: KindEvent}, false},
	}
	for _, c := range cases {
		if got := c.f.Match(r); got != c.want {
			t.Errorf("%+v: %v, want %v", c.f, got, c.want)
		}
	}
	// uid 0 matches root's requests, not events.
	root := &Record{Kind: KindRequest}
	if !(&Filter{HasUID: true}).Match(root) || (&Filter{HasUID: true}).Match(&Record{Kind: KindEvent}) {
		t.Error("uid 0")
	}
}

func TestLastAndFollow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openLog(t, Options{Path: path, Keys: testKeys(t), RotateBytes: 4 << 10})
	defer l.Close()
	appendN(t, l, 40) // several files
	recs, last, err := Last(path, 25, Filter{HasKind: true, Kind: KindRequest})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 25 || recs[24].Request != 39 || recs[0].Request != 15 || last < recs[24].Seq {
		t.Fatalf("%d records, last request %d, last seq %d", len(recs), recs[len(recs)-1].Request, last)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan uint64, 1000)
	var wg sync.WaitGroup
	wg.Add(1)
	var ferr error
	go func() {
		defer wg.Done()
		ferr = Follow(ctx, path, last, Filter{HasKind: true, Kind: KindRequest}, time.Millisecond, func(r *Record) error {
			got <- r.Request
			return nil
		})
	}()
	// 60 more, across several rotations.
	for i := range 60 {
		if err := l.Append(request(100 + i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 60 {
		select {
		case req := <-got:
			if req != uint64(100+i) {
				t.Fatalf("followed request %d, want %d", req, 100+i)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("follow stalled after %d records", i)
		}
	}
	cancel()
	wg.Wait()
	if ferr != nil {
		t.Fatal(ferr)
	}
}

// TestFollowAcrossMissingFile: following a log from its start, with a
// middle file deleted, yields what is there and does not loop.
func TestFollowAcrossMissingFile(t *testing.T) {
	files, _ := series(t)
	os.Remove(files[1])
	path := files[len(files)-1]
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var seqs []uint64
	done := make(chan error)
	go func() {
		done <- Follow(ctx, path, 0, Filter{}, time.Millisecond, func(r *Record) error {
			seqs = append(seqs, r.Seq)
			if r.Kind == KindCheckpoint && r.Checkpoint.Final {
				cancel()
			}
			return nil
		})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("follow did not reach the end")
	}
	if len(seqs) == 0 || seqs[0] != 1 {
		t.Fatalf("followed %v", seqs)
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("out of order: %v", seqs)
		}
	}
}

// TestLastSeqWithoutRecords: Last gives the seq of the log's last record
// also when asked for no records, and when the active file is empty (a
// crash right after a rotation), so that Follow goes on from there
// instead of replaying the whole log.
func TestLastSeqWithoutRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openLog(t, Options{Path: path, Keys: testKeys(t), RotateBytes: 4 << 10})
	appendN(t, l, 40)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	recs, want, err := Last(path, 1, Filter{})
	if err != nil || len(recs) != 1 || want != recs[0].Seq {
		t.Fatalf("Last(1): %d records, last seq %d, %v", len(recs), want, err)
	}
	for _, n := range []int{0, -1} {
		recs, last, err := Last(path, n, Filter{})
		if err != nil || len(recs) != 0 || last != want {
			t.Fatalf("Last(%d): %d records, last seq %d (want %d), %v", n, len(recs), last, want, err)
		}
	}
	// The active file empty: the last record is in the newest rotated file.
	files := logFiles(t, path)
	if len(files) < 2 {
		t.Fatalf("want rotated files, have %v", files)
	}
	if err := os.Rename(path, rotatedName(path, want-uint64(len(readLines(t, path)))+1)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	recs, last, err := Last(path, 0, Filter{})
	if err != nil || len(recs) != 0 || last != want {
		t.Fatalf("empty active file: %d records, last seq %d (want %d), %v", len(recs), last, want, err)
	}
	recs, last, err = Last(path, 3, Filter{})
	if err != nil || len(recs) != 3 || last != want || recs[2].Seq != want {
		t.Fatalf("empty active file: %d records, last seq %d (want %d), %v", len(recs), last, want, err)
	}
}
