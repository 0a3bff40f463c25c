package transit

import (
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"math/big"

	"github.com/keywarden/keywarden/internal/wire"
)

// hashes are transit's hash names the core has.
var hashes = map[string]wire.HashAlg{
	"sha2-256": wire.HashAlg_HASH_ALG_SHA256,
	"sha2-384": wire.HashAlg_HASH_ALG_SHA384,
	"sha2-512": wire.HashAlg_HASH_ALG_SHA512,
	"sha3-256": wire.HashAlg_HASH_ALG_SHA3_256,
	"sha3-512": wire.HashAlg_HASH_ALG_SHA3_512,
}

// hashParam is the hash the path or the field hash_algorithm (or
// algorithm) names; sha2-256 if none.
func hashParam(rq *request, p params) (wire.HashAlg, error) {
	s := rq.vars["hash"]
	if s == "" {
		s, _ = p.str("hash_algorithm")
	}
	if s == "" {
		s, _ = p.str("algorithm")
	}
	if s == "" {
		return wire.HashAlg_HASH_ALG_SHA256, nil
	}
	h, ok := hashes[s]
	if !ok {
		switch s {
		case "sha1", "sha2-224", "sha2-512/224", "sha2-512/256", "sha3-224", "sha3-384", "none":
			return 0, notOffered("hash algorithm %q", s)
		}
		return 0, badRequest("unsupported hash algorithm %q", s)
	}
	return h, nil
}

// signParams are the parameters a signature is made or checked with.
type signParams struct {
	hash      wire.HashAlg
	prehashed bool
	padding   wire.Padding
	jws       bool
}

func readSignParams(rq *request, p params, t wire.KeyType) (signParams, error) {
	var sp signParams
	var err error
	if sp.hash, err = hashParam(rq, p); err != nil {
		return sp, err
	}
	if sp.prehashed, err = p.bool("prehashed"); err != nil {
		return sp, err
	}
	switch m, _ := p.str("marshaling_algorithm"); m {
	case "", "asn1":
	case "jws":
		sp.jws = true
	default:
		return sp, badRequest("invalid marshaling_algorithm %q: want asn1 or jws", m)
	}
	switch s, _ := p.str("signature_algorithm"); s {
	case "", "pss":
		sp.padding = wire.Padding_PADDING_PSS
	case "pkcs1v15":
		sp.padding = wire.Padding_PADDING_PKCS1V15
	default:
		return sp, badRequest("invalid signature_algorithm %q: want pss or pkcs1v15", s)
	}
	switch s, _ := p.str("salt_length"); s {
	case "", "auto", "hash":
	default:
		return sp, notOffered("salt_length %q (signatures use the hash's length, verification any)", s)
	}
	if err := checkNotDerived(p); err != nil {
		return sp, err
	}
	switch t {
	case wire.KeyType_KEY_TYPE_ED25519:
		// Pure Ed25519 over the input; prehashed: Ed25519ph over a
		// SHA-512 digest.
		sp.padding, sp.hash = 0, 0
		if sp.prehashed {
			sp.hash = wire.HashAlg_HASH_ALG_SHA512
		}
	case wire.KeyType_KEY_TYPE_ECDSA_P256, wire.KeyType_KEY_TYPE_ECDSA_P384:
		sp.padding = 0
	case wire.KeyType_KEY_TYPE_RSA_2048, wire.KeyType_KEY_TYPE_RSA_3072, wire.KeyType_KEY_TYPE_RSA_4096:
		if sp.jws && sp.padding != wire.Padding_PADDING_PSS && sp.padding != wire.Padding_PADDING_PKCS1V15 {
			return sp, badRequest("invalid signature_algorithm")
		}
	default:
		return sp, badRequest("key type %s does not support signing", typeName(t))
	}
	return sp, nil
}

// curveSize is the bytes of a scalar of an ECDSA key's curve, or 0.
func curveSize(t wire.KeyType) int {
	switch t {
	case wire.KeyType_KEY_TYPE_ECDSA_P256:
		return 32
	case wire.KeyType_KEY_TYPE_ECDSA_P384:
		return 48
	}
	return 0
}

// sigForm is transit's form of the core's signature: ASN.1 as made, or
// for JWS, r || s for ECDSA, base64url without padding.
func sigForm(t wire.KeyType, v uint32, sig []byte, jws bool) (string, error) {
	if !jws {
		return vaultForm(v, sig, base64.StdEncoding), nil
	}
	if n := curveSize(t); n > 0 {
		var rs struct{ R, S *big.Int }
		if rest, err := asn1.Unmarshal(sig, &rs); err != nil || len(rest) != 0 {
			return "", errors.New("transit: an unreadable ECDSA signature from the core")
		}
		out := make([]byte, 2*n)
		rs.R.FillBytes(out[:n])
		rs.S.FillBytes(out[n:])
		sig = out
	}
	return vaultForm(v, sig, base64.RawURLEncoding), nil
}

// coreSig is the core's form of a transit signature.
func coreSig(t wire.KeyType, s string, jws bool) (uint32, []byte, error) {
	enc := base64.StdEncoding
	if jws {
		enc = base64.RawURLEncoding
	}
	v, sig, err := parseVault("signature", s, enc)
	if err != nil {
		return 0, nil, err
	}
	if n := curveSize(t); n > 0 && jws {
		if len(sig) != 2*n {
			return 0, nil, badRequest("invalid signature: a JWS ECDSA signature of %d bytes", len(sig))
		}
		der, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:])})
		if err != nil {
			return 0, nil, badRequest("invalid signature")
		}
		sig = der
	}
	return v, sig, nil
}

