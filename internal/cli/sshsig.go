package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/big"
	"os"
	"strings"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
	"golang.org/x/crypto/ssh"

	"github.com/keywarden/keywarden"
)

// SSH signatures (OpenSSH's PROTOCOL.sshsig), as ssh-keygen -Y sign makes
// and -Y verify checks them. The command hashes the input with SHA-512 and
// has the daemon sign the small "signed data" structure that holds the
// hash, so input of any size is signed in one short request.

const (
	sshsigMagic   = "SSHSIG"
	sshsigVersion = 1
	sshsigArmor   = "SSH SIGNATURE"
	// sshsigHash is the message hash keywarden signs with (ssh-keygen's
	// default too); verification also takes sha256.
	sshsigHash = "sha512"
	// maxSSHSig bounds a signature file read for verification.
	maxSSHSig = 64 << 10
)

// authorizedKey returns a key's public half as an authorized_keys line,
// with the key's name as the comment.
func authorizedKey(info keywarden.KeyInfo) ([]byte, error) {
	pub, err := sshPublicKey(info)
	if err != nil {
		return nil, err
	}
	line := bytes.TrimSuffix(ssh.MarshalAuthorizedKey(pub), []byte("\n"))
	if info.Name != "" {
		line = append(line, ' ')
		line = append(line, info.Name...)
	}
	return append(line, '\n'), nil
}

// sshPublicKey is a key's public half in SSH form: Ed25519, ECDSA P-256
// and P-384, and RSA keys have one.
func sshPublicKey(info keywarden.KeyInfo) (ssh.PublicKey, error) {
	switch info.Type {
	case keywarden.Ed25519, keywarden.ECDSAP256, keywarden.ECDSAP384,
		keywarden.RSA2048, keywarden.RSA3072, keywarden.RSA4096:
	default:
		return nil, fmt.Errorf("%s keys have no SSH form (Ed25519, ECDSA and RSA keys do)", info.Type)
	}
	pub, err := info.PublicKey()
	if err != nil {
		return nil, err
	}
	return ssh.NewPublicKey(pub)
}

// sshsigScheme is how a key type signs the signed-data blob: the SSH
// signature format and the daemon's sign options.
func sshsigScheme(t keywarden.KeyType) (format string, opts *keywarden.SignOptions) {
	switch t {
	case keywarden.Ed25519:
		return ssh.KeyAlgoED25519, &keywarden.SignOptions{}
	case keywarden.ECDSAP256:
		return ssh.KeyAlgoECDSA256, &keywarden.SignOptions{Hash: crypto.SHA256}
	case keywarden.ECDSAP384:
		return ssh.KeyAlgoECDSA384, &keywarden.SignOptions{Hash: crypto.SHA384}
	}
	return ssh.KeyAlgoRSASHA512, &keywarden.SignOptions{Hash: crypto.SHA512, Padding: keywarden.PaddingPKCS1v15}
}

// sshsigSignedData is the blob a signature covers: the magic, the
// namespace, the reserved field, the hash's name and the message's hash.
func sshsigSignedData(namespace, hashName string, digest []byte) []byte {
	var b cryptobyte.Builder
	b.AddBytes([]byte(sshsigMagic))
	addString(&b, []byte(namespace))
	addString(&b, nil)
	addString(&b, []byte(hashName))
	addString(&b, digest)
	return b.BytesOrPanic()
}

func addString(b *cryptobyte.Builder, s []byte) {
	b.AddUint32LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(s) })
}

// hashInput hashes r with the named sshsig hash.
func hashInput(hashName string, r io.Reader) ([]byte, error) {
	var h hash.Hash
	switch hashName {
	case "sha512":
		h = sha512.New()
	case "sha256":
		h = sha256.New()
	default:
		return nil, fmt.Errorf("unsupported SSH signature hash %q", hashName)
	}
	if _, err := io.Copy(h, bufio.NewReaderSize(r, 1<<20)); err != nil {
		return nil, fmt.Errorf("read input: %w", err)
	}
	return h.Sum(nil), nil
}

// sshsigOptions are the flags of sign and verify --format sshsig.
type sshsigOptions struct {
	format    string
	namespace string
}

