package audit

import (
	"crypto/ed25519"
	"math"
	"time"
)

// SchemaVersion is the value of every record's "v" field. A reader
// rejects records of a version it does not know.
const SchemaVersion = 1

// Kind says what a record is.
type Kind uint8

const (
	// KindRequest records one request from a client: who asked, what, and
	// the result. It always has a Caller.
	KindRequest Kind = iota
	// KindEvent records something the daemon did or saw on its own: start,
	// stop, a failed self-test, a generation change, an unseal from the
	// console. It has no Caller.
	KindEvent
	// KindSegment opens every file and every run of the daemon, and marks
	// events that must make copies of the log diverge (see
	// Log.NewSegment). The log writes these itself.
	KindSegment
	// KindCheckpoint is a signed checkpoint. The log writes these itself.
	KindCheckpoint
)

var kindNames = [...]string{"request", "event", "segment", "checkpoint"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

func parseKind(s string) (Kind, bool) {
	for i, n := range kindNames {
		if n == s {
			return Kind(i), true
		}
	}
	return 0, false
}

// KeyID is a key's persistent 128-bit id. The zero KeyID means "no key".
type KeyID [16]byte

// IsZero reports whether id is the zero KeyID.
func (id KeyID) IsZero() bool { return id == KeyID{} }

// String returns id in lowercase hex, as in the log.
func (id KeyID) String() string { return string(appendHex(nil, id[:])) }

// Record is one line of the log.
//
// The daemon fills the request or event fields and calls Log.Append; the
// log sets Seq, Time, Mono and Hash. Records read back (Scan, Verify)
// have every field set as it appears in the log. Nothing in a record is
// secret: never put key bytes, plaintext or passphrases in any field.
type Record struct {
	// Set by the log.
	Seq  uint64        // 1, 2, 3, ... with no gap across files
	Time time.Time     // wall clock, UTC, nanoseconds
	Mono time.Duration // CLOCK_MONOTONIC: time since boot (see Segment.Boot)
	Kind Kind

	// Requests and events.
	Op         string // operation (see the Op constants)
	Alg        string // algorithm or key type, e.g. "aes256-gcm"
	Key        KeyID  // the key operated on, if any
	KeyVersion uint32 // its version, if known (0: not recorded)
	Status     string // the status sent to the client: "OK", "PERMISSION_DENIED", ...
	Caller     Caller // requests only
	Conn       uint64 // connection id (daemon-local)
	// Front is the front that carried the request, such as "ssh-agent";
	// empty for the daemon's own protocol on its SOCK_SEQPACKET socket,
	// which carried every request recorded before there were others.
	Front   string
	Session uint64 // streaming session id, if any
	Request uint64 // the request id the client chose
	Ops     []OpEntry
	// SSHCerts are the SSH certificates the request issued (ssh-certify),
	// in the order of its operations.
	SSHCerts []SSHCert
	Msg      string // a precise reason, for refusals and failures; never secrets

	// Set by the log on segment and checkpoint records.
	Segment    *Segment
	Checkpoint *CheckpointInfo

	// Hash is the chain hash after this record; MAC, HMAC-SHA-256 of Hash
	// under the audit MAC key, is present while the log has keys.
	Hash   [32]byte
	MAC    [32]byte
	HasMAC bool
}

// Caller is who sent a request, as the kernel attested it for that very
// message (SCM_CREDENTIALS), plus what the daemon read of that process
// through its pidfd (see Resolver).
type Caller struct {
	PID int32
	UID uint32
	GID uint32
	// Exe is the caller's executable and Cgroup its cgroup (v2 path), read
	// when the daemon received the request. Both are empty if the process
	// had exited (Exited) or could not be read (ExeError).
	Exe    string
	Cgroup string
	// ExeError says why Exe could not be read from a live process, e.g.
	// "permission denied" for a daemon that is not root.
	ExeError string
	// Exited: the caller had exited before the daemon looked; its pid may
	// already belong to another process, so nothing else was read.
	Exited bool
	// Unverified: the kernel gave no pidfd with the message, so Exe and
	// Cgroup were read by pid alone and could, in a rare race, belong to a
	// process that reused the pid.
	Unverified bool

	// Claimed: the identity is what the message stated, which the daemon
	// cannot take as the kernel's word. The pid is not that of the process
	// that opened the connection (Peer), or the process is in another user
	// or pid namespace than the daemon (OtherUserNS, OtherPIDNS), where a
	// process privileged over the namespace may name any process of it as
	// the sender, and any uid or gid the namespace maps. Exe and Cgroup are
	// then those of the process named. (The kernel still checks that the
	// ids are mapped to the sender's namespace: a sender cannot name a uid
	// its namespace does not map.)
	Claimed bool
	// OtherUserNS and OtherPIDNS: the process named by PID is in another
	// user namespace, or another pid namespace, than the daemon.
	OtherUserNS bool
	OtherPIDNS  bool
	// Peer is the process that opened the connection, as the kernel saw it
	// then (SO_PEERCRED), when its pid or its executable differ from this
	// message's; the zero Peer otherwise.
	Peer Peer
	// SSHDest is where an ssh-agent client said its connection leads: the
	// SHA-256 fingerprint ("SHA256:...") of the host key it bound the
	// agent connection to (session-bind@openssh.com, its signature checked
	// by the daemon), the last one if several; empty if it bound none.
	SSHDest string
	// Principal is who a client certificate names, for a request carried
	// over mutual TLS (the transit front's TCP listeners): the name the
	// daemon's principal mapping matched ("uri:spiffe://...", "dns:...",
	// "cn:..."), whose uid the request is made as. There is no process:
	// PID is 0. Empty for every request from a local process.
	Principal string
}

// Peer is the process that opened a connection, as the kernel recorded it
// at connect time (SO_PEERCRED: the pid and the effective uid and gid),
// with its executable as the daemon read it then, through the pidfd the
// kernel gives for it (SO_PEERPIDFD, Linux 6.5 and later).
type Peer struct {
	PID int32
	UID uint32
	GID uint32
	Exe string // empty if it could not be read
}

// IsZero reports whether p names no process.
func (p Peer) IsZero() bool { return p.PID == 0 }

// OpEntry is one operation of a batch, or Count consecutive operations
// that are alike in every field.
type OpEntry struct {
	Op         string
	Alg        string
	Key        KeyID
	KeyVersion uint32
	Status     string
	Count      uint32 // 0 or 1: one operation
}

// AddOp appends e to r.Ops, merging it into the last entry when they are
// alike: a batch of 512 encryptions under one key is one entry with
// Count 512, and the log still says, in order, what each operation was.
func (r *Record) AddOp(e OpEntry) {
	n := max(e.Count, 1)
	if k := len(r.Ops); k > 0 {
		last := &r.Ops[k-1]
		if last.Op == e.Op && last.Alg == e.Alg && last.Key == e.Key &&
			last.KeyVersion == e.KeyVersion && last.Status == e.Status {
			c := max(last.Count, 1)
			if c+n >= c { // no overflow
				last.Count = c + n
				return
			}
		}
	}
	e.Count = n
	r.Ops = append(r.Ops, e)
}

// Reset clears r for reuse, keeping the capacity of r.Ops.
func (r *Record) Reset() {
	ops := r.Ops[:0]
	clear(r.Ops)
	*r = Record{Ops: ops}
}

// SSHCert is an SSH certificate the daemon issued: what it says, without
// its signature. The authority is the record's key (or its operation's,
// in a batch).
type SSHCert struct {
	Type       string // "user" or "host"
	Serial     uint64
	KeyID      string
	Principals []string
	// ValidAfter and ValidBefore are seconds since the Unix epoch;
	// ValidBefore 1<<64-1 is forever.
	ValidAfter, ValidBefore uint64
	// Key is the certified key's fingerprint, as ssh-keygen -l prints it
	// ("SHA256:" and unpadded base64).
	Key string
}

// Segment describes a segment record: the first record of every file, of
// every run of the daemon, and of every NewSegment.
type Segment struct {
	Reason string   // "new log", "start", "rotate", "recovery", or NewSegment's reason
	Prev   [32]byte // the chain hash before this record (zero at seq 1)
	Nonce  [16]byte // random: two copies of a log diverge here
	Boot   string   // the kernel's boot id: Mono is comparable within one boot
	Host   string
	PID    int // the daemon's pid
	// Software names the program writing the log.
	Software string
	// PublicKey and MACKeyID identify the keys in use, if the log has keys.
	PublicKey ed25519.PublicKey
	MACKeyID  [8]byte
}

// CheckpointInfo describes a checkpoint record, signed with Ed25519 over
// the record's bytes up to its "sig" field. The signature covers Upto and
// UptoHash, so it vouches for every record before it.
type CheckpointInfo struct {
	// Reason: "count", "interval", "rotate", "close", "keys" (the log got
	// keys: signed with the new key), "rekey" (the log changes keys:
	// signed with the old key, naming the next), "keys-off" (the log
	// drops its keys), or "request".
	Reason    string
	Upto      uint64   // the previous record's seq (this record's seq - 1)
	UptoHash  [32]byte // the previous record's chain hash
	PublicKey ed25519.PublicKey
	MACKeyID  [8]byte
	// NextPublicKey and NextMACKeyID (reason "rekey") are the keys used
	// from the next record on.
	NextPublicKey ed25519.PublicKey
	NextMACKeyID  [8]byte
	KeysOff       bool // records after this one have no MAC
	Final         bool // the log was closed cleanly after this record
	Signature     []byte
}

// Operation names. Requests use the name of the protocol operation in
// lower case ("encrypt", "sign", "session-update", ...); these are the
// ones the log treats specially: key management, forwarded to Linux
// audit, and the events of the daemon itself.
const (
	OpGenerate        = "generate"
	OpImport          = "import"
	OpExport          = "export"
	OpWrap            = "wrap"
	OpUnwrap          = "unwrap"
	OpDerive          = "derive"
	OpDestroy         = "destroy"
	OpSetAttributes   = "set-attributes"
	OpSetACL          = "set-acl"
	OpRotate          = "rotate"
	OpSeal            = "seal"
	OpUnseal          = "unseal"
	OpMasterKeyRotate = "master-key-rotate"

	OpBatch           = "batch"             // a request of several operations: see Ops
	OpStart           = "daemon-start"      // event
	OpStop            = "daemon-stop"       // event
	OpSelfTestFailure = "self-test-failure" // event
	OpGeneration      = "generation-change" // event
	OpAuditResumed    = "audit-resumed"     // event, written by the log itself
	OpAuditRecovered  = "audit-recovered"   // event, written by the log itself
	OpAuditClose      = "audit-close"       // event: the last record of a log closed without keys
)

// IsKeyManagement reports whether op creates, changes, moves or destroys
// keys, or seals and unseals the daemon: the operations that are always
// recorded and that also go to Linux audit.
func IsKeyManagement(op string) bool {
	switch op {
	case OpGenerate, OpImport, OpExport, OpWrap, OpUnwrap, OpDerive, OpDestroy,
		OpSetAttributes, OpSetACL, OpRotate, OpSeal, OpUnseal, OpMasterKeyRotate:
		return true
	}
	return false
}

// Validity is the certificate's validity as ssh-keygen -L prints it, in
// UTC: "from 2026-03-01T12:00:00 to 2026-03-02T12:00:00", "forever", ...
func (c *SSHCert) Validity() string {
	const forever = 1<<64 - 1
	t := func(s uint64) string {
		if s > math.MaxInt64 {
			return "the end of time"
		}
		return time.Unix(int64(s), 0).UTC().Format("2006-01-02T15:04:05Z")
	}
	switch {
	case c.ValidAfter == 0 && c.ValidBefore == forever:
		return "forever"
	case c.ValidAfter == 0:
		return "before " + t(c.ValidBefore)
	case c.ValidBefore == forever:
		return "after " + t(c.ValidAfter)
	}
	return "from " + t(c.ValidAfter) + " to " + t(c.ValidBefore)
}
