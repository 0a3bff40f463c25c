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
)

// encrypt and decrypt stream: the command's peak memory does not grow
// with the file (a 128 MiB file costs what a 32 MiB file does, within a
// few chunk batches), and stays below the size of the file.
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
	measure := func(size int64) (enc, dec int64) {
		plain := filepath.Join(dir, "plain")
		f, err := os.Create(plain)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(f, rand.Reader, size); err != nil {
			t.Fatal(err)
		}
		f.Close()
		enc = peak([]string{"encrypt", "--key", "files"}, plain, filepath.Join(dir, "ct"))
		dec = peak([]string{"decrypt", "--key", "files"}, filepath.Join(dir, "ct"), filepath.Join(dir, "out"))
		if !sameFile(t, plain, filepath.Join(dir, "out")) {
			t.Fatalf("%d bytes: the decrypted file differs", size)
		}
		return enc, dec
	}
	const small, large = 32 << 20, 128 << 20
	se, sd := measure(small)
	le, ld := measure(large)
	t.Logf("peak memory: encrypt %d MiB (32 MiB file), %d MiB (128 MiB file); decrypt %d MiB, %d MiB", se>>20, le>>20, sd>>20, ld>>20)
	for _, p := range []struct {
		name         string
		small, large int64
	}{{"encrypt", se, le}, {"decrypt", sd, ld}} {
		if p.large-p.small > 16<<20 || p.large > large/2 {
			t.Errorf("%s: peak memory %d MiB for a 128 MiB file, %d MiB for 32 MiB: it grows with the input", p.name, p.large>>20, p.small>>20)
		}
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
