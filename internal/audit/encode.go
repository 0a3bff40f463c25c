package audit

import (
	"strconv"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// The log's canonical JSON: one object per line, fields in a fixed order,
// optional fields left out when empty, no spaces, lowercase hex, times in
// UTC with nine fractional digits, and strings escaped one way only.
// Records are appended without reflection: this file is the encoder, and
// the decoder (decode.go) checks that a line is exactly what this encoder
// would produce from what it decoded, so every line has one meaning.

const timeLayout = "2006-01-02T15:04:05.000000000Z"

const hexDigits = "0123456789abcdef"

func appendHex(dst, b []byte) []byte {
	for _, c := range b {
		dst = append(dst, hexDigits[c>>4], hexDigits[c&0xf])
	}
	return dst
}

// appendString appends s as a JSON string. Control characters are
// escaped, invalid UTF-8 becomes U+FFFD (written as itself), and nothing
// else is escaped, so the encoding of a string is unique.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r != utf8.RuneError || size != 1 {
				i += size
				continue
			}
			dst = append(dst, s[start:i]...)
			dst = append(dst, "\uFFFD"...)
			i++
			start = i
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

func appendField(dst []byte, name string) []byte {
	dst = append(dst, ',', '"')
	dst = append(dst, name...)
	return append(dst, '"', ':')
}

func appendStringField(dst []byte, name, v string) []byte {
	if v == "" {
		return dst
	}
	return appendString(appendField(dst, name), v)
}

func appendUintField(dst []byte, name string, v uint64) []byte {
	if v == 0 {
		return dst
	}
	return strconv.AppendUint(appendField(dst, name), v, 10)
}

func appendHexField(dst []byte, name string, b []byte) []byte {
	dst = append(appendField(dst, name), '"')
	return append(appendHex(dst, b), '"')
}

func appendTrueField(dst []byte, name string, v bool) []byte {
	if !v {
		return dst
	}
	return append(appendField(dst, name), "true"...)
}

// appendHeader appends the fields every record starts with, from the
// opening brace to "kind".
func appendHeader(dst []byte, seq uint64, t time.Time, mono time.Duration, k Kind) []byte {
	dst = append(dst, `{"v":`...)
	dst = strconv.AppendInt(dst, SchemaVersion, 10)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, `,"time":"`...)
	dst = appendTime(dst, t)
	dst = append(dst, `","mono":`...)
	dst = strconv.AppendInt(dst, int64(mono), 10)
	dst = append(dst, `,"kind":"`...)
	dst = append(dst, k.String()...)
	return append(dst, '"')
}

// appendTime appends t in timeLayout. The part up to the seconds is
// formatted once a second: records come by the thousand.
func appendTime(dst []byte, t time.Time) []byte {
	t = t.UTC()
	sec := t.Unix()
	c := timeCache.Load()
	if c == nil || c.sec != sec {
		c = &secondPrefix{sec: sec, b: t.Truncate(time.Second).AppendFormat(nil, "2006-01-02T15:04:05.")}
		timeCache.Store(c)
	}
	dst = append(dst, c.b...)
	ns := t.Nanosecond()
	for div := 100000000; div > 0; div /= 10 {
		dst = append(dst, byte('0'+ns/div%10))
	}
	return append(dst, 'Z')
}

// secondPrefix is a second formatted for appendTime.
type secondPrefix struct {
	sec int64
	b   []byte
}

var timeCache atomic.Pointer[secondPrefix]

