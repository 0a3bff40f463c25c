package genid

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/random"
)

// UeventMsg is one kernel uevent as NETLINK_KOBJECT_UEVENT delivers it:
// "ACTION@DEVPATH\0KEY=VALUE\0KEY=VALUE\0...".
type UeventMsg struct {
	Action  string
	DevPath string
	Env     map[string]string
}

var errUeventFormat = errors.New("not a kernel uevent")

// ParseUevent parses one kernel uevent. Messages that udev re-broadcasts
// (they start with "libudev") are not kernel uevents and are refused.
func ParseUevent(b []byte) (UeventMsg, error) {
	var u UeventMsg
	fields := bytes.Split(b, []byte{0})
	if len(fields) == 0 {
		return u, errUeventFormat
	}
	action, devpath, ok := bytes.Cut(fields[0], []byte{'@'})
	if !ok || len(action) == 0 || len(devpath) == 0 || devpath[0] != '/' {
		return u, errUeventFormat
	}
	u.Action, u.DevPath = string(action), string(devpath)
	u.Env = make(map[string]string)
	for _, f := range fields[1:] {
		if k, v, ok := bytes.Cut(f, []byte{'='}); ok && len(k) > 0 {
			u.Env[string(k)] = string(v)
		}
	}
	return u, nil
}

// IsVMGenIDChange reports whether u is the uevent Linux 6.8's vmgenid
// driver sent when the VM generation ID changed.
func (u UeventMsg) IsVMGenIDChange() bool {
	return u.Action == "change" && u.Env["NEW_VMGENID"] == "1"
}

// Uevent is the NEW_VMGENID=1 uevent as a source. Only Linux 6.8 sent it
// (it was removed again), so the source is active on 6.8 kernels, or on
// any kernel when Force is set.
type Uevent struct {
	Force bool
	// Release is the kernel release to judge by; empty means uname's.
	Release string
	f       *os.File
	// observe, if set, sees every kernel uevent (tests).
	observe func(UeventMsg)
}

func (u *Uevent) Name() string { return "uevent" }

// Attests: the vmgenid driver sends the uevent after it re-seeded the
// kernel's generator.
func (u *Uevent) Attests() random.Freshness { return random.Kernel }

func (u *Uevent) Open() (string, error) {
	rel := u.Release
	if rel == "" {
		var un unix.Utsname
		if err := unix.Uname(&un); err == nil {
			rel = unix.ByteSliceToString(un.Release[:])
		}
	}
	if !u.Force && !ueventKernel(rel) {
		return "", fmt.Errorf("this kernel (%s) does not send NEW_VMGENID uevents (only Linux 6.8 did)", rel)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return "", fmt.Errorf("netlink socket: %v", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		unix.Close(fd)
		return "", fmt.Errorf("bind to kernel uevents: %v", err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	u.f = os.NewFile(uintptr(fd), "uevent")
	return "kernel uevents for NEW_VMGENID=1", nil
}

// ueventKernel reports whether a kernel release is one that sent the
// NEW_VMGENID uevent: 6.8.
func ueventKernel(rel string) bool {
	major, rest, _ := strings.Cut(rel, ".")
	minor, _, _ := strings.Cut(rest, ".")
	minor, _, _ = strings.Cut(minor, "-")
	return major == "6" && minor == "8"
}

func (u *Uevent) Run(ctx context.Context, report func(string)) {
	rc, err := u.f.SyscallConn()
	if err != nil {
		return
	}
	stop := context.AfterFunc(ctx, func() { u.f.Close() })
	defer stop()
	buf := make([]byte, 8192)
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			return // closed
		}
		if rerr != nil {
			continue // ENOBUFS: events were lost; the other sources still see the change
		}
		// Only the kernel (port 0) sends to this group.
		if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
			continue
		}
		m, err := ParseUevent(buf[:n])
		if err != nil {
			continue
		}
		if u.observe != nil {
			u.observe(m)
		}
		if m.IsVMGenIDChange() {
			report("uevent NEW_VMGENID=1 from " + m.DevPath + seqnum(m))
		}
	}
}

func seqnum(m UeventMsg) string {
	if s, err := strconv.ParseUint(m.Env["SEQNUM"], 10, 64); err == nil {
		return fmt.Sprintf(" (seqnum %d)", s)
	}
	return ""
}

func (u *Uevent) Close() error {
	if u.f == nil {
		return nil
	}
	err := u.f.Close()
	if errors.Is(err, os.ErrClosed) {
		return nil
	}
	return err
}
