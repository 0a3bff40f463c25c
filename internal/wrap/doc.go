// Package wrap implements the key wrapping formats keywarden uses to move
// key material between key stores: AES key wrap (RFC 3394, "KW") and with
// padding (RFC 5649, "KWP"); RSA-OAEP + AES-KWP, the format of PKCS #11
// CKM_RSA_AES_KEY_WRAP and of cloud KMS key imports; and keywarden's own
// format, KWW3, which binds a key's attributes to its bytes.
//
// wrap owns only these byte transformations. It never decides who may
// wrap or unwrap what, nor whether a key is weaker than its wrapping key
// (package policy and the daemon do), holds no state and never logs. Its
// functions take key bytes in ordinary heap slices: the daemon calls them
// inside secmem.Do (runtime/secret) so that the copies made here and by
// crypto/aes are erased, and wipes the slices it gets back.
//
// # Errors
//
// Every unwrap function reports any failure of the blob (wrong key,
// tampering, truncation, bad padding, unknown version, malformed
// attributes) as the single ErrUnwrap, which does not say which check
// failed, and the checks of KW and KWP run in constant time. A wrapping key
// of invalid size is an aes.KeySizeError: a fault of the caller, not of
// the data. Wrapping functions describe invalid input in their errors.
//
// # Why KW and KWP are written here
//
// Neither the Go standard library nor golang.org/x/crypto implements RFC
// 3394 or RFC 5649, and no well-kept Go library offers both: Tink's
// kwp/subtle has KWP only, for AES-128/256 and 16 to 8192 bytes of
// plaintext (too narrow for interoperation: it refuses short keys and has
// no KW) and would bring in all of Tink; other Go implementations sit
// inside JOSE libraries (such as lestrrat-go/jwx) or are small
// single-author packages. The algorithms are short (RFC 3394 §2.2, RFC
// 5649 §4) and are implemented on crypto/aes's cipher.Block in kw.go,
// checked against every test vector of both RFCs and against OpenSSL in
// both directions.
//
// # What the material is
//
// The two kinds of format carry different bytes, and the caller converts
// (package mech gives and takes both: Canonical and FromCanonical, Export
// and Import):
//
//   - KWW3 (SealKeyword, OpenKeyword) carries a key's canonical bytes, as
//     mech keeps them: the raw key for AES and HMAC; the 32-byte seed for
//     Ed25519; the private scalar, big-endian, of the curve's size, for
//     ECDSA and ECDH P-256/P-384; the 32-byte scalar for X25519; the PKCS
//     #1 DER RSAPrivateKey for RSA.
//   - KW, KWP and RSA-KWP interoperate with other systems, which expect
//     the raw key for secret keys (AES, HMAC) and a PKCS #8 DER
//     PrivateKeyInfo for private keys (as PKCS #11 wraps them, and as AWS
//     KMS and Google Cloud KMS imports take them). InteropFormat names that format for each key type. KW needs a
//     multiple of 8 bytes of at least 16, so it fits AES and most HMAC
//     keys only; KWP and RSA-KWP take any length.
//
// Public keys are never wrapped: they have no secret.
//
// # The KWW3 format
//
// A KWW3 blob is a key's canonical bytes encrypted with AES-256-GCM under
// a key of the blob's own, derived from the 32-byte wrapping key and 32
// random bytes, the salt, that the blob carries; the key's attributes are
// in the authenticated data, so that unwrapping restores them exactly and
// any change to them, to the bytes, or to the blob is detected. All
// integers are big-endian.
//
//	offset     size  field
//	0          3     magic "KWW" (4B 57 57)
//	3          1     format version '3' (0x33): the blob starts "KWW3"
//	4          2     L, the length of the attributes
//	6          L     attributes, canonical encoding (below)
//	6+L        32    salt, random
//	38+L       M     ciphertext of the M-byte material, 1 <= M <= 16384
//	38+L+M     16    GCM tag
//
// The blob's key is HKDF-SHA-256 with the wrapping key as input keying
// material, no salt, and the info "keywarden KWW3 key wrap" followed by
// the 32 bytes of the blob's salt: HMAC-SHA-256 keyed by (a key extracted
// from) the wrapping key over the salt, a pseudorandom function of it. The
// GCM nonce is twelve zero bytes, as the key seals this blob and nothing
// else. The additional data is bytes 0 to 38+L (magic, version, length,
// attributes and salt); the plaintext is the material. A blob is
// 6+L+32+M+16 bytes.
//
// Why a key per blob: AES-GCM with random 96-bit nonces allows 2^32
// encryptions under one key (NIST SP 800-38D §8.3), and a wrapping key has
// no counter of the blobs it seals (they are made for other daemons, and
// repeated wraps of one key each make one). With a key per blob, no key
// encrypts twice, and two blobs share a key only if their 256-bit salts
// collide: for n blobs under one wrapping key, with probability below
// n^2/2^257 (2^-129 after 2^64 blobs). So a wrapping key may seal any
// number of blobs and nothing needs counting, persisting, or halving
// after a VM clone.
//
// Why a derived key at all: the first version, KWW1, sealed under the
// wrapping key itself, which is also how encryption of data under an AES
// key works, so a copy of a wrapping key that could encrypt or decrypt
// data could forge blobs with any attributes or open them. The derived
// keys are used for nothing else.
//
// Earlier versions. KWW2 sealed every blob of a wrapping key under one key
// derived from it (HKDF-SHA-256, no salt, info "keywarden KWW2 key
// wrap"), with a random nonce: "KWW2" || L || attributes || nonce (12) ||
// ciphertext || tag, the additional data being everything before the
// nonce. OpenKeyword still opens KWW2 blobs (only sealing too many of them
// under one key was a concern) and SealKeyword no longer makes them.
// OpenKeyword refuses KWW1 blobs with ErrLegacyKeyword.
//
// The attributes, encoding version 1 (L = 59+N):
//
//	offset  size  field
//	0       1     encoding version, 1
//	1       4     key type (wire.KeyType)
//	5       4     key class (wire.KeyClass): SECRET (1) or PRIVATE (3)
//	9       4     usage bits (wire.Usage)
//	13      1     flags: bit 0 exportable, bit 1 wrappable, bit 2 never
//	              exportable; the others zero
//	14      4     version of the material (rotation)
//	18      16    id of the wrapped key
//	34      8     creation time, Unix nanoseconds, signed (0: unknown)
//	42      8     AES-GCM encryptions this version may have made
//	50      8     AES-GCM encryption limit of this version (0: none)
//	58      1     N, the length of the name, 0 to 128
//	59      N     name, empty or a valid key name
//
// The encoding is deterministic: one set of attributes has exactly one
// encoding. OpenKeyword refuses an unknown format or encoding version,
// unknown flags, a name length that does not match L, trailing data, an
// unknown key type, a class the type cannot have or the public class,
// usage bits the type and class cannot have, exportable together with
// never exportable, and an invalid name: all as ErrUnwrap. It authenticates before it parses the attributes.
//
// What travels is what describes the key itself; what is local to one
// daemon (owner, ACL, handles, ephemeral or persistent, origin, trusted,
// rotation and budget policy) does not. The id travels as provenance; the
// unwrapping daemon decides whether to keep it. The encryption count and
// limit travel so that an AES-GCM key does not get a fresh random-nonce
// budget by being wrapped and unwrapped (and the daemon gives a second
// copy of one key's material no budget of its own: package keystore).
// An unwrapped key is never more permissive than the wrapped key because
// its attributes are restored exactly; the daemon may narrow them further
// (usage the caller asks for, local policy), never widen them. They are
// only as trustworthy as the wrapping key is secret: whoever knows it can
// seal any attributes, so a wrapping key that was ever exportable vouches
// for nothing.
//
// # The RSA-KWP format
//
// WrapRSAKWP's blob is C1 || C2: C1 is RSA-OAEP (hash H for OAEP and MGF1,
// empty label) of a fresh AES-256 key K, as long as the RSA modulus; C2 is
// KWP(K, material). This is CKM_RSA_AES_KEY_WRAP of PKCS #11 v2.40 and
// the import format of AWS KMS (RSA_AES_KEY_WRAP_SHA_1 and _SHA_256) and
// Google Cloud KMS (RSA_OAEP_*_SHA256_AES_256). H is SHA-256, SHA-384 or
// SHA-512, for wrapping and unwrapping alike: SHA-1, which some of those
// systems also offer, is refused both ways, as keywarden offers SHA-1
// nowhere (ask the other side for SHA-256). Unwrapping also takes
// AES-128/192 keys K, which PKCS #11 allows.
package wrap
