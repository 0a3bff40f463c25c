package transit

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"

	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/wire"
)

// encodeAs is b in format (base64 or hex; def if none).
func encodeAs(p params, def string, b []byte) (string, error) {
	f, err := p.str("format")
	if err != nil {
		return "", err
	}
	if f == "" {
		f = def
	}
	switch f {
	case "hex":
		return hex.EncodeToString(b), nil
	case "base64":
		return base64.StdEncoding.EncodeToString(b), nil
	}
	return "", badRequest("unsupported encoding format %q; must be \"hex\" or \"base64\"", f)
}

func hashOp(rq *request) (any, error) {
	p := rq.params()
	h, err := hashParam(rq, p)
	if err != nil {
		return nil, err
	}
	in, err := p.b64("input")
	if err != nil {
		return nil, err
	}
	if _, err := encodeAs(p, "hex", nil); err != nil {
		return nil, err
	}
	r, err := rq.c.do1(rq.ctx, &wire.Op{Op: &wire.Op_Hash{Hash: &wire.Hash{Alg: h, Data: in}}})
	if err != nil {
		return nil, err
	}
	s, _ := encodeAs(p, "hex", r.Data)
	return map[string]any{"sum": s}, nil
}

// maxRandom is the most random bytes one request asks for, as transit's.
const maxRandom = 128 * 1024

// randomOp answers random(/:source)(/:bytes) with bytes of the daemon's
// generator, the one every key and nonce comes from (re-keyed when the
// machine's generation changes). Nothing about a key is involved: it is
// not recorded.
func randomOp(rq *request) (any, error) {
	p := rq.params()
	src, bs := rq.vars["source"], rq.vars["bytes"]
	if a := rq.vars["a"]; a != "" {
		if _, err := strconv.Atoi(a); err == nil {
			bs = a
		} else {
			src = a
		}
	}
	switch src {
	case "", "platform", "all":
	case "seal":
		return nil, notOffered("random source %q", src)
	default:
		return nil, badRequest("unsupported entropy source %q; must be \"platform\", \"seal\" or \"all\"", src)
	}
	n := int64(32)
	if bs != "" {
		v, err := strconv.ParseInt(bs, 10, 64)
		if err != nil {
			return nil, badRequest("unable to parse bytes as integer")
		}
		n = v
	} else if p.has("bytes") {
		v, err := p.int("bytes")
		if err != nil {
			return nil, err
		}
		n = v
	}
	if n < 1 || n > maxRandom {
		return nil, badRequest("bytes must be between 1 and %d", maxRandom)
	}
	if _, err := encodeAs(p, "base64", nil); err != nil {
		return nil, err
	}
	b := make([]byte, n)
	if err := random.Read(b); err != nil {
		return nil, &apiError{code: 503, msg: "the daemon's random generator is not ready: " + err.Error(), st: wire.Status_STATUS_UNAVAILABLE, front: true}
	}
	s, _ := encodeAs(p, "base64", b)
	clear(b)
	return map[string]any{"random_bytes": s}, nil
}

// wrappingKeyHandle opens the caller's wrapping key for imports, made
// the first time it is asked for: an RSA-4096 key that only unwraps,
// never exportable. A key of that name that the front did not make so (the
// caller made it, through this API or the daemon's own protocol, before
// the front did) is refused: blobs wrapped under a key that leaves the
// daemon, or that was imported, open outside it, and the keys imported
// from them with them.
func wrappingKeyHandle(rq *request) (openKey, error) {
	k, _, err := rq.c.open(rq.ctx, wrappingKeyName)
	var nk errNoKey
	if errors.As(err, &nk) {
		_, err = rq.c.do1(rq.ctx, &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
			Name: wrappingKeyName, Type: wire.KeyType_KEY_TYPE_RSA_4096, Usage: uint32(wire.Usage_USAGE_UNWRAP)}}}})
		var ce *coreError
		if err != nil && !(errors.As(err, &ce) && ce.status == wire.Status_STATUS_ALREADY_EXISTS) {
			return k, err
		}
		k, _, err = rq.c.reopen(rq.ctx, wrappingKeyName)
	}
	if err != nil {
		return k, err
	}
	info, err := keyInfo(rq, wrappingKeyName)
	if err != nil {
		return k, err
	}
	if info.Type != wire.KeyType_KEY_TYPE_RSA_4096 || info.Exportable || info.Wrappable ||
		info.Usage != uint32(wire.Usage_USAGE_UNWRAP) || info.GetLifecycle().GetOrigin() != wire.KeyOrigin_KEY_ORIGIN_GENERATED {
		return k, &apiError{code: http.StatusBadRequest, st: wire.Status_STATUS_POLICY_VIOLATION, front: true,
			msg: "the key " + wrappingKeyName + " is not a wrapping key the daemon made (RSA-4096, generated, only unwrapping, never leaving the daemon); delete it"}
	}
	return k, nil
}

