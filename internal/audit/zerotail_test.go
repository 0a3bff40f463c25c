package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"golang.org/x/sys/unix"
)

func TestZeroTailReader(t *testing.T) {
	z := func(n int) string { return strings.Repeat("\x00", n) }
	cases := []struct{ in, want string }{
		{"", ""},
		{"abc\n", "abc\n"},
		{"abc\n" + z(100), "abc\n"},
		{z(100), ""},
		{"ab" + z(3) + "cd\n" + z(70000), "ab" + z(3) + "cd\n"},               // zeros inside are data
		{"ab\n" + z(70000) + "x", "ab\n" + z(70000) + "x"},                    // so are zeros followed by data
		{"a" + z(5) + "b" + z(5) + "c" + z(5), "a" + z(5) + "b" + z(5) + "c"}, // several runs
		{"torn" + z(10), "torn"},
	}
	readers := map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"data+err": iotest.DataErrReader,
	}
	for _, c := range cases {
		for name, wrap := range readers {
			got, err := io.ReadAll(newZeroTail(wrap(strings.NewReader(c.in))))
			if err != nil {
				t.Fatalf("%q, %s: %v", c.in, name, err)
			}
			if string(got) != c.want {
				t.Errorf("%.20q, %s: read %d bytes %.20q, want %d bytes %.20q", c.in, name, len(got), got, len(c.want), c.want)
			}
		}
	}
	// A read error is passed on, after the data before it.
	boom := io.ErrUnexpectedEOF
	got, err := io.ReadAll(newZeroTail(io.MultiReader(strings.NewReader("ab"+z(4)), iotest.ErrReader(boom))))
	if err != boom || string(got) != "ab" {
		t.Fatalf("read %q, %v", got, err)
	}
}

// contentSize is the size of the log file at path without the zeros a
// log with SyncAlways extends it by.
func contentSize(t testing.TB, path string) int64 {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	size, err := fileSize(fd)
	if err != nil {
		t.Fatal(err)
	}
	end, err := zeroTailStart(fd, size)
	if err != nil {
		t.Fatal(err)
	}
	return end
}

func mustEndWithRecord(t testing.TB, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 || b[len(b)-1] != '\n' {
		t.Fatalf("%s does not end with a whole record: ...%q", filepath.Base(path), b[max(0, len(b)-20):])
	}
}

