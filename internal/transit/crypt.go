package transit

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/wire"
)

// prepared is one item of a request made ready for the core: the
// operation for the key, or the front's refusal of the item.
type prepared struct {
	mk  func(k openKey) *wire.Op
	err error
}

// convert turns the core's result of an item into transit's fields.
type convert func(p params, k openKey, r *wire.Result) (map[string]any, error)

// runItems runs the items of rq (a batch_input, or the request's own
// fields) on the caller's key named name: prep makes each item's
// operation once the key is open, and conv reads each result. A single
// item's failure is the request's; a batch answers one result or error
// per item, with Vault's status (batchReply.code).
func runItems(rq *request, name string, prep func(p params, k openKey) prepared, conv convert) (any, error) {
	items, batch, err := rq.items()
	if err != nil {
		return nil, err
	}
	k, _, err := rq.c.open(rq.ctx, name)
	if err != nil {
		return nil, err
	}
	preps := make([]prepared, len(items))
	var valid []int
	for i, p := range items {
		preps[i] = prep(p, k)
		if preps[i].err == nil {
			valid = append(valid, i)
		}
	}
	if !batch && preps[0].err != nil {
		return nil, preps[0].err
	}
	var rs []*wire.Result
	if len(valid) > 0 {
		rs, _, err = rq.c.withKey(rq.ctx, name, len(valid), func(k2 openKey, j int) *wire.Op {
			k = k2
			return preps[valid[j]].mk(k2)
		})
		if err != nil {
			return nil, err
		}
	}
	out := make([]map[string]any, len(items))
	br := batchReply{}
	var refused []string
	j := 0
	for i, p := range items {
		var m map[string]any
		var ierr error
		if preps[i].err != nil {
			ierr = preps[i].err
			refused = append(refused, fmt.Sprintf("batch_input[%d]: %v", i, ierr))
		} else {
			r := rs[j]
			j++
			if r.Status != wire.Status_STATUS_OK && r.Status != wire.Status_STATUS_VERIFICATION_FAILED {
				ierr = &coreError{status: r.Status, msg: r.Message}
			} else if m, ierr = conv(p, k, r); ierr != nil && !batch {
				return nil, ierr
			}
		}
		if !batch {
			if ierr != nil {
				return nil, ierr
			}
			return m, nil
		}
		if ierr != nil {
			ae := apiErrorOf(ierr)
			m = map[string]any{"error": ae.msg}
			if ae.code >= 500 {
				br.internal = true
			} else {
				br.user = true
			}
		} else {
			br.ok = true
		}
		if ref, ok := p["reference"]; ok {
			m["reference"] = ref
		}
		out[i] = m
	}
	if len(refused) > 0 {
		// The items the front refused never reached the core: one record
		// says which.
		reason := fmt.Sprintf("%d of %d batch items refused: %s", len(refused), len(items), strings.Join(refused, "; "))
		if err := rq.c.ss.Refuse(rq.ctx, rq.c.id, server.Refusal{Op: rq.op, Request: rq.c.reqID(), Status: wire.Status_STATUS_INVALID_ARGUMENT, Reason: reason}); err != nil {
			return nil, &apiError{code: 503, msg: "the daemon cannot record this request", st: wire.Status_STATUS_UNAVAILABLE}
		}
	}
	br.data = map[string]any{"batch_results": out}
	return br, nil
}

// The transit ciphertext and signature form: "vault:v" version ":"
// base64. An AES-GCM ciphertext's base64 is of nonce || ciphertext ||
// tag, as transit's; the core's 7-byte header (its version) is dropped
// and made again from the prefix, so that ciphertexts transit made under
// an imported key decrypt here, and the other way round.
const ctHeaderLen = 7

func vaultForm(version uint32, b []byte, enc *base64.Encoding) string {
	return "vault:v" + strconv.FormatUint(uint64(version), 10) + ":" + enc.EncodeToString(b)
}

