package genid

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// records splits a captured /dev/kmsg stream into its records.
func records(t *testing.T, b []byte) [][]byte {
	t.Helper()
	var recs [][]byte
	for {
		rec, rest, ok := nextKmsg(b)
		if !ok {
			break
		}
		recs = append(recs, rec)
		b = rest
	}
	if len(b) != 0 {
		t.Fatalf("%d bytes after the last record", len(b))
	}
	return recs
}

// oneRecordReader returns one record per Read, as /dev/kmsg does.
type oneRecordReader struct{ recs [][]byte }

func (r *oneRecordReader) Read(p []byte) (int, error) {
	if len(r.recs) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.recs[0])
	r.recs = r.recs[1:]
	return n, nil
}

// The kernel log of a QEMU guest restored from a snapshot (captured by
// e2e's snapshot test with KEYWARDEN_VM_CAPTURE) has exactly one VM fork
// line, and every record parses.
func TestKmsgCapture(t *testing.T) {
	b, err := os.ReadFile("testdata/kmsg-vmfork.txt")
	if err != nil {
		t.Fatal(err)
	}
	recs := records(t, b)
	forks := 0
	for _, rec := range recs {
		r, err := ParseKmsg(rec)
		if err != nil {
			t.Fatalf("record %q: %v", rec, err)
		}
		if r.IsVMFork() {
			forks++
			if r.Facility != 0 || r.Level != 5 || r.Seq != 334 || r.Message != "random: crng reseeded due to virtual machine fork" {
				t.Errorf("fork record %+v", r)
			}
		}
	}
	if forks != 1 || len(recs) < 300 {
		t.Fatalf("%d records, %d forks", len(recs), forks)
	}
	// Read one record at a time (the device), or as one stream.
	for name, r := range map[string]io.Reader{"records": &oneRecordReader{recs}, "stream": bytes.NewReader(b)} {
		var got []string
		scanKmsg(r, func(d string) { got = append(got, d) })
		if len(got) != 1 || got[0] != "kernel log #334: random: crng reseeded due to virtual machine fork" {
			t.Errorf("%s: reported %q", name, got)
		}
	}
}

func TestKmsgRecords(t *testing.T) {
	for _, tc := range []struct {
		rec  string
		fork bool
		err  bool
	}{
		{"5,334,3469347,-;random: crng reseeded due to virtual machine fork\n", true, false},
		// Continuation lines belong to the record.
		{"5,9,1,-;random: crng reseeded due to virtual machine fork\n SUBSYSTEM=x\n DEVICE=+y\n", true, false},
		// Written by a process (facility user): never the kernel's report.
		{"13,335,3469400,-;random: crng reseeded due to virtual machine fork\n", false, false},
		{"5,336,3469500,-;random: crng init done\n", false, false},
		{"5,336,3469500,c,caller=T1;random: crng reseeded due to virtual machine fork\n", true, false},
		{"no semicolon\n", false, true},
		{"x,1,2,-;m\n", false, true},
		{"5,1;m\n", false, true},
		{"5,-1,2,-;m\n", false, true},
	} {
		r, err := ParseKmsg([]byte(tc.rec))
		if (err != nil) != tc.err || r.IsVMFork() != tc.fork {
			t.Errorf("%q: %+v %v", tc.rec, r, err)
		}
	}
}

// The real /dev/kmsg: the source starts at the end, ignores a line a
// process writes (even the right words), and stops when asked.
func TestKmsgDevice(t *testing.T) {
	k := &Kmsg{}
	detail, err := k.Open()
	if err != nil {
		t.Skipf("no readable /dev/kmsg: %v", err)
	}
	t.Logf("kmsg: %s", detail)
	defer k.Close()
	reports := make(chan string, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		k.Run(ctx, func(d string) { reports <- d })
		close(done)
	}()
	if w, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		w.Write([]byte("<5>keywarden test: random: crng reseeded due to virtual machine fork (not a real fork)"))
		w.Close()
	}
	select {
	case d := <-reports:
		t.Fatalf("a line written by a process was taken for the kernel's: %s", d)
	case <-time.After(200 * time.Millisecond):
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop")
	}
}

