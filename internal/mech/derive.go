package mech

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"encoding/binary"
	"encoding/pem"
	"hash"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

func errPeer() error      { return invalid("invalid peer public key") }
func errPeerCurve() error { return invalid("peer key is not on the key's curve") }

// Derive makes a new secret key of type out (AES or HMAC, out.SecretLen
// bytes) with HKDF (RFC 5869) under hash h, salt and info.
//
// With an X25519 or ECDH private key the HKDF input is the shared secret
// with peer, a public key on the same curve given as SPKI DER, SPKI PEM,
// or raw (32 bytes for X25519; a SEC 1 uncompressed or compressed point
// for P-256/P-384); h defaults to SHA-256. A shared secret of zero (a
// low-order X25519 peer point) is refused. With an HMAC key the input is
// the key itself, peer must be empty, and h defaults to the key's hash.
//
// The shared secret is wiped after use. The new key's bytes leave this
// package only through its Export.
func (k *Key) Derive(peer []byte, h wire.HashAlg, salt, info []byte, out *key.Spec) (*Key, error) {
	return k.DeriveKDF(wire.DeriveKdf_DERIVE_KDF_HKDF, peer, h, salt, info, out)
}

// DeriveKDF is Derive with the key derivation function kdf. HKDF (or
// unspecified) is Derive's. The others take an X25519 or ECDH private key
// only, and no salt:
//   - NONE: the new key is the shared secret itself, as PKCS #11's
//     CKD_NULL has it: a key shorter than the secret is its last bytes
//     (truncation removes bytes from the leading end); one longer is
//     refused. h must be unspecified and info empty.
//   - X963: the ANSI X9.63 KDF (SEC 1 section 3.6.1) under h, which must
//     be SHA-256, SHA-384 or SHA-512, with info as the shared data.
func (k *Key) DeriveKDF(kdf wire.DeriveKdf, peer []byte, h wire.HashAlg, salt, info []byte, out *key.Spec) (*Key, error) {
	if err := k.live(); err != nil {
		return nil, err
	}
	switch kdf {
	case wire.DeriveKdf_DERIVE_KDF_UNSPECIFIED, wire.DeriveKdf_DERIVE_KDF_HKDF:
		kdf = wire.DeriveKdf_DERIVE_KDF_HKDF
	case wire.DeriveKdf_DERIVE_KDF_NONE, wire.DeriveKdf_DERIVE_KDF_X963:
		if k.spec.Family != key.FamilyX25519 && k.spec.Family != key.FamilyECDH {
			return nil, invalid("the raw and X9.63 derivations take an X25519 or ECDH key")
		}
		if len(salt) != 0 {
			return nil, invalid("the raw and X9.63 derivations take no salt")
		}
		if kdf == wire.DeriveKdf_DERIVE_KDF_NONE && (h != wire.HashAlg_HASH_ALG_UNSPECIFIED || len(info) != 0) {
			return nil, invalid("the raw derivation takes no hash and no info")
		}
		if kdf == wire.DeriveKdf_DERIVE_KDF_X963 && h != wire.HashAlg_HASH_ALG_SHA256 && h != wire.HashAlg_HASH_ALG_SHA384 && h != wire.HashAlg_HASH_ALG_SHA512 {
			return nil, invalid("the X9.63 derivation takes SHA-256, SHA-384 or SHA-512")
		}
	default:
		return nil, invalid("unknown key derivation function")
	}
	switch k.spec.Family {
	case key.FamilyX25519, key.FamilyECDH:
		if !k.hasPrivate() {
			return nil, errNeedPrivate()
		}
	case key.FamilyHMAC:
		if len(peer) != 0 {
			return nil, invalid("HMAC derivation takes no peer key")
		}
		if h == wire.HashAlg_HASH_ALG_UNSPECIFIED {
			h = k.macAlg
		}
	default:
		return nil, errUnsupported()
	}
	out, err := lookupSpec(out)
	if err != nil {
		return nil, err
	}
	if out.Asymmetric || out.SecretLen <= 0 {
		return nil, invalid("derived key type must be a secret key type")
	}
	if h == wire.HashAlg_HASH_ALG_UNSPECIFIED {
		h = wire.HashAlg_HASH_ALG_SHA256
	}
	hf := hashFunc(h)
	if hf == nil {
		return nil, errUnknownHash()
	}

	var child *Key
	err = k.run(func(e *expanded) error {
		ikm := e.macKey
		if k.spec.Family != key.FamilyHMAC {
			shared, err := k.agree(e, peer)
			if err != nil {
				return err
			}
			defer clear(shared)
			ikm = shared
		}
		var okm []byte
		switch kdf {
		case wire.DeriveKdf_DERIVE_KDF_NONE:
			if len(ikm) < out.SecretLen {
				return invalid("the new key is longer than the shared secret")
			}
			okm = bytes.Clone(ikm[len(ikm)-out.SecretLen:])
		case wire.DeriveKdf_DERIVE_KDF_X963:
			okm = x963(hf, ikm, info, out.SecretLen)
		default:
			var err error
			okm, err = hkdf.Key(hf, ikm, salt, string(info), out.SecretLen)
			if err != nil {
				return internal("key derivation failed")
			}
		}
		var err error
		child, err = newSecretKey(out, okm)
		return err
	})
	return child, err
}

