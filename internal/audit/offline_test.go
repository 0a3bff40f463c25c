package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Offline edits: someone who can write the log while the daemon is
// stopped cuts it, appends to it, splices or reorders it. The daemon
// must not sign over any of it when it starts again, and verify must see
// it. These tests run the log as the daemon does: opened without keys,
// given them when it is unsealed (SetKeys), closed when it stops.

// forgedMark is in every forged record, so that a test can tell whether
// a forgery reached the chain.
const forgedMark = "forged-by-the-attacker"

// daemonRun opens the log at path as the daemon does at start (sealed),
// records an unseal, gives the log k (nil: the run stays sealed), runs
// fn, and closes the log.
func daemonRun(t *testing.T, path string, k *Keys, fn func(l *Log)) {
	t.Helper()
	l := openLog(t, Options{Path: path, CheckpointEvery: 4})
	if err := l.Append(&Record{Kind: KindEvent, Op: OpStart, Msg: "run"}); err != nil {
		t.Fatal(err)
	}
	if k != nil {
		if err := l.SetKeys(k); err != nil {
			t.Fatal(err)
		}
	}
	if fn != nil {
		fn(l)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// baseLog writes the log of a daemon that ran twice, unsealed, with
// checkpoints every 4 records, and stopped cleanly.
func baseLog(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	daemonRun(t, path, testKeys(t), func(l *Log) { appendN(t, l, 6) })
	daemonRun(t, path, testKeys(t), func(l *Log) { appendN(t, l, 7) })
	return path
}

// forge appends records to lines as a forger would: with the next seq
// and a chain hash that agrees, a segment's prev and a checkpoint's upto
// included. With k (keys of the forger's own, or of another daemon), the
// records carry MACs under it and checkpoints are signed with it; without,
// they carry no MAC and no valid signature.
func forge(t testing.TB, lines [][]byte, k *Keys, recs ...*Record) [][]byte {
	t.Helper()
	last, err := ParseRecord(bytes.TrimSuffix(lines[len(lines)-1], []byte{'\n'}))
	if err != nil {
		t.Fatal(err)
	}
	seq, h := last.Seq, last.Hash
	for _, r := range recs {
		r := *r
		seq++
		r.Seq = seq
		if r.Time.IsZero() {
			r.Time = last.Time.Add(time.Second)
		}
		switch r.Kind {
		case KindSegment:
			s := *r.Segment
			s.Prev = h
			r.Segment = &s
		case KindCheckpoint:
			c := *r.Checkpoint
			c.Upto, c.UptoHash = seq-1, h
			c.Signature = make([]byte, ed25519SignatureSize)
			if k != nil {
				c.PublicKey, c.MACKeyID = k.PublicKey(), k.MACKeyID()
				r.Checkpoint = &c
				prefix := appendPrefix(nil, &r)
				var buf []byte
				c.Signature = k.sign(nil, prefix[:len(prefix)-sigFieldSize], &buf)
			}
			r.Checkpoint = &c
		}
		d := sha256.New()
		d.Write(h[:])
		d.Write(appendPrefix(nil, &r))
		copy(r.Hash[:], d.Sum(nil))
		h = r.Hash
		r.HasMAC = k != nil
		if k != nil {
			r.MAC = k.macOf(&r.Hash)
		}
		lines = append(lines, AppendLine(nil, &r))
	}
	return lines
}

// randomKeys are keys nobody else has: a forger's.
func randomKeys(t *testing.T) *Keys {
	secret := make([]byte, 32)
	rand.Read(secret)
	k, err := DeriveKeys(secret)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func forgedSegment(k *Keys) *Record {
	s := &Segment{Reason: "start", Host: "vm", PID: 4242, Software: "keywarden 0.4.0"}
	if k != nil {
		s.PublicKey, s.MACKeyID = k.PublicKey(), k.MACKeyID()
	}
	return &Record{Kind: KindSegment, Segment: s}
}

func forgedRequest() *Record {
	return &Record{Kind: KindRequest, Op: "export", Status: "OK", Caller: Caller{PID: 1, UID: 0}, Msg: forgedMark}
}

// pinned are the options of `audit verify --public-key audit.pub`.
func pinned(t *testing.T) VerifyOptions {
	return VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)}}
}

