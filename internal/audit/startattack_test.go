package audit

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Attacks on the daemon's check when it starts: the log's files edited,
// copied or swapped while it was stopped.

// TestCopiedCheckpointIsNoAnchor: records forged after the last checkpoint,
// followed by copies of that checkpoint and the record it covers, so that
// the file ends as it did. The daemon anchors its check on a checkpoint
// the chain reaches from the start of the file, so the copies anchor
// nothing: the forged records are set aside, never kept in the chain.
func TestCopiedCheckpointIsNoAnchor(t *testing.T) {
	path := baseLog(t)
	orig := readLines(t, path)
	lines := orig[:len(orig)-1] // no final checkpoint: a crash
	cps := indexes(t, lines, KindCheckpoint)
	c := cps[len(cps)-1]
	lines = forge(t, slices.Clone(lines[:c+1]), nil, forgedSegment(nil), forgedRequest())
	lines = append(lines, orig[c-1], orig[c])
	writeLines(t, path, lines)
	mustBroken(t, verifyPath(t, path, pinned(t)), "")

	daemonRun(t, path, testKeys(t), func(l *Log) { appendN(t, l, 1) })
	if chainHolds(t, path, forgedMark) {
		dump(t, path)
		t.Fatal("the forged records stay in the chain")
	}
	mustIntact(t, verifyPath(t, path, strict(t)))
	if ev := evidence(t, path); len(ev) != 1 {
		t.Fatalf("evidence %v", ev)
	}
}

