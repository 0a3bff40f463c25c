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
	_ crypto.Signer        = (*Key)(nil)
	_ crypto.MessageSigner = (*Key)(nil)
	_ crypto.Decrypter     = (*Decrypter)(nil)
)

// Public returns the public half of an asymmetric key (ed25519.PublicKey,
// *ecdsa.PublicKey, *rsa.PublicKey or *ecdh.PublicKey), or nil for a
// secret key. It implements crypto.Signer.
func (k *Key) Public() crypto.PublicKey { return k.pub }

// Sign implements crypto.Signer: the daemon signs digest, which the caller
// computed with opts.HashFunc(). rand is ignored (the daemon uses its own
// randomness).
//
// For Ed25519, opts.HashFunc() == 0 means digest is the whole message
// (pure Ed25519); *ed25519.Options with crypto.SHA512 means Ed25519ph over
// a SHA-512 digest; contexts are not supported. For ECDSA, digest is the
// hash named by opts and the signature is ASN.1 DER. For RSA,
// *rsa.PSSOptions selects PSS (salt length must be automatic or equal to
// the hash size; the daemon uses the hash size), anything else PKCS #1
// v1.5. A *SignOptions is taken as well.
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
	so, err := k.signOptions(opts)
	if err != nil {
		return nil, err
	}
	if so.Hash == 0 {
		if k.Type() == Ed25519 {
			return k.signMessage(ctx, digest, so) // pure Ed25519: digest is the message
		}
		return nil, argError("sign", "signing a digest with a %s key needs its hash", k.Type())
	}
	return k.SignDigest(ctx, digest, so)
}

// SignMessage implements crypto.MessageSigner: the daemon hashes msg with
// opts.HashFunc() and signs it, so crypto.SignMessage, crypto/x509 and
// crypto/tls send the message itself. rand is ignored.
//
// opts are as for Sign, except that a zero hash means the key type's
// default (pure Ed25519; SHA-256 for ECDSA P-256 and RSA; SHA-384 for
// ECDSA P-384), and that nil means a *SignOptions of zero value.
// A message larger than one request (Client.MaxData) is sent in a stream;
// pure Ed25519 cannot be, and refuses it.
//
// SignMessage uses no deadline; use SignMessageContext to bound it.
func (k *Key) SignMessage(_ io.Reader, msg []byte, opts crypto.SignerOpts) ([]byte, error) {
	return k.SignMessageContext(context.Background(), msg, opts)
}

// SignMessageContext is SignMessage with a context. It takes a
// *SignOptions as well as the standard library's options:
//
//	sig, err := key.SignMessageContext(ctx, msg, &keywarden.SignOptions{Padding: keywarden.PaddingPKCS1v15})
func (k *Key) SignMessageContext(ctx context.Context, msg []byte, opts crypto.SignerOpts) ([]byte, error) {
	so, err := k.signOptions(opts)
	if err != nil {
		return nil, err
	}
	return k.signMessage(ctx, msg, so)
}

func (k *Key) signMessage(ctx context.Context, msg []byte, so *SignOptions) ([]byte, error) {
	if len(msg) <= k.c.MaxData() {
		s, err := k.signOp(msg, false, so)
		if err != nil {
			return nil, err
		}
		return k.c.doData(ctx, "sign", &wire.Op{Op: &wire.Op_Sign{Sign: s}})
	}
	if k.Type() == Ed25519 && so.Hash == 0 {
		return nil, argError("sign", "pure Ed25519 signs at most %d bytes, in one request; a larger message needs Ed25519ph (SHA-512)", k.c.MaxData())
	}
	st, err := k.NewSigner(ctx, so)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if _, err := st.Write(msg); err != nil {
		return nil, err
	}
	return st.Sum()
}

// signOptions turns the options crypto.Signer and crypto.MessageSigner
// take into the daemon's, for k's type. nil and a *SignOptions pass as
// they are.
func (k *Key) signOptions(opts crypto.SignerOpts) (*SignOptions, error) {
	switch o := opts.(type) {
	case nil:
		return &SignOptions{}, nil
	case *SignOptions:
		if o == nil {
			return &SignOptions{}, nil
		}
		return o, nil
	}
	so := &SignOptions{Hash: opts.HashFunc()}
	if _, err := hashToWire(so.Hash); err != nil {
		return nil, err
	}
	switch k.Type() {
	case Ed25519:
		if eo, ok := opts.(*ed25519.Options); ok && eo.Context != "" {
			return nil, argError("sign", "Ed25519 contexts are not supported")
		}
		if so.Hash != 0 && so.Hash != crypto.SHA512 {
			return nil, argError("sign", "Ed25519ph needs SHA-512")
		}
	case RSA2048, RSA3072, RSA4096:
		so.Padding = PaddingPKCS1v15
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			so.Padding = PaddingPSS
			if pss.SaltLength != rsa.PSSSaltLengthAuto && pss.SaltLength != rsa.PSSSaltLengthEqualsHash && (so.Hash == 0 || pss.SaltLength != so.Hash.Size()) {
				return nil, argError("sign", "PSS salt length %d is not supported (the daemon uses the hash size)", pss.SaltLength)
			}
		}
	}
	return so, nil
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
