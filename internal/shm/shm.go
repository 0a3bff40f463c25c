package shm

import (
	"encoding/binary"
	"math/bits"
	"sync/atomic"
	"unsafe"
)

// littleEndian reports whether this machine stores words little-endian.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

func word32(b []byte, off int) *uint32 {
	if off < 0 || off+4 > len(b) {
		panic("shm: 32-bit word out of range")
	}
	p := unsafe.Pointer(&b[off])
	if uintptr(p)%4 != 0 {
		panic("shm: unaligned 32-bit word")
	}
	return (*uint32)(p)
}

func word64(b []byte, off int) *uint64 {
	if off < 0 || off+8 > len(b) {
		panic("shm: 64-bit word out of range")
	}
	p := unsafe.Pointer(&b[off])
	if uintptr(p)%8 != 0 {
		panic("shm: unaligned 64-bit word")
	}
	return (*uint64)(p)
}

// Load32 atomically loads the native-endian 32-bit word at b[off:].
func Load32(b []byte, off int) uint32 { return atomic.LoadUint32(word32(b, off)) }

// Load64 atomically loads the native-endian 64-bit word at b[off:].
func Load64(b []byte, off int) uint64 { return atomic.LoadUint64(word64(b, off)) }

// Store32 atomically stores v as the native-endian 32-bit word at b[off:].
func Store32(b []byte, off int, v uint32) { atomic.StoreUint32(word32(b, off), v) }

// Store64 atomically stores v as the native-endian 64-bit word at b[off:].
func Store64(b []byte, off int, v uint64) { atomic.StoreUint64(word64(b, off), v) }

// LoadLE32 atomically loads the little-endian 32-bit word at b[off:], as
// device structures define them.
func LoadLE32(b []byte, off int) uint32 {
	v := Load32(b, off)
	if !littleEndian {
		v = bits.ReverseBytes32(v)
	}
	return v
}

// LoadLE64 atomically loads the little-endian 64-bit word at b[off:].
func LoadLE64(b []byte, off int) uint64 {
	v := Load64(b, off)
	if !littleEndian {
		v = bits.ReverseBytes64(v)
	}
	return v
}
