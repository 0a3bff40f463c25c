package server

import (
	"encoding/binary"
	"errors"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/wire"
)

// Key versions on the data path (docs/formats.md). An AES-GCM ciphertext
// names the version that made it in a 7-byte header:
//
//	'K' 'W' 0x01 || version (4 bytes, big-endian) || nonce (12) || ciphertext || tag (16)
//
// so the standard library opens it with the exported key of that version
// as gcm.Open(nil, c[7:19], c[19:], aad). RSA-OAEP ciphertexts and
// signatures keep their standard forms, so that other software reads them;
// the result's key_version names the version instead, and decryption and
// verification without one try the live versions, newest first.

// ctHeaderLen is the length of the AES-GCM ciphertext header.
const ctHeaderLen = 7

var ctMagic = [3]byte{'K', 'W', 1}

func appendCTHeader(dst []byte, version uint32) []byte {
	dst = append(dst, ctMagic[:]...)
	return binary.BigEndian.AppendUint32(dst, version)
}

// errBadHeader refuses a ciphertext without the header: to the client, it
// is one more failed decryption.
var errBadHeader = mech.ErrDecryption

// ctVersion reads the header of an AES-GCM ciphertext.
func ctVersion(ct []byte) (uint32, []byte, error) {
	if len(ct) < ctHeaderLen || ct[0] != ctMagic[0] || ct[1] != ctMagic[1] || ct[2] != ctMagic[2] {
		return 0, nil, errBadHeader
	}
	return binary.BigEndian.Uint32(ct[3:]), ct[ctHeaderLen:], nil
}

// errRetired is the error for version v of o, which is not live: one the
// key never had (the input was made under another key), or one retired or
// trimmed. v 0 means no version at all did.
func errRetired(o *keystore.Object, v uint32) error {
	if v == 0 {
		return wire.Errorf(wire.Status_STATUS_NOT_FOUND, "no live version of the key decrypts or verifies")
	}
	if vs := o.Versions(); len(vs) > 0 && v > vs[len(vs)-1].N {
		return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT,
			"the input is not for this key: it names key version %d, and the key's newest version is %d", v, vs[len(vs)-1].N)
	}
	return wire.Errorf(wire.Status_STATUS_NOT_FOUND, "key version %d no longer decrypts or verifies (retired or trimmed)", v)
}

// current returns the version new signatures and MACs use: the newest,
// after a rotation if the key's rotation period has passed.
func (ss *Session) current(o *keystore.Object) (*keystore.Version, error) {
	return ss.s.store.Current(o)
}

func (ss *Session) opEncrypt(e *wire.Encrypt, id Identity, a *arena, out *wire.Result) ([]byte, error) {
	o, err := ss.authorized(e.Handle, id, policy.Use, key.Encrypt)
	if err != nil {
		return nil, err
	}
	// Counted, drawn and sealed within one generation (generation.go).
	mark, err := ss.s.beginOnce()
	if err != nil {
		return nil, err
	}
	if o.Spec.Family != key.FamilyAES {
		v, err := ss.current(o)
		if err != nil {
			return nil, err
		}
		var ct []byte
		err = o.UseVersion(v, func(m *mech.Key) error {
			ct, err = m.Encrypt(e.Plaintext, e.Aad, e.Hash, a.take(len(e.Plaintext)+encryptOverhead(m)))
			return err
		})
		out.KeyVersion = v.N
		if err != nil {
			return ct, err
		}
		if err := ss.s.endOnce(mark); err != nil {
			return nil, err
		}
		return ct, nil
	}
	v, err := ss.s.store.Encrypting(o, 1)
	if err != nil {
		return nil, err
	}
	ss.s.onceAt(stageCounted)
	var ct []byte
	err = o.UseVersion(v, func(m *mech.Key) error {
		dst := appendCTHeader(a.take(ctHeaderLen+len(e.Plaintext)+encryptOverhead(m)), v.N)
		ct, err = m.Encrypt(e.Plaintext, e.Aad, e.Hash, dst)
		return err
	})
	if err != nil {
		ss.s.store.Uncount(v, 1)
		return nil, err
	}
	ss.s.onceAt(stageMade)
	// A change begun since the mark closed v, and may have re-keyed the
	// generator before or after the nonce was drawn: the ciphertext is
	// dropped (its count stays: the nonce was used), and the client
	// encrypts again, under a version of the new generation.
	if err := ss.s.endOnce(mark); err != nil {
		return nil, err
	}
	out.KeyVersion = v.N
	return ct, nil
}

