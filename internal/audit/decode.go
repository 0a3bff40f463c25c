package audit

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// MaxLineBytes bounds one line of the log. Append refuses larger records
// (ErrTooLarge); readers treat a longer line as damage.
const MaxLineBytes = 1 << 20

// jsonRecord is the shape of a line for encoding/json, which does the
// parsing; the canonical check afterwards does the strictness.
type jsonRecord struct {
	V    *int   `json:"v"`
	Seq  uint64 `json:"seq"`
	Time string `json:"time"`
	Mono int64  `json:"mono"`
	Kind string `json:"kind"`

	Op      string      `json:"op"`
	Alg     string      `json:"alg"`
	Key     string      `json:"key"`
	KV      uint32      `json:"kv"`
	Status  string      `json:"status"`
	Caller  *jsonCaller `json:"caller"`
	Conn    uint64      `json:"conn"`
	Front   string      `json:"front"`
	Session uint64      `json:"session"`
	Request uint64      `json:"request"`
	Ops     []jsonOp    `json:"ops"`
	// SSHCerts: optional, so that logs written before it existed read as
	// they were written.
	SSHCerts []jsonSSHCert `json:"ssh_certs"`
	Msg      string        `json:"msg"`

	Reason    string `json:"reason"`
	Prev      string `json:"prev"`
	Nonce     string `json:"nonce"`
	Boot      string `json:"boot"`
	Host      string `json:"host"`
	DaemonPID int    `json:"daemon_pid"`
	Software  string `json:"software"`
	Pub       string `json:"pub"`
	MACID     string `json:"mac_id"`

	Upto      *uint64 `json:"upto"`
	UptoH     string  `json:"upto_h"`
	NextPub   string  `json:"next_pub"`
	NextMACID string  `json:"next_mac_id"`
	KeysOff   bool    `json:"keys_off"`
	Final     bool    `json:"final"`
	Sig       string  `json:"sig"`

	H   string `json:"h"`
	MAC string `json:"mac"`
}

type jsonCaller struct {
	PID        int32  `json:"pid"`
	UID        uint32 `json:"uid"`
	GID        uint32 `json:"gid"`
	Exe        string `json:"exe"`
	ExeError   string `json:"exe_error"`
	Cgroup     string `json:"cgroup"`
	Exited     bool   `json:"exited"`
	Unverified bool   `json:"unverified"`
	Claimed    bool   `json:"claimed"`
	OtherUser  bool   `json:"other_userns"`
	OtherPID   bool   `json:"other_pidns"`
	SSHDest    string `json:"ssh_dest"`
	Principal  string `json:"principal"`
	// Peer: optional, so that logs written before it existed read as
	// they were written.
	Peer *jsonPeer `json:"peer"`
}

type jsonPeer struct {
	PID int32  `json:"pid"`
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
	Exe string `json:"exe"`
}

type jsonOp struct {
	Op     string `json:"op"`
	Alg    string `json:"alg"`
	Key    string `json:"key"`
	KV     uint32 `json:"kv"`
	Status string `json:"status"`
	N      uint32 `json:"n"`
}

type jsonSSHCert struct {
	Type        string   `json:"type"`
	Serial      uint64   `json:"serial"`
	KeyID       string   `json:"key_id"`
	Principals  []string `json:"principals"`
	ValidAfter  uint64   `json:"valid_after"`
	ValidBefore uint64   `json:"valid_before"`
	Key         string   `json:"key"`
}

// ErrMalformed is wrapped by every error about a line that is not a
// record of this schema.
var ErrMalformed = errors.New("audit: malformed record")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

func decodeHex(dst []byte, s, field string) error {
	if len(s) != 2*len(dst) {
		return malformed("%s: want %d hex digits, have %d", field, 2*len(dst), len(s))
	}
	if _, err := hex.Decode(dst, []byte(s)); err != nil {
		return malformed("%s: %v", field, err)
	}
	return nil
}

func decodeKey(s, field string) (KeyID, error) {
	var id KeyID
	if s == "" {
		return id, nil
	}
	err := decodeHex(id[:], s, field)
	return id, err
}

func decodePub(s, field string) (ed25519.PublicKey, error) {
	if s == "" {
		return nil, nil
	}
	pub := make(ed25519.PublicKey, ed25519.PublicKeySize)
	return pub, decodeHex(pub, s, field)
}

var encodePool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// ParseRecord decodes one line of the log (with or without its newline).
// It accepts only the canonical encoding: a line that decodes but is not
// byte for byte what the log would write from the same values is
// malformed, so that a line has exactly one meaning.
func ParseRecord(line []byte) (*Record, error) {
	line = bytes.TrimSuffix(line, []byte{'\n'})
	if len(line) > MaxLineBytes {
		return nil, malformed("line of %d bytes exceeds %d", len(line), MaxLineBytes)
	}
	var j jsonRecord
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return nil, malformed("%v", err)
	}
	if dec.More() {
		return nil, malformed("data after the record")
	}
	if j.V == nil {
		return nil, malformed("no schema version")
	}
	if *j.V != SchemaVersion {
		return nil, fmt.Errorf("%w: schema version %d (this reader knows %d)", ErrMalformed, *j.V, SchemaVersion)
	}
	r, err := fromJSON(&j)
	if err != nil {
		return nil, err
	}
	bp := encodePool.Get().(*[]byte)
	enc := AppendLine((*bp)[:0], r)
	same := len(enc) == len(line)+1 && bytes.Equal(enc[:len(line)], line)
	*bp = enc[:0]
	encodePool.Put(bp)
	if !same {
		return nil, malformed("not in canonical form")
	}
	return r, nil
}