// appendBody appends the fields of a request or an event.
func appendBody(dst []byte, r *Record) []byte {
	dst = appendStringField(dst, "op", r.Op)
	dst = appendStringField(dst, "alg", r.Alg)
	if !r.Key.IsZero() {
		dst = appendHexField(dst, "key", r.Key[:])
	}
	dst = appendUintField(dst, "kv", uint64(r.KeyVersion))
	dst = appendStringField(dst, "status", r.Status)
	if r.Kind == KindRequest {
		c := &r.Caller
		dst = append(dst, `,"caller":{"pid":`...)
		dst = strconv.AppendInt(dst, int64(c.PID), 10)
		dst = append(dst, `,"uid":`...)
		dst = strconv.AppendUint(dst, uint64(c.UID), 10)
		dst = append(dst, `,"gid":`...)
		dst = strconv.AppendUint(dst, uint64(c.GID), 10)
		dst = appendStringField(dst, "exe", c.Exe)
		dst = appendStringField(dst, "exe_error", c.ExeError)
		dst = appendStringField(dst, "cgroup", c.Cgroup)
		dst = appendTrueField(dst, "exited", c.Exited)
		dst = appendTrueField(dst, "unverified", c.Unverified)
		dst = appendTrueField(dst, "claimed", c.Claimed)
		dst = appendTrueField(dst, "other_userns", c.OtherUserNS)
		dst = appendTrueField(dst, "other_pidns", c.OtherPIDNS)
		dst = appendStringField(dst, "ssh_dest", c.SSHDest)
		dst = appendStringField(dst, "principal", c.Principal)
		if p := &c.Peer; !p.IsZero() {
			dst = append(dst, `,"peer":{"pid":`...)
			dst = strconv.AppendInt(dst, int64(p.PID), 10)
			dst = append(dst, `,"uid":`...)
			dst = strconv.AppendUint(dst, uint64(p.UID), 10)
			dst = append(dst, `,"gid":`...)
			dst = strconv.AppendUint(dst, uint64(p.GID), 10)
			dst = appendStringField(dst, "exe", p.Exe)
			dst = append(dst, '}')
		}
		dst = append(dst, '}')
	}
	dst = appendUintField(dst, "conn", r.Conn)
	dst = appendStringField(dst, "front", r.Front)
	dst = appendUintField(dst, "session", r.Session)
	dst = appendUintField(dst, "request", r.Request)
	if len(r.SSHCerts) > 0 {
		dst = append(appendField(dst, "ssh_certs"), '[')
		for i := range r.SSHCerts {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendSSHCert(dst, &r.SSHCerts[i])
		}
		dst = append(dst, ']')
	}
	if len(r.Ops) > 0 {
		dst = append(appendField(dst, "ops"), '[')
		for i := range r.Ops {
			e := &r.Ops[i]
			if i > 0 {
				dst = append(dst, ',')
			}
			// "op" comes first and is never empty in a valid entry; an
			// empty one is still written, so the object stays well formed.
			dst = append(dst, `{"op":`...)
			dst = appendString(dst, e.Op)
			dst = appendStringField(dst, "alg", e.Alg)
			if !e.Key.IsZero() {
				dst = appendHexField(dst, "key", e.Key[:])
			}
			dst = appendUintField(dst, "kv", uint64(e.KeyVersion))
			dst = appendStringField(dst, "status", e.Status)
			if e.Count > 1 {
				dst = appendUintField(dst, "n", uint64(e.Count))
			}
			dst = append(dst, '}')
		}
		dst = append(dst, ']')
	}
	return appendStringField(dst, "msg", r.Msg)
}

// appendSSHCert appends c as an object: every field but key_id is always
// written.
func appendSSHCert(dst []byte, c *SSHCert) []byte {
	dst = append(dst, `{"type":`...)
	dst = appendString(dst, c.Type)
	dst = append(dst, `,"serial":`...)
	dst = strconv.AppendUint(dst, c.Serial, 10)
	dst = appendStringField(dst, "key_id", c.KeyID)
	dst = append(dst, `,"principals":[`...)
	for i, p := range c.Principals {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, p)
	}
	dst = append(dst, `],"valid_after":`...)
	dst = strconv.AppendUint(dst, c.ValidAfter, 10)
	dst = append(dst, `,"valid_before":`...)
	dst = strconv.AppendUint(dst, c.ValidBefore, 10)
	dst = append(dst, `,"key":`...)
	dst = appendString(dst, c.Key)
	return append(dst, '}')
}