func pinnedClosed(t *testing.T) VerifyOptions {
	o := pinned(t)
	o.RequireClosed = true
	return o
}

// chainHolds reports whether any file of the log's chain (the active file
// and the rotated ones, as verify is given them) contains s.
func chainHolds(t *testing.T, path, s string) bool {
	t.Helper()
	for _, f := range logFiles(t, path) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(s)) {
			return true
		}
	}
	return false
}

// evidence returns the files a start set aside beside path.
func evidence(t *testing.T, path string) []string {
	t.Helper()
	m, err := filepath.Glob(path + "*.unverified-*")
	if err != nil {
		t.Fatal(err)
	}
	d, _ := filepath.Glob(path + "*.damaged-*")
	return append(m, d...)
}

// recovered returns the messages of the audit-recovered events in the
// log's chain.
func recovered(t *testing.T, path string) []string {
	t.Helper()
	var msgs []string
	ScanFiles(logFiles(t, path), Filter{Op: OpAuditRecovered}, func(r *Record) error {
		msgs = append(msgs, r.Msg)
		return nil
	})
	return msgs
}

// TestOfflineForgery is the attack of the issue: with write access to the
// log while the daemon was stopped, records are removed, a segment that
// names no keys is appended, then a request without a MAC. verify must
// see it before the daemon starts, and the daemon must not sign over it:
// it keeps the file as evidence and the chain continues from the last
// record it verified.
func TestOfflineForgery(t *testing.T) {
	path := baseLog(t)
	orig := readLines(t, path)
	lines := forge(t, slices.Clone(orig[:len(orig)-3]), nil, forgedSegment(nil), forgedRequest())
	writeLines(t, path, lines)
	tampered, _ := os.ReadFile(path)

	p := mustBroken(t, verifyPath(t, path, pinned(t)), "changes the keys in use")
	if p.Seq != uint64(len(orig)-3+1) || p.Line != len(orig)-3+1 {
		t.Errorf("the problem names %+v, want the forged segment at line %d", p, len(orig)-2)
	}

	daemonRun(t, path, testKeys(t), func(l *Log) { appendN(t, l, 2) })
	if chainHolds(t, path, forgedMark) {
		dump(t, path)
		t.Fatal("the daemon signed over the forged records")
	}
	rep := verifyPath(t, path, strict(t))
	mustIntact(t, rep)
	ev := evidence(t, path)
	if len(ev) != 1 {
		t.Fatalf("evidence %v", ev)
	}
	// The evidence is the file as the daemon found it, and what it wrote
	// itself before it had its keys (which the chain has too).
	if b, _ := os.ReadFile(ev[0]); !bytes.HasPrefix(b, tampered) {
		t.Fatalf("the evidence is not the file as it was found")
	}
	msgs := recovered(t, path)
	if len(msgs) != 1 || !strings.Contains(msgs[0], filepath.Base(ev[0])) || !strings.Contains(msgs[0], "no MAC") {
		t.Fatalf("audit-recovered events %q", msgs)
	}
	// The chain keeps every record the daemon could verify: all but the
	// three removed and the two forged.
	now := readLines(t, path)
	for i, l := range orig[:len(orig)-3] {
		if !bytes.Equal(now[i], l) {
			t.Fatalf("line %d of the chain changed:\n%s%s", i+1, l, now[i])
		}
	}
	// The evidence, verified, shows the forgery.
	mustBroken(t, verifyPath(t, ev[0], pinned(t)), "changes the keys in use")
}

// indexes returns the indexes of the lines of kind k.
func indexes(t *testing.T, lines [][]byte, k Kind) []int {
	t.Helper()
	var out []int
	for i, l := range lines {
		r, err := ParseRecord(bytes.TrimSuffix(l, []byte{'\n'}))
		if err != nil {
			t.Fatal(err)
		}
		if r.Kind == k {
			out = append(out, i)
		}
	}
	return out
}

