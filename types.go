package keywarden

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"fmt"
	"strings"
	"time"

	"github.com/keywarden/keywarden/internal/wire"
)

// KeyType names the algorithm a key is made for. A key is only ever used
// with its own algorithm. The string values are those the CLI accepts.
type KeyType string

const (
	AES256GCM  KeyType = "aes256-gcm"
	HMACSHA256 KeyType = "hmac-sha256"
	HMACSHA384 KeyType = "hmac-sha384"
	HMACSHA512 KeyType = "hmac-sha512"
	Ed25519    KeyType = "ed25519"
	ECDSAP256  KeyType = "ecdsa-p256"
	ECDSAP384  KeyType = "ecdsa-p384"
	RSA2048    KeyType = "rsa-2048"
	RSA3072    KeyType = "rsa-3072"
	RSA4096    KeyType = "rsa-4096"
	X25519     KeyType = "x25519"
	ECDHP256   KeyType = "ecdh-p256"
	ECDHP384   KeyType = "ecdh-p384"
)

// KeyTypes returns every key type the client knows: those of the
// protocol, named as package wire names them for the client, the CLI and
// the daemon alike.
func KeyTypes() []KeyType {
	var ts []KeyType
	for _, w := range wire.KeyTypes() {
		name, _ := wire.KeyTypeName(w)
		ts = append(ts, KeyType(name))
	}
	return ts
}

func (t KeyType) wire() wire.KeyType {
	w, _ := wire.KeyTypeByName(string(t))
	return w
}

// keyTypeFromWire names a key type the daemon sent. A type this client
// does not know is an error: a key is only ever used with its own
// algorithm, and the client cannot tell what that is.
func keyTypeFromWire(w wire.KeyType) (KeyType, error) {
	name, ok := wire.KeyTypeName(w)
	if !ok {
		return "", &Error{Code: CodeUnimplemented,
			Message: fmt.Sprintf("the daemon sent a key of type %d, which this client does not know; a newer client may", int32(w))}
	}
	return KeyType(name), nil
}

// Valid reports whether t is a known key type.
func (t KeyType) Valid() bool { return t.wire() != wire.KeyType_KEY_TYPE_UNSPECIFIED }

// Class says what a key object holds.
type Class string

const (
	ClassSecret  Class = "secret"
	ClassPublic  Class = "public"
	ClassPrivate Class = "private"
)

func classFromWire(c wire.KeyClass) (Class, error) {
	switch c {
	case wire.KeyClass_KEY_CLASS_SECRET:
		return ClassSecret, nil
	case wire.KeyClass_KEY_CLASS_PUBLIC:
		return ClassPublic, nil
	case wire.KeyClass_KEY_CLASS_PRIVATE:
		return ClassPrivate, nil
	}
	return "", &Error{Code: CodeUnimplemented,
		Message: fmt.Sprintf("the daemon sent a key of class %d, which this client does not know; a newer client may", int32(c))}
}

// Usage is a set of things a key may be used for.
type Usage uint32

const (
	UsageEncrypt = Usage(wire.Usage_USAGE_ENCRYPT)
	UsageDecrypt = Usage(wire.Usage_USAGE_DECRYPT)
	UsageSign    = Usage(wire.Usage_USAGE_SIGN)
	UsageVerify  = Usage(wire.Usage_USAGE_VERIFY)
	UsageWrap    = Usage(wire.Usage_USAGE_WRAP)
	UsageUnwrap  = Usage(wire.Usage_USAGE_UNWRAP)
	UsageDerive  = Usage(wire.Usage_USAGE_DERIVE)
)

// String returns the usages as a comma-separated list, e.g. "sign,verify".
func (u Usage) String() string { return wire.UsageString(uint32(u)) }

// Has reports whether u includes every usage in x.
func (u Usage) Has(x Usage) bool { return u&x == x }

// ParseUsage parses a comma-separated list of usage names.
func ParseUsage(s string) (Usage, error) {
	u, err := wire.ParseUsage(s)
	return Usage(u), err
}

// KeyID is a key's persistent identifier: 128 random bits, shown as 32
// hex digits.
type KeyID [16]byte

func (id KeyID) String() string { return wire.FormatKeyID(id) }

// ParseKeyID parses the 32-hex-digit form of a key id.
func ParseKeyID(s string) (KeyID, error) {
	id, err := wire.ParseKeyID(s)
	return KeyID(id), err
}