// parseVault reads a "vault:vN:" value; enc decodes its base64.
func parseVault(field, s string, enc *base64.Encoding) (uint32, []byte, error) {
	rest, ok := strings.CutPrefix(s, "vault:v")
	if !ok {
		return 0, nil, badRequest("invalid %s: no vault prefix", field)
	}
	vs, b64, ok := strings.Cut(rest, ":")
	if !ok {
		return 0, nil, badRequest("invalid %s: no version", field)
	}
	v, err := strconv.ParseUint(vs, 10, 32)
	if err != nil || v == 0 {
		return 0, nil, badRequest("invalid %s: invalid version", field)
	}
	b, err := enc.DecodeString(b64)
	if err != nil {
		return 0, nil, badRequest("invalid %s: not valid base64", field)
	}
	return uint32(v), b, nil
}

// coreCT is the core's form of a transit ciphertext of version v under a
// key of type t.
func coreCT(t wire.KeyType, v uint32, b []byte) []byte {
	if t != wire.KeyType_KEY_TYPE_AES256_GCM {
		return b
	}
	out := make([]byte, 0, ctHeaderLen+len(b))
	out = append(out, 'K', 'W', 1)
	out = binary.BigEndian.AppendUint32(out, v)
	return append(out, b...)
}

// vaultCT is the transit form of the core's ciphertext of version v.
func vaultCT(t wire.KeyType, v uint32, ct []byte) (string, error) {
	if t == wire.KeyType_KEY_TYPE_AES256_GCM {
		if len(ct) < ctHeaderLen || ct[0] != 'K' || ct[1] != 'W' || binary.BigEndian.Uint32(ct[3:]) != v {
			return "", errors.New("transit: a ciphertext of the core without its header")
		}
		ct = ct[ctHeaderLen:]
	}
	return vaultForm(v, ct, base64.StdEncoding), nil
}

// checkNotDerived refuses the parameters of derived and convergent keys.
func checkNotDerived(p params) error {
	if s, _ := p.str("context"); s != "" {
		return notOffered("context (key derivation)")
	}
	return nil
}

// newestOnly refuses a key_version other than the newest: the core
// encrypts and signs with its newest version only.
func newestOnly(rq *request, name string, p params) error {
	v, err := p.int("key_version")
	if err != nil || v == 0 {
		return err
	}
	info, err := keyInfo(rq, name)
	if err != nil {
		return err
	}
	if uint32(v) != info.Version {
		return notOffered("key_version %d other than the newest (%d)", v, info.Version)
	}
	return nil
}

func encrypt(rq *request) (any, error) {
	name, err := rq.name()
	if err != nil {
		return nil, err
	}
	p := rq.params()
	prep := func(p params, _ openKey) prepared {
		if err := checkNotDerived(p); err != nil {
			return prepared{err: err}
		}
		if !p.has("plaintext") {
			return prepared{err: badRequest("missing plaintext to encrypt")}
		}
		pt, err := p.b64("plaintext")
		if err != nil {
			return prepared{err: err}
		}
		aad, err := p.b64("associated_data")
		if err != nil {
			return prepared{err: err}
		}
		return prepared{mk: func(k openKey) *wire.Op {
			return &wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: k.h, Plaintext: pt, Aad: aad}}}
		}}
	}
	// A single request is checked before its key may be made.
	if items, batch, err := rq.items(); err != nil {
		return nil, err
	} else if !batch {
		if pr := prep(items[0], openKey{}); pr.err != nil {
			return nil, pr.err
		}
	}
	if err := newestOnly(rq, name, p); err != nil {
		var nk errNoKey
		if !errors.As(err, &nk) {
			return nil, err
		}
	}
	if _, _, err := rq.c.open(rq.ctx, name); err != nil {
		var nk errNoKey
		if !errors.As(err, &nk) {
			return nil, err
		}
		// Transit makes the key on its first encryption ("upsert").
		typ, err := p.str("type")
		if err != nil {
			return nil, err
		}
		if typ == "" {
			typ = "aes256-gcm96"
		}
		if _, err := generate(rq, name, typ, p); err != nil {
			return nil, err
		}
	}
	return runItems(rq, name, prep, func(p params, k openKey, r *wire.Result) (map[string]any, error) {
		s, err := vaultCT(k.typ, r.KeyVersion, r.Data)
		if err != nil {
			return nil, err
		}
		return map[string]any{"ciphertext": s, "key_version": r.KeyVersion}, nil
	})
}

