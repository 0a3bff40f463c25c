package mech

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"errors"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// SelfTest runs known-answer tests from published vectors, and
// pairwise-consistency tests where a mechanism is randomised, through the
// same code paths the daemon serves requests with. The daemon runs it at
// start and refuses to serve if it fails. The error names the failed test.
// It takes a few milliseconds and generates no RSA key.
func SelfTest() error {
	for _, t := range selfTests {
		if err := t.run(); err != nil {
			e := wire.Errorf(wire.Status_STATUS_INTERNAL, "self-test failed: %s", t.name)
			return e.WithDetail("%w", err)
		}
	}
	return nil
}

var selfTests = []struct {
	name string
	run  func() error
}{
	{"SHA-256", func() error { return kat(wire.HashAlg_HASH_ALG_SHA256, sha256ABC) }},
	{"SHA-384", func() error { return kat(wire.HashAlg_HASH_ALG_SHA384, sha384ABC) }},
	{"SHA-512", func() error { return kat(wire.HashAlg_HASH_ALG_SHA512, sha512ABC) }},
	{"SHA3-256", func() error { return kat(wire.HashAlg_HASH_ALG_SHA3_256, sha3256ABC) }},
	{"SHA3-512", func() error { return kat(wire.HashAlg_HASH_ALG_SHA3_512, sha3512ABC) }},
	{"HMAC-SHA-256", func() error { return katHMAC(wire.KeyType_KEY_TYPE_HMAC_SHA256, hmacSHA256TC1) }},
	{"HMAC-SHA-384", func() error { return katHMAC(wire.KeyType_KEY_TYPE_HMAC_SHA384, hmacSHA384TC1) }},
	{"HMAC-SHA-512", func() error { return katHMAC(wire.KeyType_KEY_TYPE_HMAC_SHA512, hmacSHA512TC1) }},
	{"AES-256-GCM", katGCM},
	{"Ed25519", katEd25519},
	{"Ed25519ph", katEd25519ph},
	{"X25519", katX25519},
	{"HKDF-SHA-256", katHKDF},
	{"ECDSA P-256", func() error { return pairwise(wire.KeyType_KEY_TYPE_ECDSA_P256, SignParams{}) }},
	{"ECDSA P-384", func() error { return pairwise(wire.KeyType_KEY_TYPE_ECDSA_P384, SignParams{}) }},
	{"RSA", katRSA},
}

// Published vectors.
const (
	// FIPS 180-4 and FIPS 202 example digests of "abc".
	sha256ABC  = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	sha384ABC  = "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
	sha512ABC  = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
	sha3256ABC = "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"
	sha3512ABC = "b751850b1a57168a5693cd924b6b096e08f621827444f70d884f5d0240d2712e10e116e9192af3c91a7ec57647e3934057340b4cf408d5a56592f8274eec53f0"

	// RFC 4231 test case 1: key 0x0b x 20, data "Hi There".
	hmacTC1Key    = "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"
	hmacTC1Data   = "Hi There"
	hmacSHA256TC1 = "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
	hmacSHA384TC1 = "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6"
	hmacSHA512TC1 = "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"

	// The GCM specification (McGrew and Viega, as submitted to NIST), test
	// case 16: AES-256 with additional data.
	gcmKey   = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"
	gcmNonce = "cafebabefacedbaddecaf888"
	gcmPT    = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
	gcmAAD   = "feedfacedeadbeeffeedfacedeadbeefabaddad2"
	gcmCT    = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
	gcmTag   = "76fc6ece0f4e1768cddf8853bb2d551b"

	// RFC 8032 section 7.1, TEST 1 (empty message).
	ed25519Seed = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
	ed25519Pub  = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
	ed25519Sig  = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"

	// RFC 8032 section 7.3, TEST abc (Ed25519ph).
	ed25519phSeed = "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42"
	ed25519phPub  = "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf"
	ed25519phSig  = "98a70222f0b8121aa9d30f813d683f809e462b469c7ff87639499bb94e6dae4131f85042463c2a355a2003d062adf5aaa10b8c61e636062aaad11c2a26083406"

	// RFC 7748 section 6.1.
	x25519AlicePriv = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
	x25519AlicePub  = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
	x25519BobPub    = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
	x25519Shared    = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"

	// RFC 5869 test case 1 (HKDF-SHA-256).
	hkdfIKM  = "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"
	hkdfSalt = "000102030405060708090a0b0c"
	hkdfInfo = "f0f1f2f3f4f5f6f7f8f9"
	hkdfOKM  = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
)