func forgedCheckpoint(final bool) *Record {
	return &Record{Kind: KindCheckpoint, Checkpoint: &CheckpointInfo{Reason: "close", Final: final}}
}

// TestOfflineEdits: every kind of edit of a stopped daemon's log that we
// could think of. verify, as `audit verify --public-key --closed` runs
// it, must report it; the daemon, when it starts, must set aside whatever
// it cannot verify and sign nothing of it, so that its chain verifies
// again, without a forged record; and a plain cut, which leaves a genuine
// prefix, must not be taken for tampering.
func TestOfflineEdits(t *testing.T) {
	// The records a crash of the second run would leave after its last
	// checkpoint: three requests with MACs (see baseLog).
	crashTail := func(t *testing.T, l [][]byte) (lines [][]byte, tail int) {
		l = l[:len(l)-1] // the final checkpoint
		cps := indexes(t, l, KindCheckpoint)
		tail = cps[len(cps)-1] + 1
		if len(l)-tail < 3 {
			t.Fatalf("only %d records after the last checkpoint", len(l)-tail)
		}
		return l, tail
	}
	cases := []struct {
		name string
		edit func(t *testing.T, l [][]byte) [][]byte
		// What verify says, pinned, with --closed; and without --closed
		// ("": it cannot tell).
		closed, open string
		setAside     bool // the daemon sets records aside
	}{
		{"cut", func(t *testing.T, l [][]byte) [][]byte { return l[:len(l)-3] },
			"without the final record", "", false},
		{"cut, then a forged segment without keys and a request", func(t *testing.T, l [][]byte) [][]byte {
			return forge(t, l[:len(l)-3], nil, forgedSegment(nil), forgedRequest())
		}, "changes the keys in use", "changes the keys in use", true},
		{"cut, then a forged close", func(t *testing.T, l [][]byte) [][]byte {
			return forge(t, l[:len(l)-3], nil, forgedSegment(nil), forgedRequest(),
				&Record{Kind: KindEvent, Op: OpAuditClose, Msg: "the log was closed"})
		}, "changes the keys in use", "changes the keys in use", true},
		{"cut, then a forged final checkpoint", func(t *testing.T, l [][]byte) [][]byte {
			return forge(t, l[:len(l)-3], nil, forgedRequest(), forgedCheckpoint(true))
		}, "no MAC although the log has keys", "no MAC although the log has keys", true},
		{"records without MACs appended after the close", func(t *testing.T, l [][]byte) [][]byte {
			return forge(t, l, nil, forgedRequest())
		}, "appended to a closed log", "appended to a closed log", true},
		{"records with forged MACs appended after the close", func(t *testing.T, l [][]byte) [][]byte {
			return forge(t, l, randomKeys(t), forgedRequest())
		}, "appended to a closed log", "appended to a closed log", true},
		{"a segment naming the log's keys and records with forged MACs", func(t *testing.T, l [][]byte) [][]byte {
			// The MACs look right to whoever lacks the MAC key.
			seg := forge(t, l, testKeys(t), forgedSegment(testKeys(t)))
			return forge(t, seg, randomKeys(t), forgedRequest())
		}, "without the final record", "", true},
		{"records with forged MACs after the last checkpoint", func(t *testing.T, l [][]byte) [][]byte {
			l, _ = crashTail(t, l)
			return forge(t, l, randomKeys(t), forgedRequest())
		}, "without the final record", "", true},
		{"another daemon's log spliced in", func(t *testing.T, l [][]byte) [][]byte {
			x := randomKeys(t)
			return forge(t, l[:len(l)-3], x, forgedSegment(x), forgedRequest(), forgedRequest())
		}, "changes the keys in use", "changes the keys in use", true},
		{"another daemon's log spliced in, with its checkpoint", func(t *testing.T, l [][]byte) [][]byte {
			x := randomKeys(t)
			return forge(t, l[:len(l)-3], x, forgedSegment(x), forgedRequest(), forgedCheckpoint(true))
		}, "not trusted", "not trusted", true},
		{"a checkpoint signed with another daemon's key", func(t *testing.T, l [][]byte) [][]byte {
			return forge(t, l[:len(l)-1], randomKeys(t), forgedCheckpoint(true))
		}, "other keys", "other keys", true},
		{"an edited checkpoint", func(t *testing.T, l [][]byte) [][]byte {
			l, tail := crashTail(t, l)
			l[tail-1] = bytes.Replace(l[tail-1], []byte(`"reason":"count"`), []byte(`"reason":"other"`), 1)
			return l
		}, "chain hash does not match", "chain hash does not match", true},
		{"records reordered after the last checkpoint", func(t *testing.T, l [][]byte) [][]byte {
			l, tail := crashTail(t, l)
			l[tail], l[tail+1] = l[tail+1], l[tail]
			return l
		}, "missing", "missing", true},
		{"a record duplicated after the last checkpoint", func(t *testing.T, l [][]byte) [][]byte {
			l, tail := crashTail(t, l)
			return slices.Insert(l, tail+1, l[tail])
		}, "duplicated or out of order", "duplicated or out of order", true},
		{"the file reversed", func(t *testing.T, l [][]byte) [][]byte {
			slices.Reverse(l)
			return l
		}, "does not begin with a segment", "does not begin with a segment", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := baseLog(t)
			orig := readLines(t, path)
			lines := c.edit(t, slices.Clone(orig))
			writeLines(t, path, lines)

			mustBroken(t, verifyPath(t, path, pinnedClosed(t)), c.closed)
			if c.open != "" {
				mustBroken(t, verifyPath(t, path, pinned(t)), c.open)
			}

			daemonRun(t, path, testKeys(t), func(l *Log) { appendN(t, l, 2) })
			mustIntact(t, verifyPath(t, path, strict(t)))
			if chainHolds(t, path, forgedMark) {
				dump(t, path)
				t.Fatal("the daemon signed over a forged record")
			}
			ev, msgs := evidence(t, path), recovered(t, path)
			if !c.setAside {
				if len(ev) != 0 || len(msgs) != 0 {
					t.Fatalf("a genuine prefix was set aside: %v %q", ev, msgs)
				}
				return
			}
			// One file set aside (two for a file damaged at its end as
			// well: once for the damage, once for what the keys cannot
			// verify), each named by an event.
			if len(ev) == 0 || len(msgs) != len(ev) {
				dump(t, path)
				t.Fatalf("evidence %v, audit-recovered events %q", ev, msgs)
			}
			for _, e := range ev {
				if !slices.ContainsFunc(msgs, func(m string) bool { return strings.Contains(m, filepath.Base(e)) }) {
					t.Fatalf("no audit-recovered event names %s: %q", e, msgs)
				}
			}
			t.Logf("%q", msgs)
		})
	}
}

