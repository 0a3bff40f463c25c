package audit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// series writes a closed log of three or more files (rotated every 8 KiB)
// with checkpoints every 10 records, and returns its files in order and
// the checkpoints published while it was written.
func series(t *testing.T) (files []string, cps []Checkpoint) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openLog(t, Options{Path: path, Keys: testKeys(t), CheckpointEvery: 10, RotateBytes: 8 << 10,
		OnCheckpoint: func(c Checkpoint) { cps = append(cps, c) }})
	appendN(t, l, 60)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	files = logFiles(t, path)
	if len(files) < 3 {
		t.Fatalf("want a rotated series, have %d files", len(files))
	}
	return files, cps
}

var strict = func(t *testing.T) VerifyOptions {
	return VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)}, Keys: []*Keys{testKeys(t)}, RequireClosed: true}
}

func verifyList(t *testing.T, files []string, o VerifyOptions) *Report {
	t.Helper()
	in := make([]Input, len(files))
	for i, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		in[i] = Input{Name: f, R: bytes.NewReader(b)}
	}
	rep, err := Verify(in, o)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestVerifyIntactSeries(t *testing.T) {
	files, cps := series(t)
	rep := verifyList(t, files, VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)}, Keys: []*Keys{testKeys(t)},
		RequireClosed: true, Expect: cps})
	mustIntact(t, rep)
	if rep.TrustedThrough != rep.LastSeq || rep.MACsChecked != rep.Records || len(rep.Files) != len(files) {
		t.Fatalf("report %+v", rep)
	}
	// Public key only: still intact, everything covered by the final
	// checkpoint.
	rep = verifyList(t, files, VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)}})
	mustIntact(t, rep)
	if rep.MACsChecked != 0 || rep.TrustedThrough != rep.LastSeq {
		t.Fatalf("report %+v", rep)
	}
	// Nothing pinned: intact, with a warning saying what that means.
	rep = verifyList(t, files, VerifyOptions{})
	mustIntact(t, rep)
	if rep.Pinned || !slices.ContainsFunc(rep.Warnings, func(w string) bool { return strings.Contains(w, "no trusted public key") }) {
		t.Fatalf("report %+v", rep)
	}
}

// tamper applies f to the lines of files[i] and returns the files.
func tamper(t *testing.T, files []string, i int, f func(lines [][]byte) [][]byte) []string {
	t.Helper()
	writeLines(t, files[i], f(readLines(t, files[i])))
	return files
}

func TestTamper(t *testing.T) {
	middle := func(lines [][]byte) int { return len(lines) / 2 }
	cases := []struct {
		name   string
		mutate func(t *testing.T, files []string) []string
		want   string
		line   bool // the problem names a line
	}{
		{"edit a byte", func(t *testing.T, f []string) []string {
			return tamper(t, f, 1, func(l [][]byte) [][]byte {
				i := middle(l)
				l[i] = bytes.Replace(l[i], []byte(`"uid":1000`), []byte(`"uid":1001`), 1)
				return l
			})
		}, "chain hash does not match", true},
		{"edit a byte of a hash", func(t *testing.T, f []string) []string {
			return tamper(t, f, 1, func(l [][]byte) [][]byte {
				i := middle(l)
				j := bytes.Index(l[i], []byte(`,"h":"`)) + 7
				l[i][j] ^= 1
				if !isHex(l[i][j]) {
					l[i][j] ^= 3
				}
				return l
			})
		}, "chain hash does not match", true},
		{"delete a record", func(t *testing.T, f []string) []string {
			return tamper(t, f, 1, func(l [][]byte) [][]byte { return slices.Delete(l, middle(l), middle(l)+1) })
		}, "missing", true},
		{"reorder records", func(t *testing.T, f []string) []string {
			return tamper(t, f, 1, func(l [][]byte) [][]byte {
				i := middle(l)
				l[i], l[i+1] = l[i+1], l[i]
				return l
			})
		}, "missing", true},
		{"duplicate a record", func(t *testing.T, f []string) []string {
			return tamper(t, f, 1, func(l [][]byte) [][]byte { return slices.Insert(l, middle(l), l[middle(l)]) })
		}, "duplicated or out of order", true},
		{"strip a MAC", func(t *testing.T, f []string) []string {
			return tamper(t, f, 1, func(l [][]byte) [][]byte {
				i := middle(l)
				j := bytes.Index(l[i], []byte(`","mac":"`))
				l[i] = append(l[i][:j+1:j+1], "}\n"...)
				return l
			})
		}, "no MAC", true},
		{"swap files", func(t *testing.T, f []string) []string {
			f[0], f[1] = f[1], f[0]
			return f
		}, "comes after", true},
		{"remove a middle file", func(t *testing.T, f []string) []string {
			return slices.Delete(f, 1, 2)
		}, "missing", true},
		{"cut the tail", func(t *testing.T, f []string) []string {
			last := len(f) - 1
			return tamper(t, f, last, func(l [][]byte) [][]byte { return l[:len(l)-3] })
		}, "without the final record", false},
		{"remove the last file", func(t *testing.T, f []string) []string {
			return f[:len(f)-1]
		}, "without the final record", false},
		{"an unterminated line in the middle", func(t *testing.T, f []string) []string {
			return tamper(t, f, 0, func(l [][]byte) [][]byte {
				l[len(l)-1] = l[len(l)-1][:10]
				return l
			})
		}, "incomplete last line", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			files, _ := series(t)
			files = c.mutate(t, files)
			p := mustBroken(t, verifyList(t, files, strict(t)), c.want)
			if c.line && (p.Line == 0 || p.File == "") {
				t.Fatalf("problem %+v names no line", p)
			}
			t.Logf("%v", p)
		})
	}
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }

