package server

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"strings"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/wire"
	"github.com/keywarden/keywarden/internal/wrap"
)

// Wrapping for transport (docs/formats.md), rewrap and data keys.

func oaepHash(h wire.HashAlg) (crypto.Hash, error) {
	switch h {
	case wire.HashAlg_HASH_ALG_UNSPECIFIED, wire.HashAlg_HASH_ALG_SHA256:
		return crypto.SHA256, nil
	case wire.HashAlg_HASH_ALG_SHA384:
		return crypto.SHA384, nil
	case wire.HashAlg_HASH_ALG_SHA512:
		return crypto.SHA512, nil
	}
	return 0, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "RSA-AES key wrap takes SHA-256, SHA-384 or SHA-512")
}

var errWrapFamily = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT,
	"this wrap format needs an AES wrapping key (RSA keys wrap with the rsa-aes-kwp format)")

func (ss *Session) opWrap(w *wire.Wrap, id Identity) (*wire.Result, error) {
	wk, err := ss.object(w.Handle)
	if err != nil {
		return nil, err
	}
	tk, err := ss.object(w.Target)
	if err != nil {
		return nil, err
	}
	if err := policy.CheckWrap(id.caller(), wk.Policy(), tk.Policy()).Err(); err != nil {
		return nil, err
	}
	// Both keys are used: the one that wraps, and the one whose material
	// leaves the daemon.
	if err := ss.checkProgram(wk, id); err != nil {
		return nil, err
	}
	if err := ss.checkProgram(tk, id); err != nil {
		return nil, err
	}
	format := w.Format
	if format == wire.WrapFormat_WRAP_FORMAT_UNSPECIFIED {
		format = wire.WrapFormat_WRAP_FORMAT_KEYWARDEN
	}
	rsaFormat := format == wire.WrapFormat_WRAP_FORMAT_RSA_AES_KWP
	if (wk.Spec.Family == key.FamilyRSA) != rsaFormat {
		if rsaFormat {
			return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "the rsa-aes-kwp format needs an RSA wrapping key")
		}
		return nil, errWrapFamily
	}
	tv := tk.Newest()
	var material []byte
	err = tk.UseVersion(tv, func(m *mech.Key) error {
		if format == wire.WrapFormat_WRAP_FORMAT_KEYWARDEN {
			// keywarden's format carries the canonical bytes; the
			// others what other systems expect (raw, PKCS #8).
			return m.Canonical(func(b []byte) error { material = bytes.Clone(b); return nil })
		}
		var err error
		material, err = m.Export(wrap.InteropFormat(tk.Spec))
		return err
	})
	if err != nil {
		return nil, err
	}
	defer clear(material)
	if format == wire.WrapFormat_WRAP_FORMAT_KW && len(material)%8 != 0 {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "RFC 3394 wraps only keys whose length is a multiple of 8 bytes: use kwp")
	}
	// The blob's random salt (or RSA-KWP's ephemeral key) is drawn and
	// used within one generation (generation.go): two clones must not
	// seal different keys under one salt.
	mark, err := ss.s.beginOnce()
	if err != nil {
		return nil, err
	}
	var blob []byte
	err = wk.Use(func(m *mech.Key) error {
		if rsaFormat {
			pub := m.RSAPublic()
			h, err := oaepHash(w.Hash)
			if err != nil {
				return err
			}
			blob, err = wrap.WrapRSAKWP(pub, h, material)
			return err
		}
		return m.Canonical(func(kek []byte) error {
			var err error
			switch format {
			case wire.WrapFormat_WRAP_FORMAT_KW:
				blob, err = wrap.WrapKW(kek, material)
			case wire.WrapFormat_WRAP_FORMAT_KWP:
				blob, err = wrap.WrapKWP(kek, material)
			case wire.WrapFormat_WRAP_FORMAT_KEYWARDEN:
				a := tk.Attrs()
				blob, err = wrap.SealKeyword(kek, material, wrap.Attributes{
					Type: tk.Spec.Type, Class: tk.Class, Usage: a.Usage,
					Exportable: a.Exportable, Wrappable: a.Wrappable, NeverExportable: tk.Meta().NeverExportable,
					Version: tv.N, ID: tk.ID, Name: tk.Name, CreatedUnixNano: tk.Created.UnixNano(),
					Encryptions: tv.Used(), EncryptionLimit: tv.Limit(),
				})
			default:
				return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "unknown wrap format")
			}
			return err
		})
	})
	if err != nil {
		return nil, wrapErr(err)
	}
	ss.s.onceAt(stageMade)
	if err := ss.s.endOnce(mark); err != nil {
		clear(blob)
		return nil, err
	}
	// The key has left the daemon: durably so before the blob does.
	if err := ss.s.store.MarkWrappedOut(tk); err != nil {
		return nil, err
	}
	ss.log.Info("key wrapped", "key", tk.ID.String(), "version", tv.N, "under", wk.ID.String(), "format", format.String(), "uid", id.UID, "pid", id.PID)
	res := dataResult(blob)
	res.KeyVersion = tv.N
	return res, nil
}