func fromJSON(j *jsonRecord) (*Record, error) {
	kind, ok := parseKind(j.Kind)
	if !ok {
		return nil, malformed("unknown kind %q", j.Kind)
	}
	t, err := time.Parse(timeLayout, j.Time)
	if err != nil {
		return nil, malformed("time: %v", err)
	}
	r := &Record{Seq: j.Seq, Time: t, Mono: time.Duration(j.Mono), Kind: kind,
		Op: j.Op, Alg: j.Alg, KeyVersion: j.KV, Status: j.Status,
		Conn: j.Conn, Front: j.Front, Session: j.Session, Request: j.Request, Msg: j.Msg}
	if r.Key, err = decodeKey(j.Key, "key"); err != nil {
		return nil, err
	}
	if c := j.Caller; c != nil {
		r.Caller = Caller{PID: c.PID, UID: c.UID, GID: c.GID, Exe: c.Exe, Cgroup: c.Cgroup,
			ExeError: c.ExeError, Exited: c.Exited, Unverified: c.Unverified,
			Claimed: c.Claimed, OtherUserNS: c.OtherUser, OtherPIDNS: c.OtherPID, SSHDest: c.SSHDest,
			Principal: c.Principal}
		if p := c.Peer; p != nil {
			r.Caller.Peer = Peer{PID: p.PID, UID: p.UID, GID: p.GID, Exe: p.Exe}
		}
	}
	for i := range j.Ops {
		o := &j.Ops[i]
		e := OpEntry{Op: o.Op, Alg: o.Alg, KeyVersion: o.KV, Status: o.Status, Count: max(o.N, 1)}
		if e.Key, err = decodeKey(o.Key, "ops.key"); err != nil {
			return nil, err
		}
		r.Ops = append(r.Ops, e)
	}
	for i := range j.SSHCerts {
		c := &j.SSHCerts[i]
		r.SSHCerts = append(r.SSHCerts, SSHCert{Type: c.Type, Serial: c.Serial, KeyID: c.KeyID,
			Principals: c.Principals, ValidAfter: c.ValidAfter, ValidBefore: c.ValidBefore, Key: c.Key})
	}
	switch kind {
	case KindSegment:
		s := &Segment{Reason: j.Reason, Boot: j.Boot, Host: j.Host,
			PID: j.DaemonPID, Software: j.Software}
		if err := decodeHex(s.Prev[:], j.Prev, "prev"); err != nil {
			return nil, err
		}
		if err := decodeHex(s.Nonce[:], j.Nonce, "nonce"); err != nil {
			return nil, err
		}
		if s.PublicKey, err = decodePub(j.Pub, "pub"); err != nil {
			return nil, err
		}
		if s.PublicKey != nil {
			if err := decodeHex(s.MACKeyID[:], j.MACID, "mac_id"); err != nil {
				return nil, err
			}
		}
		r.Segment = s
	case KindCheckpoint:
		if j.Upto == nil {
			return nil, malformed("checkpoint without upto")
		}
		c := &CheckpointInfo{Reason: j.Reason, Upto: *j.Upto, KeysOff: j.KeysOff, Final: j.Final}
		if err := decodeHex(c.UptoHash[:], j.UptoH, "upto_h"); err != nil {
			return nil, err
		}
		if c.PublicKey, err = decodePub(j.Pub, "pub"); err != nil {
			return nil, err
		}
		if c.PublicKey == nil {
			return nil, malformed("checkpoint without a public key")
		}
		if err := decodeHex(c.MACKeyID[:], j.MACID, "mac_id"); err != nil {
			return nil, err
		}
		if c.NextPublicKey, err = decodePub(j.NextPub, "next_pub"); err != nil {
			return nil, err
		}
		if c.NextPublicKey != nil {
			if err := decodeHex(c.NextMACKeyID[:], j.NextMACID, "next_mac_id"); err != nil {
				return nil, err
			}
		}
		c.Signature = make([]byte, ed25519SignatureSize)
		if err := decodeHex(c.Signature, j.Sig, "sig"); err != nil {
			return nil, err
		}
		r.Checkpoint = c
	}
	if err := decodeHex(r.Hash[:], j.H, "h"); err != nil {
		return nil, err
	}
	if j.MAC != "" {
		if err := decodeHex(r.MAC[:], j.MAC, "mac"); err != nil {
			return nil, err
		}
		r.HasMAC = true
	}
	return r, nil
}

// rawParts locates, in a canonical line without its newline, the bytes
// the chain hash covers (line[:prefix]) and, for a checkpoint, the bytes
// its signature covers (line[:signed]).
func rawParts(line []byte, r *Record) (prefix, signed int) {
	tail := tailNoMAC
	if r.HasMAC {
		tail = tailWithMAC
	}
	prefix = len(line) - tail
	signed = prefix
	if r.Kind == KindCheckpoint {
		signed -= sigFieldSize
	}
	return prefix, signed
}
