package genid

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/keywarden/keywarden/internal/random"
)

// VMForkLine is what Linux 5.18 and later log, as "random: crng reseeded
// due to virtual machine fork", when the vmgenid driver reports a new VM
// generation ID: the kernel has then re-seeded its random generator.
const VMForkLine = "crng reseeded due to virtual machine fork"

// KmsgRecord is one record of the kernel log as /dev/kmsg returns it:
// "PRIO,SEQ,TIMESTAMP,FLAGS[,...];MESSAGE\n" and continuation lines
// " KEY=VALUE\n".
type KmsgRecord struct {
	Facility int // 0: the kernel itself
	Level    int
	Seq      uint64
	Usec     uint64 // since boot
	Message  string // with the kernel's \xNN escapes left as they are
}

var errKmsgFormat = errors.New("not a kernel log record")

// ParseKmsg parses one record read from /dev/kmsg.
func ParseKmsg(b []byte) (KmsgRecord, error) {
	var r KmsgRecord
	semi := bytes.IndexByte(b, ';')
	if semi < 0 {
		return r, errKmsgFormat
	}
	fields := bytes.Split(b[:semi], []byte{','})
	if len(fields) < 4 {
		return r, errKmsgFormat
	}
	prio, err := strconv.ParseUint(string(fields[0]), 10, 16)
	if err != nil {
		return r, errKmsgFormat
	}
	if r.Seq, err = strconv.ParseUint(string(fields[1]), 10, 64); err != nil {
		return r, errKmsgFormat
	}
	if r.Usec, err = strconv.ParseUint(string(fields[2]), 10, 64); err != nil {
		return r, errKmsgFormat
	}
	r.Facility, r.Level = int(prio>>3), int(prio&7)
	msg := b[semi+1:]
	if nl := bytes.IndexByte(msg, '\n'); nl >= 0 {
		msg = msg[:nl] // continuation lines (" KEY=VALUE") follow
	}
	r.Message = string(msg)
	return r, nil
}

// IsVMFork reports whether r is the kernel's own report of a VM fork.
// Only the kernel logs with facility 0: a process that writes to /dev/kmsg
// gets another, so it cannot fake the line.
func (r KmsgRecord) IsVMFork() bool {
	return r.Facility == 0 && bytes.Contains([]byte(r.Message), []byte(VMForkLine))
}

// Kmsg is the kernel log as a source: it reads /dev/kmsg from the moment
// it is opened and reports every VM fork line.
type Kmsg struct {
	// Path is the kernel log device; empty means /dev/kmsg.
	Path string
	// SysRoot is where sysfs is mounted, to tell whether a vmgenid device
	// exists; empty means /sys.
	SysRoot string
	f       *os.File
}

func (k *Kmsg) Name() string { return "kmsg" }

// Attests: the kernel prints the line after it re-seeded its generator.
func (k *Kmsg) Attests() random.Freshness { return random.Kernel }

func (k *Kmsg) Open() (string, error) {
	path := k.Path
	if path == "" {
		path = "/dev/kmsg"
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return "", fmt.Errorf("cannot read %s: permission denied (kernel.dmesg_restrict: needs CAP_SYSLOG)", path)
		}
		return "", fmt.Errorf("cannot read %s: %v", path, err)
	}
	// Only what the kernel logs from now on counts.
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return "", fmt.Errorf("cannot seek to the end of %s: %v", path, err)
	}
	k.f = f
	detail := fmt.Sprintf("%s for %q", path, VMForkLine)
	if dev := vmgenidDevice(k.SysRoot); dev != "" {
		detail += " (vmgenid device " + dev + ")"
	} else {
		detail += " (no vmgenid device: the kernel will not log one)"
	}
	return detail, nil
}

func (k *Kmsg) Run(ctx context.Context, report func(string)) {
	stop := context.AfterFunc(ctx, func() { k.f.Close() })
	defer stop()
	scanKmsg(k.f, report)
}

// scanKmsg reads kernel log records from r until it fails, and reports
// the VM fork lines. /dev/kmsg returns one record per read; other readers
// (tests) may return several, or a record in pieces, and work too.
func scanKmsg(r io.Reader, report func(string)) {
	buf := make([]byte, 32<<10) // a record is at most 8 KiB with its dictionary
	n := 0
	for {
		m, err := r.Read(buf[n:])
		switch {
		case errors.Is(err, syscall.EPIPE):
			// Records were overwritten before we read them: the daemon fell
			// far behind the kernel. Carry on from the oldest one left.
			continue
		case errors.Is(err, syscall.EINTR):
			continue
		case err != nil && m == 0:
			return // closed, or the device went away
		}
		n += m
		rest := buf[:n]
		for {
			rec, tail, ok := nextKmsg(rest)
			if !ok {
				break
			}
			rest = tail
			if r, err := ParseKmsg(rec); err == nil && r.IsVMFork() {
				report(fmt.Sprintf("kernel log #%d: %s", r.Seq, r.Message))
			}
		}
		n = copy(buf, rest)
		if n == len(buf) {
			n = 0 // no record is that long: drop the garbage
		}
	}
}

// nextKmsg splits the first complete record off b: its first line and the
// continuation lines (starting with a space) after it. A record is
// complete when a line that starts a new record follows it, or when b
// ends with a newline: /dev/kmsg never splits one across reads.
func nextKmsg(b []byte) (rec, rest []byte, ok bool) {
	end := 0
	for {
		nl := bytes.IndexByte(b[end:], '\n')
		if nl < 0 {
			return nil, b, false
		}
		end += nl + 1
		if end == len(b) || b[end] != ' ' {
			return b[:end], b[end:], true
		}
	}
}

func (k *Kmsg) Close() error {
	if k.f == nil {
		return nil
	}
	err := k.f.Close()
	if errors.Is(err, os.ErrClosed) {
		return nil
	}
	return err
}

// vmgenidDevice returns the name of a device bound to the kernel's vmgenid
// driver (an ACPI driver before Linux 6.10, a platform driver after), or
// "".
func vmgenidDevice(sysRoot string) string {
	if sysRoot == "" {
		sysRoot = "/sys"
	}
	for _, dir := range []string{"bus/platform/drivers/vmgenid", "bus/acpi/drivers/vmgenid"} {
		ents, err := os.ReadDir(filepath.Join(sysRoot, dir))
		if err != nil {
			continue
		}
		for _, e := range ents {
			switch e.Name() {
			case "bind", "unbind", "uevent", "module", "new_id", "remove_id":
				continue
			}
			if e.Type()&os.ModeSymlink != 0 {
				return e.Name()
			}
		}
	}
	return ""
}
