package wrap

import (
	"crypto"
	"crypto/rsa"
	_ "crypto/sha256"
	_ "crypto/sha512"

	"github.com/keywarden/keywarden/internal/random"
)

// MinRSABits is the smallest RSA modulus WrapRSAKWP and UnwrapRSAKWP take.
const MinRSABits = 2048

// rsaKWPKeyLen is the size of the ephemeral AES key WrapRSAKWP makes.
const rsaKWPKeyLen = 32

// WrapRSAKWP wraps material for the holder of pub in the format of PKCS #11
// CKM_RSA_AES_KEY_WRAP and of cloud KMS key imports: RSA-OAEP (hash h for
// both OAEP and MGF1, empty label) of a fresh AES-256 key, followed by
// WrapKWP of material under that key. h is crypto.SHA256, SHA384 or SHA512;
// pub has at least MinRSABits bits. The blob is pub.Size() bytes longer
// than WrapKWP's output.
func WrapRSAKWP(pub *rsa.PublicKey, h crypto.Hash, material []byte) ([]byte, error) {
	if pub == nil || pub.N == nil || pub.N.BitLen() < MinRSABits {
		return nil, errorf("RSA key must have at least 2048 bits")
	}
	if err := checkOAEPHash(h); err != nil {
		return nil, err
	}
	ek := make([]byte, rsaKWPKeyLen)
	defer clear(ek)
	if err := random.Read(ek); err != nil {
		return nil, err
	}
	wrapped, err := WrapKWP(ek, material)
	if err != nil {
		return nil, err
	}
	enc, err := rsa.EncryptOAEP(h.New(), random.Reader, pub, ek, nil)
	if err != nil {
		return nil, errorf("RSA-OAEP encryption failed")
	}
	return append(enc, wrapped...), nil
}

// UnwrapRSAKWP reverses WrapRSAKWP with the private key priv and the same
// hash h: crypto.SHA256, SHA384 or SHA512, as for wrapping. SHA-1 is
// refused in both directions (keywarden offers SHA-1 nowhere; every
// system that makes these blobs can use SHA-256). The ephemeral AES key
// may be AES-128, -192 or -256 (PKCS #11 lets the wrapper choose); it is
// wiped before UnwrapRSAKWP returns. Every failure of the blob is
// ErrUnwrap, whether in RSA-OAEP or in KWP. The material is a fresh slice
// the caller owns and should wipe.
func UnwrapRSAKWP(priv *rsa.PrivateKey, h crypto.Hash, blob []byte) ([]byte, error) {
	if priv == nil || priv.N == nil || priv.N.BitLen() < MinRSABits {
		return nil, errorf("RSA key must have at least 2048 bits")
	}
	if err := checkOAEPHash(h); err != nil {
		return nil, err
	}
	k := priv.Size()
	if len(blob) < k+2*semiblock {
		return nil, ErrUnwrap
	}
	ek, err := rsa.DecryptOAEP(h.New(), nil, priv, blob[:k], nil)
	defer wipeEphemeral(ek)
	if err != nil {
		return nil, ErrUnwrap
	}
	switch len(ek) {
	case 16, 24, 32:
	default:
		return nil, ErrUnwrap
	}
	material, err := UnwrapKWP(ek, blob[k:])
	if err != nil {
		return nil, ErrUnwrap
	}
	return material, nil
}

// checkOAEPHash accepts the hashes of RSA-OAEP (and MGF1) in both
// directions: SHA-256, SHA-384 and SHA-512.
func checkOAEPHash(h crypto.Hash) error {
	switch h {
	case crypto.SHA256, crypto.SHA384, crypto.SHA512:
		return nil
	}
	return errorf("RSA-OAEP hash must be SHA-256, SHA-384 or SHA-512")
}

// wipeEphemeral wipes the ephemeral AES key of UnwrapRSAKWP.
func wipeEphemeral(ek []byte) {
	clear(ek)
	if testHookEphemeral != nil {
		testHookEphemeral(ek)
	}
}

// testHookEphemeral, if set by a test, sees the ephemeral key after it was
// wiped.
var testHookEphemeral func(ek []byte)
