package linuxaudit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Message types (linux/audit.h, libaudit.h).
const (
	CryptoKeyUser     uint16 = 2404 // AUDIT_CRYPTO_KEY_USER: create, delete, use of keys
	CryptoFailureUser uint16 = 2405 // AUDIT_CRYPTO_FAILURE_USER: failed encrypt, decrypt, self-test
)

// capAuditWrite is CAP_AUDIT_WRITE's bit.
const capAuditWrite = 29

// Event is one message.
type Event struct {
	Type        uint16 // CryptoKeyUser or CryptoFailureUser
	Op          string // op=: what was done, e.g. "generate", "destroy"
	Kind        string // kind=: the key's algorithm
	Fingerprint string // fp=: the key's id
	// PID and UID (spid=, suid=) are the client's, as the kernel attested
	// them; PID <= 0 means there is none (an event of the daemon itself:
	// spid=? suid=4294967295).
	PID     int32
	UID     uint32
	Success bool // res=success or res=failed
}

// needsEncoding mirrors libaudit's audit_value_needs_encoding: a value
// with a quote, a space or control character, DEL, or a byte outside
// ASCII is written in hex.
func needsEncoding(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '"' || c < 0x21 || c >= 0x7f {
			return true
		}
	}
	return false
}

// value formats an unquoted field value: "?" when empty, uppercase hex
// when it needs encoding.
func value(s string) string {
	if s == "" {
		return "?"
	}
	if needsEncoding(s) {
		return strings.ToUpper(fmt.Sprintf("%x", s))
	}
	return s
}

// quoted formats a field that libaudit quotes (exe=): "VALUE", or hex.
func quoted(s string) string {
	if s == "" {
		return `"?"`
	}
	if needsEncoding(s) {
		return strings.ToUpper(fmt.Sprintf("%x", s))
	}
	return `"` + s + `"`
}

// Format returns e's message text; exe is the sending program's path.
func Format(e Event, exe string) string {
	// An unknown uid is written as (uint32)-1, as the kernel writes an
	// unset auid: ausearch shows it as "unset" (a "?" would read as 0,
	// root).
	spid, suid := "?", "4294967295"
	if e.PID > 0 {
		spid = strconv.FormatInt(int64(e.PID), 10)
		suid = strconv.FormatUint(uint64(e.UID), 10)
	}
	res := "failed"
	if e.Success {
		res = "success"
	}
	return "op=" + value(e.Op) + " kind=" + value(e.Kind) + " fp=" + value(e.Fingerprint) +
		" direction=? spid=" + spid + " suid=" + suid + " rport=? laddr=? lport=?" +
		" exe=" + quoted(exe) + " hostname=? addr=? terminal=? res=" + res
}

// Status says whether messages go out, and how many did.
type Status struct {
	Enabled bool
	Reason  string // why not, when not enabled
	Sent    uint64 // accepted by the kernel
	Dropped uint64 // not sent: the queue was full, or sending was off
	Failed  uint64 // refused by the kernel
}

// Sender sends Events to the kernel. A nil *Sender, or one that could not
// be enabled, drops everything.
type Sender struct {
	fd        int
	exe       string
	log       *slog.Logger
	ch        chan Event
	done      chan struct{}
	wg        sync.WaitGroup
	sockMu    sync.Mutex // serializes use of the socket (and seq) between run and SendSync
	closeOnce sync.Once
	seq       uint32
	enabled   atomic.Bool // Send queues
	off       atomic.Bool // the kernel refused: deliver drops
	sent      atomic.Uint64
	dropped   atomic.Uint64
	failed    atomic.Uint64

	mu     sync.Mutex // guards reason
	reason string
}

// QueueLength bounds the messages waiting to be sent.
const QueueLength = 4096

// New opens a Sender. It is enabled if the process has CAP_AUDIT_WRITE
// and can open an audit socket; the kernel's first answer may still turn
// it off (see Status). logger may be nil.
func New(logger *slog.Logger) *Sender {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Sender{fd: -1, log: logger, ch: make(chan Event, QueueLength), done: make(chan struct{})}
	s.exe, _ = os.Readlink("/proc/self/exe")
	if !hasCapAuditWrite() {
		s.reason = "the daemon lacks CAP_AUDIT_WRITE"
		return s
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_AUDIT)
	if err != nil {
		s.reason = "no audit socket: " + err.Error()
		return s
	}
	tv := unix.NsecToTimeval(int64(time.Second))
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		s.reason = "cannot bind the audit socket: " + err.Error()
		return s
	}
	s.fd = fd
	s.enabled.Store(true)
	s.wg.Add(1)
	go s.run()
	return s
}