var errKAT = errors.New("wrong answer")

// unhex decodes the hex constants above.
func unhex(vs ...string) ([][]byte, error) {
	out := make([][]byte, len(vs))
	for i, v := range vs {
		b, err := hex.DecodeString(v)
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

func kat(alg wire.HashAlg, want string) error {
	w, err := unhex(want)
	if err != nil {
		return err
	}
	got, err := Hash(alg, []byte("abc"), nil)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, w[0]) {
		return errKAT
	}
	// The streaming path, in two pieces.
	s, err := NewHashStream(alg)
	if err != nil {
		return err
	}
	s.Write([]byte("a"))
	s.Write([]byte("bc"))
	got, err = s.Final(nil)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, w[0]) {
		return errKAT
	}
	return nil
}

func katHMAC(t wire.KeyType, want string) error {
	v, err := unhex(hmacTC1Key, want)
	if err != nil {
		return err
	}
	k, err := newSecretKey(key.Lookup(t), v[0])
	if err != nil {
		return err
	}
	defer k.Destroy()
	tag, err := k.MAC([]byte(hmacTC1Data), nil)
	if err != nil {
		return err
	}
	if !bytes.Equal(tag, v[1]) {
		return errKAT
	}
	// Twice, to exercise a pooled (reset) state.
	if err := k.VerifyMAC([]byte(hmacTC1Data), v[1]); err != nil {
		return err
	}
	tag[0] ^= 1
	if k.VerifyMAC([]byte(hmacTC1Data), tag) == nil {
		return errKAT
	}
	return nil
}

