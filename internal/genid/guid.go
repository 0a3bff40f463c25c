package genid

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/keywarden/keywarden/internal/random"
)

// The VM generation ID is a 128-bit GUID the hypervisor keeps in guest
// memory and changes on every restore or clone (Microsoft's "Virtual
// Machine Generation ID" specification). Linux's vmgenid driver reads it
// but does not show it to userspace, so this source finds it the way the
// driver does, through the ACPI tables, and reads it from /dev/mem:
//
//   - QEMU's SSDT declares Name(VGIA, DWORD): the address of its
//     "etc/vmgenid_guid" blob, whose GUID is 40 bytes in;
//   - other VMMs (Firecracker, Hyper-V style tables) declare
//     Name(ADDR, Package(){low, high}) in the VM generation counter device:
//     the GUID's own address.
//
// Where QEMU's fw_cfg files are visible (module qemu_fw_cfg), the blob is
// read from there instead.

// qemuGUIDOffset is where the GUID sits in QEMU's vmgenid blob.
const qemuGUIDOffset = 40

// FindVMGenIDAddress looks for the VM generation ID's physical address in
// one ACPI table (DSDT or SSDT).
func FindVMGenIDAddress(table []byte) (addr uint64, how string, ok bool) {
	// QEMU: 08 'VGIA' 0C dword.
	for i := 0; ; {
		j := bytes.Index(table[i:], []byte("\x08VGIA"))
		if j < 0 {
			break
		}
		i += j + 5
		if v, _, ok := amlInteger(table[i:]); ok && v != 0 {
			return v + qemuGUIDOffset, "ACPI name VGIA (QEMU)", true
		}
	}
	// Name(ADDR, Package(2){low, high}) after a VM generation counter id.
	dev := -1
	for _, id := range []string{"VMGENCTR", "VM_Gen_Counter", "VM_GEN_COUNTER"} {
		if k := bytes.Index(table, []byte(id)); k >= 0 && (dev < 0 || k < dev) {
			dev = k
		}
	}
	if dev < 0 {
		return 0, "", false
	}
	rest := table[dev:]
	k := bytes.Index(rest, []byte("\x08ADDR\x12"))
	if k < 0 || k > 512 {
		return 0, "", false
	}
	p := rest[k+6:]
	plen, n, ok := amlPkgLength(p)
	if !ok || plen < n+1 || plen > len(p) {
		return 0, "", false
	}
	body := p[n:plen]
	if len(body) < 1 || body[0] != 2 { // NumElements
		return 0, "", false
	}
	lo, m, ok := amlInteger(body[1:])
	if !ok {
		return 0, "", false
	}
	hi, _, ok := amlInteger(body[1+m:])
	if !ok || lo > 0xffffffff || hi > 0xffffffff {
		return 0, "", false
	}
	a := lo | hi<<32
	if a == 0 {
		return 0, "", false
	}
	return a, "ACPI name ADDR", true
}

// amlInteger decodes an AML integer constant: ZeroOp, OneOp, OnesOp or a
// Byte/Word/DWord/QWord prefix and its value. It returns the value and the
// bytes it took.
func amlInteger(b []byte) (v uint64, n int, ok bool) {
	if len(b) == 0 {
		return 0, 0, false
	}
	size := 0
	switch b[0] {
	case 0x00:
		return 0, 1, true
	case 0x01:
		return 1, 1, true
	case 0xff:
		return ^uint64(0), 1, true
	case 0x0a:
		size = 1
	case 0x0b:
		size = 2
	case 0x0c:
		size = 4
	case 0x0e:
		size = 8
	default:
		return 0, 0, false
	}
	if len(b) < 1+size {
		return 0, 0, false
	}
	var buf [8]byte
	copy(buf[:], b[1:1+size])
	return binary.LittleEndian.Uint64(buf[:]), 1 + size, true
}

// amlPkgLength decodes an AML PkgLength: the length it encodes (which
// counts its own bytes) and how many bytes it took.
func amlPkgLength(b []byte) (length, n int, ok bool) {
	if len(b) == 0 {
		return 0, 0, false
	}
	follow := int(b[0] >> 6)
	if follow == 0 {
		return int(b[0] & 0x3f), 1, true
	}
	if len(b) < 1+follow || b[0]&0x30 != 0 {
		return 0, 0, false
	}
	length = int(b[0] & 0x0f)
	for i := 1; i <= follow; i++ {
		length |= int(b[i]) << (4 + 8*(i-1))
	}
	return length, 1 + follow, true
}