func wrappingKey(rq *request) (any, error) {
	if _, err := wrappingKeyHandle(rq); err != nil {
		return nil, err
	}
	r, err := keyOp(rq, wrappingKeyName, func(h uint32) *wire.Op {
		return &wire.Op{Op: &wire.Op_PublicKey{PublicKey: &wire.PublicKey{Handle: h, Format: wire.KeyFormat_KEY_FORMAT_SPKI_PEM}}}
	})
	if err != nil {
		return nil, err
	}
	return map[string]any{"public_key": string(r.Data)}, nil
}

// oaepHashes are import's hash_function values the core has.
var oaepHashes = map[string]wire.HashAlg{
	"SHA256": wire.HashAlg_HASH_ALG_SHA256,
	"SHA384": wire.HashAlg_HASH_ALG_SHA384,
	"SHA512": wire.HashAlg_HASH_ALG_SHA512,
}

// importKey answers keys/:name/import: the key in ciphertext, wrapped as
// transit's BYOK does (RSA-OAEP of an ephemeral AES key under the
// caller's wrapping key, then the key under it with AES-KWP, RFC 5649),
// becomes the caller's key name, never exportable.
func importKey(rq *request) (any, error) {
	name, err := rq.name()
	if err != nil {
		return nil, err
	}
	if name == wrappingKeyName {
		return nil, badRequest("invalid key name")
	}
	p := rq.params()
	typ, err := p.str("type")
	if err != nil {
		return nil, err
	}
	if typ == "" {
		typ = "aes256-gcm96"
	}
	t, err := keyType(typ)
	if err != nil {
		return nil, err
	}
	hf, err := p.str("hash_function")
	if err != nil {
		return nil, err
	}
	if hf == "" {
		hf = "SHA256"
	}
	h, ok := oaepHashes[hf]
	if !ok {
		return nil, notOffered("hash_function %q", hf)
	}
	for _, k := range []string{"derived", "convergent_encryption", "allow_plaintext_backup", "exportable"} {
		if b, err := p.bool(k); err != nil {
			return nil, err
		} else if b {
			if k == "exportable" {
				return nil, badRequest("an imported key is never exportable")
			}
			return nil, notOffered("%s", k)
		}
	}
	rot, err := period(p, "auto_rotate_period")
	if err != nil {
		return nil, err
	}
	blob, err := p.b64("ciphertext")
	if err != nil {
		return nil, err
	}
	if len(blob) == 0 {
		return nil, badRequest("missing ciphertext")
	}
	wk, err := wrappingKeyHandle(rq)
	if err != nil {
		return nil, err
	}
	r, err := rq.c.do1(rq.ctx, &wire.Op{Op: &wire.Op_Unwrap{Unwrap: &wire.Unwrap{Handle: wk.h, Blob: blob,
		Format: wire.WrapFormat_WRAP_FORMAT_RSA_AES_KWP, Hash: h,
		Template: &wire.KeyTemplate{Name: name, Type: t, RotateAfterSeconds: rot}}}})
	if err != nil {
		return nil, err
	}
	rq.c.closeHandles(rq.ctx, []uint32{r.GetKey().GetHandle()})
	return nil, nil
}
