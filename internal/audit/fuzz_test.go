package audit

import (
	"bytes"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseRecord: any input either fails to parse or is the canonical
// encoding of what it parses to.
func FuzzParseRecord(f *testing.F) {
	for _, r := range sampleRecords() {
		f.Add(AppendLine(nil, r))
	}
	f.Add([]byte(`{"v":1}`))
	f.Add([]byte(`{"v":1,"seq":1,"time":"2026-01-01T00:00:00.000000000Z","mono":0,"kind":"request","caller":{"pid":1,"uid":0,"gid":0},"h":"` +
		"0000000000000000000000000000000000000000000000000000000000000000" + `"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRecord(b)
		if err != nil {
			return
		}
		line := AppendLine(nil, r)
		if !bytes.Equal(bytes.TrimSuffix(line, []byte{'\n'}), bytes.TrimSuffix(b, []byte{'\n'})) {
			t.Fatalf("parsed but not canonical:\n%q\n%q", b, line)
		}
		rawParts(bytes.TrimSuffix(b, []byte{'\n'}), r)
	})
}

// FuzzVerify feeds arbitrary bytes to the verifier, as one file and split
// in two: it must report, never panic; and in a log it calls intact, a
// change to any byte the chain covers must be caught.
func FuzzVerify(f *testing.F) {
	var seed bytes.Buffer
	k := fuzzKeys
	for _, r := range sampleRecords() {
		seed.Write(AppendLine(nil, r))
	}
	f.Add(seed.Bytes(), 10)
	f.Add([]byte("\n\n{}\n"), 1)
	f.Add(smallLog(f), 300)
	f.Add(append(smallLog(f), make([]byte, 300)...), 200) // zeros past the records
	withZeros := smallLog(f)
	f.Add(append(append(withZeros[:len(withZeros)/2:len(withZeros)/2], make([]byte, 40)...), withZeros[len(withZeros)/2:]...), 100)
	f.Fuzz(func(t *testing.T, b []byte, cut int) {
		opts := VerifyOptions{PublicKeys: []ed25519.PublicKey{k.PublicKey()}, Keys: []*Keys{k}}
		rep, err := Verify([]Input{{Name: "a", R: bytes.NewReader(b)}}, opts)
		if err != nil || rep == nil {
			t.Fatalf("verify: %v", err)
		}
		if rep.Intact != (rep.Problem == nil) {
			t.Fatalf("report %+v", rep)
		}
		if rep.Intact && rep.Records > 0 {
			// Any change to what the chain covers must be caught.
			i := bytes.IndexByte(b, '\n')
			r, err := ParseRecord(b[:i])
			if err != nil {
				t.Fatalf("intact log with a bad first line: %v", err)
			}
			prefix, _ := rawParts(b[:i], r)
			c := bytes.Clone(b)
			c[prefix/2] ^= 0x01
			rep2, _ := Verify([]Input{{Name: "a", R: bytes.NewReader(c)}}, opts)
			if rep2.Intact {
				t.Fatalf("a changed byte went unnoticed:\n%q\n%q", b[:i], c[:i])
			}
		}
		if cut < 0 || cut > len(b) {
			cut = len(b) / 2
		}
		if _, err := Verify([]Input{{"a", bytes.NewReader(b[:cut])}, {"b", bytes.NewReader(b[cut:])}}, opts); err != nil {
			t.Fatal(err)
		}
		Scan(bytes.NewReader(b), Filter{Op: "x", Key: "ab"}, func(*Record) error { return nil })
	})
}

// fuzzKeys are derived outside the fuzz function: derived inside it (in
// the fuzzing goroutine), they make the fuzzing engine crawl, for reasons
// of its own.
var fuzzKeys, _ = DeriveKeys(testSecret)

// smallLog is a real log of a few records. It is written by another
// goroutine, for the reason given above fuzzKeys.
func smallLog(f *testing.F) []byte {
	dir := f.TempDir()
	ch := make(chan []byte)
	go func() {
		var b bytes.Buffer
		defer func() { ch <- b.Bytes() }()
		k, _ := DeriveKeys(testSecret)
		l, err := Open(Options{Path: filepath.Join(dir, "audit.log"), Keys: k, CheckpointEvery: 3})
		if err != nil {
			return
		}
		for i := range 4 {
			l.Append(request(i))
		}
		l.Close()
		data, _ := os.ReadFile(l.opts.Path)
		b.Write(data)
	}()
	return <-ch
}

// freshKeys hands out keys derived by another goroutine, for the reason
// given above fuzzKeys: a log destroys its keys when it is closed.
var freshKeys = func() chan *Keys {
	ch := make(chan *Keys)
	go func() {
		for {
			k, _ := DeriveKeys(testSecret)
			ch <- k
		}
	}()
	return ch
}()

// FuzzStart gives a starting log any file as the log of earlier runs, and
// its keys, as a daemon unsealed at start: it must neither fail nor
// panic; it must keep that file, as it is or set aside as evidence; and
// whatever of it the chain keeps after the check must verify: a problem
// verify finds can only lie in the records before the last checkpoint it
// signed, which it does not check again.
func FuzzStart(f *testing.F) {
	seed := smallLog(f)
	f.Add(seed)
	lines := bytes.SplitAfter(seed, []byte{'\n'})
	f.Add(bytes.Join(lines[:len(lines)-2], nil))
	f.Add(append(bytes.Clone(seed), `{"v":1,"seq":99}`+"\n"...))
	f.Add(append(bytes.Clone(seed), make([]byte, 100)...))
	f.Add([]byte("garbage\n"))
	// The attack: cut, then records without keys.
	f.Add(bytes.Join(forge(f, lines[:len(lines)-3], nil, forgedSegment(nil), forgedRequest()), nil))
	f.Fuzz(fuzzStart)
}

func fuzzStart(t *testing.T, data []byte) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := Open(Options{Path: path, Reserve: -1})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if err := l.Append(request(1)); err != nil {
		t.Fatal(err)
	}
	if err := l.SetKeys(<-freshKeys); err != nil {
		t.Fatalf("set keys: %v", err)
	}
	if err := l.Append(request(2)); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// The file found is kept: as the chain's start, or as evidence.
	found := bytes.TrimRight(data, "\x00")
	found = found[:bytes.LastIndexByte(found, '\n')+1]
	names, _ := filepath.Glob(path + "*")
	kept := false
	for _, n := range names {
		b, _ := os.ReadFile(n)
		kept = kept || bytes.HasPrefix(b, found)
	}
	if !kept {
		t.Fatalf("the file found is in none of %v", names)
	}
	rep, err := VerifyFiles([]string{path}, VerifyOptions{Keys: []*Keys{fuzzKeys}, RequireClosed: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Intact {
		return
	}
	now, _ := os.ReadFile(path)
	same := 0
	for i := range min(len(now), len(found)) {
		if now[i] != found[i] {
			break
		}
		same = i + 1
	}
	if p := rep.Problem; p.Line < 1 || p.Line > bytes.Count(now[:same], []byte{'\n'}) {
		t.Fatalf("the log after the check is not intact past what it found: %v\n%s", p, now)
	}
}