func sign(rq *request) (any, error) {
	name, err := rq.name()
	if err != nil {
		return nil, err
	}
	top := rq.params()
	if err := newestOnly(rq, name, top); err != nil {
		return nil, err
	}
	return runItems(rq, name, func(p params, k openKey) prepared {
		inherit(top, p)
		sp, err := readSignParams(rq, p, k.typ)
		if err != nil {
			return prepared{err: err}
		}
		in, err := p.b64("input")
		if err != nil {
			return prepared{err: err}
		}
		return prepared{mk: func(k openKey) *wire.Op {
			return &wire.Op{Op: &wire.Op_Sign{Sign: &wire.Sign{Handle: k.h, Data: in, Prehashed: sp.prehashed, Hash: sp.hash, Padding: sp.padding}}}
		}}
	}, func(p params, k openKey, r *wire.Result) (map[string]any, error) {
		jws, _ := p.str("marshaling_algorithm")
		s, err := sigForm(k.typ, r.KeyVersion, r.Data, jws == "jws")
		if err != nil {
			return nil, err
		}
		return map[string]any{"signature": s, "key_version": r.KeyVersion}, nil
	})
}

// verify checks signatures (field signature) or HMACs (field hmac).
func verify(rq *request) (any, error) {
	name, err := rq.name()
	if err != nil {
		return nil, err
	}
	top := rq.params()
	return runItems(rq, name, func(p params, k openKey) prepared {
		inherit(top, p)
		in, err := p.b64("input")
		if err != nil {
			return prepared{err: err}
		}
		if s, _ := p.str("hmac"); s != "" {
			h, err := hashParam(rq, p)
			if err != nil {
				return prepared{err: err}
			}
			if err := hmacHash(k.typ, h); err != nil {
				return prepared{err: err}
			}
			v, tag, err := parseVault("hmac", s, base64.StdEncoding)
			if err != nil {
				return prepared{err: err}
			}
			return prepared{mk: func(k openKey) *wire.Op {
				return &wire.Op{Op: &wire.Op_MacVerify{MacVerify: &wire.MacVerify{Handle: k.h, Data: in, Tag: tag, KeyVersion: v}}}
			}}
		}
		s, err := p.str("signature")
		if err != nil {
			return prepared{err: err}
		}
		if s == "" {
			return prepared{err: badRequest("missing signature or hmac")}
		}
		sp, err := readSignParams(rq, p, k.typ)
		if err != nil {
			return prepared{err: err}
		}
		v, sig, err := coreSig(k.typ, s, sp.jws)
		if err != nil {
			return prepared{err: err}
		}
		return prepared{mk: func(k openKey) *wire.Op {
			return &wire.Op{Op: &wire.Op_Verify{Verify: &wire.Verify{Handle: k.h, Data: in, Signature: sig, KeyVersion: v,
				Prehashed: sp.prehashed, Hash: sp.hash, Padding: sp.padding}}}
		}}
	}, func(p params, k openKey, r *wire.Result) (map[string]any, error) {
		return map[string]any{"valid": r.Status == wire.Status_STATUS_OK}, nil
	})
}

// hmacHash refuses an HMAC with another hash than the key's: keywarden's
// hmac keys are HMAC-SHA-256 keys.
func hmacHash(t wire.KeyType, h wire.HashAlg) error {
	if t != wire.KeyType_KEY_TYPE_HMAC_SHA256 {
		return notOffered("hmac with a key of type %s (only hmac keys make HMACs)", typeName(t))
	}
	if h != wire.HashAlg_HASH_ALG_SHA256 {
		return notOffered("hmac with another algorithm than sha2-256")
	}
	return nil
}

func hmacOp(rq *request) (any, error) {
	name, err := rq.name()
	if err != nil {
		return nil, err
	}
	if err := newestOnly(rq, name, rq.params()); err != nil {
		return nil, err
	}
	return runItems(rq, name, func(p params, k openKey) prepared {
		h, err := hashParam(rq, p)
		if err != nil {
			return prepared{err: err}
		}
		if err := hmacHash(k.typ, h); err != nil {
			return prepared{err: err}
		}
		in, err := p.b64("input")
		if err != nil {
			return prepared{err: err}
		}
		return prepared{mk: func(k openKey) *wire.Op {
			return &wire.Op{Op: &wire.Op_Mac{Mac: &wire.Mac{Handle: k.h, Data: in}}}
		}}
	}, func(p params, k openKey, r *wire.Result) (map[string]any, error) {
		return map[string]any{"hmac": vaultForm(r.KeyVersion, r.Data, base64.StdEncoding), "key_version": r.KeyVersion}, nil
	})
}

// inherit gives a batch item the request's signature parameters it does
// not set itself.
func inherit(top, p params) {
	for _, f := range []string{"marshaling_algorithm", "signature_algorithm", "hash_algorithm", "algorithm", "prehashed", "salt_length"} {
		if !p.has(f) && top.has(f) {
			p[f] = top[f]
		}
	}
}
