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
