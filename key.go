package keywarden

import (
	"context"
	"crypto"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/keywarden/keywarden/internal/wire"
)

// Key is a handle to a key object in the daemon, valid on the Client that
// opened it. Its methods are safe for concurrent use.
type Key struct {
	c      *Client
	handle uint32
	pub    crypto.PublicKey
	typ    KeyType // never changes

	mu   sync.Mutex
	info KeyInfo // as last seen
}

func (c *Client) keyFromResult(op string, res *wire.Result) (*Key, error) {
	kr := res.GetKey()
	if kr == nil {
		return nil, &Error{Code: CodeInternal, Op: op, Message: "the daemon sent no key"}
	}
	info, err := infoFromWire(kr.Info)
	if err != nil {
		return nil, err
	}
	k := &Key{c: c, handle: kr.Handle, info: info}
	k.typ = k.info.Type
	pub, err := k.info.PublicKey()
	if err != nil {
		return nil, err
	}
	k.pub = pub
	return k, nil
}

func (c *Client) keyOp(ctx context.Context, op string, w *wire.Op) (*Key, error) {
	res, err := c.do(ctx, op, w)
	if err != nil {
		return nil, err
	}
	return c.keyFromResult(op, res)
}

// Generate creates a new key in the daemon and opens it.
func (c *Client) Generate(ctx context.Context, spec KeySpec) (*Key, error) {
	if !spec.Type.Valid() {
		return nil, argError("generate", "unknown key type %q", spec.Type)
	}
	return c.keyOp(ctx, "generate", &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: spec.wire()}}})
}

// Import creates a key from existing bytes: raw bytes for secret keys,
// PKCS #8 (private) or SubjectPublicKeyInfo (public) in DER or PEM for
// asymmetric ones. FormatAuto detects which. The bytes are sent to the
// daemon once; keep them no longer than you must.
func (c *Client) Import(ctx context.Context, spec KeySpec, format KeyFormat, data []byte) (*Key, error) {
	if !spec.Type.Valid() {
		return nil, argError("import", "unknown key type %q", spec.Type)
	}
	return c.keyOp(ctx, "import", &wire.Op{Op: &wire.Op_Import{Import: &wire.Import{
		Template: spec.wire(), Format: format.wire(), Data: data}}})
}

// Open opens one of the caller's own persistent keys by name.
func (c *Client) Open(ctx context.Context, name string) (*Key, error) {
	return c.keyOp(ctx, "open", &wire.Op{Op: &wire.Op_Open{Open: &wire.Open{
		Key: &wire.Open_Name{Name: &wire.NameRef{Name: name}}}}})
}

// OpenShared opens a key another user owns and shares through its ACL.
func (c *Client) OpenShared(ctx context.Context, owner uint32, name string) (*Key, error) {
	return c.keyOp(ctx, "open", &wire.Op{Op: &wire.Op_Open{Open: &wire.Open{
		Key: &wire.Open_Name{Name: &wire.NameRef{Name: name, OwnerUid: &owner}}}}})
}

// OpenID opens a persistent key by id.
func (c *Client) OpenID(ctx context.Context, id KeyID) (*Key, error) {
	return c.keyOp(ctx, "open", &wire.Op{Op: &wire.Op_Open{Open: &wire.Open{Key: &wire.Open_Id{Id: id[:]}}}})
}

// OpenRef opens a key by reference, as the CLI names keys: "id:HEX" for
// an id, "OWNER:NAME" for another user's key (OWNER a uid), and a plain
// NAME for one of the caller's own keys.
func (c *Client) OpenRef(ctx context.Context, ref string) (*Key, error) {
	if hex, ok := strings.CutPrefix(ref, "id:"); ok {
		id, err := ParseKeyID(hex)
		if err != nil {
			return nil, argError("open", "%v", err)
		}
		return c.OpenID(ctx, id)
	}
	if owner, name, ok := strings.Cut(ref, ":"); ok {
		uid, err := strconv.ParseUint(owner, 10, 32)
		if err != nil {
			return nil, argError("open", "invalid owner %q in %q: want a numeric uid", owner, ref)
		}
		return c.OpenShared(ctx, uint32(uid), name)
	}
	return c.Open(ctx, ref)
}

