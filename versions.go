package keywarden

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/keywarden/keywarden/internal/wire"
)

// Key versions, rotation, wrapping for transport, and data keys
// (docs/formats.md).

// Lifecycle describes a key's origin and versions.
type Lifecycle struct {
	Origin Origin
	// NeverExportable: the key has never been exportable.
	NeverExportable bool
	// Trusted: an administrator made it a trusted wrapping key.
	Trusted bool
	// WrappedOut: the key's material has left the daemon wrapped; it is
	// then never a trusted wrapping key.
	WrappedOut bool
	// MinVersion: versions below it no longer decrypt or verify.
	MinVersion uint32
	// RotateAfter: a new version is made when the newest is older (0:
	// never).
	RotateAfter time.Duration
	// RefuseWhenSpent: a version that has made as many AES-GCM encryptions
	// as it may refuses more, rather than a new version being made.
	RefuseWhenSpent bool
	// DeletionAllowed: Destroy may delete the key. It is off for a new
	// persistent key of a daemon with a state directory, until set with
	// SetLifecycle; on for ephemeral keys and in development mode.
	DeletionAllowed bool
	// AllowedPrograms are the executables that may use the key; none: any.
	// See LifecycleChange.AllowedPrograms.
	AllowedPrograms []Program
	// SSH: the daemon's ssh-agent sockets offer the key to the users who
	// may sign with it (docs/ssh.md). See LifecycleChange.SSH.
	SSH bool
	// Versions are the live versions, oldest first.
	Versions []VersionInfo
}

// VersionInfo describes one version of a key.
type VersionInfo struct {
	Version uint32
	Created time.Time
	// Encryptions made with it (AES-GCM; an upper bound after a daemon
	// restart) and the most it may make.
	Encryptions, EncryptionLimit uint64
}

// Origin says how a key came to be.
type Origin int

const (
	OriginUnknown Origin = iota
	OriginGenerated
	OriginImported
	OriginDerived
	OriginUnwrapped
	OriginPassphrase
)

func (o Origin) String() string {
	switch o {
	case OriginGenerated:
		return "generated"
	case OriginImported:
		return "imported"
	case OriginDerived:
		return "derived"
	case OriginUnwrapped:
		return "unwrapped"
	case OriginPassphrase:
		return "passphrase"
	}
	return "unknown"
}

func lifecycleFromWire(w *wire.KeyLifecycle) Lifecycle {
	if w == nil {
		return Lifecycle{}
	}
	l := Lifecycle{
		Origin: Origin(w.Origin), NeverExportable: w.NeverExportable, Trusted: w.Trusted, WrappedOut: w.WrappedOut, MinVersion: w.MinVersion,
		RotateAfter: time.Duration(w.RotateAfterSeconds) * time.Second, RefuseWhenSpent: w.RefuseWhenSpent,
		DeletionAllowed: w.DeletionAllowed, SSH: w.Ssh,
	}
	for _, p := range w.AllowedPrograms {
		var h []byte
		if len(p.Sha256) > 0 {
			h = bytes.Clone(p.Sha256)
		}
		l.AllowedPrograms = append(l.AllowedPrograms, Program{Path: p.Path, SHA256: h})
	}
	for _, v := range w.Versions {
		l.Versions = append(l.Versions, VersionInfo{Version: v.Version, Created: time.Unix(0, v.CreatedUnixNano),
			Encryptions: v.Encryptions, EncryptionLimit: v.EncryptionLimit})
	}
	return l
}

// Rotate adds a new version to the key, made fresh; new ciphertexts and
// signatures use it, older versions still decrypt and verify until the
// minimum version is raised. Owner only.
func (k *Key) Rotate(ctx context.Context) (KeyInfo, error) {
	res, err := k.c.do(ctx, "rotate", &wire.Op{Op: &wire.Op_Rotate{Rotate: &wire.Rotate{Handle: k.handle}}})
	if err != nil {
		return KeyInfo{}, err
	}
	return k.setInfo(res.GetInfo())
}