func (o *sshsigOptions) register(f *flags) {
	f.StringVar(&o.format, "format", "raw", "signature `format`: raw (the algorithm's own bytes) or sshsig (an armored SSH SIGNATURE, as ssh-keygen -Y sign makes, over input of any size)")
	f.StringVar(&o.namespace, "namespace", "", "sshsig: the signature's `namespace` (e.g. file, git), which the verifier names too")
}

// check validates the flags; sshsig reports whether the format is sshsig.
func (o *sshsigOptions) check(s *signFlags) (sshsig bool, err error) {
	switch o.format {
	case "", "raw":
		if o.namespace != "" {
			return false, usagef("--namespace applies to --format sshsig")
		}
		return false, nil
	case "sshsig":
	default:
		return false, usagef("unknown --format %q (want raw or sshsig)", o.format)
	}
	if o.namespace == "" {
		return false, usagef("--format sshsig needs --namespace (e.g. file)")
	}
	if s.hash != "" || s.ph || (s.padding != "" && s.padding != "pss") {
		return false, usagef("--format sshsig chooses its own hash and padding: drop --hash, --padding and --ed25519ph")
	}
	return true, nil
}

// sshsigSign signs stdin as an SSH signature and prints it armored.
func sshsigSign(e *env, f *flags, k *keywarden.Key, namespace string) error {
	pub, err := sshPublicKey(k.Info())
	if err != nil {
		return err
	}
	digest, err := hashInput(sshsigHash, e.stdin)
	if err != nil {
		return err
	}
	ctx, cancel := signContext(f)
	defer cancel()
	blob := sshsigSignedData(namespace, sshsigHash, digest)
	format, opts := sshsigScheme(k.Type())
	raw, err := k.SignMessageContext(ctx, blob, opts)
	if err != nil {
		return err
	}
	sig := &ssh.Signature{Format: format, Blob: raw}
	if format == ssh.KeyAlgoECDSA256 || format == ssh.KeyAlgoECDSA384 {
		if sig.Blob, err = ecdsaDERToSSH(raw); err != nil {
			return err
		}
	}
	// The daemon's signature is checked here against the key's public
	// half before anything is written.
	if err := pub.Verify(blob, sig); err != nil {
		return fmt.Errorf("the daemon's signature does not verify as an SSH signature: %v", err)
	}
	var b cryptobyte.Builder
	b.AddBytes([]byte(sshsigMagic))
	b.AddUint32(sshsigVersion)
	addString(&b, pub.Marshal())
	addString(&b, []byte(namespace))
	addString(&b, nil)
	addString(&b, []byte(sshsigHash))
	addString(&b, ssh.Marshal(sig))
	armored := armorSSHSig(b.BytesOrPanic())
	if f.json {
		return printJSON(e, map[string]string{"signature": armored})
	}
	_, err = io.WriteString(e.stdout, armored)
	return err
}

// signContext bounds the daemon's part of a signature over input that
// may have taken long to hash: by --timeout from now, unless it was given
// (then it bounds the whole command).
func signContext(f *flags) (context.Context, context.CancelFunc) {
	if f.timeoutSet() {
		return f.context, func() {}
	}
	return context.WithTimeout(context.Background(), f.timeout)
}

// armorSSHSig armors a signature as ssh-keygen does: base64 in lines of
// 70 characters.
func armorSSHSig(b []byte) string {
	enc := base64.StdEncoding.EncodeToString(b)
	var s strings.Builder
	s.WriteString("-----BEGIN " + sshsigArmor + "-----\n")
	for len(enc) > 70 {
		s.WriteString(enc[:70] + "\n")
		enc = enc[70:]
	}
	s.WriteString(enc + "\n-----END " + sshsigArmor + "-----\n")
	return s.String()
}

// sshSig is a parsed SSH signature.
type sshSig struct {
	publicKey []byte
	namespace string
	hashName  string
	sig       ssh.Signature
}

// errSSHSig is a signature file that is not an SSH signature.
var errSSHSig = errors.New("not an SSH signature (-----BEGIN SSH SIGNATURE-----)")