// List returns every persistent key the caller owns or is granted, in id
// order.
func (c *Client) List(ctx context.Context) ([]KeyInfo, error) {
	var out []KeyInfo
	var after []byte
	for {
		res, err := c.do(ctx, "list", &wire.Op{Op: &wire.Op_List{List: &wire.List{After: after}}})
		if err != nil {
			return nil, err
		}
		l := res.GetList()
		for _, k := range l.GetKeys() {
			i, err := infoFromWire(k)
			if err != nil {
				return nil, err
			}
			out = append(out, i)
		}
		if len(l.GetNext()) == 0 {
			return out, nil
		}
		after = l.GetNext()
	}
}

// Hash computes a digest in the daemon. Data larger than MaxData needs
// NewHash.
func (c *Client) Hash(ctx context.Context, h crypto.Hash, data []byte) ([]byte, error) {
	alg, err := hashToWire(h)
	if err != nil {
		return nil, err
	}
	if alg == wire.HashAlg_HASH_ALG_UNSPECIFIED {
		return nil, argError("hash", "a hash must be named")
	}
	if len(data) >= SharedThreshold {
		if d, ok, err := c.hashShared(ctx, alg, data); ok {
			return d, err
		}
	}
	return c.doData(ctx, "hash", &wire.Op{Op: &wire.Op_Hash{Hash: &wire.Hash{Alg: alg, Data: data}}})
}

// Client returns the client the key was opened on.
func (k *Key) Client() *Client { return k.c }

// Handle returns the key's handle on its connection.
func (k *Key) Handle() uint32 { return k.handle }

// Info returns the key's description as of its opening or last Refresh.
func (k *Key) Info() KeyInfo {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.info
}

// ID returns the key's persistent id.
func (k *Key) ID() KeyID { return k.Info().ID }

// Name returns the key's name.
func (k *Key) Name() string { return k.Info().Name }

// Type returns the key's type.
func (k *Key) Type() KeyType { return k.Info().Type }

// setInfo records the description the daemon sent, unless it is one the
// client cannot read.
func (k *Key) setInfo(w *wire.KeyInfo) (KeyInfo, error) {
	i, err := infoFromWire(w)
	if err != nil {
		return KeyInfo{}, err
	}
	k.mu.Lock()
	k.info = i
	k.mu.Unlock()
	return i, nil
}

// Refresh asks the daemon for the key's current description.
func (k *Key) Refresh(ctx context.Context) (KeyInfo, error) {
	res, err := k.c.do(ctx, "info", &wire.Op{Op: &wire.Op_Info{Info: &wire.Info{Handle: k.handle}}})
	if err != nil {
		return KeyInfo{}, err
	}
	return k.setInfo(res.GetInfo())
}

// Encrypt encrypts plaintext with the key's newest version. AES-256-GCM
// returns a 7-byte header naming that version ('K' 'W' 1, then the
// version as 4 bytes big-endian), then nonce || ciphertext || tag, with a
// nonce the daemon chose at random, and authenticates aad: the standard
// library opens it with that version's key as gcm.Open(nil, c[7:19],
// c[19:], aad). RSA keys use OAEP with SHA-256 and aad as the label.
// An encryption that a change of the machine's generation reached while
// the daemon made it fails with an error matching ErrGenerationChanged,
// and nothing of it is returned: call Encrypt again.
func (k *Key) Encrypt(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	return k.AppendEncrypt(ctx, nil, plaintext, aad)
}

// AppendEncrypt is Encrypt that appends the ciphertext to dst and returns
// the extended slice, as cipher.AEAD's Seal does; on error it returns nil.
// A caller that encrypts large messages one after another can pass the
// same buffer each time (buf[:0]): when it has room (for AES-256-GCM,
// len(plaintext) + 35 bytes), a message sent through shared
// memory costs no allocation, and its ciphertext is copied once, from the
// region the daemon wrote it to. dst and plaintext may overlap exactly
// or not at all.
func (k *Key) AppendEncrypt(ctx context.Context, dst, plaintext, aad []byte) ([]byte, error) {
	if len(plaintext) >= SharedThreshold {
		if ct, ok, err := k.encryptShared(ctx, dst, plaintext, aad); ok {
			if err != nil {
				return nil, err
			}
			return ct, nil
		}
	}
	ct, err := k.c.doData(ctx, "encrypt", k.encryptOp(plaintext, aad, 0))
	if err != nil || dst == nil {
		return ct, err
	}
	return append(dst, ct...), nil
}

