package e2e_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/stream"
)

// encrypt and decrypt stream: the command's peak memory does not grow
// with the file (a 128 MiB file costs what a 32 MiB file does, within a
// few chunk batches), and stays well below the size of the file (three
// quarters of it: about 60 MiB is the runtime's and the chunk batches'
// own, which the garbage collector's timing on a loaded machine moves by
// a few MiB either way).
func TestStreamMemoryBounded(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	if _, err := c.Generate(context.Background(), keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "files"}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	peak := func(args []string, in, out string) int64 {
		t.Helper()
		src, err := os.Open(in)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		dst, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		defer dst.Close()
		cmd := exec.Command(binary(t), args...)
		cmd.Env = append(os.Environ(), mainEnv+"=1", keywarden.SocketEnv+"="+d.sock)
		cmd.Stdin, cmd.Stdout = src, dst
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The peak of the command's own memory (VmHWM), read while it
		// runs: its rusage would also count the memory of this process,
		// whose address space it shared until it ran exec.
		var hwm int64
		done := make(chan struct{})
		polled := make(chan struct{})
		go func() {
			defer close(polled)
			status := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
			for {
				if b, err := os.ReadFile(status); err == nil {
					for _, line := range strings.Split(string(b), "\n") {
						var kib int64
						if _, err := fmt.Sscanf(line, "VmHWM: %d kB", &kib); err == nil {
							hwm = max(hwm, kib<<10)
						}
					}
				}
				select {
				case <-done:
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
		}()
		err = cmd.Wait()
		close(done)
		<-polled
		if err != nil {
			t.Fatalf("%v: %v: %s", args, err, stderr.String())
		}
		if hwm == 0 {
			t.Fatal("could not read the command's peak memory")
		}
		return hwm
	}
	measure := func(size int64, format string) (enc, dec int64) {
		plain := filepath.Join(dir, "plain")
		f, err := os.Create(plain)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(f, rand.Reader, size); err != nil {
			t.Fatal(err)
		}
		f.Close()
		enc = peak([]string{"encrypt", "--key", "files", "--format", format}, plain, filepath.Join(dir, "ct"))
		dec = peak([]string{"decrypt", "--key", "files"}, filepath.Join(dir, "ct"), filepath.Join(dir, "out"))
		if !sameFile(t, plain, filepath.Join(dir, "out")) {
			t.Fatalf("%d bytes: the decrypted file differs", size)
		}
		return enc, dec
	}
	const small, large = 32 << 20, 128 << 20
	for _, format := range []string{"auto", "stream"} {
		se, sd := measure(small, format)
		le, ld := measure(large, format)
		t.Logf("--format %s: peak memory: encrypt %d MiB (32 MiB file), %d MiB (128 MiB file); decrypt %d MiB, %d MiB", format, se>>20, le>>20, sd>>20, ld>>20)
		for _, p := range []struct {
			name         string
			small, large int64
		}{{"encrypt", se, le}, {"decrypt", sd, ld}} {
			if p.large-p.small > 16<<20 || p.large > large*3/4 {
				t.Errorf("--format %s: %s: peak memory %d MiB for a 128 MiB file, %d MiB for 32 MiB: it grows with the input", format, p.name, p.large>>20, p.small>>20)
			}
		}
	}
}

// encrypt chooses the kind of stream as documented: above one message an
// envelope stream (one data-key operation in the audit log, whatever the
// size), with --format stream one sealed chunk by chunk by the daemon (an
// encryption per chunk); decrypt reads both, and the envelope stream's
// reading is one decryption (of its data key). The chunks of a stream may
// go several to a request, recorded as one record of several operations.
func TestStreamFormatsThroughCLI(t *testing.T) {
	sock, state, passFile := persistentSetup(t)
	d := startPersistent(t, sock, state, "--unseal-passphrase-file", passFile)
	initStore(t, d, passFile)
	c := d.client(t)
	keyOps := func() map[string]int {
		t.Helper()
		r := d.runCLI(t, nil, nil, "audit", "query", "--key", "files", "--json", "--log", filepath.Join(state, "audit.log"))
		if r.code != 0 {
			t.Fatalf("audit query: %s", r)
		}
		ops := map[string]int{}
		for line := range strings.Lines(r.stdout) {
			rec, err := audit.ParseRecord([]byte(line))
			if err != nil {
				t.Fatalf("audit query printed %q: %v", line, err)
			}
			if rec.Op != "batch" {
				ops[rec.Op]++
				continue
			}
			// A request of several operations: one record, each run
			// of alike operations an entry with its count.
			for _, e := range rec.Ops {
				ops[e.Op] += int(max(e.Count, 1))
			}
		}
		return ops
	}
	if _, err := c.Generate(context.Background(), keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "files"}); err != nil {
		t.Fatal(err)
	}
	plain := make([]byte, 3<<20+5)
	rand.Read(plain)
	for _, tc := range []struct {
		format string
		magic  byte
		ops    map[string]int // audit records of the key, by operation, after encrypt and decrypt
	}{
		// Two decryptions of the data key: the one that opened it, and the
		// one refused for the wrong additional data.
		{"auto", 3, map[string]int{"data-key": 1, "decrypt": 2}},
		{"envelope", 3, map[string]int{"data-key": 1, "decrypt": 2}},
		{"stream", 2, map[string]int{"encrypt": 48, "decrypt": 48}},
	} {
		t.Run(tc.format, func(t *testing.T) {
			before := keyOps()
			enc := d.runCLI(t, nil, plain, "encrypt", "--key", "files", "--aad", "x", "--format", tc.format)
			if enc.code != 0 || len(enc.stdout) < 3 || enc.stdout[2] != tc.magic {
				t.Fatalf("encrypt: exit %d, %s", enc.code, enc.stderr)
			}
			dec := d.runCLI(t, nil, []byte(enc.stdout), "decrypt", "--key", "files", "--aad", "x")
			if dec.code != 0 || dec.stdout != string(plain) {
				t.Fatalf("decrypt: exit %d, %s", dec.code, dec.stderr)
			}
			if bad := d.runCLI(t, nil, []byte(enc.stdout), "decrypt", "--key", "files", "--aad", "y"); bad.code != 1 || len(bad.stdout) != 0 {
				t.Fatalf("decrypt with other additional data: exit %d, %d bytes out", bad.code, len(bad.stdout))
			}
			after := keyOps()
			for op, n := range tc.ops {
				if got := after[op] - before[op]; got < n || (tc.magic == 3 && got != n) {
					t.Errorf("%s records: %d, want %d", op, got, n)
				}
			}
		})
	}
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	sum := func(p string) []byte {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		h := sha256.New()
		io.Copy(h, f)
		return h.Sum(nil)
	}
	return bytes.Equal(sum(a), sum(b))
}

// decrypt refuses a malformed envelope stream with a message and exit
// status 1, writing nothing: cut in its header or wrapped key, a wrapped
// key of no length, one that does not open, one that opens to a key of
// the wrong size (made by a caller who may encrypt), a chunk altered.
func TestStreamMalformedEnvelopeThroughCLI(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	ctx := context.Background()
	k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "files"})
	if err != nil {
		t.Fatal(err)
	}
	plain := make([]byte, 300<<10)
	rand.Read(plain)
	enc := d.runCLI(t, nil, plain, "encrypt", "--key", "files")
	if enc.code != 0 || enc.stdout[2] != 3 {
		t.Fatalf("encrypt: %s", enc.stderr)
	}
	good := []byte(enc.stdout)
	hdr, err := stream.ParseHeader(good)
	if err != nil {
		t.Fatal(err)
	}
	short, err := k.Encrypt(ctx, make([]byte, 16), stream.DataKeyAAD(nil, hdr, nil))
	if err != nil {
		t.Fatal(err)
	}
	pre, _ := stream.Preamble(short)
	wrongSize := append(append(hdr[:len(hdr):len(hdr)], pre...), make([]byte, 40)...)
	flipped := bytes.Clone(good)
	flipped[len(flipped)-100] ^= 1
	h := string(good[:stream.HeaderSize])
	for _, tc := range []struct {
		name, in, says string
	}{
		{"cut in the header", h[:10], "truncated"},
		{"header alone", h, "truncated"},
		{"empty wrapped key", h + "\x00\x00", "malformed"},
		{"cut in the wrapped key", h + "\x00\x40abc", "truncated"},
		{"wrapped key that does not open", h + "\x00\x03abc" + strings.Repeat("x", 50), "data key does not open"},
		{"data key of 16 bytes", string(wrongSize), "data key of 16 bytes"},
	} {
		r := d.runCLI(t, nil, []byte(tc.in), "decrypt", "--key", "files")
		if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, tc.says) || strings.Contains(r.stderr, "goroutine") {
			t.Errorf("%s: exit %d, %d bytes out, %s", tc.name, r.code, len(r.stdout), r.stderr)
		}
	}
	// An altered chunk: into a pipe goes the plaintext of the chunks
	// before it, authenticated (the consumer heeds the exit status); a
	// regular file is cut back to empty.
	if r := d.runCLI(t, nil, flipped, "decrypt", "--key", "files"); r.code != 1 || !strings.Contains(r.stderr, "chunk 4") || r.stdout != string(plain[:4<<16]) {
		t.Errorf("altered chunk into a pipe: exit %d, %d bytes out, %s", r.code, len(r.stdout), r.stderr)
	}
	out := filepath.Join(t.TempDir(), "plain")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(binary(t), "decrypt", "--key", "files")
	cmd.Env = append(os.Environ(), mainEnv+"=1", keywarden.SocketEnv+"="+d.sock)
	cmd.Stdin, cmd.Stdout = bytes.NewReader(flipped), f
	if err := cmd.Run(); err == nil {
		t.Fatal("decrypt of an altered stream into a file succeeded")
	}
	if st, err := os.Stat(out); err != nil || st.Size() != 0 {
		t.Fatalf("a failed decrypt left %d bytes in its file (%v)", st.Size(), err)
	}
}