// TestUnsignedClose: a clean close counts only when it is signed, on a log
// that has had keys: the audit-close event a sealed daemon writes when it
// stops is no proof, since anyone can write one. On a log that never had
// keys, verified without a pinned key, it is the only close there is.
func TestUnsignedClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	daemonRun(t, path, testKeys(t), func(l *Log) {
		appendN(t, l, 2)
		if err := l.ClearKeys("keys-off"); err != nil { // sealed again, then stopped
			t.Fatal(err)
		}
		appendN(t, l, 1)
	})
	if rep := verifyPath(t, path, pinned(t)); !rep.Intact || rep.Closed {
		t.Fatalf("report %+v", rep)
	}
	mustBroken(t, verifyPath(t, path, pinnedClosed(t)), "audit-close event, which is not signed")
	mustBroken(t, verifyPath(t, path, VerifyOptions{RequireClosed: true}), "audit-close event, which is not signed")

	never := filepath.Join(t.TempDir(), "audit.log")
	daemonRun(t, never, nil, func(l *Log) { appendN(t, l, 1) })
	if rep := verifyPath(t, never, VerifyOptions{RequireClosed: true}); !rep.Intact || !rep.Closed {
		t.Fatalf("a log that never had keys, closed: %+v", rep)
	}
	// Pinned, it holds nothing signed with the key: nothing is vouched for.
	mustBroken(t, verifyPath(t, never, pinnedClosed(t)), "nothing in it is vouched for")
	mustBroken(t, verifyPath(t, never, pinned(t)), "nothing in it is vouched for")
}