func (k *Key) encryptOp(plaintext, aad []byte, h wire.HashAlg) *wire.Op {
	return &wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: k.handle, Plaintext: plaintext, Aad: aad, Hash: h}}}
}

// Decrypt reverses Encrypt, with the version that made the ciphertext
// (if it is not retired). Any failure (wrong key, tampered data, wrong
// aad) is the same ErrInvalidArgument "decryption failed".
func (k *Key) Decrypt(ctx context.Context, ciphertext, aad []byte) ([]byte, error) {
	return k.AppendDecrypt(ctx, nil, ciphertext, aad)
}

// AppendDecrypt is Decrypt that appends the plaintext to dst and returns
// the extended slice, as cipher.AEAD's Open does; on error it returns
// nil. Like AppendEncrypt, it lets a caller reuse one buffer for large
// messages. dst and ciphertext may overlap exactly or not at all.
func (k *Key) AppendDecrypt(ctx context.Context, dst, ciphertext, aad []byte) ([]byte, error) {
	if len(ciphertext) >= SharedThreshold {
		if pt, ok, err := k.decryptShared(ctx, dst, ciphertext, aad); ok {
			if err != nil {
				return nil, err
			}
			return pt, nil
		}
	}
	pt, err := k.c.doData(ctx, "decrypt", k.decryptOp(ciphertext, aad, 0))
	if err != nil || dst == nil {
		return pt, err
	}
	return append(dst, pt...), nil
}

func (k *Key) decryptOp(ciphertext, aad []byte, h wire.HashAlg) *wire.Op {
	return &wire.Op{Op: &wire.Op_Decrypt{Decrypt: &wire.Decrypt{Handle: k.handle, Ciphertext: ciphertext, Aad: aad, Hash: h}}}
}

// SignOptions selects signature details. The zero value means: pure
// Ed25519; SHA-256 for ECDSA P-256 and RSA; SHA-384 for ECDSA P-384; PSS
// for RSA.
type SignOptions struct {
	Hash    crypto.Hash
	Padding Padding
	// KeyVersion is the version Verify checks against; 0 tries every live
	// version, newest first. Signing always uses the newest.
	KeyVersion uint32
}

// HashFunc returns o.Hash (0 for a nil o). It makes *SignOptions a
// crypto.SignerOpts, so that SignContext and SignMessageContext take the
// daemon's options as well as the standard library's.
func (o *SignOptions) HashFunc() crypto.Hash {
	if o == nil {
		return 0
	}
	return o.Hash
}

func (k *Key) signOp(data []byte, prehashed bool, o *SignOptions) (*wire.Sign, error) {
	var opts SignOptions
	if o != nil {
		opts = *o
	}
	h, err := hashToWire(opts.Hash)
	if err != nil {
		return nil, err
	}
	return &wire.Sign{Handle: k.handle, Data: data, Prehashed: prehashed, Hash: h, Padding: opts.Padding.wire()}, nil
}

// SignDigest signs a digest computed with opts.Hash (for Ed25519: a
// SHA-512 digest, signed as Ed25519ph).
func (k *Key) SignDigest(ctx context.Context, digest []byte, opts *SignOptions) ([]byte, error) {
	if opts == nil || opts.Hash == 0 {
		return nil, argError("sign", "signing a digest needs its hash")
	}
	s, err := k.signOp(digest, true, opts)
	if err != nil {
		return nil, err
	}
	return k.c.doData(ctx, "sign", &wire.Op{Op: &wire.Op_Sign{Sign: s}})
}

func (k *Key) verifyOp(data, sig []byte, prehashed bool, opts *SignOptions) (*wire.Op, error) {
	s, err := k.signOp(data, prehashed, opts)
	if err != nil {
		return nil, err
	}
	var ver uint32
	if opts != nil {
		ver = opts.KeyVersion
	}
	return &wire.Op{Op: &wire.Op_Verify{Verify: &wire.Verify{Handle: s.Handle, Data: s.Data, Prehashed: s.Prehashed,
		Hash: s.Hash, Padding: s.Padding, Signature: sig, KeyVersion: ver}}}, nil
}