// rotatedLog writes a log of three files or more, with the test keys,
// closed cleanly.
func rotatedLog(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openLog(t, Options{Path: path, RotateBytes: 4 << 10, Keys: testKeys(t)})
	for i := 0; len(logFiles(t, path)) < 3; i++ {
		if err := l.Append(request(i)); err != nil {
			t.Fatal(err)
		}
	}
	appendN(t, l, 2)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSwappedActiveFile: the active file of a rotated series replaced by
// another daemon's whole log, or by a copy of this log's own first file
// (records signed with the daemon's own key). Neither continues the
// series: the daemon sets the file aside whole and continues the chain
// from the end of the newest rotated file, so that the series verifies.
func TestSwappedActiveFile(t *testing.T) {
	for name, swap := range map[string]func(t *testing.T, path string) []byte{
		"another daemon's log": func(t *testing.T, _ string) []byte {
			return must(os.ReadFile(otherDaemonLog(t, randomKeys(t), true)))
		},
		"a copy of its own first file": func(t *testing.T, path string) []byte {
			return must(os.ReadFile(logFiles(t, path)[0]))
		},
	} {
		t.Run(name, func(t *testing.T) {
			path := rotatedLog(t)
			files := logFiles(t, path)
			rotated := files[len(files)-2]
			rl := readLines(t, rotated)
			last := must(ParseRecord(bytes.TrimSuffix(rl[len(rl)-1], []byte{'\n'})))
			if err := os.WriteFile(path, swap(t, path), 0o600); err != nil {
				t.Fatal(err)
			}
			mustBroken(t, verifyPath(t, path, strict(t)), "")

			daemonRun(t, path, testKeys(t), func(l *Log) { appendN(t, l, 1) })
			mustIntact(t, verifyPath(t, path, strict(t)))
			ev, msgs := evidence(t, path), recovered(t, path)
			if len(ev) != 1 || len(msgs) != 1 || !strings.Contains(msgs[0], "does not continue the chain of "+filepath.Base(rotated)) {
				t.Fatalf("evidence %v, events %q", ev, msgs)
			}
			first := must(ParseRecord(bytes.TrimSuffix(readLines(t, path)[0], []byte{'\n'})))
			if first.Seq != last.Seq+1 || first.Segment.Prev != last.Hash {
				t.Fatalf("the active file starts at seq %d, not after seq %d", first.Seq, last.Seq)
			}
		})
	}
}

// TestSetAsideInterrupted: records forged at the end of the newest
// rotated file (the active file empty, as a crash right after a rotation
// leaves it) are set aside, and the set-aside stops between its renames:
// the rotated file is cut back to what verified, its evidence kept, but
// the new active file never took its name. The next start must read that
// state right: nothing forged in the chain, which verifies, and every
// evidence file kept.
func TestSetAsideInterrupted(t *testing.T) {
	path := rotatedLog(t)
	files := logFiles(t, path)
	prev := files[len(files)-2]
	os.Remove(path)
	writeLines(t, prev, forge(t, readLines(t, prev), nil, forgedSegment(nil), forgedRequest()))

	l := openLog(t, Options{Path: path, CheckpointEvery: 4})
	if err := l.Append(&Record{Kind: KindEvent, Op: OpStart, Msg: "run"}); err != nil {
		t.Fatal(err)
	}
	l.hookRename = func(string, string) error { return os.ErrDeadlineExceeded } // the crash
	if err := l.SetKeys(testKeys(t)); err == nil {
		t.Fatal("the set-aside went through")
	}
	l.Close()
	ev := evidence(t, path)
	if len(ev) != 1 || chainHolds(t, prev, forgedMark) {
		t.Fatalf("after the interrupted set-aside: evidence %v", ev)
	}

	daemonRun(t, path, testKeys(t), func(l *Log) { appendN(t, l, 1) })
	mustIntact(t, verifyPath(t, path, strict(t)))
	if chainHolds(t, path, forgedMark) {
		dump(t, path)
		t.Fatal("a forged record is in the chain")
	}
	if ev2 := evidence(t, path); len(ev2) != 2 || !slices.Contains(ev2, ev[0]) {
		t.Fatalf("evidence %v, was %v", ev2, ev)
	}
}

// TestRotatedNamesSwapped: the names of two rotated files swapped. The
// records are all there and in order by their contents, which is how
// verify and the daemon's check order the series: nothing is set aside,
// and the log verifies.
func TestRotatedNamesSwapped(t *testing.T) { checkRotatedNamesSwapped(t, false) }

// TestRotatedNamesSwappedActiveEmpty: the same, after a crash right after
// a rotation left the active file empty: the log continues from the
// rotated file whose records come last, whatever its name.
func TestRotatedNamesSwappedActiveEmpty(t *testing.T) { checkRotatedNamesSwapped(t, true) }

// checkRotatedNamesSwapped swaps the names of the two newest rotated files
// (with the active file removed, if noActive), starts the daemon's log and
// checks that nothing is set aside and the log verifies.
func checkRotatedNamesSwapped(t *testing.T, noActive bool) {
	path := rotatedLog(t)
	files := logFiles(t, path)
	if noActive {
		os.Remove(path)
	}
	a, b := files[len(files)-3], files[len(files)-2]
	tmp := a + ".tmp"
	for _, mv := range [][2]string{{a, tmp}, {b, a}, {tmp, b}} {
		if err := os.Rename(mv[0], mv[1]); err != nil {
			t.Fatal(err)
		}
	}
	daemonRun(t, path, testKeys(t), func(l *Log) { appendN(t, l, 1) })
	if ev := evidence(t, path); len(ev) != 0 {
		t.Fatalf("evidence %v, events %q", ev, recovered(t, path))
	}
	mustIntact(t, verifyPath(t, path, strict(t)))
}

// TestNewestRotatedRemoved: the newest rotated file deleted. verify sees
// the gap; the daemon, started again, keeps the active file (which no
// longer continues the series) as evidence, says so in the chain, and
// continues from the file before: what was removed is a cut, which only a
// published checkpoint reveals.
func TestNewestRotatedRemoved(t *testing.T) {
	path := rotatedLog(t)
	files := logFiles(t, path)
	if err := os.Remove(files[len(files)-2]); err != nil {
		t.Fatal(err)
	}
	mustBroken(t, verifyPath(t, path, strict(t)), "missing")
	daemonRun(t, path, testKeys(t), func(l *Log) { appendN(t, l, 1) })
	mustIntact(t, verifyPath(t, path, strict(t)))
	ev, msgs := evidence(t, path), recovered(t, path)
	if len(ev) != 1 || len(msgs) != 1 || !strings.Contains(msgs[0], "does not continue the chain") {
		t.Fatalf("evidence %v, events %q", ev, msgs)
	}
}
