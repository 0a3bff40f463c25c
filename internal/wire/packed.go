package wire

import "encoding/binary"

// Packed runs (Op.packed, docs/protocol.md): the messages of a Packed op
// and the entries of its result are laid out back to back, each behind
// varints. These functions read and write them without allocating; the
// readers take untrusted input and never read past what they are given.

// AppendPackedMessage appends one message of a Packed op to dst.
func AppendPackedMessage(dst, msg []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(msg)))
	return append(dst, msg...)
}

// NextPackedMessage reads the first message of b, a Packed op's
// messages, and returns it (pointing into b) and what follows it; ok is
// false when b does not start with a whole message.
func NextPackedMessage(b []byte) (msg, rest []byte, ok bool) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, nil, false
	}
	end := k + int(n)
	return b[k:end:end], b[end:], true
}

// PackedEntryBound bounds the encoded size of a result entry whose output
// or reason is n bytes long.
func PackedEntryBound(n int) int { return 3*binary.MaxVarintLen32 + n }

// AppendPackedEntry appends one entry of a Packed op's result to dst:
// data is the output when st is STATUS_OK, else the reason.
func AppendPackedEntry(dst []byte, st Status, keyVersion uint32, data []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(uint32(st)))
	dst = binary.AppendUvarint(dst, uint64(keyVersion))
	dst = binary.AppendUvarint(dst, uint64(len(data)))
	return append(dst, data...)
}

// NextPackedEntry reads the first entry of b, a Packed op's result data:
// its status, key version and data (pointing into b), and what follows
// it; ok is false when b does not start with a whole, valid entry.
func NextPackedEntry(b []byte) (st Status, keyVersion uint32, data, rest []byte, ok bool) {
	s, k := binary.Uvarint(b)
	if k <= 0 || s > 1<<31-1 {
		return 0, 0, nil, nil, false
	}
	b = b[k:]
	v, k := binary.Uvarint(b)
	if k <= 0 || v > 1<<32-1 {
		return 0, 0, nil, nil, false
	}
	b = b[k:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return 0, 0, nil, nil, false
	}
	end := k + int(n)
	return Status(s), uint32(v), b[k:end:end], b[end:], true
}