func TestUevents(t *testing.T) {
	for file, want := range map[string]bool{"uevent-new-vmgenid.bin": true, "uevent-other.bin": false} {
		b, err := os.ReadFile(filepath.Join("testdata", file))
		if err != nil {
			t.Fatal(err)
		}
		u, err := ParseUevent(b)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if u.IsVMGenIDChange() != want || u.Action != "change" || !strings.HasPrefix(u.DevPath, "/devices/") {
			t.Errorf("%s: %+v", file, u)
		}
	}
	for _, bad := range []string{"", "libudev\x00\xfe\xed\xca\xfe", "change", "@/devices/x", "change@devices\x00NEW_VMGENID=1"} {
		if _, err := ParseUevent([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	for rel, want := range map[string]bool{"6.8.0-31-generic": true, "6.8.12": true, "6.1.0-56-amd64": false, "6.18.44-fc": false, "5.8.0": false, "6.80.1": false} {
		if ueventKernel(rel) != want {
			t.Errorf("%s: %v", rel, !want)
		}
	}
	if _, err := (&Uevent{Release: "6.1.0"}).Open(); err == nil || !strings.Contains(err.Error(), "only Linux 6.8") {
		t.Errorf("6.1: %v", err)
	}
}

// scripted is a vmclock page whose words change between loads, as a host
// that updates the page while the guest reads it.
type scripted struct {
	page  []byte
	seqs  []uint32 // successive values of seq_count
	gens  []uint64 // successive values of vm_generation_counter
	loads int
}

func (s *scripted) load32(off int) uint32 {
	if off == vmclockOffSeq && len(s.seqs) > 0 {
		v := s.seqs[0]
		s.seqs = s.seqs[1:]
		s.loads++
		return v
	}
	return binary.LittleEndian.Uint32(s.page[off:])
}

func (s *scripted) load64(off int) uint64 {
	if off == vmclockOffGeneration && len(s.gens) > 0 {
		v := s.gens[0]
		s.gens = s.gens[1:]
		return v
	}
	return binary.LittleEndian.Uint64(s.page[off:])
}

func TestVMClockPage(t *testing.T) {
	page, err := os.ReadFile("testdata/vmclock-page.bin")
	if err != nil {
		t.Fatal(err)
	}
	w := &scripted{page: page}
	h, err := ParseVMClock(w, len(page))
	if err != nil || h.Version != 1 || h.Size != 4096 || h.Flags&vmclockFlagNotify == 0 {
		t.Fatalf("header %+v %v", h, err)
	}
	if g, ok := readVMClockGeneration(w, 10); !ok || g != 3 {
		t.Fatalf("generation %d %v", g, ok)
	}
	// A torn read: an update in progress (odd), then one that completed
	// between the two loads of the count; only the third try is clean.
	w = &scripted{page: page, seqs: []uint32{5, 6, 8, 8, 8}, gens: []uint64{4, 5}}
	if g, ok := readVMClockGeneration(w, 10); !ok || g != 5 || w.loads != 5 {
		t.Fatalf("torn read gave %d %v after %d loads of the count", g, ok, w.loads)
	}
	// A host that never finishes.
	w = &scripted{page: page, seqs: []uint32{1, 1, 1, 1}}
	if _, ok := readVMClockGeneration(w, 4); ok {
		t.Fatal("a page always being written was read")
	}
	// Pages that are not usable.
	for name, mod := range map[string]func([]byte){
		"magic":   func(p []byte) { p[0] = 'X' },
		"version": func(p []byte) { binary.LittleEndian.PutUint16(p[8:], 2) },
		"size":    func(p []byte) { binary.LittleEndian.PutUint32(p[4:], 100) },
		"no counter": func(p []byte) {
			binary.LittleEndian.PutUint64(p[24:], vmclockFlagNotify)
		},
	} {
		p := bytes.Clone(page)
		mod(p)
		if _, err := ParseVMClock(&scripted{page: p}, len(p)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ParseVMClock(&scripted{page: page}, 100); err == nil {
		t.Error("a short page accepted")
	}
}

// The source maps the device (here a file holding the page) and sees the
// counter change, once.
func TestVMClockSource(t *testing.T) {
	page, _ := os.ReadFile("testdata/vmclock-page.bin")
	path := filepath.Join(t.TempDir(), "vmclock0")
	if err := os.WriteFile(path, page, 0o644); err != nil {
		t.Fatal(err)
	}
	v := &VMClock{Path: path, Interval: 10 * time.Millisecond}
	detail, err := v.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if !strings.Contains(detail, "now 3") || !strings.Contains(detail, "notifications: yes") {
		t.Errorf("detail %q", detail)
	}
	if changed, _ := v.Check(); changed {
		t.Fatal("changed at once")
	}
	f, _ := os.OpenFile(path, os.O_WRONLY, 0)
	defer f.Close()
	restore := func(gen uint64) {
		var b [8]byte
		binary.LittleEndian.PutUint32(b[:4], 5) // update in progress
		f.WriteAt(b[:4], vmclockOffSeq)
		binary.LittleEndian.PutUint64(b[:], gen)
		f.WriteAt(b[:], vmclockOffGeneration)
		binary.LittleEndian.PutUint32(b[:4], 6)
		f.WriteAt(b[:4], vmclockOffSeq)
	}
	restore(4)
	changed, detail := v.Check()
	if !changed || detail != "vmclock vm_generation_counter 3 -> 4" {
		t.Fatalf("after a restore: %v %q", changed, detail)
	}
	if changed, _ := v.Check(); changed {
		t.Fatal("one change reported twice")
	}
	// Run reports too.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan string, 1)
	go v.Run(ctx, func(d string) { got <- d })
	restore(9)
	select {
	case d := <-got:
		if d != "vmclock vm_generation_counter 4 -> 9" {
			t.Fatalf("Run reported %q", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not report")
	}
	if _, err := (&VMClock{Path: filepath.Join(t.TempDir(), "none")}).Open(); err == nil || !strings.Contains(err.Error(), "no vmclock device") {
		t.Fatalf("absent device: %v", err)
	}
}

func TestFindVMGenIDAddress(t *testing.T) {
	for file, want := range map[string]struct {
		addr uint64
		how  string
	}{
		"acpi/ssdt-qemu-vmgenid.aml": {0x0ffff000 + 40, "VGIA"},
		"acpi/dsdt-firecracker.aml":  {0xdfff0, "ADDR"},
	} {
		b, err := os.ReadFile(filepath.Join("testdata", file))
		if err != nil {
			t.Fatal(err)
		}
		addr, how, ok := FindVMGenIDAddress(b)
		if !ok || addr != want.addr || !strings.Contains(how, want.how) {
			t.Errorf("%s: %#x %q %v", file, addr, how, ok)
		}
	}
	for _, b := range [][]byte{nil, []byte("\x08VGIA"), []byte("\x08VGIA\x0c\x00\x00\x00\x00"), []byte("VMGENCTR\x08ADDR\x12\x0c\x02\x0c"),
		[]byte("\x08ADDR\x12\x0c\x02\x0c\xf0\xff\x0d\x00\x0c\x00\x00\x00\x00")} {
		if addr, _, ok := FindVMGenIDAddress(b); ok {
			t.Errorf("%q: found %#x", b, addr)
		}
	}
	if l, n, ok := amlPkgLength([]byte{0x4c, 0x01}); !ok || n != 2 || l != 0x1c {
		t.Errorf("two-byte PkgLength: %d %d %v", l, n, ok)
	}
}

func TestFormatGUID(t *testing.T) {
	// QEMU stores the GUID 6c3b2f4e-0d1a-4c8b-9e7f-a1b2c3d4e5f6 with its
	// first three fields little-endian.
	g := [16]byte{0x4e, 0x2f, 0x3b, 0x6c, 0x1a, 0x0d, 0x8b, 0x4c, 0x9e, 0x7f, 0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6}
	if s := FormatGUID(g); s != "6c3b2f4e-0d1a-4c8b-9e7f-a1b2c3d4e5f6" {
		t.Fatal(s)
	}
}

// The GUID source finds the ID through the ACPI tables and physical
// memory (here files), or QEMU's fw_cfg, and reports each new one.
func TestGUIDSource(t *testing.T) {
	dir := t.TempDir()
	tables := filepath.Join(dir, "tables")
	os.Mkdir(tables, 0o755)
	dsdt, _ := os.ReadFile("testdata/acpi/dsdt-firecracker.aml")
	os.WriteFile(filepath.Join(tables, "DSDT"), dsdt, 0o644)
	mem := filepath.Join(dir, "mem")
	f, err := os.Create(mem)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	id1 := [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	f.WriteAt(id1[:], 0xdfff0)
	g := &GUID{TablesDir: tables, MemPath: mem, FwCfg: filepath.Join(dir, "none"), Interval: 10 * time.Millisecond}
	detail, err := g.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if !strings.Contains(detail, FormatGUID(id1)) || !strings.Contains(detail, "0xdfff0") {
		t.Errorf("detail %q", detail)
	}
	if changed, _ := g.poll(); changed {
		t.Fatal("changed at once")
	}
	id2 := id1
	id2[15] = 99
	f.WriteAt(id2[:], 0xdfff0)
	if changed, d := g.poll(); !changed || d != "VM generation ID "+FormatGUID(id1)+" -> "+FormatGUID(id2) {
		t.Fatalf("after a restore: %v %q", changed, d)
	}
	// QEMU's fw_cfg blob wins when present.
	blob := make([]byte, 56)
	copy(blob[40:], id2[:])
	fw := filepath.Join(dir, "raw")
	os.WriteFile(fw, blob, 0o644)
	g2 := &GUID{TablesDir: filepath.Join(dir, "none"), FwCfg: fw}
	if detail, err := g2.Open(); err != nil || !strings.Contains(detail, "fw_cfg") {
		t.Fatalf("fw_cfg: %q %v", detail, err)
	}
	// Nothing to read from.
	if _, err := (&GUID{TablesDir: filepath.Join(dir, "none"), FwCfg: filepath.Join(dir, "none")}).Open(); err == nil {
		t.Fatal("a GUID source without tables is active")
	}
	// A zero GUID (not linked yet) is not a source.
	os.WriteFile(fw, make([]byte, 56), 0o644)
	if _, err := (&GUID{FwCfg: fw}).Open(); err == nil || !strings.Contains(err.Error(), "not set") {
		t.Fatalf("zero GUID: %v", err)
	}
}

// The real netlink socket: a kernel uevent (a synthetic "change" of
// /dev/null) arrives, and is not taken for the vmgenid driver's.
func TestUeventSocket(t *testing.T) {
	const trigger = "/sys/devices/virtual/mem/null/uevent"
	if os.Geteuid() != 0 {
		t.Skip("triggering a uevent needs root")
	}
	seen := make(chan UeventMsg, 16)
	u := &Uevent{Force: true, observe: func(m UeventMsg) { seen <- m }}
	if _, err := u.Open(); err != nil {
		t.Skipf("no uevent socket: %v", err)
	}
	defer u.Close()
	ctx, cancel := context.WithCancel(context.Background())
	reported := make(chan string, 1)
	done := make(chan struct{})
	go func() {
		u.Run(ctx, func(d string) { reported <- d })
		close(done)
	}()
	if err := os.WriteFile(trigger, []byte("change 8e2f1d1a-0000-4000-8000-000000000001 KEYWARDENTEST=1"), 0); err != nil {
		cancel()
		t.Skipf("cannot trigger a uevent: %v", err)
	}
	timeout := time.After(5 * time.Second)
	for got := false; !got; {
		select {
		case m := <-seen:
			got = m.DevPath == "/devices/virtual/mem/null" && m.Env["SYNTH_ARG_KEYWARDENTEST"] == "1"
		case <-timeout:
			t.Fatal("the kernel's uevent did not arrive")
		}
	}
	select {
	case d := <-reported:
		t.Fatalf("another device's uevent was reported: %s", d)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop")
	}
}