// ACLEntry grants a user or group some of a key's usages. An entry with
// no usages still lets its principal see the key and read its public half.
type ACLEntry struct {
	Group bool   // ID is a gid rather than a uid
	ID    uint32 // uid or gid
	Usage Usage
}

// KeySpec describes a key to create.
type KeySpec struct {
	// Name is unique per owner among persistent keys: 1-128 characters of
	// A-Z a-z 0-9 . _ @ + -, starting with a letter, digit or underscore.
	// Optional.
	Name string
	Type KeyType
	// Usage; zero means everything the type can do, minus what the rules
	// forbid (a key never both wraps and decrypts, or unwraps and encrypts).
	Usage Usage
	// Exportable keys may leave the daemon in plaintext. This can be
	// switched off later, never on.
	Exportable bool
	// Wrappable keys may leave the daemon wrapped under another key.
	Wrappable bool
	// Ephemeral keys die with the connection and are invisible to others.
	Ephemeral bool
	ACL       []ACLEntry
	// RotateAfter makes a new version automatically when the newest is
	// older (0: never).
	RotateAfter time.Duration
	// RefuseWhenSpent: when a version has made as many AES-GCM encryptions
	// as it may (2^32 with random nonces), refuse to encrypt rather than
	// make a new version.
	RefuseWhenSpent bool
}

func (s KeySpec) wire() *wire.KeyTemplate {
	t := &wire.KeyTemplate{Name: s.Name, Type: s.Type.wire(), Usage: uint32(s.Usage),
		Exportable: s.Exportable, Wrappable: s.Wrappable, Ephemeral: s.Ephemeral,
		RotateAfterSeconds: int64(s.RotateAfter / time.Second), RefuseWhenSpent: s.RefuseWhenSpent}
	t.Acl = aclToWire(s.ACL)
	return t
}

func aclToWire(acl []ACLEntry) []*wire.AclEntry {
	var out []*wire.AclEntry
	for _, e := range acl {
		w := &wire.AclEntry{Usage: uint32(e.Usage)}
		if e.Group {
			w.Principal = &wire.AclEntry_Gid{Gid: e.ID}
		} else {
			w.Principal = &wire.AclEntry_Uid{Uid: e.ID}
		}
		out = append(out, w)
	}
	return out
}

// KeyInfo describes a key object.
type KeyInfo struct {
	ID         KeyID
	Name       string
	Owner      uint32 // uid
	Type       KeyType
	Class      Class
	Usage      Usage
	Exportable bool
	Wrappable  bool
	Ephemeral  bool
	ACL        []ACLEntry
	Created    time.Time
	Version    uint32
	// PublicKeyDER is the SubjectPublicKeyInfo of an asymmetric key.
	PublicKeyDER []byte
	// CallerUsage is what the caller who asked may do with the key.
	CallerUsage Usage
	// KDF says how a key derived from a passphrase was made; nil for
	// others.
	KDF *PassphraseKDF
	// Lifecycle is the key's origin and versions.
	Lifecycle Lifecycle
}

func infoFromWire(w *wire.KeyInfo) (KeyInfo, error) {
	if w == nil {
		return KeyInfo{}, nil
	}
	typ, err := keyTypeFromWire(w.Type)
	if err != nil {
		return KeyInfo{}, err
	}
	class, err := classFromWire(w.Class)
	if err != nil {
		return KeyInfo{}, err
	}
	i := KeyInfo{
		Name: w.Name, Owner: w.OwnerUid, Type: typ, Class: class,
		Usage: Usage(w.Usage), Exportable: w.Exportable, Wrappable: w.Wrappable, Ephemeral: w.Ephemeral,
		Created: time.Unix(0, w.CreatedUnixNano), Version: w.Version, PublicKeyDER: w.PublicKey,
		CallerUsage: Usage(w.CallerUsage), KDF: kdfFromWire(w.Kdf), Lifecycle: lifecycleFromWire(w.Lifecycle),
	}
	copy(i.ID[:], w.Id)
	for _, e := range w.Acl {
		switch p := e.Principal.(type) {
		case *wire.AclEntry_Uid:
			i.ACL = append(i.ACL, ACLEntry{ID: p.Uid, Usage: Usage(e.Usage)})
		case *wire.AclEntry_Gid:
			i.ACL = append(i.ACL, ACLEntry{Group: true, ID: p.Gid, Usage: Usage(e.Usage)})
		}
	}
	return i, nil
}

