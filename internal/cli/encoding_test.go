package cli

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// openPTY returns a pseudo-terminal's two ends.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skip("no pseudo-terminals: ", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Skip("unlockpt: ", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Skip("ptsname: ", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Skip("open the terminal: ", err)
	}
	t.Cleanup(func() { s.Close(); m.Close() })
	return m, s
}

// A binary result goes raw to a pipe or file, as hex to a terminal, and as
// --encoding says when it is given.
func TestBinaryResultEncoding(t *testing.T) {
	b := []byte{0x00, 0xff, 0x10, 0x0a}
	var buf bytes.Buffer
	if err := writeBinary(&env{stdout: &buf}, &flags{}, b); err != nil || !bytes.Equal(buf.Bytes(), b) {
		t.Errorf("to a pipe: %x, %v", buf.Bytes(), err)
	}
	for enc, want := range map[string]string{"hex": "00ff100a\n", "base64": "AP8QCg==\n", "raw": string(b)} {
		buf.Reset()
		if err := writeBinary(&env{stdout: &buf}, &flags{encoding: enc}, b); err != nil || buf.String() != want {
			t.Errorf("--encoding %s: %q, %v", enc, buf.String(), err)
		}
	}
	master, slave := openPTY(t)
	if err := writeBinary(&env{stdout: slave}, &flags{}, b); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 64)
	n, err := master.Read(got)
	if err != nil || strings.TrimSpace(string(got[:n])) != "00ff100a" {
		t.Errorf("to a terminal: %q, %v", got[:n], err)
	}
}
