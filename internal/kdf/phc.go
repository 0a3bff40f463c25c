package kdf

import (
	"encoding/base64"
	"strconv"
	"strings"
)

// Version is the Argon2 version this package computes: 0x13 (19), the
// only one golang.org/x/crypto/argon2 implements and the reference
// implementation's default.
const Version = 0x13

// b64 is the PHC string format's Base64: the standard alphabet without
// padding, and canonical (unused trailing bits must be zero).
var b64 = base64.RawStdEncoding.Strict()

// PHC is a parsed Argon2id password hash.
type PHC struct {
	Params Params
	Salt   []byte
	Hash   []byte
}

// maxPHCLen bounds the strings ParsePHC looks at: the longest valid one
// (256-byte salt and hash, largest numbers) is about 730 characters.
const maxPHCLen = 1024

// EncodePHC formats an Argon2id hash as the reference implementation
// does: $argon2id$v=19$m=M,t=T,p=P$SALT$HASH.
func EncodePHC(p Params, salt, hash []byte) string {
	var b strings.Builder
	b.Grow(40 + b64.EncodedLen(len(salt)) + b64.EncodedLen(len(hash)))
	b.WriteString("$argon2id$v=")
	b.WriteString(strconv.FormatUint(Version, 10))
	b.WriteString("$m=")
	b.WriteString(strconv.FormatUint(uint64(p.MemoryKiB), 10))
	b.WriteString(",t=")
	b.WriteString(strconv.FormatUint(uint64(p.Time), 10))
	b.WriteString(",p=")
	b.WriteString(strconv.FormatUint(uint64(p.Threads), 10))
	b.WriteByte('$')
	b.WriteString(b64.EncodeToString(salt))
	b.WriteByte('$')
	b.WriteString(b64.EncodeToString(hash))
	return b.String()
}

// ParsePHC parses an Argon2id hash in the PHC string format, strictly:
// exactly the fields and order that the reference implementation writes,
// decimal numbers without sign or leading zeros, canonical unpadded
// Base64. It checks the salt and hash lengths but not the cost
// parameters against a limit (Params.Check does that).
//
// Its errors are INVALID_ARGUMENT and never quote the string.
func ParsePHC(s string) (PHC, error) {
	var h PHC
	if len(s) > maxPHCLen {
		return h, errPHC("too long")
	}
	rest, ok := strings.CutPrefix(s, "$argon2id$")
	if !ok {
		if strings.HasPrefix(s, "$argon2i$") || strings.HasPrefix(s, "$argon2d$") {
			return h, invalid("password hash: only argon2id is supported")
		}
		return h, errPHC("not an argon2id hash")
	}
	fields := strings.Split(rest, "$")
	if len(fields) != 4 {
		return h, errPHC("wrong number of fields")
	}
	v, ok := strings.CutPrefix(fields[0], "v=")
	if !ok {
		return h, errPHC("missing version")
	}
	if ver, ok := decimal(v); !ok || ver != Version {
		return h, invalid("password hash: only Argon2 version 19 (0x13) is supported")
	}
	params := strings.Split(fields[1], ",")
	if len(params) != 3 {
		return h, errPHC("want the parameters m, t and p")
	}
	var vals [3]uint32
	for i, name := range []string{"m=", "t=", "p="} {
		d, ok := strings.CutPrefix(params[i], name)
		if !ok {
			return h, errPHC("want the parameters m, t and p, in that order")
		}
		n, ok := decimal(d)
		if !ok {
			return h, errPHC("bad number")
		}
		vals[i] = n
	}
	if vals[2] < 1 || vals[2] > MaxThreads {
		return h, invalid("argon2: threads must be 1 to %d", MaxThreads)
	}
	h.Params = Params{MemoryKiB: vals[0], Time: vals[1], Threads: uint8(vals[2])}
	var ok2 bool
	if h.Salt, ok2 = decodeB64(fields[2]); !ok2 || len(fields[2]) == 0 {
		return PHC{}, errPHC("bad salt encoding")
	}
	if len(h.Salt) < MinSaltLen || len(h.Salt) > MaxSaltLen {
		return PHC{}, errPHC("salt length out of range")
	}
	if h.Hash, ok2 = decodeB64(fields[3]); !ok2 {
		return PHC{}, errPHC("bad hash encoding")
	}
	if len(h.Hash) < MinVerifyHashLen || len(h.Hash) > MaxVerifyHashLen {
		return PHC{}, errPHC("hash length out of range")
	}
	return h, nil
}

// decodeB64 decodes canonical unpadded Base64. (The decoder alone skips
// newlines; the canonical form has none.)
func decodeB64(s string) ([]byte, bool) {
	b, err := b64.DecodeString(s)
	if err != nil || b64.EncodeToString(b) != s {
		return nil, false
	}
	return b, true
}

func errPHC(detail string) error {
	return invalid("malformed password hash").WithDetail("%s", detail)
}

// decimal parses a PHC decimal: digits only, no leading zero (except "0"
// itself), at most a uint32.
func decimal(s string) (uint32, bool) {
	if s == "" || len(s) > 10 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err == nil
}
