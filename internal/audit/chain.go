package audit

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"hash"
	"sync"

	"github.com/keywarden/keywarden/internal/secmem"
)

// The chain (docs/audit.md, "The chain"):
//
//	h(i)   = SHA-256(h(i-1) || bytes of line i up to its "h" field)
//	mac(i) = HMAC-SHA-256(macKey, h(i))
//	sig    = Ed25519(signingKey, checkpointContext || bytes of the
//	         checkpoint line up to its "sig" field)
//
// h(0), before the first record of a log, is 32 zero bytes; every segment
// record states the hash it continues from ("prev"), so a file can be
// checked on its own. The hash chain is public: anyone can recompute it,
// so on its own it proves only that the lines fit together. The MAC,
// which needs the secret key, authenticates every record; the checkpoint
// signatures authenticate everything before them to anyone who holds the
// public key.

// Labels of the HKDF-SHA-256 derivations of the two audit keys.
const (
	macLabel        = "keywarden audit mac v1"
	signingLabel    = "keywarden audit checkpoint v1"
	macIDLabel      = "keywarden audit mac key id v1"
	checkpointLabel = "keywarden audit checkpoint v1\n"
)

// Keys are the log's two keys: the MAC key, which authenticates every
// record, and the Ed25519 key that signs checkpoints. Make them with
// DeriveKeys. A Keys may be used by one Log and by Verify at once.
type Keys struct {
	mu    sync.Mutex // guards everything below
	mac   []byte
	macID [8]byte
	hm    hash.Hash
	priv  ed25519.PrivateKey
	pub   ed25519.PublicKey
	// macFn computes HMAC(mac, macIn) into macOut. Made once, so that
	// running it inside secmem.Do costs no allocation per record.
	macFn  func()
	macIn  [32]byte
	macOut [32]byte
}

// ErrKeySize is returned by DeriveKeys for a secret shorter than 32
// bytes.
var ErrKeySize = errors.New("audit: the audit secret must be at least 32 bytes")

// DeriveKeys derives the audit keys from secret, a uniformly random secret
// of at least 32 bytes that the daemon keeps under its master key (the
// store's audit key, which survives master-key rotation, so that the
// public key stays the same for the life of the store):
//
//	macKey  = HKDF-SHA-256(secret, salt: none, info: "keywarden audit mac v1", 32 bytes)
//	seed    = HKDF-SHA-256(secret, salt: none, info: "keywarden audit checkpoint v1", 32 bytes)
//	signing = Ed25519 key from seed (RFC 8032)
//
// The same secret always gives the same keys, so the public key can be
// published once and pinned by whoever verifies the log.
func DeriveKeys(secret []byte) (*Keys, error) {
	if len(secret) < 32 {
		return nil, ErrKeySize
	}
	var k *Keys
	var err error
	secmem.Do(func() {
		var mac, seed []byte
		mac, err = hkdf.Key(sha256.New, secret, nil, macLabel, 32)
		if err != nil {
			return
		}
		seed, err = hkdf.Key(sha256.New, secret, nil, signingLabel, ed25519.SeedSize)
		if err != nil {
			return
		}
		k = newKeys(mac, seed)
		clear(seed)
	})
	return k, err
}

func newKeys(mac, seed []byte) *Keys {
	k := &Keys{mac: mac, priv: ed25519.NewKeyFromSeed(seed)}
	k.pub = k.priv.Public().(ed25519.PublicKey)
	id := hmac.New(sha256.New, mac)
	id.Write([]byte(macIDLabel))
	copy(k.macID[:], id.Sum(nil))
	k.hm = hmac.New(sha256.New, mac)
	k.macFn = func() {
		k.hm.Reset()
		k.hm.Write(k.macIn[:])
		k.hm.Sum(k.macOut[:0])
	}
	return k
}

// PublicKey returns the checkpoint verification key, which the daemon
// publishes and verifiers pin.
func (k *Keys) PublicKey() ed25519.PublicKey { return k.pub }

// MACKeyID names the MAC key in the log without revealing it.
func (k *Keys) MACKeyID() [8]byte { return k.macID }

// Destroy wipes the keys. The Keys must not be used afterwards.
func (k *Keys) Destroy() {
	k.mu.Lock()
	defer k.mu.Unlock()
	clear(k.mac)
	clear(k.priv)
	k.hm = nil
}

// macOf returns HMAC-SHA-256(macKey, h).
func (k *Keys) macOf(h *[32]byte) (out [32]byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.hm == nil {
		return out
	}
	k.macIn = *h
	secmem.Do(k.macFn)
	return k.macOut
}

// sign signs a checkpoint whose line, up to the signature, is signed.
// buf is scratch space; the signature is appended to dst.
func (k *Keys) sign(dst, signed []byte, buf *[]byte) []byte {
	msg := append(append((*buf)[:0], checkpointLabel...), signed...)
	*buf = msg
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.hm == nil {
		return append(dst, make([]byte, ed25519.SignatureSize)...)
	}
	var sig []byte
	secmem.Do(func() { sig = ed25519.Sign(k.priv, msg) })
	return append(dst, sig...)
}

// verifyCheckpoint checks a checkpoint signature.
func verifyCheckpoint(pub ed25519.PublicKey, signed, sig []byte) bool {
	msg := make([]byte, 0, len(checkpointLabel)+len(signed))
	msg = append(append(msg, checkpointLabel...), signed...)
	return ed25519.Verify(pub, msg, sig)
}

// chainHash sets *out = SHA-256(prev || prefix), with d a reusable
// SHA-256 state; out may be prev. (Summing into memory that is already on
// the heap keeps the hot path free of allocations.)
func chainHash(d hash.Hash, prev *[32]byte, prefix []byte, out *[32]byte) {
	d.Reset()
	d.Write(prev[:])
	d.Write(prefix)
	d.Sum(out[:0])
}

// chainHashOf returns SHA-256(prev || prefix).
func chainHashOf(d hash.Hash, prev *[32]byte, prefix []byte) (h [32]byte) {
	chainHash(d, prev, prefix, &h)
	return h
}

// macEqual compares MACs in constant time.
func macEqual(a, b *[32]byte) bool { return hmac.Equal(a[:], b[:]) }

func newDigest() hash.Hash { return sha256.New() }
