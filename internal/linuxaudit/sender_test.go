package linuxaudit

import (
	"bufio"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestFormat(t *testing.T) {
	cases := []struct {
		e    Event
		exe  string
		want string
	}{
		{Event{Type: CryptoKeyUser, Op: "generate", Kind: "ed25519", Fingerprint: "0011", PID: 4242, UID: 1000, Success: true},
			"/usr/bin/keywarden",
			`op=generate kind=ed25519 fp=0011 direction=? spid=4242 suid=1000 rport=? laddr=? lport=? exe="/usr/bin/keywarden" hostname=? addr=? terminal=? res=success`},
		{Event{Type: CryptoKeyUser, Op: "destroy", PID: 7, UID: 0},
			"/usr/bin/keywarden",
			`op=destroy kind=? fp=? direction=? spid=7 suid=0 rport=? laddr=? lport=? exe="/usr/bin/keywarden" hostname=? addr=? terminal=? res=failed`},
		// No caller: an event of the daemon itself.
		{Event{Type: CryptoFailureUser, Op: "self-test-failure", Kind: "aes256-gcm"},
			"/usr/bin/keywarden",
			`op=self-test-failure kind=aes256-gcm fp=? direction=? spid=? suid=4294967295 rport=? laddr=? lport=? exe="/usr/bin/keywarden" hostname=? addr=? terminal=? res=failed`},
		// Values that could break the key=value form are hex, as libaudit does.
		{Event{Type: CryptoKeyUser, Op: "a b", Kind: `x"y`, PID: 1, UID: 2, Success: true},
			"/opt/my app/kw",
			`op=612062 kind=782279 fp=? direction=? spid=1 suid=2 rport=? laddr=? lport=? exe=2F6F70742F6D79206170702F6B77 hostname=? addr=? terminal=? res=success`},
	}
	for _, c := range cases {
		if got := Format(c.e, c.exe); got != c.want {
			t.Errorf("Format(%+v)\n got %s\nwant %s", c.e, got, c.want)
		}
	}
}

func TestNewMessage(t *testing.T) {
	b := NewMessage(CryptoKeyUser, 9, "op=x")
	if len(b) != 24 || len(b)%4 != 0 {
		t.Fatalf("length %d", len(b))
	}
	if n := binary.NativeEndian.Uint32(b); n != 16+5 {
		t.Fatalf("nlmsg_len %d", n)
	}
	if typ := binary.NativeEndian.Uint16(b[4:]); typ != 2404 {
		t.Fatalf("type %d", typ)
	}
	if fl := binary.NativeEndian.Uint16(b[6:]); fl != unix.NLM_F_REQUEST|unix.NLM_F_ACK {
		t.Fatalf("flags %#x", fl)
	}
	if seq := binary.NativeEndian.Uint32(b[8:]); seq != 9 {
		t.Fatalf("seq %d", seq)
	}
	if string(b[16:21]) != "op=x\x00" {
		t.Fatalf("payload %q", b[16:])
	}
}

func TestNilSender(t *testing.T) {
	var s *Sender
	s.Send(Event{})
	s.Close()
	if st := s.Status(); st.Enabled {
		t.Fatal("nil sender enabled")
	}
}

// auditEnabled asks the kernel (AUDIT_GET, which needs CAP_AUDIT_CONTROL)
// whether auditing is on.
func auditEnabled(t *testing.T) (enabled bool, ok bool) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_AUDIT)
	if err != nil {
		return false, false
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(time.Second))
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	b := NewMessage(unix.AUDIT_GET, 1, "")[:unix.NLMSG_HDRLEN]
	binary.NativeEndian.PutUint32(b, unix.NLMSG_HDRLEN)
	if err := unix.Sendto(fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return false, false
	}
	buf := make([]byte, 8192)
	for range 4 {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil || n < unix.NLMSG_HDRLEN+8 {
			return false, false
		}
		if binary.NativeEndian.Uint16(buf[4:]) == unix.AUDIT_GET {
			// struct audit_status: mask, enabled, ...
			return binary.NativeEndian.Uint32(buf[unix.NLMSG_HDRLEN+4:]) != 0, true
		}
	}
	return false, false
}

// TestSendToKernel sends a real message. It needs CAP_AUDIT_WRITE and a
// kernel that takes audit messages from this process; where auditd runs
// and ausearch is installed it also finds the message in the audit trail,
// and where no daemon runs but auditing is on, in the kernel log.
func TestSendToKernel(t *testing.T) {
	s := New(nil)
	defer s.Close()
	if st := s.Status(); !st.Enabled {
		t.Skipf("Linux audit is off here: %s", st.Reason)
	}
	marker := "kwtest" + strconv.FormatInt(time.Now().UnixNano(), 16)
	err := s.SendSync(Event{Type: CryptoKeyUser, Op: "generate", Kind: "ed25519", Fingerprint: marker,
		PID: int32(os.Getpid()), UID: uint32(os.Getuid()), Success: true})
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ECONNREFUSED) {
		t.Skipf("the kernel refuses audit messages from this process: %v", err)
	}
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	// The asynchronous path, and its counters.
	s.Send(Event{Type: CryptoFailureUser, Op: "self-test-failure", Fingerprint: marker + "b"})
	deadline := time.Now().Add(10 * time.Second)
	for s.Status().Sent == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if st := s.Status(); st.Sent != 1 || !st.Enabled {
		t.Fatalf("status %+v", st)
	}

	enabled, known := auditEnabled(t)
	switch {
	case !known:
		t.Log("accepted by the kernel; cannot ask whether auditing is on")
	case !enabled:
		t.Log("accepted by the kernel; auditing is off, so it was not logged")
	default:
		if path, err := exec.LookPath("ausearch"); err == nil && auditdRunning() {
			var out []byte
			for time.Now().Before(deadline) {
				out, _ = exec.Command(path, "-m", "CRYPTO_KEY_USER", "-ts", "recent", "-i").CombinedOutput()
				if strings.Contains(string(out), marker) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if !strings.Contains(string(out), marker) {
				t.Fatalf("ausearch does not show the message:\n%s", out)
			}
			t.Logf("ausearch shows it")
		} else if found, ok := inKernelLog(marker, deadline); ok {
			if !found {
				t.Fatal("auditing is on but the message is not in the kernel log")
			}
			t.Log("found in the kernel log")
		} else {
			t.Log("accepted by the kernel; no ausearch or kernel log to look in")
		}
	}
}

func auditdRunning() bool {
	b, err := exec.Command("pidof", "auditd").Output()
	return err == nil && len(strings.TrimSpace(string(b))) > 0
}

// inKernelLog looks for marker among the audit lines of /dev/kmsg, where
// the kernel prints audit records when no audit daemon takes them.
func inKernelLog(marker string, deadline time.Time) (found, ok bool) {
	if auditdRunning() {
		return false, false
	}
	for time.Now().Before(deadline) {
		f, err := os.OpenFile("/dev/kmsg", os.O_RDONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			return false, false
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if strings.Contains(sc.Text(), marker) {
				f.Close()
				return true, true
			}
		}
		f.Close()
		time.Sleep(50 * time.Millisecond)
	}
	return false, true
}