// FormatGUID writes a GUID in its usual form, the first three fields
// stored little-endian as the VM generation ID specification does.
func FormatGUID(g [16]byte) string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(g[0:4]),
		binary.LittleEndian.Uint16(g[4:6]), binary.LittleEndian.Uint16(g[6:8]), g[8:10], g[10:16])
}

// GUID is the VM generation ID as a source: it polls the GUID and reports
// when it differs from the last one seen. It also confirms what the kernel
// log reports, with the new GUID in the change's record.
type GUID struct {
	// TablesDir holds the ACPI tables; empty means /sys/firmware/acpi/tables.
	TablesDir string
	// MemPath is physical memory; empty means /dev/mem.
	MemPath string
	// FwCfg is QEMU's blob in sysfs; empty means
	// /sys/firmware/qemu_fw_cfg/by_name/etc/vmgenid_guid/raw.
	FwCfg string
	// Interval is how often Run polls; 0 means 200ms.
	Interval time.Duration

	read func() ([16]byte, error)
	mem  *os.File // open physical memory, when read from there
	last [16]byte
}

func (g *GUID) Name() string { return "guid" }

// Attests: the new ID, in the report, is unique to this VM (the vmgenid
// specification asks the hypervisor for a fresh random ID for every
// restore), so mixing it in tells clones' generators apart.
func (g *GUID) Attests() random.Freshness { return random.Unique }

func (g *GUID) Open() (string, error) {
	how, err := g.locate()
	if err != nil {
		return "", err
	}
	id, err := g.read()
	if err == nil && id == ([16]byte{}) {
		err = errors.New("the VM generation ID is not set")
	}
	if err != nil {
		g.Close()
		return "", fmt.Errorf("%s: %v", how, err)
	}
	g.last = id
	return fmt.Sprintf("VM generation ID %s, %s", FormatGUID(id), how), nil
}

// locate finds where the GUID can be read and sets g.read.
func (g *GUID) locate() (string, error) {
	fwcfg := g.FwCfg
	if fwcfg == "" {
		fwcfg = "/sys/firmware/qemu_fw_cfg/by_name/etc/vmgenid_guid/raw"
	}
	if _, err := os.Stat(fwcfg); err == nil {
		g.read = func() ([16]byte, error) {
			var id [16]byte
			b, err := os.ReadFile(fwcfg)
			if err != nil {
				return id, err
			}
			if len(b) < qemuGUIDOffset+16 {
				return id, fmt.Errorf("%s holds %d bytes", fwcfg, len(b))
			}
			copy(id[:], b[qemuGUIDOffset:])
			return id, nil
		}
		return "read from QEMU's fw_cfg " + fwcfg, nil
	}
	dir := g.TablesDir
	if dir == "" {
		dir = "/sys/firmware/acpi/tables"
	}
	tables, _ := filepath.Glob(filepath.Join(dir, "SSDT*"))
	sort.Strings(tables)
	tables = append([]string{filepath.Join(dir, "DSDT")}, tables...)
	var addr uint64
	var how string
	readable := false
	for _, p := range tables {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		readable = true
		if a, h, ok := FindVMGenIDAddress(b); ok {
			addr, how = a, h+" in "+filepath.Base(p)
			break
		}
	}
	if !readable {
		return "", fmt.Errorf("cannot read the ACPI tables in %s (needs root)", dir)
	}
	if addr == 0 {
		return "", errors.New("no VM generation ID device in the ACPI tables")
	}
	mem := g.MemPath
	if mem == "" {
		mem = "/dev/mem"
	}
	f, err := os.Open(mem)
	if err != nil {
		return "", fmt.Errorf("VM generation ID at %#x (%s): %v", addr, how, err)
	}
	g.mem = f
	g.read = func() ([16]byte, error) {
		var id [16]byte
		_, err := f.ReadAt(id[:], int64(addr))
		return id, err
	}
	return fmt.Sprintf("read from %s at %#x (%s)", mem, addr, how), nil
}

// poll reads the GUID and reports whether it changed.
func (g *GUID) poll() (bool, string) {
	id, err := g.read()
	if err != nil || id == g.last || id == ([16]byte{}) {
		return false, ""
	}
	old := g.last
	g.last = id
	return true, fmt.Sprintf("VM generation ID %s -> %s", FormatGUID(old), FormatGUID(id))
}

func (g *GUID) Run(ctx context.Context, report func(string)) {
	d := g.Interval
	if d <= 0 {
		d = 200 * time.Millisecond
	}
	tick := time.NewTicker(d)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if changed, detail := g.poll(); changed {
				report(detail)
			}
		}
	}
}

func (g *GUID) Close() error {
	if g.mem == nil {
		return nil
	}
	return g.mem.Close()
}