// LifecycleChange changes a key's version and rotation settings; nil
// fields stay as they are.
type LifecycleChange struct {
	// MinVersion retires older versions (it can only be raised).
	MinVersion *uint32
	// TrimBelow deletes the versions below it (retired ones only).
	TrimBelow *uint32
	// RotateAfter: make a new version when the newest is older (0: never).
	RotateAfter *time.Duration
	// RefuseWhenSpent: see Lifecycle.
	RefuseWhenSpent *bool
	// Trusted makes the key a trusted wrapping key (administrators only).
	Trusted *bool
	// DeletionAllowed lets Destroy delete the key (true), or stops it
	// (false). See Lifecycle.
	DeletionAllowed *bool
	// AllowedPrograms, when not nil, replaces the executables that may use
	// the key: every operation that uses it, exports it, wraps it or
	// derives from it must then come from a process running one of them
	// (the daemon reads the sender's /proc/PID/exe through the request's
	// pidfd, and refuses when the kernel gives none). A key derived from it
	// inherits the list, and a copy of its material that any program may
	// use is refused. An empty, non-nil list lifts the restriction. What it
	// stops and what it does not: docs/security.md.
	AllowedPrograms *[]Program
	// SSH marks the key for the daemon's ssh-agent sockets (true), which
	// then list it to and sign with it for the users who may sign with it,
	// or unmarks it (false).
	SSH *bool
}

// Program is an executable allowed to use a key: the absolute path the
// kernel gives for a process's executable (symbolic links resolved), and
// optionally the SHA-256 of its file (nil: whatever file is at Path).
// Written PATH or PATH@sha256:HEX.
type Program struct {
	Path   string
	SHA256 []byte
}

const programHashSep = "@sha256:"

func (p Program) String() string {
	if p.SHA256 == nil {
		return p.Path
	}
	return p.Path + programHashSep + hex.EncodeToString(p.SHA256)
}

// ParseProgram parses PATH or PATH@sha256:HEX. The daemon checks the path
// (absolute and clean).
func ParseProgram(s string) (Program, error) {
	i := strings.LastIndex(s, programHashSep)
	if i < 0 {
		return Program{Path: s}, nil
	}
	h, err := hex.DecodeString(s[i+len(programHashSep):])
	if err != nil || len(h) != sha256.Size {
		return Program{}, fmt.Errorf("program %q: the hash after %q must be %d hex digits", s, programHashSep, 2*sha256.Size)
	}
	return Program{Path: s[:i], SHA256: h}, nil
}

// SetLifecycle changes the key's version and rotation settings. Owner only.
func (k *Key) SetLifecycle(ctx context.Context, ch LifecycleChange) (KeyInfo, error) {
	sl := &wire.SetLifecycle{Handle: k.handle, MinVersion: ch.MinVersion, TrimBelow: ch.TrimBelow,
		RefuseWhenSpent: ch.RefuseWhenSpent, Trusted: ch.Trusted, DeletionAllowed: ch.DeletionAllowed, Ssh: ch.SSH}
	if ch.AllowedPrograms != nil {
		sl.AllowedPrograms = &wire.Programs{}
		for _, p := range *ch.AllowedPrograms {
			sl.AllowedPrograms.Programs = append(sl.AllowedPrograms.Programs, &wire.Program{Path: p.Path, Sha256: p.SHA256})
		}
	}
	if ch.RotateAfter != nil {
		s := int64(*ch.RotateAfter / time.Second)
		sl.RotateAfterSeconds = &s
	}
	res, err := k.c.do(ctx, "set-lifecycle", &wire.Op{Op: &wire.Op_SetLifecycle{SetLifecycle: sl}})
	if err != nil {
		return KeyInfo{}, err
	}
	return k.setInfo(res.GetInfo())
}

// WrapFormat is a key wrapping format.
type WrapFormat int

const (
	// WrapKeywarden is keywarden's own format: the key's attributes travel
	// with it, bound to its bytes, so that a daemon sharing the wrapping
	// key restores them exactly.
	WrapKeywarden WrapFormat = iota
	// WrapKW is AES key wrap, RFC 3394 (as openssl's id-aes256-wrap).
	WrapKW
	// WrapKWP is AES key wrap with padding, RFC 5649 (id-aes256-wrap-pad).
	WrapKWP
	// WrapRSAAESKWP is RSA-OAEP of an ephemeral AES key followed by RFC 5649
	// under it: what cloud KMS key import and PKCS #11
	// CKM_RSA_AES_KEY_WRAP use.
	WrapRSAAESKWP
)

func (f WrapFormat) wire() wire.WrapFormat {
	switch f {
	case WrapKW:
		return wire.WrapFormat_WRAP_FORMAT_KW
	case WrapKWP:
		return wire.WrapFormat_WRAP_FORMAT_KWP
	case WrapRSAAESKWP:
		return wire.WrapFormat_WRAP_FORMAT_RSA_AES_KWP
	}
	return wire.WrapFormat_WRAP_FORMAT_KEYWARDEN
}

