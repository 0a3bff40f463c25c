package shm

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

func TestWords(t *testing.T) {
	b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(b)
	Store32(b, 8, 0x01020304)
	Store64(b, 16, 0x0102030405060708)
	if got := Load32(b, 8); got != 0x01020304 {
		t.Errorf("Load32 = %#x", got)
	}
	if got := Load64(b, 16); got != 0x0102030405060708 {
		t.Errorf("Load64 = %#x", got)
	}
	binary.LittleEndian.PutUint32(b[32:], 0xa1b2c3d4)
	binary.LittleEndian.PutUint64(b[40:], 0x1122334455667788)
	if got := LoadLE32(b, 32); got != 0xa1b2c3d4 {
		t.Errorf("LoadLE32 = %#x", got)
	}
	if got := LoadLE64(b, 40); got != 0x1122334455667788 {
		t.Errorf("LoadLE64 = %#x", got)
	}
}

func TestBoundsAndAlignment(t *testing.T) {
	b := make([]byte, 64)
	for name, f := range map[string]func(){
		"out of range":    func() { Load64(b, 60) },
		"negative":        func() { Load32(b, -4) },
		"unaligned 64":    func() { Load64(b, 4) },
		"unaligned 32":    func() { Store32(b[2:], 0, 1) },
		"past the end 32": func() { Store32(b, 62, 1) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}