// PublicKey parses the public half of an asymmetric key: ed25519.PublicKey,
// *ecdsa.PublicKey, *rsa.PublicKey, or *ecdh.PublicKey for X25519 and ECDH
// keys. It returns nil for secret keys.
func (i KeyInfo) PublicKey() (crypto.PublicKey, error) {
	if len(i.PublicKeyDER) == 0 {
		return nil, nil
	}
	pub, err := x509.ParsePKIXPublicKey(i.PublicKeyDER)
	if err != nil {
		return nil, fmt.Errorf("keywarden: parse public key: %w", err)
	}
	if ec, ok := pub.(*ecdsa.PublicKey); ok && (i.Type == ECDHP256 || i.Type == ECDHP384) {
		return ec.ECDH()
	}
	return pub, nil
}

// Padding selects the RSA signature scheme.
type Padding int

const (
	// PaddingPSS is RSASSA-PSS with a salt as long as the hash (default).
	PaddingPSS Padding = iota
	// PaddingPKCS1v15 is RSASSA-PKCS1-v1_5.
	PaddingPKCS1v15
)

// wire maps the default, PSS, to "unspecified", so that options meant for
// RSA keys are harmless on keys without padding.
func (p Padding) wire() wire.Padding {
	if p == PaddingPKCS1v15 {
		return wire.Padding_PADDING_PKCS1V15
	}
	return wire.Padding_PADDING_UNSPECIFIED
}

// KeyFormat is the encoding of key bytes on import and export.
type KeyFormat int

const (
	// FormatAuto detects the format on import; on export it means raw
	// bytes for secret keys, PKCS #8 DER for private keys and SPKI DER for
	// public keys.
	FormatAuto KeyFormat = iota
	FormatRaw
	FormatPKCS8DER
	FormatPKCS8PEM
	FormatSPKIDER
	FormatSPKIPEM
)

func (f KeyFormat) wire() wire.KeyFormat {
	switch f {
	case FormatRaw:
		return wire.KeyFormat_KEY_FORMAT_RAW
	case FormatPKCS8DER:
		return wire.KeyFormat_KEY_FORMAT_PKCS8_DER
	case FormatPKCS8PEM:
		return wire.KeyFormat_KEY_FORMAT_PKCS8_PEM
	case FormatSPKIDER:
		return wire.KeyFormat_KEY_FORMAT_SPKI_DER
	case FormatSPKIPEM:
		return wire.KeyFormat_KEY_FORMAT_SPKI_PEM
	}
	return wire.KeyFormat_KEY_FORMAT_UNSPECIFIED
}

// hashToWire maps a crypto.Hash; 0 maps to unspecified (the default).
func hashToWire(h crypto.Hash) (wire.HashAlg, error) {
	switch h {
	case 0:
		return wire.HashAlg_HASH_ALG_UNSPECIFIED, nil
	case crypto.SHA256:
		return wire.HashAlg_HASH_ALG_SHA256, nil
	case crypto.SHA384:
		return wire.HashAlg_HASH_ALG_SHA384, nil
	case crypto.SHA512:
		return wire.HashAlg_HASH_ALG_SHA512, nil
	case crypto.SHA3_256:
		return wire.HashAlg_HASH_ALG_SHA3_256, nil
	case crypto.SHA3_512:
		return wire.HashAlg_HASH_ALG_SHA3_512, nil
	}
	return 0, argError("", "unsupported hash %v (want SHA-256, SHA-384, SHA-512, SHA3-256 or SHA3-512)", h)
}

// ParseHash parses a hash name as the CLI accepts it: sha256, sha384,
// sha512, sha3-256, sha3-512.
func ParseHash(s string) (crypto.Hash, error) {
	switch strings.ToLower(strings.ReplaceAll(s, "_", "-")) {
	case "sha256", "sha-256":
		return crypto.SHA256, nil
	case "sha384", "sha-384":
		return crypto.SHA384, nil
	case "sha512", "sha-512":
		return crypto.SHA512, nil
	case "sha3-256":
		return crypto.SHA3_256, nil
	case "sha3-512":
		return crypto.SHA3_512, nil
	}
	return 0, fmt.Errorf("unknown hash %q (want sha256, sha384, sha512, sha3-256, sha3-512)", s)
}