// parseSSHSig parses an armored SSH signature.
func parseSSHSig(armored []byte) (*sshSig, error) {
	block, rest := pem.Decode(armored)
	if block == nil || block.Type != sshsigArmor || len(block.Headers) != 0 || len(bytes.TrimSpace(rest)) != 0 {
		return nil, errSSHSig
	}
	s := cryptobyte.String(block.Bytes)
	var magic, pub, ns, reserved, hashName, sigBlob []byte
	var version uint32
	if !s.ReadBytes(&magic, len(sshsigMagic)) || string(magic) != sshsigMagic ||
		!s.ReadUint32(&version) || !readString(&s, &pub) || !readString(&s, &ns) ||
		!readString(&s, &reserved) || !readString(&s, &hashName) || !readString(&s, &sigBlob) || !s.Empty() {
		return nil, errSSHSig
	}
	if version != sshsigVersion {
		return nil, fmt.Errorf("unsupported SSH signature version %d", version)
	}
	out := &sshSig{publicKey: pub, namespace: string(ns), hashName: string(hashName)}
	sb := cryptobyte.String(sigBlob)
	var format, blob []byte
	if !readString(&sb, &format) || !readString(&sb, &blob) || !sb.Empty() {
		return nil, errSSHSig
	}
	out.sig = ssh.Signature{Format: string(format), Blob: blob}
	return out, nil
}

// readString reads an SSH string: a uint32 length and that many bytes.
func readString(s *cryptobyte.String, out *[]byte) bool {
	var n uint32
	return s.ReadUint32(&n) && s.ReadBytes(out, int(n))
}

// sshsigVerify checks an SSH signature over stdin with k: the signature
// must be by k (the same public key), in the namespace asked for, with a
// signature scheme that fits k (never SHA-1 RSA), and the daemon must
// find the signature good over the signed data.
func sshsigVerify(e *env, f *flags, k *keywarden.Key, namespace, sigFile string) error {
	armored, err := readSmallFile(sigFile, maxSSHSig)
	if err != nil {
		return err
	}
	sig, err := parseSSHSig(armored)
	if err != nil {
		return err
	}
	pub, err := sshPublicKey(k.Info())
	if err != nil {
		return err
	}
	notVerified := func(why string) error {
		return verified(e, f, fmt.Errorf("%w: %s", keywarden.ErrVerification, why))
	}
	if !bytes.Equal(sig.publicKey, pub.Marshal()) {
		return notVerified("the signature is by another key")
	}
	if sig.namespace != namespace {
		return notVerified(fmt.Sprintf("the signature is for namespace %q", sig.namespace))
	}
	format, opts := sshsigScheme(k.Type())
	raw := sig.sig.Blob
	switch {
	case format == ssh.KeyAlgoRSASHA512 && sig.sig.Format == ssh.KeyAlgoRSASHA256:
		opts.Hash = crypto.SHA256
	case sig.sig.Format != format:
		return notVerified(fmt.Sprintf("the signature's scheme %q does not fit the key", sig.sig.Format))
	}
	if format == ssh.KeyAlgoECDSA256 || format == ssh.KeyAlgoECDSA384 {
		if raw, err = ecdsaSSHToDER(raw); err != nil {
			return notVerified("malformed ECDSA signature")
		}
	}
	digest, err := hashInput(sig.hashName, e.stdin)
	if err != nil {
		return err
	}
	ctx, cancel := signContext(f)
	defer cancel()
	blob := sshsigSignedData(namespace, sig.hashName, digest)
	return verified(e, f, k.Verify(ctx, blob, raw, opts))
}

// readSmallFile reads a file of at most limit bytes.
func readSmallFile(name string, limit int64) ([]byte, error) {
	file, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	b, err := io.ReadAll(io.LimitReader(file, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, limit)
	}
	return b, nil
}

// ecdsaDERToSSH turns an ASN.1 ECDSA signature into SSH's: the mpints r
// and s.
func ecdsaDERToSSH(der []byte) ([]byte, error) {
	var rs struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &rs); err != nil || len(rest) != 0 {
		return nil, errors.New("malformed ECDSA signature from the daemon")
	}
	return ssh.Marshal(rs), nil
}

// ecdsaSSHToDER turns SSH's ECDSA signature (mpints r and s) into ASN.1.
func ecdsaSSHToDER(blob []byte) ([]byte, error) {
	var rs struct{ R, S *big.Int }
	if err := ssh.Unmarshal(blob, &rs); err != nil {
		return nil, err
	}
	if rs.R.Sign() <= 0 || rs.S.Sign() <= 0 {
		return nil, errors.New("malformed ECDSA signature")
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1BigInt(rs.R)
		b.AddASN1BigInt(rs.S)
	})
	return b.Bytes()
}