// wrapErr maps the wrap package's errors to the wire.
func wrapErr(err error) error {
	var we *wire.Error
	if errors.As(err, &we) {
		return err
	}
	return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "key wrap failed: %v", err)
}

var errUnwrapFailed = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "unwrap failed: the blob is damaged, or not wrapped under this key")

// unwrapFailure is the error for a blob that did not open in format: when
// the blob's visible header shows that it is in another format than the
// one asked for, it says which; otherwise errUnwrapFailed. Only the
// header is looked at, which the caller sent and can read.
func unwrapFailure(format wire.WrapFormat, blob []byte) error {
	keyword := bytes.HasPrefix(blob, []byte("KWW"))
	switch {
	case format == wire.WrapFormat_WRAP_FORMAT_KEYWARDEN && !keyword:
		return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT,
			"unwrap failed: the blob is not in keywarden's format (it does not start with \"KWW\"); a standard key wrap needs its format named (kw for RFC 3394, kwp for RFC 5649, rsa-aes-kwp)")
	case format != wire.WrapFormat_WRAP_FORMAT_KEYWARDEN && keyword && len(blob) > 4 && blob[3] >= '1' && blob[3] <= '9':
		return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT,
			"unwrap failed: the blob looks like one in keywarden's format (it starts with \"KWW%c\"), not %s: unwrap it in the keywarden format", blob[3], formatName(format))
	}
	return errUnwrapFailed
}

// formatName names a wrap format as the CLI's --format does.
func formatName(f wire.WrapFormat) string {
	switch f {
	case wire.WrapFormat_WRAP_FORMAT_KW:
		return "kw (RFC 3394)"
	case wire.WrapFormat_WRAP_FORMAT_KWP:
		return "kwp (RFC 5649)"
	case wire.WrapFormat_WRAP_FORMAT_RSA_AES_KWP:
		return "rsa-aes-kwp"
	}
	return "keywarden"
}

// opUnwrap makes a key from a wrapped blob, in four steps: the format
// and what no blob could make allowed (unwrapFormat), the blob opened
// under the unwrapping key (openBlob), the copy rules applied to what it
// holds and what the template asks (unwrapPolicy), and the key object made
// (unwrappedObject).
func (ss *Session) opUnwrap(u *wire.Unwrap, id Identity) (*wire.Result, error) {
	defer clear(u.Blob)
	uk, err := ss.object(u.Handle)
	if err != nil {
		return nil, err
	}
	if u.Template == nil {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "missing key template")
	}
	format, err := ss.unwrapFormat(u, uk, id)
	if err != nil {
		return nil, err
	}
	material, attrs, err := openBlob(uk, format, u)
	if err != nil {
		return nil, err
	}
	defer clear(material)
	pt, err := unwrapPolicy(id, uk, format, u.Template, attrs)
	if err != nil {
		return nil, err
	}
	o, err := ss.unwrappedObject(id, format, u.Template, pt, attrs, material)
	if err != nil {
		return nil, err
	}
	tmpl := &wire.KeyTemplate{Name: u.Template.Name, Type: pt.Spec.Type, Ephemeral: u.Template.Ephemeral,
		RotateAfterSeconds: u.Template.RotateAfterSeconds, RefuseWhenSpent: u.Template.RefuseWhenSpent}
	res, err := ss.createObject(o, tmpl, id)
	if err != nil {
		return nil, err
	}
	ss.log.Info("key unwrapped", "key", o.ID.String(), "with", uk.ID.String(), "format", format.String(), "uid", id.UID, "pid", id.PID)
	return res, nil
}

