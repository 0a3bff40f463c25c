package audit

import (
	"bytes"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Attacks on `audit verify --public-key` by someone who can write the
// log's files, and audit.pub beside them.

// otherDaemonLog writes the log of another daemon, with keys x (nil: it
// never had any), and returns its path. With checkpoint false it stops
// before its first checkpoint.
func otherDaemonLog(t *testing.T, x *Keys, checkpoint bool) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openLog(t, Options{Path: path, Keys: x, CheckpointEvery: 1000})
	appendN(t, l, 3)
	lines := readLines(t, path)
	if checkpoint {
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		return path
	}
	l.Close()
	writeLines(t, path, lines) // as a crash left it: no checkpoint
	return path
}

// TestVerifyNothingVouchedFor: a log in which no checkpoint is signed with
// a trusted key vouches for nothing, whatever it holds: verify with a
// pinned key does not call it intact.
func TestVerifyNothingVouchedFor(t *testing.T) {
	for name, path := range map[string]string{
		"another daemon's keys, no checkpoint": otherDaemonLog(t, randomKeys(t), false),
		"the log's own key named, no checkpoint": func() string {
			p := filepath.Join(t.TempDir(), "audit.log")
			// MACs made up: only the MAC key tells.
			writeLines(t, p, forge(t, nil0(t), randomKeys(t), forgedSegment(testKeys(t)), forgedRequest())[1:])
			return p
		}(),
		"a daemon that never had keys": otherDaemonLog(t, nil, true),
	} {
		t.Run(name, func(t *testing.T) {
			mustBroken(t, verifyPath(t, path, pinned(t)), "nothing in it is vouched for")
		})
	}
	// What is signed is a prefix: the text says where it ends.
	path := baseLog(t)
	lines := readLines(t, path)
	writeLines(t, path, lines[:len(lines)-1])
	var out bytes.Buffer
	rep := verifyPath(t, path, pinned(t))
	mustIntact(t, rep)
	rep.WriteText(&out)
	if !strings.Contains(out.String(), "are not signed by any") {
		t.Fatalf("%s", out.String())
	}
}

// nil0 returns a log of no record but a zero hash to continue from: the
// start of a forged log.
func nil0(t *testing.T) [][]byte {
	t.Helper()
	r := &Record{Kind: KindEvent, Op: OpStart}
	return [][]byte{AppendLine(nil, r)}
}

// TestVerifyHeadCut: records cut from the head of a log or a series (the
// first files removed, or a file's first records up to a segment) leave a
// log that continues a chain it does not hold. verify says so, unless it
// is given the checkpoint the log continues from.
func TestVerifyHeadCut(t *testing.T) {
	files, _ := series(t)
	p := mustBroken(t, verifyList(t, files[1:], strict(t)), "in the middle of a chain")
	if p.File != files[1] || p.Line != 1 {
		t.Fatalf("problem %+v", p)
	}
	// The files before it archived: the last checkpoint of the one
	// before, kept apart from the log, vouches for its start.
	prev := readLines(t, files[0])
	last := must(ParseRecord(bytes.TrimSuffix(prev[len(prev)-1], []byte{'\n'})))
	o := strict(t)
	o.Expect = []Checkpoint{{Seq: last.Seq, Hash: last.Hash}}
	mustIntact(t, verifyList(t, files[1:], o))
	o.Expect[0].Hash[0] ^= 1
	mustBroken(t, verifyList(t, files[1:], o), "does not continue the checkpoint published")

	// One file, cut at its second segment.
	path := baseLog(t)
	lines := readLines(t, path)
	segs := indexes(t, lines, KindSegment)
	writeLines(t, path, lines[segs[1]:])
	mustBroken(t, verifyPath(t, path, pinnedClosed(t)), "in the middle of a chain")
	mustBroken(t, verifyPath(t, path, VerifyOptions{}), "in the middle of a chain")
}