func katGCM() error {
	v, err := unhex(gcmKey, gcmNonce, gcmPT, gcmAAD, gcmCT, gcmTag)
	if err != nil {
		return err
	}
	k, err := Import(key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM), wire.KeyFormat_KEY_FORMAT_RAW, v[0])
	if err != nil {
		return err
	}
	defer k.Destroy()
	ct := append(append(v[1], v[4]...), v[5]...)
	pt, err := k.Decrypt(ct, v[3], wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
	if err != nil || !bytes.Equal(pt, v[2]) {
		return errKAT
	}
	ct[len(ct)-1] ^= 1
	if _, err := k.Decrypt(ct, v[3], wire.HashAlg_HASH_ALG_UNSPECIFIED, nil); err == nil {
		return errKAT
	}
	// Round trip through our own nonce choice.
	ct, err = k.Encrypt(v[2], v[3], wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
	if err != nil {
		return err
	}
	pt, err = k.Decrypt(ct, v[3], wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
	if err != nil || !bytes.Equal(pt, v[2]) {
		return errKAT
	}
	return nil
}

// katEdwards checks the public key derived from seed and the signature
// over msg with p, then verifies it.
func katEdwards(seed, pub, sig string, p SignParams, msg []byte) error {
	v, err := unhex(seed, pub, sig)
	if err != nil {
		return err
	}
	k, err := newPrivateKey(key.Lookup(wire.KeyType_KEY_TYPE_ED25519), v[0])
	if err != nil {
		return err
	}
	defer k.Destroy()
	if !bytes.Equal(k.edPub, v[1]) {
		return errKAT
	}
	got, err := k.Sign(p, msg)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, v[2]) {
		return errKAT
	}
	return k.Verify(p, msg, got)
}

func katEd25519() error {
	return katEdwards(ed25519Seed, ed25519Pub, ed25519Sig, SignParams{}, nil)
}

func katEd25519ph() error {
	d := sha512Sum([]byte("abc"))
	return katEdwards(ed25519phSeed, ed25519phPub, ed25519phSig,
		SignParams{Hash: wire.HashAlg_HASH_ALG_SHA512, Prehashed: true}, d)
}

func sha512Sum(b []byte) []byte { return digest(wire.HashAlg_HASH_ALG_SHA512, b) }

func katX25519() error {
	v, err := unhex(x25519AlicePriv, x25519AlicePub, x25519BobPub, x25519Shared)
	if err != nil {
		return err
	}
	k, err := newPrivateKey(key.Lookup(wire.KeyType_KEY_TYPE_X25519), v[0])
	if err != nil {
		return err
	}
	defer k.Destroy()
	if !bytes.Equal(k.dhPub.Bytes(), v[1]) {
		return errKAT
	}
	var shared []byte
	err = k.run(func(e *expanded) error {
		var err error
		shared, err = k.agree(e, v[2])
		return err
	})
	if err != nil {
		return err
	}
	defer clear(shared)
	if !bytes.Equal(shared, v[3]) {
		return errKAT
	}
	return nil
}

func katHKDF() error {
	v, err := unhex(hkdfIKM, hkdfSalt, hkdfInfo, hkdfOKM)
	if err != nil {
		return err
	}
	okm, err := hkdf.Key(sha256.New, v[0], v[1], string(v[2]), len(v[3]))
	if err != nil || !bytes.Equal(okm, v[3]) {
		return errKAT
	}
	// Through Derive: an HMAC key as input keying material, deriving an
	// AES key, whose bytes are the first 32 of the same output.
	k, err := newSecretKey(key.Lookup(wire.KeyType_KEY_TYPE_HMAC_SHA256), v[0])
	if err != nil {
		return err
	}
	defer k.Destroy()
	d, err := k.Derive(nil, wire.HashAlg_HASH_ALG_UNSPECIFIED, v[1], v[2], key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM))
	if err != nil {
		return err
	}
	defer d.Destroy()
	if raw, err := d.Export(wire.KeyFormat_KEY_FORMAT_RAW); err != nil || !bytes.Equal(raw, v[3][:32]) {
		return errKAT
	}
	return nil
}

// pairwise signs with a key of type t and checks that the signature
// verifies and that a signature over another message does not.
func pairwise(t wire.KeyType, p SignParams) error {
	k, err := Generate(key.Lookup(t))
	if err != nil {
		return err
	}
	defer k.Destroy()
	return pairwiseWith(k, p)
}

func pairwiseWith(k *Key, p SignParams) error {
	msg := []byte("keywarden self-test")
	sig, err := k.Sign(p, msg)
	if err != nil {
		return err
	}
	if err := k.Verify(p, msg, sig); err != nil {
		return err
	}
	if k.Verify(p, msg[1:], sig) == nil {
		return errKAT
	}
	return nil
}