// Limits are the daemon's limits, which the client honours.
type Limits struct {
	MaxMessageBytes int
	MaxInFlight     int
	MaxSessions     int
	MaxHandles      int
	MaxKeysPerUser  int
	MaxBatchOps     int
	// PackedRuns says that the daemon takes a run of encryptions,
	// decryptions or MACs on one key packed into one operation; a Batch
	// then sends its runs so (docs/protocol.md, "Packed runs").
	PackedRuns bool
	// SharedMemory is the largest shared memory the daemon maps for one
	// connection (0: it takes none); payloads of SharedThreshold bytes or
	// more then travel through it (docs/protocol.md, "Shared memory").
	SharedMemory int

	// MaxConnections the daemon serves at once, of which AdminConnections
	// are kept for administrators.
	MaxConnections   int
	AdminConnections int
	// PerUID is what the connections one ordinary uid opens may hold at
	// once, and the audit records its requests may make. Administrators
	// have none of these limits. A request over one of them fails with
	// ErrResourceExhausted.
	PerUID PerUIDLimits
}

// PerUIDLimits are the daemon's limits for each ordinary uid (0: the
// daemon did not say).
type PerUIDLimits struct {
	Connections   int
	InFlight      int
	RequestBytes  int // of the requests running concurrently
	LongPolls     int // generation watches waiting
	Sessions      int
	NamedWatchers int
	Computing     int // requests computing at once
	Heavy         int // RSA key generations and rotations running
	// HeavySlots are the RSA key generations and rotations of every
	// ordinary uid running at once.
	HeavySlots int
	// AuditBytesPerSecond and AuditBurst bound the audit records a uid's
	// requests make.
	AuditBytesPerSecond int
	AuditBurst          int
	KDFQueue            int // Argon2id derivations waiting
	KDFRunning          int // Argon2id derivations running
}

// ServerStatus is what the daemon says about itself.
type ServerStatus struct {
	ProtocolVersion uint32
	ServerVersion   string
	Limits          Limits
	DevMode         bool
	Started         time.Time
	Keys            uint64
	Connections     uint32
	// The identity the daemon attributed to the status request.
	CallerUID   uint32
	CallerGID   uint32
	CallerPID   int32
	CallerPidfd bool
	// Memory describes where the daemon keeps key bytes.
	Memory MemoryStatus
	// Generation is the machine generation and its sources.
	Generation Generation
	// Seal describes the master key and the store.
	Seal SealStatus
	// Audit describes the audit log; nil when the daemon keeps none.
	Audit *AuditStatus
	// SSHAgentSockets are the daemon's ssh-agent sockets (docs/ssh.md).
	SSHAgentSockets []string
}

// AuditStatus describes the daemon's audit log (docs/audit.md).
type AuditStatus struct {
	Path string
	// Sync is "grouped" or "always".
	Sync string
	// Healthy: the log is writing. When it is not, every request is
	// refused with ErrUnavailable; Error says why, and since when.
	Healthy     bool
	Error       string
	FailedSince time.Time
	// Refused counts requests refused since the log stopped writing.
	Refused   uint64
	Seq       uint64
	FileBytes uint64
	// Keyed: records carry MACs and checkpoints are signed (the daemon is
	// unsealed); PublicKey verifies the checkpoints.
	Keyed     bool
	PublicKey []byte
	// LastCheckpoint is the last checkpoint written, as SEQ:HASH, the form
	// "keywarden audit verify --expect" takes.
	LastCheckpoint string
	// Copies of key-management records for the kernel's audit subsystem.
	LinuxEnabled bool
	LinuxReason  string
	LinuxSent    uint64
	LinuxDropped uint64
}

// MemoryStatus describes the daemon's key memory.
type MemoryStatus struct {
	// Backing is "memfd_secret" (pages removed from the kernel's direct
	// map) or "mlock" (locked memory with guard pages).
	Backing     string
	LockedBytes uint64
	InUseBytes  uint64
	LimitBytes  uint64 // 0: no limit
	Allocations uint64
	// RuntimeSecret: operations on key bytes run inside runtime/secret.Do.
	RuntimeSecret bool
	// Mlockall: the whole daemon is locked in memory.
	Mlockall bool
	// Dumpable: the daemon could be dumped or traced by its own uid (false
	// once hardened).
	Dumpable   bool
	CachedKeys uint32
}