// x963 is the ANSI X9.63 KDF (SEC 1 section 3.6.1): the concatenation of
// H(z || counter || shared) for a 32-bit big-endian counter from 1, cut
// to n bytes. n is at most 64 here, far below the standard's limit.
func x963(hf func() hash.Hash, z, shared []byte, n int) []byte {
	out := make([]byte, 0, n+64)
	h := hf()
	var ctr [4]byte
	for i := uint32(1); len(out) < n; i++ {
		binary.BigEndian.PutUint32(ctr[:], i)
		h.Reset()
		h.Write(z)
		h.Write(ctr[:])
		h.Write(shared)
		out = h.Sum(out)
	}
	clear(out[n:cap(out)])
	return out[:n]
}

// agree returns the raw shared secret of the expanded private key e with
// peer. It runs inside secmem.Do; the caller must wipe the result.
func (k *Key) agree(e *expanded, peer []byte) ([]byte, error) {
	if e == nil || e.dh == nil {
		return nil, errNeedPrivate()
	}
	pub, err := k.parsePeer(peer)
	if err != nil {
		return nil, err
	}
	// crypto/ecdh refuses the identity point and all-zero X25519 outputs.
	shared, err := e.dh.ECDH(pub)
	if err != nil {
		return nil, errPeer()
	}
	return shared, nil
}

// parsePeer decodes a peer public key for k's curve.
func (k *Key) parsePeer(peer []byte) (*ecdh.PublicKey, error) {
	curve := ecdhCurve(k.spec)
	switch {
	case isPEM(peer):
		block, rest := pem.Decode(peer)
		if block == nil || block.Type != pemPublic || len(block.Headers) != 0 || !isBlank(rest) {
			return nil, errPeer()
		}
		return k.peerFromSPKI(block.Bytes)
	case len(peer) == 0:
		return nil, errPeer()
	case curve == ecdh.X25519() && len(peer) == 32:
		pub, err := curve.NewPublicKey(peer)
		if err != nil {
			return nil, errPeer()
		}
		return pub, nil
	case peer[0] == 0x30: // an ASN.1 SEQUENCE: SPKI DER
		return k.peerFromSPKI(peer)
	case curve != ecdh.X25519() && (peer[0] == 2 || peer[0] == 3):
		return k.decompress(peer)
	}
	pub, err := curve.NewPublicKey(peer)
	if err != nil {
		return nil, errPeer()
	}
	return pub, nil
}

func (k *Key) peerFromSPKI(der []byte) (*ecdh.PublicKey, error) {
	pub, err := parseSPKI(der)
	if err != nil {
		return nil, errPeer()
	}
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		if k.spec.Family != key.FamilyECDH || p.Curve != ecdsaCurve(k.spec) {
			return nil, errPeerCurve()
		}
		dh, err := p.ECDH()
		if err != nil {
			return nil, errPeer()
		}
		return dh, nil
	case *ecdh.PublicKey:
		if p.Curve() != ecdhCurve(k.spec) {
			return nil, errPeerCurve()
		}
		return p, nil
	}
	return nil, errPeerCurve()
}

// decompress turns a SEC 1 compressed P-256/P-384 point into a public key.
func (k *Key) decompress(peer []byte) (*ecdh.PublicKey, error) {
	c := ecdsaCurve(k.spec)
	if c == nil {
		return nil, errPeer()
	}
	x, y := elliptic.UnmarshalCompressed(c, peer)
	if x == nil {
		return nil, errPeer()
	}
	n := (c.Params().BitSize + 7) / 8
	raw := make([]byte, 1+2*n)
	raw[0] = 4
	x.FillBytes(raw[1 : 1+n])
	y.FillBytes(raw[1+n:])
	pub, err := ecdhCurve(k.spec).NewPublicKey(raw)
	if err != nil {
		return nil, errPeer()
	}
	return pub, nil
}

// isBlank reports whether b is only white space.
func isBlank(b []byte) bool {
	for _, c := range b {
		if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			return false
		}
	}
	return true
}