// Verify checks a signature over msg. A signature that does not verify
// gives an error matching ErrVerification.
func (k *Key) Verify(ctx context.Context, msg, sig []byte, opts *SignOptions) error {
	op, err := k.verifyOp(msg, sig, false, opts)
	if err != nil {
		return err
	}
	_, err = k.c.do(ctx, "verify", op)
	return err
}

// VerifyDigest checks a signature over a digest computed with opts.Hash.
func (k *Key) VerifyDigest(ctx context.Context, digest, sig []byte, opts *SignOptions) error {
	if opts == nil || opts.Hash == 0 {
		return argError("verify", "verifying a digest needs its hash")
	}
	op, err := k.verifyOp(digest, sig, true, opts)
	if err != nil {
		return err
	}
	_, err = k.c.do(ctx, "verify", op)
	return err
}

// MAC computes an HMAC tag over data.
func (k *Key) MAC(ctx context.Context, data []byte) ([]byte, error) {
	if len(data) >= SharedThreshold {
		if tag, ok, err := k.macShared(ctx, data); ok {
			return tag, err
		}
	}
	return k.c.doData(ctx, "mac", &wire.Op{Op: &wire.Op_Mac{Mac: &wire.Mac{Handle: k.handle, Data: data}}})
}

// VerifyMAC checks an HMAC tag in constant time. A tag that does not
// verify gives an error matching ErrVerification.
func (k *Key) VerifyMAC(ctx context.Context, data, tag []byte) error {
	_, err := k.c.do(ctx, "mac-verify", &wire.Op{Op: &wire.Op_MacVerify{MacVerify: &wire.MacVerify{Handle: k.handle, Data: data, Tag: tag}}})
	return err
}

// Export returns the key's bytes, if it is exportable: raw bytes for
// secret keys, PKCS #8 for private keys (FormatAuto means DER), SPKI for
// public keys.
func (k *Key) Export(ctx context.Context, format KeyFormat) ([]byte, error) {
	return k.c.doData(ctx, "export", &wire.Op{Op: &wire.Op_Export{Export: &wire.Export{Handle: k.handle, Format: format.wire()}}})
}

// ExportPublic returns the public half of an asymmetric key as
// SubjectPublicKeyInfo (FormatSPKIDER or FormatSPKIPEM). Public keys are
// always readable.
func (k *Key) ExportPublic(ctx context.Context, format KeyFormat) ([]byte, error) {
	return k.c.doData(ctx, "public-key", &wire.Op{Op: &wire.Op_PublicKey{PublicKey: &wire.PublicKey{Handle: k.handle, Format: format.wire()}}})
}

// DeriveParams are the inputs of a derivation besides the parent key.
type DeriveParams struct {
	// Peer is the other party's public key for X25519 and ECDH keys:
	// SubjectPublicKeyInfo in DER or PEM, or raw (32 bytes for X25519, an
	// uncompressed point for P-256 and P-384). Empty for HMAC keys.
	Peer []byte
	// Hash is HKDF's hash: SHA-256 by default, or an HMAC key's own hash.
	// With KDFX963 it is required: SHA-256, SHA-384 or SHA-512.
	Hash crypto.Hash
	Salt []byte
	// Info is HKDF's info, or X9.63's shared info.
	Info []byte
	// KDF is how the new key's bytes follow from the input: HKDF by
	// default. KDFNone and KDFX963 take an X25519 or ECDH key only.
	KDF DeriveKDF
}

// DeriveKDF is the key derivation function of Derive.
type DeriveKDF string

const (
	// KDFHKDF is HKDF (RFC 5869) with Hash, Salt and Info (the default).
	KDFHKDF DeriveKDF = "hkdf"
	// KDFNone makes the new key the raw ECDH shared secret, as PKCS #11's
	// CKD_NULL: a shorter key type takes its last bytes, a longer one is
	// refused. No Hash, Salt or Info.
	KDFNone DeriveKDF = "none"
	// KDFX963 is the ANSI X9.63 KDF of the shared secret under Hash with
	// Info as the shared info. No Salt.
	KDFX963 DeriveKDF = "x963"
)