// TestCutTailAfterCheckpoint: a log cut after a checkpoint is a valid
// prefix, and only a checkpoint published beyond the cut reveals it.
func TestCutTailAfterCheckpoint(t *testing.T) {
	files, cps := series(t)
	last := files[len(files)-1]
	lines := readLines(t, last)
	// Cut right after the first checkpoint of the last file.
	cut := -1
	for i, l := range lines {
		if bytes.Contains(l, []byte(`"kind":"checkpoint"`)) {
			cut = i + 1
			break
		}
	}
	if cut < 0 || cut == len(lines) {
		t.Fatal("no checkpoint to cut after")
	}
	writeLines(t, last, lines[:cut])
	// The file alone is a consistent prefix.
	rep := verifyList(t, files, VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)}, Keys: []*Keys{testKeys(t)}})
	mustIntact(t, rep)
	if rep.Closed {
		t.Fatal("a cut log reads as closed")
	}
	// Whoever holds the last published checkpoint sees the cut.
	rep = verifyList(t, files, VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)}, Expect: cps[len(cps)-1:]})
	p := mustBroken(t, rep, "tail was cut")
	if !p.MissingTail {
		t.Fatalf("problem %+v is not a missing tail", p)
	}
}

// TestForgedLog: someone who can write the log but holds no key rewrites
// a record and recomputes the chain after it, or makes a new log with a
// key of their own. Pinning the public key catches both; the MAC key
// catches the rewrite even after the last checkpoint.
func TestForgedLog(t *testing.T) {
	t.Run("rechained", func(t *testing.T) {
		files, _ := series(t)
		f := files[1]
		lines := readLines(t, f)
		i := len(lines) / 2
		lines[i] = bytes.Replace(lines[i], []byte(`"uid":1000`), []byte(`"uid":0`), 1)
		rechain(t, lines, files[0])
		writeLines(t, f, lines)
		// The hash chain alone is satisfied...
		rep := verifyList(t, files[:2], VerifyOptions{})
		if !rep.Intact && strings.Contains(rep.Problem.Reason, "chain hash") {
			t.Fatalf("rechaining failed: %v", rep.Problem)
		}
		// ...but not the MAC, nor the next checkpoint's signature.
		mustBroken(t, verifyList(t, files, VerifyOptions{Keys: []*Keys{testKeys(t)}}), "MAC does not verify")
		mustBroken(t, verifyList(t, files, VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)}}), "signature does not verify")
	})
	t.Run("own key", func(t *testing.T) {
		other, err := DeriveKeys(bytes.Repeat([]byte{7}, 32))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "audit.log")
		l := openLog(t, Options{Path: path, Keys: other})
		appendN(t, l, 5)
		l.Close()
		mustIntact(t, verifyPath(t, path, VerifyOptions{}))
		mustBroken(t, verifyPath(t, path, VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)}}), "not trusted")
	})
}

// rechain recomputes the chain hashes of lines (keeping MACs and
// signatures, which a forger cannot recompute), continuing from the last
// record of the file before.
func rechain(t *testing.T, lines [][]byte, before string) {
	t.Helper()
	prevLines := readLines(t, before)
	last, err := ParseRecord(prevLines[len(prevLines)-1])
	if err != nil {
		t.Fatal(err)
	}
	h := last.Hash
	for i, line := range lines {
		line = bytes.TrimSuffix(line, []byte{'\n'})
		r, err := ParseRecord(line)
		if err != nil {
			t.Fatal(err)
		}
		if r.Kind == KindSegment {
			r.Segment.Prev = h
		}
		if r.Kind == KindCheckpoint {
			r.Checkpoint.UptoHash = h
		}
		prefix := appendPrefix(nil, r)
		d := sha256.New()
		d.Write(h[:])
		d.Write(prefix)
		copy(r.Hash[:], d.Sum(nil))
		h = r.Hash
		lines[i] = AppendLine(nil, r)
	}
}

func TestTornTailIsNotTampering(t *testing.T) {
	files, _ := series(t)
	last := files[len(files)-1]
	b, _ := os.ReadFile(last)
	os.WriteFile(last, append(b, `{"v":1,"seq":`...), 0o600)
	rep := verifyList(t, files, strict(t))
	mustIntact(t, rep)
	if rep.TornBytes != int64(len(`{"v":1,"seq":`)) {
		t.Fatalf("torn bytes %d", rep.TornBytes)
	}
}

// TestVerifyFilesOrdersByContent: VerifyFiles puts files in chain order
// whatever their names, so renaming files is harmless, while Verify takes
// the order it is given.
func TestVerifyFilesOrdersByContent(t *testing.T) {
	files, _ := series(t)
	rev := slices.Clone(files)
	slices.Reverse(rev)
	rep, err := VerifyFiles(rev, strict(t))
	if err != nil {
		t.Fatal(err)
	}
	mustIntact(t, rep)
	mustBroken(t, verifyList(t, rev, strict(t)), "")
}

func TestNoSecretsInLog(t *testing.T) {
	files, _ := series(t)
	k := testKeys(t)
	secrets := [][]byte{testSecret, k.mac, k.priv.Seed()}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, s := range secrets {
			for _, form := range [][]byte{s, []byte(hexString(s)), []byte(strings.ToUpper(hexString(s)))} {
				if bytes.Contains(b, form) {
					t.Fatalf("%s contains key material", f)
				}
			}
		}
	}
}

func hexString(b []byte) string { return string(appendHex(nil, b)) }
