package wrap

import (
	"crypto"
	"crypto/rsa"
	_ "crypto/sha1" // registers crypto.SHA1 for unwrapping
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
	switch h {
	case crypto.SHA256, crypto.SHA384, crypto.SHA512:
	default:
		return nil, errorf("RSA-OAEP hash must be SHA-256, SHA-384 or SHA-512")
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
// hash h, which may also be crypto.SHA1 (cloud KMSs offer RSA-OAEP with
// SHA-1 for imports). The ephemeral AES key may be AES-128, -192 or -256
// (PKCS #11 lets the wrapper choose); it is wiped before UnwrapRSAKWP
// returns. Every failure of the blob is ErrUnwrap, whether in RSA-OAEP or in
// KWP. The material is a fresh slice the caller owns and should wipe.
func UnwrapRSAKWP(priv *rsa.PrivateKey, h crypto.Hash, blob []byte) ([]byte, error) {
	if priv == nil || priv.N == nil || priv.N.BitLen() < MinRSABits {
		return nil, errorf("RSA key must have at least 2048 bits")
	}
	switch h {
	case crypto.SHA1, crypto.SHA256, crypto.SHA384, crypto.SHA512:
	default:
		return nil, errorf("RSA-OAEP hash must be SHA-1, SHA-256, SHA-384 or SHA-512")
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