func (ss *Session) opDecrypt(d *wire.Decrypt, id Identity, a *arena, out *wire.Result) ([]byte, error) {
	o, err := ss.authorized(d.Handle, id, policy.Use, key.Decrypt)
	if err != nil {
		return nil, err
	}
	if o.Spec.Family != key.FamilyAES {
		// OAEP names no version: try them, newest first.
		var pt []byte
		err := ss.eachVersion(o, 0, func(v *keystore.Version, m *mech.Key) error {
			var err error
			pt, err = m.Decrypt(d.Ciphertext, d.Aad, d.Hash, a.take(len(d.Ciphertext)))
			if err == nil {
				out.KeyVersion = v.N
			}
			return err
		})
		return pt, err
	}
	n, body, err := ctVersion(d.Ciphertext)
	if err != nil {
		return nil, err
	}
	v, ok := o.Version(n)
	if !ok {
		return nil, errRetired(o, n)
	}
	var pt []byte
	err = o.UseVersion(v, func(m *mech.Key) error {
		pt, err = m.Decrypt(body, d.Aad, d.Hash, a.take(len(body)))
		return err
	})
	out.KeyVersion = n
	return pt, err
}

// eachVersion calls try with each live version of o, newest first (or
// only version n when n is not 0), until one succeeds. It returns the
// last error when none does.
func (ss *Session) eachVersion(o *keystore.Object, n uint32, try func(v *keystore.Version, m *mech.Key) error) error {
	if n != 0 {
		v, ok := o.Version(n)
		if !ok {
			return errRetired(o, n)
		}
		return o.UseVersion(v, func(m *mech.Key) error { return try(v, m) })
	}
	vs := o.Versions()
	min := o.Meta().MinVersion
	var last error
	for i := len(vs) - 1; i >= 0; i-- {
		v := vs[i]
		if v.N < min {
			break
		}
		err := o.UseVersion(v, func(m *mech.Key) error { return try(v, m) })
		if err == nil {
			return nil
		}
		if !isCryptoFailure(err) {
			return err
		}
		last = err
	}
	if last == nil {
		last = errRetired(o, 0)
	}
	return last
}

// isCryptoFailure reports whether err says that the input did not verify
// or decrypt under a key (worth trying the next version), rather than
// that the request is wrong.
func isCryptoFailure(err error) bool {
	if errors.Is(err, mech.ErrDecryption) {
		return true
	}
	var we *wire.Error
	return errors.As(err, &we) && we.Status == wire.Status_STATUS_VERIFICATION_FAILED
}

func (ss *Session) opSign(s *wire.Sign, id Identity, out *wire.Result) ([]byte, error) {
	o, err := ss.authorized(s.Handle, id, policy.Use, key.Sign)
	if err != nil {
		return nil, err
	}
	v, err := ss.current(o)
	if err != nil {
		return nil, err
	}
	var sig []byte
	err = o.UseVersion(v, func(m *mech.Key) error {
		sig, err = m.Sign(mech.SignParams{Hash: s.Hash, Prehashed: s.Prehashed, Padding: s.Padding}, s.Data)
		return err
	})
	out.KeyVersion = v.N
	return sig, err
}

func (ss *Session) opVerify(vr *wire.Verify, id Identity, out *wire.Result) error {
	o, err := ss.authorized(vr.Handle, id, policy.Use, key.Verify)
	if err != nil {
		return err
	}
	p := mech.SignParams{Hash: vr.Hash, Prehashed: vr.Prehashed, Padding: vr.Padding}
	return ss.eachVersion(o, vr.KeyVersion, func(v *keystore.Version, m *mech.Key) error {
		err := m.Verify(p, vr.Data, vr.Signature)
		if err == nil {
			out.KeyVersion = v.N
		}
		return err
	})
}

func (ss *Session) opMAC(mc *wire.Mac, id Identity, a *arena, out *wire.Result) ([]byte, error) {
	o, err := ss.authorized(mc.Handle, id, policy.Use, key.Sign)
	if err != nil {
		return nil, err
	}
	v, err := ss.current(o)
	if err != nil {
		return nil, err
	}
	var tag []byte
	err = o.UseVersion(v, func(m *mech.Key) error {
		tag, err = m.MAC(mc.Data, a.take(64))
		return err
	})
	out.KeyVersion = v.N
	return tag, err
}

func (ss *Session) opMACVerify(mv *wire.MacVerify, id Identity, out *wire.Result) error {
	o, err := ss.authorized(mv.Handle, id, policy.Use, key.Verify)
	if err != nil {
		return err
	}
	return ss.eachVersion(o, mv.KeyVersion, func(v *keystore.Version, m *mech.Key) error {
		err := m.VerifyMAC(mv.Data, mv.Tag)
		if err == nil {
			out.KeyVersion = v.N
		}
		return err
	})
}