func decrypt(rq *request) (any, error) {
	name, err := rq.name()
	if err != nil {
		return nil, err
	}
	return runItems(rq, name, func(p params, k openKey) prepared {
		if err := checkNotDerived(p); err != nil {
			return prepared{err: err}
		}
		s, err := p.str("ciphertext")
		if err != nil {
			return prepared{err: err}
		}
		v, ct, err := parseVault("ciphertext", s, base64.StdEncoding)
		if err != nil {
			return prepared{err: err}
		}
		aad, err := p.b64("associated_data")
		if err != nil {
			return prepared{err: err}
		}
		return prepared{mk: func(k openKey) *wire.Op {
			return &wire.Op{Op: &wire.Op_Decrypt{Decrypt: &wire.Decrypt{Handle: k.h, Ciphertext: coreCT(k.typ, v, ct), Aad: aad}}}
		}}
	}, func(p params, k openKey, r *wire.Result) (map[string]any, error) {
		return map[string]any{"plaintext": base64.StdEncoding.EncodeToString(r.Data)}, nil
	})
}

func rewrap(rq *request) (any, error) {
	name, err := rq.name()
	if err != nil {
		return nil, err
	}
	if err := newestOnly(rq, name, rq.params()); err != nil {
		return nil, err
	}
	return runItems(rq, name, func(p params, k openKey) prepared {
		if err := checkNotDerived(p); err != nil {
			return prepared{err: err}
		}
		if k.typ != wire.KeyType_KEY_TYPE_AES256_GCM {
			return prepared{err: notOffered("rewrap with a key other than aes256-gcm96")}
		}
		s, err := p.str("ciphertext")
		if err != nil {
			return prepared{err: err}
		}
		v, ct, err := parseVault("ciphertext", s, base64.StdEncoding)
		if err != nil {
			return prepared{err: err}
		}
		aad, err := p.b64("associated_data")
		if err != nil {
			return prepared{err: err}
		}
		return prepared{mk: func(k openKey) *wire.Op {
			return &wire.Op{Op: &wire.Op_Rewrap{Rewrap: &wire.Rewrap{Handle: k.h, Ciphertext: coreCT(k.typ, v, ct), Aad: aad}}}
		}}
	}, func(p params, k openKey, r *wire.Result) (map[string]any, error) {
		s, err := vaultCT(k.typ, r.KeyVersion, r.Data)
		if err != nil {
			return nil, err
		}
		return map[string]any{"ciphertext": s, "key_version": r.KeyVersion}, nil
	})
}

func datakey(rq *request) (any, error) {
	name, err := rq.name()
	if err != nil {
		return nil, err
	}
	var plain bool
	switch rq.vars["plaintext"] {
	case "plaintext":
		plain = true
	case "wrapped":
	default:
		return nil, badRequest("invalid type %q: want plaintext or wrapped", rq.vars["plaintext"])
	}
	p := rq.params()
	if err := checkNotDerived(p); err != nil {
		return nil, err
	}
	bits, err := p.int("bits")
	if err != nil {
		return nil, err
	}
	switch bits {
	case 0:
		bits = 256
	case 128, 256, 512:
	default:
		return nil, badRequest("invalid bit length: want 128, 256 or 512")
	}
	if err := newestOnly(rq, name, p); err != nil {
		return nil, err
	}
	rs, _, err := rq.c.withKey(rq.ctx, name, 1, func(k openKey, _ int) *wire.Op {
		return &wire.Op{Op: &wire.Op_DataKey{DataKey: &wire.DataKey{Handle: k.h, Length: uint32(bits / 8), Plaintext: plain}}}
	})
	if err != nil {
		return nil, err
	}
	r := rs[0]
	if r.Status != wire.Status_STATUS_OK {
		return nil, &coreError{status: r.Status, msg: r.Message}
	}
	dk := r.GetDataKey()
	s, err := vaultCT(wire.KeyType_KEY_TYPE_AES256_GCM, r.KeyVersion, dk.GetCiphertext())
	if err != nil {
		return nil, err
	}
	out := map[string]any{"ciphertext": s, "key_version": r.KeyVersion}
	if plain {
		out["plaintext"] = base64.StdEncoding.EncodeToString(dk.Plaintext)
		clear(dk.Plaintext)
	}
	return out, nil
}