// katRSA runs pairwise tests with the embedded key: PSS and PKCS #1 v1.5
// signatures, and an OAEP round trip.
func katRSA() error {
	k, err := Import(key.Lookup(wire.KeyType_KEY_TYPE_RSA_2048), wire.KeyFormat_KEY_FORMAT_PKCS8_PEM, []byte(selfTestRSAKey))
	if err != nil {
		return err
	}
	defer k.Destroy()
	if err := pairwiseWith(k, SignParams{}); err != nil {
		return err
	}
	if err := pairwiseWith(k, SignParams{Padding: wire.Padding_PADDING_PKCS1V15}); err != nil {
		return err
	}
	msg, label := []byte("keywarden"), []byte("label")
	ct, err := k.Encrypt(msg, label, wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
	if err != nil {
		return err
	}
	pt, err := k.Decrypt(ct, label, wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
	if err != nil || !bytes.Equal(pt, msg) {
		return errKAT
	}
	return nil
}

// selfTestRSAKey is an RSA-2048 key made once with
// "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048". It is a
// test fixture, public by being here: never use it for anything else.
const selfTestRSAKey = `
-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCtBI5guySy+uhN
0yM9SJ5Wr4FIFf+veWtFJ6sUD74P2ivdut5T8xi68OuVgD6A+vpM7AtnZoEJlm92
CqzNTbfONQZ3Qz2NgkdXEsYweN8fuoGFoxYJwLB07CcBJIIyr8M03HIFhb1sSuWm
HG0c4Wc/0kBgVA49JNG1FSeNfEDSyItmJJ9AvgKe9WQE79QT+QsjRR2pUYfvHkDx
JwVaNjuCU904JMrnVKsT+MjuPtHPI1Y+rsQmT4IJDcVBk0Iqz6d0TqR13XlKWvdE
oFlJ+QiIgUyulKe1xnlOkmm8rFESQbtPzJrf6tYZQbLwlcFivNrk6Q+aQ7AKlA0t
pKX0Y4X9AgMBAAECggEAAfDgvmnbCfCR1cdElSKd0OmIt1i0oZdPG/UYXWumMJW8
YD4BOH5FplmfJIvOJ7KpFCvU61GiQousr6C3B4z6C7COMTa3F6gafMbGvZlD7esw
5y4V+5rTX++cqgEEcbHr33y8zesOKos8jRYZWajKeIc3Saonu4l3AMnX9vJdF80I
LPWfESITKJXbo6+NlNaORJpk5UgGHfPz7ljV1AVYu/1r9Xu6UKieb4zb8yd4brFg
DYGaQACrBvIDIRLE5qNTENU3IJP6guBvQQssptueoWZeaWjUFYOV3BO7Xxi114Kg
exhgs9naj55QCrqBEgQ3mtlczuO1NFlyKpByNDkIgQKBgQDv0xmGWf9MZRjSzPvM
98WwlQozcvUs+fzO/5ly4Pv2Ar2Gr6tUOzytI+5cgSTb8VPlzkQaf7qY0SDrx6cd
FO7COjwNz8sB2sVWG47fzP3vEmMwfGKuiJqVtBxp2aK8uDTpTBMRL4hSE1XTEnZV
4NCl8OxTwgoCd0RXdMX3rUhABQKBgQC4r/IEcVnFLYeG7mpBMZotKf7HyJCn/Que
RSJDntes7+7wZyfqJD9OYjgA5V08+4tZbePsOcLu7KExis+Z3uxHyJltWp061DwG
mZkaEaOrWjEeOSUyTVJFN9oyKF8M5JyP89ODwm/h8Y+CdwDZFI5SzlKmlgarDGY7
tSywjUqnmQKBgCD4kr/Hy7ODCqCgkdWiEsmuE9Ly8QYX8Eu9FCmZCMrPoaLMr+9K
nZLoJ7MMBjc+vFwRuYczHEI6Lh58OltjL1gAjZUQhkZg/1RRQZk/I4IkswJNd3ur
SCVgt69NvnPXl16jmNN6B3HROrFkDmTMHaNStgrl2F5yazDi2vysFAzJAoGARN1u
W9O8Sna4o0qBGkAZoh+Xnf0eW1VSoLhcl2RCPXzV1pRQYNEVPfAHu+XKh3OwOS9t
nmbHVfmr/WIqGNDzv6x/8TOpjwcWPsvFN+A97CXcTM24HfKQ67hwxuUg1BjmfBLJ
2saEm3ZMMbSX/1nX2+6NCQrF/7/G2xqqSEbXAHkCgYBGGCrYv1KiTJY+yo3bBZLI
CHH/kTGVRRanGVwM7ppgBnYd0g7f9gRb81RDuS9lTkcXAhYbLMXnQ+OgrwnAmRH5
fHkr31YtUhhCNbkAtx9dE3InGcq5i1RjfZ2G7kOgAWzs/y10PpjF5RWYzflgQdls
xXd4A3Do8hSdiNeMJqWibw==
-----END PRIVATE KEY-----
`