// WrapOptions are the RSA-AES-KWP format's options.
type WrapOptions struct {
	// Hash is OAEP's and MGF1's hash: SHA-256 (default), SHA-384 or
	// SHA-512.
	Hash crypto.Hash
}

func (o *WrapOptions) hash() (wire.HashAlg, error) {
	if o == nil || o.Hash == 0 {
		return wire.HashAlg_HASH_ALG_UNSPECIFIED, nil
	}
	return hashToWire(o.Hash)
}

// Wrap returns target's newest version wrapped under this key, which must
// have wrap usage and be known to no one: generated by the daemon, never
// exportable, wrappable or wrapped out, with no encrypt or decrypt usage
// (or trusted by an administrator). target must be wrappable, owned by the
// caller, no stronger than this key, and not itself a wrapping key; it is
// marked wrapped out from then on.
func (k *Key) Wrap(ctx context.Context, target *Key, format WrapFormat, opts *WrapOptions) ([]byte, error) {
	h, err := opts.hash()
	if err != nil {
		return nil, err
	}
	return k.c.doData(ctx, "wrap", &wire.Op{Op: &wire.Op_Wrap{Wrap: &wire.Wrap{Handle: k.handle, Target: target.handle, Format: format.wire(), Hash: h}}})
}

// Unwrap makes a new key from blob, wrapped under this key (which needs
// unwrap usage). With WrapKeywarden the blob's type and attributes apply,
// and spec gives Name, Ephemeral, ACL and may narrow Usage; the unwrapping
// key must then be known to no one, as for Wrap. With the other formats
// spec gives the type and usages. Either way the key is never exportable,
// is wrappable only for the unwrapping key's owner, and, if the daemon
// holds its material already under another key, has no more than that key
// (docs/security.md, "One key's material, many objects").
func (k *Key) Unwrap(ctx context.Context, blob []byte, format WrapFormat, spec KeySpec, opts *WrapOptions) (*Key, error) {
	h, err := opts.hash()
	if err != nil {
		return nil, err
	}
	return k.c.keyOp(ctx, "unwrap", &wire.Op{Op: &wire.Op_Unwrap{Unwrap: &wire.Unwrap{Handle: k.handle, Blob: blob, Format: format.wire(), Template: spec.wire(), Hash: h}}})
}

// Rewrap re-encrypts an AES-GCM ciphertext of this key under its newest
// version, inside the daemon: the caller never sees the plaintext. The
// key needs both encrypt and decrypt usage.
func (k *Key) Rewrap(ctx context.Context, ciphertext, aad []byte) ([]byte, error) {
	return k.c.doData(ctx, "rewrap", &wire.Op{Op: &wire.Op_Rewrap{Rewrap: &wire.Rewrap{Handle: k.handle, Ciphertext: ciphertext, Aad: aad}}})
}

// DataKey is a random key for encrypting data outside the daemon
// (envelope encryption).
type DataKey struct {
	// Ciphertext is the data key encrypted under the key that made it;
	// Decrypt with that key recovers it.
	Ciphertext []byte
	// Plaintext is the data key itself, if it was asked for. Wipe it
	// after use.
	Plaintext []byte
}

// DataKeyOptions are the options of GenerateDataKey; nil means the zero
// value.
type DataKeyOptions struct {
	// Length of the data key in bytes; 0 means 32.
	Length int
	// Plaintext returns the data key in plain as well.
	Plaintext bool
}

// GenerateDataKey makes a random data key and returns it encrypted under
// this AES-GCM key (which needs encrypt usage) with aad, and in plain only
// if opts.Plaintext.
func (k *Key) GenerateDataKey(ctx context.Context, aad []byte, opts *DataKeyOptions) (DataKey, error) {
	var o DataKeyOptions
	if opts != nil {
		o = *opts
	}
	if o.Length < 0 || int64(o.Length) > math.MaxUint32 {
		return DataKey{}, argError("data-key", "invalid length %d", o.Length)
	}
	res, err := k.c.do(ctx, "data-key", &wire.Op{Op: &wire.Op_DataKey{DataKey: &wire.DataKey{Handle: k.handle, Length: uint32(o.Length), Aad: aad, Plaintext: o.Plaintext}}})
	if err != nil {
		return DataKey{}, err
	}
	d := res.GetDataKey()
	return DataKey{Ciphertext: d.GetCiphertext(), Plaintext: d.GetPlaintext()}, nil
}