// TestSealedRunIsSetAside: a daemon that ran sealed (never unsealed) and
// stopped left records nobody can vouch for, exactly like a forger's. The
// next run that gets its keys sets them aside rather than sign them, and
// until then verify says the keys changed without a signature.
func TestSealedRunIsSetAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	daemonRun(t, path, testKeys(t), func(l *Log) { appendN(t, l, 3) })
	keyed := readLines(t, path)
	daemonRun(t, path, nil, func(l *Log) {
		l.Append(&Record{Kind: KindRequest, Op: OpUnseal, Status: "PERMISSION_DENIED", Caller: Caller{PID: 1}, Msg: "wrong passphrase"})
	})
	mustBroken(t, verifyPath(t, path, pinned(t)), "changes the keys in use")
	daemonRun(t, path, testKeys(t), func(l *Log) { appendN(t, l, 1) })
	mustIntact(t, verifyPath(t, path, strict(t)))
	if chainHolds(t, path, "wrong passphrase") {
		t.Fatal("the records of the sealed run were signed")
	}
	ev := evidence(t, path)
	if len(ev) != 1 || !bytes.Contains(must(os.ReadFile(ev[0])), []byte("wrong passphrase")) {
		t.Fatalf("evidence %v", ev)
	}
	now := readLines(t, path)
	if !slices.EqualFunc(now[:len(keyed)], keyed, bytes.Equal) {
		t.Fatal("the first run's records were not kept")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestCutAtEveryBoundary: a log cut after any record is a genuine prefix.
// The daemon continues from it and sets aside exactly what it cannot
// verify (here: the records a run wrote before it had its keys, if the cut
// leaves them without the checkpoint that covered them); what it keeps is
// the prefix as it was; verify --closed sees every cut but one at an
// earlier clean close, and --expect with the last checkpoint sees all.
func TestCutAtEveryBoundary(t *testing.T) {
	src := baseLog(t)
	orig := readLines(t, src)
	last, _ := ParseRecord(bytes.TrimSuffix(orig[len(orig)-1], []byte{'\n'}))
	expect := []Checkpoint{{Seq: last.Seq, Hash: last.Hash}}
	for n := 1; n < len(orig); n++ {
		path := filepath.Join(t.TempDir(), "audit.log")
		writeLines(t, path, orig[:n])
		r, _ := ParseRecord(bytes.TrimSuffix(orig[n-1], []byte{'\n'}))
		closedHere := r.Kind == KindCheckpoint && r.Checkpoint.Final
		if rep := verifyPath(t, path, pinnedClosed(t)); rep.Intact != closedHere {
			t.Fatalf("cut after line %d: verify --closed says intact=%v: %v", n, rep.Intact, rep.Problem)
		}
		o := pinned(t)
		o.Expect = expect
		mustBroken(t, verifyPath(t, path, o), "tail was cut")

		daemonRun(t, path, testKeys(t), func(l *Log) { appendN(t, l, 1) })
		mustIntact(t, verifyPath(t, path, strict(t)))
		now := readLines(t, path)
		kept := 0
		for kept < n && kept < len(now) && bytes.Equal(now[kept], orig[kept]) {
			kept++
		}
		ev := evidence(t, path)
		switch {
		case kept == n && len(ev) == 0:
		case kept < n && len(ev) == 1:
			// Only records without MACs, which a sealed start wrote
			// before the checkpoint the cut removed, are set aside.
			for _, l := range orig[kept:n] {
				if bytes.Contains(l, []byte(`"mac":"`)) {
					t.Fatalf("cut after line %d: a record with a MAC was set aside:\n%s", n, l)
				}
			}
		default:
			t.Fatalf("cut after line %d: %d lines kept, evidence %v", n, kept, ev)
		}
	}
}

// TestForgedAtEveryBoundary: a log cut after any record, then continued by
// a forger (a segment without keys where the log has keys, then a
// request): the daemon never signs the forgery, and verify --closed always
// sees it.
func TestForgedAtEveryBoundary(t *testing.T) {
	src := baseLog(t)
	orig := readLines(t, src)
	for n := 1; n <= len(orig); n++ {
		path := filepath.Join(t.TempDir(), "audit.log")
		lines := slices.Clone(orig[:n])
		r, _ := ParseRecord(bytes.TrimSuffix(lines[n-1], []byte{'\n'}))
		if r.HasMAC || r.Kind == KindCheckpoint {
			lines = forge(t, lines, nil, forgedSegment(nil))
		}
		writeLines(t, path, forge(t, lines, nil, forgedRequest()))
		mustBroken(t, verifyPath(t, path, pinnedClosed(t)), "")

		daemonRun(t, path, testKeys(t), func(l *Log) { appendN(t, l, 1) })
		mustIntact(t, verifyPath(t, path, strict(t)))
		if chainHolds(t, path, forgedMark) {
			dump(t, path)
			t.Fatalf("cut after line %d: the daemon signed the forgery", n)
		}
		if len(evidence(t, path)) != 1 {
			t.Fatalf("cut after line %d: evidence %v", n, evidence(t, path))
		}
	}
}

// TestSetAsideUnderLoad: the keys arrive, and records must be set aside,
// while clients keep the log busy. Every append that succeeded is in the
// chain, once, and the chain verifies.
func TestSetAsideUnderLoad(t *testing.T) {
	for _, mode := range []SyncMode{SyncGrouped, SyncAlways} {
		t.Run(mode.String(), func(t *testing.T) {
			path := baseLog(t)
			orig := readLines(t, path)
			writeLines(t, path, forge(t, orig[:len(orig)-3], nil, forgedSegment(nil), forgedRequest()))
			l := openLog(t, Options{Path: path, Sync: mode})
			stop := make(chan struct{})
			ok := make(chan int, 4)
			for w := range 4 {
				go func() {
					n := 0
					defer func() { ok <- n }()
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						r := request(i)
						r.Conn = uint64(100 + w)
						if err := l.Append(r); err != nil {
							t.Errorf("append: %v", err)
							return
						}
						n++
					}
				}()
			}
			time.Sleep(20 * time.Millisecond)
			if err := l.SetKeys(testKeys(t)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
			close(stop)
			total := 0
			for range 4 {
				total += <-ok
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			mustIntact(t, verifyPath(t, path, strict(t)))
			n := 0
			ScanFiles(logFiles(t, path), Filter{}, func(r *Record) error {
				if r.Conn >= 100 {
					n++
				}
				return nil
			})
			if n != total || len(evidence(t, path)) != 1 || chainHolds(t, path, forgedMark) {
				t.Fatalf("%d appends succeeded, %d in the chain; evidence %v", total, n, evidence(t, path))
			}
		})
	}
}

// TestCheckAcrossRotation: a crash soon after a rotation leaves records
// after the last checkpoint in the new file, whose predecessor ends with a
// checkpoint: they verify. A crash right after the rotation leaves the new
// file empty: the log continues from the rotated one, and a forgery at
// its end is set aside there.
func TestCheckAcrossRotation(t *testing.T) {
	rotated := func(t *testing.T) (path string, files []string) {
		path = filepath.Join(t.TempDir(), "audit.log")
		l := openLog(t, Options{Path: path, RotateBytes: 4 << 10})
		if err := l.SetKeys(testKeys(t)); err != nil {
			t.Fatal(err)
		}
		for i := 0; len(logFiles(t, path)) < 2; i++ {
			if err := l.Append(request(i)); err != nil {
				t.Fatal(err)
			}
		}
		appendN(t, l, 2)
		l.Close()
		return path, logFiles(t, path)
	}
	t.Run("crash after the rotation", func(t *testing.T) {
		path, _ := rotated(t)
		lines := readLines(t, path)
		writeLines(t, path, lines[:len(lines)-1]) // no final checkpoint: a crash
		daemonRun(t, path, testKeys(t), nil)
		if ev := evidence(t, path); len(ev) != 0 {
			t.Fatalf("genuine records set aside: %v %q", ev, recovered(t, path))
		}
		mustIntact(t, verifyPath(t, path, strict(t)))
	})
	t.Run("forged, active file empty", func(t *testing.T) {
		path, files := rotated(t)
		prev := files[len(files)-2]
		// The rotation's new file lost, the rotated one forged at its end.
		os.Remove(path)
		writeLines(t, prev, forge(t, readLines(t, prev), nil, forgedSegment(nil), forgedRequest()))
		daemonRun(t, path, testKeys(t), func(l *Log) { appendN(t, l, 1) })
		mustIntact(t, verifyPath(t, path, strict(t)))
		ev := evidence(t, path)
		if chainHolds(t, path, forgedMark) || len(ev) != 1 || !strings.HasPrefix(filepath.Base(ev[0]), filepath.Base(prev)+".unverified-") {
			t.Fatalf("evidence %v", ev)
		}
	})
}

// TestDamagedWithKeys: a log opened with its keys, whose end is damaged
// and whose last records before the damage have forged MACs: one file is
// set aside, and the chain keeps only what verifies.
func TestDamagedWithKeys(t *testing.T) {
	path := baseLog(t)
	orig := readLines(t, path)
	lines := forge(t, orig[:len(orig)-1], randomKeys(t), forgedRequest())
	writeLines(t, path, append(lines, []byte("{\"v\":1,\"garbage\":true}\n")))
	l := openLog(t, Options{Path: path, Keys: testKeys(t)})
	appendN(t, l, 1)
	l.Close()
	mustIntact(t, verifyPath(t, path, strict(t)))
	if ev := evidence(t, path); chainHolds(t, path, forgedMark) || len(ev) != 1 || !strings.Contains(ev[0], ".damaged-") {
		t.Fatalf("evidence %v", ev)
	}
	if now := readLines(t, path); !slices.EqualFunc(now[:len(orig)-1], orig[:len(orig)-1], bytes.Equal) {
		t.Fatal("the verified records were not kept")
	}
}

// TestFollowAcrossSetAside: `audit tail -f` follows the log while the
// daemon, getting its keys, sets records aside: the new file renumbers
// what the follower has already seen past the cut, and the follower goes
// on with the recovery segment, the event, this run's records again and
// what comes after, not waiting for the seq it had reached.
func TestFollowAcrossSetAside(t *testing.T) {
	path := baseLog(t)
	orig := readLines(t, path)
	writeLines(t, path, forge(t, orig[:len(orig)-3], nil, forgedSegment(nil), forgedRequest(), forgedRequest(), forgedRequest()))
	l := openLog(t, Options{Path: path})
	defer l.Close()
	_, last, err := Last(path, 0, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan *Record, 100)
	done := make(chan error, 1)
	go func() {
		done <- Follow(ctx, path, last, Filter{}, time.Millisecond, func(r *Record) error {
			got <- r
			return nil
		})
	}()
	next := func(what string) *Record {
		t.Helper()
		select {
		case r := <-got:
			return r
		case <-time.After(20 * time.Second):
			t.Fatalf("follow stalled before %s", what)
		}
		return nil
	}
	if err := l.Append(request(1000)); err != nil {
		t.Fatal(err)
	}
	if r := next("the first request"); r.Request != 1000 {
		t.Fatalf("followed %+v", r)
	}
	if err := l.SetKeys(testKeys(t)); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(request(1001)); err != nil {
		t.Fatal(err)
	}
	var ops []string
	for {
		r := next("the request after the keys")
		switch r.Kind {
		case KindSegment:
			ops = append(ops, "segment "+r.Segment.Reason)
		case KindCheckpoint:
			ops = append(ops, "checkpoint "+r.Checkpoint.Reason)
		default:
			ops = append(ops, r.Op)
		}
		if r.Request == 1001 {
			break
		}
	}
	want := []string{"segment recovery", OpAuditRecovered, "segment start", "encrypt", "checkpoint keys", "encrypt"}
	if !slices.Equal(ops, want) {
		t.Fatalf("followed %q, want %q", ops, want)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