func appendSegment(dst []byte, s *Segment) []byte {
	dst = appendStringField(dst, "reason", s.Reason)
	dst = appendHexField(dst, "prev", s.Prev[:])
	dst = appendHexField(dst, "nonce", s.Nonce[:])
	dst = appendStringField(dst, "boot", s.Boot)
	dst = appendStringField(dst, "host", s.Host)
	dst = appendUintField(dst, "daemon_pid", uint64(s.PID))
	dst = appendStringField(dst, "software", s.Software)
	if len(s.PublicKey) > 0 {
		dst = appendHexField(dst, "pub", s.PublicKey)
		dst = appendHexField(dst, "mac_id", s.MACKeyID[:])
	}
	return dst
}

// appendCheckpoint appends a checkpoint's fields up to, not including,
// its signature: these are the bytes the signature covers.
func appendCheckpoint(dst []byte, c *CheckpointInfo) []byte {
	dst = appendStringField(dst, "reason", c.Reason)
	dst = append(dst, `,"upto":`...)
	dst = strconv.AppendUint(dst, c.Upto, 10)
	dst = appendHexField(dst, "upto_h", c.UptoHash[:])
	dst = appendHexField(dst, "pub", c.PublicKey)
	dst = appendHexField(dst, "mac_id", c.MACKeyID[:])
	if len(c.NextPublicKey) > 0 {
		dst = appendHexField(dst, "next_pub", c.NextPublicKey)
		dst = appendHexField(dst, "next_mac_id", c.NextMACKeyID[:])
	}
	dst = appendTrueField(dst, "keys_off", c.KeysOff)
	return appendTrueField(dst, "final", c.Final)
}

// Fixed-size tails of a line. A line is
//
//	PREFIX ,"h":"<64 hex>" [,"mac":"<64 hex>"] }
//
// and the PREFIX of a checkpoint ends with ,"sig":"<128 hex>".
const (
	hashField    = `,"h":"`
	macField     = `","mac":"`
	sigField     = `,"sig":"`
	tailNoMAC    = len(hashField) + 64 + len(`"}`)
	tailWithMAC  = len(hashField) + 64 + len(macField) + 64 + len(`"}`)
	sigFieldSize = len(sigField) + 2*ed25519SignatureSize + 1
)

const ed25519SignatureSize = 64

func appendSignature(dst, sig []byte) []byte {
	dst = append(dst, sigField...)
	return append(appendHex(dst, sig), '"')
}

// appendTail closes a line: the chain hash, the MAC if any, the brace and
// the newline.
func appendTail(dst []byte, h *[32]byte, mac *[32]byte) []byte {
	dst = append(dst, hashField...)
	dst = appendHex(dst, h[:])
	if mac != nil {
		dst = append(dst, macField...)
		dst = appendHex(dst, mac[:])
	}
	return append(dst, '"', '}', '\n')
}

// appendPrefix appends everything of r that the chain hash covers.
func appendPrefix(dst []byte, r *Record) []byte {
	dst = appendHeader(dst, r.Seq, r.Time, r.Mono, r.Kind)
	switch r.Kind {
	case KindSegment:
		if r.Segment != nil {
			dst = appendSegment(dst, r.Segment)
		}
	case KindCheckpoint:
		if r.Checkpoint != nil {
			dst = appendCheckpoint(dst, r.Checkpoint)
			dst = appendSignature(dst, r.Checkpoint.Signature)
		}
	default:
		dst = appendBody(dst, r)
	}
	return dst
}

// AppendLine appends the canonical encoding of r, newline included, as
// the log writes it.
func AppendLine(dst []byte, r *Record) []byte {
	var mac *[32]byte
	if r.HasMAC {
		mac = &r.MAC
	}
	return appendTail(appendPrefix(dst, r), &r.Hash, mac)
}
