package keywarden

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"io"

	"github.com/keywarden/keywarden/internal/wire"
)

var (
	_ crypto.Signer    = (*Key)(nil)
	_ crypto.Decrypter = (*Decrypter)(nil)
)

// Public returns the public half of an asymmetric key (ed25519.PublicKey,
// *ecdsa.PublicKey, *rsa.PublicKey or *ecdh.PublicKey), or nil for a
// secret key. It implements crypto.Signer.
func (k *Key) Public() crypto.PublicKey { return k.pub }

// Sign implements crypto.Signer: the daemon signs with the private key.
// rand is ignored (the daemon uses its own randomness).
//
// For Ed25519, opts.HashFunc() == 0 means digest is the whole message
// (pure Ed25519); *ed25519.Options with crypto.SHA512 means Ed25519ph over
// a SHA-512 digest; contexts are not supported. For ECDSA, digest is the
// hash named by opts and the signature is ASN.1 DER. For RSA,
// *rsa.PSSOptions selects PSS (salt length must be automatic or equal to
// the hash size; the daemon uses the hash size), anything else PKCS #1
// v1.5.
//
// Sign uses no deadline; use SignContext to bound it.
func (k *Key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return k.SignContext(context.Background(), digest, opts)
}

// SignContext is Sign with a context.
func (k *Key) SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil {
		return nil, argError("sign", "nil crypto.SignerOpts")
	}
	h := opts.HashFunc()
	switch k.Type() {
	case Ed25519:
		if eo, ok := opts.(*ed25519.Options); ok && eo.Context != "" {
			return nil, argError("sign", "Ed25519 contexts are not supported")
		}
		if h == 0 {
			return k.SignMessage(ctx, digest, nil)
		}
		if h != crypto.SHA512 {
			return nil, argError("sign", "Ed25519ph needs SHA-512")
		}
		return k.SignDigest(ctx, digest, &SignOptions{Hash: h})
	case RSA2048, RSA3072, RSA4096:
		so := &SignOptions{Hash: h, Padding: PaddingPKCS1v15}
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			so.Padding = PaddingPSS
			if pss.SaltLength != rsa.PSSSaltLengthAuto && pss.SaltLength != rsa.PSSSaltLengthEqualsHash && pss.SaltLength != h.Size() {
				return nil, argError("sign", "PSS salt length %d is not supported (the daemon uses the hash size)", pss.SaltLength)
			}
		}
		if h == 0 {
			return nil, argError("sign", "RSA signing needs a hash")
		}
		return k.SignDigest(ctx, digest, so)
	default:
		if h == 0 {
			return nil, argError("sign", "signing with a %s key needs a hash", k.Type())
		}
		return k.SignDigest(ctx, digest, &SignOptions{Hash: h})
	}
}

// Decrypter is an RSA key seen as a crypto.Decrypter.
//
// Key itself is not a crypto.Decrypter: crypto/tls takes any private key
// that is one for an RSA key-exchange key, which would break TLS with
// ECDSA and Ed25519 keys.
type Decrypter struct{ k *Key }

// Decrypter returns the RSA key k as a crypto.Decrypter. It fails for
// other key types.
func (k *Key) Decrypter() (*Decrypter, error) {
	switch k.Type() {
	case RSA2048, RSA3072, RSA4096:
		return &Decrypter{k}, nil
	}
	return nil, argError("decrypter", "a %s key is not an RSA key", k.Type())
}

// Public returns the *rsa.PublicKey.
func (d *Decrypter) Public() crypto.PublicKey { return d.k.pub }

// Decrypt implements crypto.Decrypter: opts nil or *rsa.OAEPOptions select
// OAEP (SHA-256 by default). PKCS #1 v1.5 decryption is refused: it is the
// padding of the Bleichenbacher attacks. rand is ignored.
func (d *Decrypter) Decrypt(_ io.Reader, msg []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	return d.DecryptContext(context.Background(), msg, opts)
}

// DecryptContext is Decrypt with a context.
func (d *Decrypter) DecryptContext(ctx context.Context, msg []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	k := d.k
	var label []byte
	var h wire.HashAlg
	switch o := opts.(type) {
	case nil:
	case *rsa.OAEPOptions:
		if o.MGFHash != 0 && o.MGFHash != o.Hash {
			return nil, argError("decrypt", "OAEP with a different MGF1 hash is not supported")
		}
		var err error
		if h, err = hashToWire(o.Hash); err != nil {
			return nil, err
		}
		label = o.Label
	case *rsa.PKCS1v15DecryptOptions:
		return nil, argError("decrypt", "PKCS #1 v1.5 decryption is not supported; use OAEP")
	default:
		return nil, argError("decrypt", "unsupported decrypter options %T", opts)
	}
	return k.c.doData(ctx, "decrypt", k.decryptOp(msg, label, h))
}