// TestPublicKeyFileTrustsItsFirstKey: a key added to audit.pub by whoever
// can write it is not trusted for being listed there; a key that a
// signed rekey checkpoint names is.
func TestPublicKeyFileTrustsItsFirstKey(t *testing.T) {
	x := randomKeys(t)
	forged := otherDaemonLog(t, x, true)
	pub := filepath.Join(t.TempDir(), "audit.pub")
	if err := PublishPublicKeys(pub, testPub(t), x.PublicKey()); err != nil { // x planted
		t.Fatal(err)
	}
	root, err := TrustedPublicKey(must(os.ReadFile(pub)))
	if err != nil {
		t.Fatal(err)
	}
	o := VerifyOptions{PublicKeys: []ed25519.PublicKey{root}, RequireClosed: true}
	mustBroken(t, verifyPath(t, forged, o), "not trusted")

	// The log's own later key, named by a rekey checkpoint signed with
	// the first.
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openLog(t, Options{Path: path, Keys: testKeys(t)})
	appendN(t, l, 2)
	later := must(DeriveKeys(bytes.Repeat([]byte{9}, 32)))
	if err := l.SetKeys(later); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 2)
	l.Close()
	PublishPublicKeys(pub, testPub(t), later.PublicKey())
	root = must(TrustedPublicKey(must(os.ReadFile(pub))))
	mustIntact(t, verifyPath(t, path, VerifyOptions{PublicKeys: []ed25519.PublicKey{root}, RequireClosed: true}))
}

// TestPublishPublicKeysWhole: the daemon writes audit.pub whole from the
// keys its log's chain has had: a key planted after them is dropped, and
// a chain that began anew lists its own key alone.
func TestPublishPublicKeysWhole(t *testing.T) {
	x, y := randomKeys(t), randomKeys(t)
	read := func(pub string) []ed25519.PublicKey {
		t.Helper()
		return must(ParsePublicKeys(must(os.ReadFile(pub))))
	}
	same := func(got []ed25519.PublicKey, want ...ed25519.PublicKey) bool {
		return slices.EqualFunc(got, want, func(a, b ed25519.PublicKey) bool { return a.Equal(b) })
	}

	// A log of the keys x, then a master-key rotation to the test keys.
	path := filepath.Join(t.TempDir(), "audit.log")
	pub := filepath.Join(filepath.Dir(path), "audit.pub")
	daemonRun(t, path, x, func(l *Log) {
		if err := l.PublishPublicKeys(pub); err != nil {
			t.Fatal(err)
		}
		if err := l.SetKeys(testKeys(t)); err != nil {
			t.Fatal(err)
		}
		if err := l.PublishPublicKeys(pub); err != nil {
			t.Fatal(err)
		}
	})
	if got := read(pub); !same(got, x.PublicKey(), testPub(t)) {
		t.Fatalf("audit.pub %x", got)
	}
	// y planted at the end: the next start drops it.
	PublishPublicKeys(pub, x.PublicKey(), testPub(t), y.PublicKey())
	daemonRun(t, path, testKeys(t), func(l *Log) {
		if err := l.PublishPublicKeys(pub); err != nil {
			t.Fatal(err)
		}
	})
	if got := read(pub); !same(got, x.PublicKey(), testPub(t)) {
		t.Fatalf("audit.pub %x", got)
	}
	// Another store's keys (y): the log is set aside whole and a new
	// chain starts, whose audit.pub lists y alone.
	daemonRun(t, path, y, func(l *Log) {
		if err := l.PublishPublicKeys(pub); err != nil {
			t.Fatal(err)
		}
	})
	if got := read(pub); !same(got, y.PublicKey()) {
		t.Fatalf("audit.pub %x", got)
	}
	root := must(TrustedPublicKey(must(os.ReadFile(pub))))
	mustIntact(t, verifyPath(t, path, VerifyOptions{PublicKeys: []ed25519.PublicKey{root}, RequireClosed: true}))
}