// TestAlwaysExtendsAhead: with SyncAlways the active file is extended
// ahead of its records, readers see only the records, and a closed or
// rotated file ends with its last record.
func TestAlwaysExtendsAhead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openLog(t, Options{Path: path, Keys: testKeys(t), Sync: SyncAlways, Reserve: 64 << 10, RotateBytes: 16 << 10})
	appendN(t, l, 60)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if files := logFiles(t, path); len(files) < 2 {
		t.Fatalf("no rotation: %v", files)
	}
	records := l.Status().FileBytes
	if st.Size() < records+32<<10 || contentSize(t, path) != records {
		t.Fatalf("active file: %d bytes, %d of records by status, %d before its zeros", st.Size(), records, contentSize(t, path))
	}
	// Readers of the live log see its records only.
	open := VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)}, Keys: []*Keys{testKeys(t)}}
	mustIntact(t, verifyPath(t, path, open))
	recs, _, err := Last(path, 5, Filter{HasKind: true, Kind: KindRequest})
	if err != nil || len(recs) != 5 || recs[4].Request != 59 {
		t.Fatalf("last: %d records, %v", len(recs), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	got := make(chan uint64, 100)
	var ferr error
	wg.Go(func() {
		ferr = Follow(ctx, path, recs[4].Seq, Filter{HasKind: true, Kind: KindRequest}, time.Millisecond, func(r *Record) error {
			got <- r.Request
			return nil
		})
	})
	for i := range 30 { // across a rotation
		if err := l.Append(request(100 + i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 30 {
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
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range logFiles(t, path) {
		mustEndWithRecord(t, f)
	}
	mustIntact(t, verifyPath(t, path, VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)}, Keys: []*Keys{testKeys(t)}, RequireClosed: true}))
}

// TestAlwaysCrashLeavesZeros: a file left extended by a crash verifies as
// it is, and the next Open cuts the zeros off silently, or a torn record
// and the zeros with a note counting the torn bytes alone.
func TestAlwaysCrashLeavesZeros(t *testing.T) {
	for _, torn := range []string{"", `{"seq":12345,"t":"20`} {
		name := "clean"
		if torn != "" {
			name = "torn"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "audit.log")
			l := openLog(t, Options{Path: path, Keys: testKeys(t), Sync: SyncAlways})
			appendN(t, l, 10)
			// What a crash leaves: the file as it is while the log is open.
			crashed := filepath.Join(dir, "crashed", "audit.log")
			os.Mkdir(filepath.Dir(crashed), 0o700)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			l.Close()
			end := bytes.LastIndexByte(b, '\n') + 1
			if end == len(b) {
				t.Fatal("the open file is not extended ahead of its records")
			}
			copy(b[end:], torn)
			if err := os.WriteFile(crashed, b, 0o600); err != nil {
				t.Fatal(err)
			}
			rep := verifyPath(t, crashed, VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)}, Keys: []*Keys{testKeys(t)}})
			mustIntact(t, rep)
			if rep.TornBytes != int64(len(torn)) {
				t.Fatalf("verify counts %d torn bytes, want %d", rep.TornBytes, len(torn))
			}

			l = openLog(t, Options{Path: crashed, Keys: testKeys(t), Sync: SyncAlways})
			appendN(t, l, 2)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			mustEndWithRecord(t, crashed)
			mustIntact(t, verifyPath(t, crashed, VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)}, Keys: []*Keys{testKeys(t)}, RequireClosed: true}))
			var notes []string
			ScanFiles([]string{crashed}, Filter{Op: OpAuditRecovered}, func(r *Record) error { notes = append(notes, r.Msg); return nil })
			switch {
			case torn == "" && len(notes) != 0:
				t.Fatalf("zeros reported as a recovery: %q", notes)
			case torn != "" && (len(notes) != 1 || !strings.Contains(notes[0], "cut off 20 bytes")):
				t.Fatalf("recovery notes %q, want one cutting off %d bytes", notes, len(torn))
			}
		})
	}
}

// TestNoZeroByteInRecords: readers take zeros for the end of a file's
// records, so no record may hold one, whatever its strings hold.
func TestNoZeroByteInRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openLog(t, Options{Path: path, Keys: testKeys(t)})
	r := request(1)
	r.Msg, r.Caller.Exe, r.Caller.Cgroup = "a\x00b", "/bin/\x00", "\x00"
	if err := l.Append(r); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.IndexByte(b, 0) >= 0 {
		t.Fatal("a record holds a zero byte")
	}
	mustIntact(t, verifyPath(t, path, strict(t)))
}

// FuzzZeroTail: whatever a file holds and however it is read, zeroTail
// passes on exactly the file without the zeros at its end.
func FuzzZeroTail(f *testing.F) {
	f.Add([]byte("abc\n\x00\x00\x00"), uint8(1))
	f.Add([]byte("a\x00\x00b\x00"), uint8(2))
	f.Add([]byte("\x00\x00\x00"), uint8(3))
	f.Add([]byte("x"), uint8(0))
	f.Fuzz(func(t *testing.T, b []byte, how uint8) {
		var r io.Reader = bytes.NewReader(b)
		switch how % 4 {
		case 1:
			r = iotest.OneByteReader(r)
		case 2:
			r = iotest.HalfReader(r)
		case 3:
			r = iotest.DataErrReader(r)
		}
		got, err := io.ReadAll(newZeroTail(r))
		if err != nil {
			t.Fatal(err)
		}
		if want := bytes.TrimRight(b, "\x00"); !bytes.Equal(got, want) {
			t.Fatalf("read %q from %q, want %q", got, b, want)
		}
	})
}