func hasCapAuditWrite() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[0].Effective&(1<<capAuditWrite) != 0
}

// Send queues e without waiting. It is dropped (and counted) if sending
// is off or the queue is full.
func (s *Sender) Send(e Event) {
	if s == nil {
		return
	}
	if !s.enabled.Load() {
		s.dropped.Add(1)
		return
	}
	select {
	case s.ch <- e:
	default:
		s.dropped.Add(1)
	}
}

// Status returns the sender's state.
func (s *Sender) Status() Status {
	if s == nil {
		return Status{Reason: "not configured"}
	}
	s.mu.Lock()
	reason := s.reason
	s.mu.Unlock()
	return Status{Enabled: s.enabled.Load(), Reason: reason, Sent: s.sent.Load(),
		Dropped: s.dropped.Load(), Failed: s.failed.Load()}
}

// closeWait bounds how long Close waits for queued messages: the kernel
// can hold a sender while auditd's backlog is full.
const closeWait = 2 * time.Second

// Close sends what is queued, for at most a couple of seconds, and closes
// the socket. Later Sends are dropped.
func (s *Sender) Close() {
	if s == nil || s.fd < 0 {
		return
	}
	s.closeOnce.Do(func() {
		s.enabled.Store(false)
		close(s.done)
		finished := make(chan struct{})
		go func() {
			s.wg.Wait()
			close(finished)
		}()
		select {
		case <-finished:
			unix.Close(s.fd)
		case <-time.After(closeWait):
			// Still held in the kernel: leave the socket to the goroutine.
			s.log.Warn("Linux audit messages still queued at close", "queued", len(s.ch))
		}
	})
}

func (s *Sender) run() {
	defer s.wg.Done()
	for {
		select {
		case e := <-s.ch:
			s.deliver(e)
		case <-s.done:
			deadline := time.Now().Add(closeWait)
			for {
				select {
				case e := <-s.ch:
					if time.Now().After(deadline) {
						s.dropped.Add(1)
						continue
					}
					s.deliver(e)
				default:
					return
				}
			}
		}
	}
}

func (s *Sender) deliver(e Event) {
	if s.off.Load() {
		s.dropped.Add(1)
		return
	}
	err := s.send(e.Type, Format(e, s.exe))
	switch {
	case err == nil:
		s.sent.Add(1)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.ECONNREFUSED), errors.Is(err, unix.EPROTONOSUPPORT):
		// This kernel does not take audit messages from us (typically a
		// container): stop trying, and say so once.
		s.enabled.Store(false)
		s.off.Store(true)
		s.dropped.Add(1)
		s.mu.Lock()
		s.reason = "the kernel refuses audit messages from this process: " + err.Error()
		s.mu.Unlock()
		s.log.Warn("Linux audit messages are off", "err", err)
	default:
		s.failed.Add(1)
		s.log.Warn("Linux audit message not sent", "err", err)
	}
}

// SendSync sends one message now and waits for the kernel's answer. It is
// for tests and diagnostics; the daemon uses Send.
func (s *Sender) SendSync(e Event) error {
	if s == nil || s.fd < 0 {
		return errors.New("linuxaudit: sender not enabled")
	}
	return s.send(e.Type, Format(e, s.exe))
}

// send sends msg as one audit user message and waits for the kernel's
// acknowledgement.
func (s *Sender) send(typ uint16, msg string) error {
	s.sockMu.Lock()
	defer s.sockMu.Unlock()
	s.seq++
	b := NewMessage(typ, s.seq, msg)
	for {
		err := unix.Sendto(s.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		break
	}
	return s.ack(s.seq)
}

// NewMessage builds a netlink message: a header (length, type,
// NLM_F_REQUEST|NLM_F_ACK, seq, port 0) and the text with its NUL, padded
// to 4 bytes, as libaudit's audit_send does.
func NewMessage(typ uint16, seq uint32, msg string) []byte {
	n := unix.NLMSG_HDRLEN + len(msg) + 1
	b := make([]byte, (n+unix.NLMSG_ALIGNTO-1) & ^(unix.NLMSG_ALIGNTO-1))
	binary.NativeEndian.PutUint32(b[0:], uint32(n))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint16(b[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(b[8:], seq)
	copy(b[unix.NLMSG_HDRLEN:], msg)
	return b
}

// ack waits for the NLMSG_ERROR that answers seq; its error 0 is success.
func (s *Sender) ack(seq uint32) error {
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("linuxaudit: no answer from the kernel: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("linuxaudit: bad answer from the kernel: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq || m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			if e := int32(binary.NativeEndian.Uint32(m.Data[:4])); e != 0 {
				return unix.Errno(-e)
			}
			return nil
		}
	}
}