// boundFormat reports whether format authenticates the key's attributes
// with its bytes (the keywarden format), and the policy's name for it.
func boundFormat(format wire.WrapFormat) (bool, policy.WrapFormat) {
	if format == wire.WrapFormat_WRAP_FORMAT_KEYWARDEN {
		return true, policy.Bound
	}
	return false, policy.Bare
}

// unwrapFormat returns the format u names (the keywarden format if none),
// once it fits the unwrapping key uk, and refuses early, before any work,
// what no blob could make allowed: uk's unwrap policy for id, and a
// template that could not make a key at all (precheck).
func (ss *Session) unwrapFormat(u *wire.Unwrap, uk *keystore.Object, id Identity) (wire.WrapFormat, error) {
	format := u.Format
	if format == wire.WrapFormat_WRAP_FORMAT_UNSPECIFIED {
		format = wire.WrapFormat_WRAP_FORMAT_KEYWARDEN
	}
	rsaFormat := format == wire.WrapFormat_WRAP_FORMAT_RSA_AES_KWP
	if (uk.Spec.Family == key.FamilyRSA) != rsaFormat {
		if rsaFormat {
			return 0, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "the rsa-aes-kwp format needs an RSA unwrapping key")
		}
		return 0, errWrapFamily
	}
	_, pf := boundFormat(format)
	if err := policy.CheckUnwrapKey(id.caller(), uk.Policy(), pf, policy.Template{Exportable: u.Template.Exportable}).Err(); err != nil {
		return 0, err
	}
	if err := ss.checkProgram(uk, id); err != nil {
		return 0, err
	}
	if err := ss.precheck(u.Template, id); err != nil {
		return 0, err
	}
	return format, nil
}

// openBlob unwraps u's blob under uk in format: the key's bytes, and, in
// the keywarden format, the attributes sealed with them. A blob that does
// not open is refused vaguely (unwrapFailure).
func openBlob(uk *keystore.Object, format wire.WrapFormat, u *wire.Unwrap) (material []byte, attrs wrap.Attributes, err error) {
	err = uk.Use(func(m *mech.Key) error {
		if format == wire.WrapFormat_WRAP_FORMAT_RSA_AES_KWP {
			h, err := oaepHash(u.Hash)
			if err != nil {
				return err
			}
			return m.WithRSAPrivate(func(priv *rsa.PrivateKey) error {
				var err error
				material, err = wrap.UnwrapRSAKWP(priv, h, u.Blob)
				return err
			})
		}
		return m.Canonical(func(kek []byte) error {
			var err error
			switch format {
			case wire.WrapFormat_WRAP_FORMAT_KW:
				material, err = wrap.UnwrapKW(kek, u.Blob)
			case wire.WrapFormat_WRAP_FORMAT_KWP:
				material, err = wrap.UnwrapKWP(kek, u.Blob)
			case wire.WrapFormat_WRAP_FORMAT_KEYWARDEN:
				material, attrs, err = wrap.OpenKeyword(kek, u.Blob)
			default:
				return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "unknown wrap format")
			}
			return err
		})
	})
	if err != nil {
		clear(material)
		var we *wire.Error
		if errors.As(err, &we) {
			return nil, attrs, err
		}
		if errors.Is(err, wrap.ErrLegacyKeyword) {
			return nil, attrs, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "%v", err)
		}
		return nil, attrs, unwrapFailure(format, u.Blob)
	}
	return material, attrs, nil
}