func (k DeriveKDF) wire() (wire.DeriveKdf, bool) {
	switch k {
	case "", KDFHKDF:
		return wire.DeriveKdf_DERIVE_KDF_UNSPECIFIED, true
	case KDFNone:
		return wire.DeriveKdf_DERIVE_KDF_NONE, true
	case KDFX963:
		return wire.DeriveKdf_DERIVE_KDF_X963, true
	}
	return 0, false
}

// Derive makes a new secret key (AES or HMAC) inside the daemon from this
// key: X25519/ECDH agreement with params.Peer followed by HKDF (or, with
// params.KDF, the raw shared secret or X9.63 of it), or HKDF of an HMAC
// key. The new key is exportable only if spec asks for it and
// this key is exportable.
func (k *Key) Derive(ctx context.Context, spec KeySpec, params DeriveParams) (*Key, error) {
	h, err := hashToWire(params.Hash)
	if err != nil {
		return nil, err
	}
	if !spec.Type.Valid() {
		return nil, argError("derive", "unknown key type %q", spec.Type)
	}
	kdf, ok := params.KDF.wire()
	if !ok {
		return nil, argError("derive", "unknown key derivation function %q (hkdf, none or x963)", params.KDF)
	}
	return k.c.keyOp(ctx, "derive", &wire.Op{Op: &wire.Op_Derive{Derive: &wire.Derive{
		Handle: k.handle, PeerPublicKey: params.Peer, Hash: h, Salt: params.Salt, Info: params.Info, Template: spec.wire(), Kdf: kdf}}})
}

// Attributes is a change of a key's sticky attributes; nil fields stay.
// Attributes only narrow: the daemon refuses adding usages or switching
// exportable or wrappable back on with ErrPolicyViolation.
type Attributes struct {
	Usage      *Usage
	Exportable *bool
	Wrappable  *bool
}

// SetAttributes changes the key's sticky attributes. Owner only.
func (k *Key) SetAttributes(ctx context.Context, a Attributes) (KeyInfo, error) {
	sa := &wire.SetAttributes{Handle: k.handle, Exportable: a.Exportable, Wrappable: a.Wrappable}
	if a.Usage != nil {
		u := uint32(*a.Usage)
		sa.Usage = &u
	}
	res, err := k.c.do(ctx, "set-attributes", &wire.Op{Op: &wire.Op_SetAttributes{SetAttributes: sa}})
	if err != nil {
		return KeyInfo{}, err
	}
	return k.setInfo(res.GetInfo())
}

// SetACL replaces the key's ACL. Owner only.
func (k *Key) SetACL(ctx context.Context, acl []ACLEntry) (KeyInfo, error) {
	res, err := k.c.do(ctx, "set-acl", &wire.Op{Op: &wire.Op_SetAcl{SetAcl: &wire.SetACL{Handle: k.handle, Acl: aclToWire(acl)}}})
	if err != nil {
		return KeyInfo{}, err
	}
	return k.setInfo(res.GetInfo())
}

// Destroy deletes the key from the daemon and wipes its bytes. Owner only.
// Handles to it on other connections stop working. A persistent key whose
// Lifecycle.DeletionAllowed is off is refused (ErrPolicyViolation): allow
// its deletion first with SetLifecycle.
func (k *Key) Destroy(ctx context.Context) error {
	_, err := k.c.do(ctx, "destroy", &wire.Op{Op: &wire.Op_Destroy{Destroy: &wire.Destroy{Handle: k.handle}}})
	return err
}

// Close releases the handle. Closing an ephemeral key destroys it.
func (k *Key) Close(ctx context.Context) error {
	_, err := k.c.do(ctx, "close", &wire.Op{Op: &wire.Op_Close{Close: &wire.Close{Handle: k.handle}}})
	return err
}

func (k *Key) String() string {
	i := k.Info()
	if i.Name != "" {
		return fmt.Sprintf("keywarden key %q (%s, %s)", i.Name, i.Type, i.ID)
	}
	return fmt.Sprintf("keywarden key %s (%s)", i.ID, i.Type)
}
