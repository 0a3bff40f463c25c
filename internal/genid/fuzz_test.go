package genid

import (
	"bytes"
	"encoding/binary"
	"os"
	"testing"
)

// The parsers read what the kernel, a device or the firmware wrote; they
// must never panic or loop on anything. Seed corpora are in
// testdata/fuzz, and the captured inputs of testdata are added here.

func addFile(f *testing.F, path string) {
	if b, err := os.ReadFile(path); err == nil {
		f.Add(b)
	}
}

func FuzzParseKmsg(f *testing.F) {
	b, _ := os.ReadFile("testdata/kmsg-vmfork.txt")
	for i, rec := range bytes.SplitAfter(b, []byte("\n")) {
		if i%40 == 0 || bytes.Contains(rec, []byte("fork")) {
			f.Add(rec)
		}
	}
	f.Fuzz(func(t *testing.T, rec []byte) {
		r, err := ParseKmsg(rec)
		if err != nil {
			return
		}
		if r.IsVMFork() && (r.Facility != 0 || !bytes.Contains(rec, []byte(VMForkLine))) {
			t.Fatalf("%q taken for a VM fork", rec)
		}
		// Splitting a stream never loses or invents bytes.
		var total int
		rest := rec
		for {
			one, tail, ok := nextKmsg(rest)
			if !ok {
				break
			}
			total += len(one)
			rest = tail
		}
		if total+len(rest) != len(rec) {
			t.Fatalf("split %d bytes into %d", len(rec), total+len(rest))
		}
	})
}

func FuzzParseUevent(f *testing.F) {
	addFile(f, "testdata/uevent-new-vmgenid.bin")
	addFile(f, "testdata/uevent-other.bin")
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := ParseUevent(b)
		if err != nil {
			return
		}
		if u.IsVMGenIDChange() && !bytes.Contains(b, []byte("\x00NEW_VMGENID=1")) {
			t.Fatalf("%q taken for NEW_VMGENID", b)
		}
	})
}

func FuzzVMClockPage(f *testing.F) {
	addFile(f, "testdata/vmclock-page.bin")
	f.Fuzz(func(t *testing.T, b []byte) {
		page := make([]byte, 4096)
		copy(page, b)
		w := &scripted{page: page}
		if _, err := ParseVMClock(w, len(b)); err != nil {
			return
		}
		g, ok := readVMClockGeneration(w, 100)
		seq := binary.LittleEndian.Uint32(page[vmclockOffSeq:])
		if ok != (seq&1 == 0) || ok && g != binary.LittleEndian.Uint64(page[vmclockOffGeneration:]) {
			t.Fatalf("seq %d: %d %v", seq, g, ok)
		}
	})
}

func FuzzFindVMGenIDAddress(f *testing.F) {
	addFile(f, "testdata/acpi/ssdt-qemu-vmgenid.aml")
	addFile(f, "testdata/acpi/dsdt-firecracker.aml")
	f.Fuzz(func(t *testing.T, table []byte) {
		if addr, how, ok := FindVMGenIDAddress(table); ok && (addr == 0 || how == "") {
			t.Fatalf("found %#x %q", addr, how)
		}
	})
}