// unwrapPolicy applies the copy rules (policy.CheckUnwrap) to the key a
// blob in format holds: its sealed attributes (attrs) in the keywarden
// format, or, in a standard one, the type that t names. It returns the
// key's type and attributes as they may be.
func unwrapPolicy(id Identity, uk *keystore.Object, format wire.WrapFormat, t *wire.KeyTemplate, attrs wrap.Attributes) (policy.Template, error) {
	if t.Name != "" && !key.ValidName(t.Name) {
		return policy.Template{}, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "invalid key name")
	}
	acl, err := aclFromWire(t.Acl)
	if err != nil {
		return policy.Template{}, err
	}
	req := policy.Template{Usage: key.Usage(t.Usage), Exportable: t.Exportable, Wrappable: t.Wrappable, ACL: acl}
	bound, pf := boundFormat(format)
	var sealed *policy.Sealed
	if bound {
		spec := key.Lookup(attrs.Type)
		if spec == nil || !spec.ClassOK(attrs.Class) || attrs.Usage == 0 {
			return policy.Template{}, errUnwrapFailed
		}
		sealed = &policy.Sealed{Spec: spec, Class: attrs.Class, Usage: attrs.Usage, Exportable: attrs.Exportable, Wrappable: attrs.Wrappable}
	} else {
		req.Spec = key.Lookup(t.Type)
		if req.Spec == nil {
			return policy.Template{}, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "unknown key type: a standard wrap does not say, the template must")
		}
		req.Class = key.Secret
		if req.Spec.Asymmetric {
			req.Class = key.Private
		}
	}
	pt, d := policy.CheckUnwrap(id.caller(), uk.Policy(), pf, sealed, req)
	if err := d.Err(); err != nil {
		return policy.Template{}, err
	}
	return pt, nil
}

// unwrappedObject makes the key object of material, unwrapped from a blob
// in format, of type and attributes pt (unwrapPolicy), for id, under the
// name t gives. It is marked as having been out; from the keywarden
// format it keeps its version and what it spent of its budget (attrs).
func (ss *Session) unwrappedObject(id Identity, format wire.WrapFormat, t *wire.KeyTemplate, pt policy.Template, attrs wrap.Attributes, material []byte) (*keystore.Object, error) {
	bound, _ := boundFormat(format)
	if !bound && !pt.Spec.Asymmetric && isPKCS8(material) {
		// A private key's bytes, which would fit an HMAC key: it keeps
		// its type.
		return nil, wire.Errorf(wire.Status_STATUS_POLICY_VIOLATION,
			"the blob holds a private key (PKCS #8): unwrap it as its own key type, not as a %s key", pt.Spec.Name)
	}
	var mat *mech.Key
	var err error
	if bound {
		mat, err = mech.FromCanonical(pt.Spec, pt.Class, bytes.Clone(material))
	} else {
		mat, err = mech.Import(pt.Spec, wrap.InteropFormat(pt.Spec), material)
	}
	if err != nil {
		return nil, errUnwrapFailed
	}
	if mat.Class() != pt.Class {
		mat.Destroy()
		return nil, errUnwrapFailed
	}
	attrsOut := &key.Attrs{Usage: pt.Usage, Wrappable: pt.Wrappable, ACL: pt.ACL}
	o, err := keystore.NewObject(strings.Clone(t.Name), id.UID, mat, attrsOut, t.Ephemeral, ss.s.cfg.Now(), persist.Origin_ORIGIN_UNWRAPPED)
	if err != nil {
		mat.Destroy()
		return nil, err
	}
	// Its bytes came in a blob, and may be in others: it has been out.
	m := *o.Meta()
	m.WrappedOut = true
	if bound {
		// The key keeps its version number (its ciphertexts name it) and
		// what it has spent of its encryption budget.
		m.NeverExportable = attrs.NeverExportable || !attrs.Exportable
		if attrs.Version > 0 {
			m.MinVersion, m.NextVersion = attrs.Version, attrs.Version+1
		}
		keystore.SetFirstVersion(o, attrs.Version, time.Unix(0, attrs.CreatedUnixNano), attrs.Encryptions, attrs.EncryptionLimit)
	}
	keystore.SetMeta(o, &m)
	return o, nil
}

func (ss *Session) opRewrap(r *wire.Rewrap, id Identity) (*wire.Result, error) {
	o, err := ss.authorized(r.Handle, id, policy.Use, key.Decrypt|key.Encrypt)
	if err != nil {
		return nil, err
	}
	if o.Spec.Family != key.FamilyAES {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "rewrap takes an AES-GCM ciphertext")
	}
	n, body, err := ctVersion(r.Ciphertext)
	if err != nil {
		return nil, err
	}
	old, ok := o.Version(n)
	if !ok {
		return nil, errRetired(o, n)
	}
	var pt []byte
	defer func() { clear(pt) }()
	err = o.UseVersion(old, func(m *mech.Key) error {
		pt, err = m.Decrypt(body, r.Aad, wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
		return err
	})
	if err != nil {
		return nil, err
	}
	// Counted, drawn and sealed within one generation (generation.go).
	mark, err := ss.s.beginOnce()
	if err != nil {
		return nil, err
	}
	v, err := ss.s.store.Encrypting(o, 1)
	if err != nil {
		return nil, err
	}
	ss.s.onceAt(stageCounted)
	var ct []byte
	err = o.UseVersion(v, func(m *mech.Key) error {
		ct, err = m.Encrypt(pt, r.Aad, wire.HashAlg_HASH_ALG_UNSPECIFIED, appendCTHeader(make([]byte, 0, ctHeaderLen+len(pt)+28), v.N))
		return err
	})
	if err != nil {
		ss.s.store.Uncount(v, 1)
		return nil, err
	}
	ss.s.onceAt(stageMade)
	if err := ss.s.endOnce(mark); err != nil {
		return nil, err
	}
	res := dataResult(ct)
	res.KeyVersion = v.N
	return res, nil
}

// opDataKey runs on the data path: the plaintext key, if asked for, is
// carved from the request's arena, wiped once the reply is sent.
func (ss *Session) opDataKey(dk *wire.DataKey, id Identity, a *arena) (*wire.Result, error) {
	o, err := ss.authorized(dk.Handle, id, policy.Use, key.Encrypt)
	if err != nil {
		return nil, err
	}
	if o.Spec.Family != key.FamilyAES {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "data keys are encrypted under an AES-GCM key")
	}
	n := int(dk.Length)
	if n == 0 {
		n = 32
	}
	if n < 16 || n > 64 {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "a data key is 16 to 64 bytes")
	}
	// The data key is drawn, and its ciphertext counted and sealed,
	// within one generation (generation.go): a clone must not hand out
	// the same data key.
	mark, err := ss.s.beginOnce()
	if err != nil {
		return nil, err
	}
	v, err := ss.s.store.Encrypting(o, 1)
	if err != nil {
		return nil, err
	}
	ss.s.onceAt(stageCounted)
	plain := a.take(n)[:n]
	if err := random.Read(plain); err != nil {
		ss.s.store.Uncount(v, 1)
		return nil, err
	}
	var ct []byte
	err = o.UseVersion(v, func(m *mech.Key) error {
		ct, err = m.Encrypt(plain, dk.Aad, wire.HashAlg_HASH_ALG_UNSPECIFIED, appendCTHeader(make([]byte, 0, ctHeaderLen+n+28), v.N))
		return err
	})
	if err != nil {
		clear(plain)
		ss.s.store.Uncount(v, 1)
		return nil, err
	}
	ss.s.onceAt(stageMade)
	if err := ss.s.endOnce(mark); err != nil {
		clear(plain)
		return nil, err
	}
	res := &wire.DataKeyResult{Ciphertext: ct}
	if dk.Plaintext {
		res.Plaintext = plain
	} else {
		clear(plain)
	}
	return &wire.Result{KeyVersion: v.N, Value: &wire.Result_DataKey{DataKey: res}}, nil
}

// isPKCS8 reports whether b is a PKCS #8 private key, as the standard
// formats carry private keys. The parsed key is wiped at once.
func isPKCS8(b []byte) bool {
	var ok bool
	secmem.Do(func() {
		k, err := x509.ParsePKCS8PrivateKey(b)
		ok = err == nil && k != nil
	})
	return ok
}
