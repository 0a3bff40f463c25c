package sshcert

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"math/big"
	"slices"
	"strings"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
	"golang.org/x/crypto/ssh"
)

// Limits of a certificate's fields.
const (
	MaxPrincipals   = 256
	MaxPrincipalLen = 255
	MaxKeyIDLen     = 255
	MaxOptions      = 32
	MaxOptionLen    = 1024
	// MaxSubjectLen bounds the wire form of a key to certify: an RSA key
	// of 16384 bits is about 2 KiB.
	MaxSubjectLen = 4096
	// MinRSABits is the smallest RSA key certified.
	MinRSABits = 2048
)

// Forever is the ValidBefore of a certificate that never expires.
const Forever = ssh.CertTimeInfinity

// ErrInvalid is wrapped by every error about a request: the key to
// certify, the principals, the validity, the options.
var ErrInvalid = errors.New("invalid certificate request")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// ParseSubject parses the key to certify from its SSH wire form. It takes
// Ed25519, ECDSA (P-256, P-384, P-521), RSA keys of MinRSABits or more,
// and security keys (sk-ecdsa, sk-ed25519); it refuses certificates, DSA
// keys and trailing bytes.
func ParseSubject(b []byte) (ssh.PublicKey, error) {
	if len(b) == 0 {
		return nil, invalid("no public key to certify")
	}
	if len(b) > MaxSubjectLen {
		return nil, invalid("public key of %d bytes (at most %d)", len(b), MaxSubjectLen)
	}
	pub, err := ssh.ParsePublicKey(b)
	if err != nil {
		return nil, invalid("public key to certify: %v", err)
	}
	switch t := pub.Type(); t {
	case ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
		ssh.KeyAlgoSKECDSA256, ssh.KeyAlgoSKED25519:
	case ssh.KeyAlgoRSA:
		ck, ok := pub.(ssh.CryptoPublicKey)
		if !ok {
			return nil, invalid("public key to certify: unreadable RSA key")
		}
		rk, ok := ck.CryptoPublicKey().(*rsa.PublicKey)
		if !ok || rk.N.BitLen() < MinRSABits {
			return nil, invalid("RSA keys of fewer than %d bits are not certified", MinRSABits)
		}
	default:
		return nil, invalid("%s keys are not certified (Ed25519, ECDSA, RSA and security keys are)", t)
	}
	return pub, nil
}

// Option is a critical option or an extension.
type Option struct{ Name, Value string }

// Request is what a certificate says, besides its key and its authority.
type Request struct {
	// Type is ssh.UserCert or ssh.HostCert.
	Type       uint32
	Serial     uint64
	KeyID      string
	Principals []string
	// ValidAfter and ValidBefore are seconds since the Unix epoch;
	// ValidBefore Forever never expires.
	ValidAfter, ValidBefore uint64
	// CriticalOptions and Extensions: user certificates only.
	CriticalOptions, Extensions []Option
}

// Check validates r: a known type; 1 to MaxPrincipals principals, each
// 1 to MaxPrincipalLen bytes of printable text, none twice (a certificate
// without principals would be good for any name); a key id of at most
// MaxKeyIDLen bytes; ValidBefore later than ValidAfter; options only on
// user certificates, each name once.
func (r *Request) Check() error {
	if r.Type != ssh.UserCert && r.Type != ssh.HostCert {
		return invalid("certificate type must be user or host")
	}
	if len(r.Principals) == 0 {
		return invalid("a certificate names at least one principal")
	}
	if len(r.Principals) > MaxPrincipals {
		return invalid("%d principals (at most %d)", len(r.Principals), MaxPrincipals)
	}
	for i, p := range r.Principals {
		if err := printable("principal", p, MaxPrincipalLen); err != nil {
			return err
		}
		if p == "" {
			return invalid("empty principal")
		}
		if slices.Contains(r.Principals[:i], p) {
			return invalid("principal %q given twice", p)
		}
	}
	if err := printable("key id", r.KeyID, MaxKeyIDLen); err != nil {
		return err
	}
	if r.ValidBefore <= r.ValidAfter {
		return invalid("the validity ends before it begins")
	}
	if r.Type == ssh.HostCert && (len(r.CriticalOptions) > 0 || len(r.Extensions) > 0) {
		return invalid("host certificates have no critical options or extensions")
	}
	for _, set := range [][]Option{r.CriticalOptions, r.Extensions} {
		if len(set) > MaxOptions {
			return invalid("%d options (at most %d)", len(set), MaxOptions)
		}
		for i, o := range set {
			if o.Name == "" {
				return invalid("option without a name")
			}
			if err := printable("option name", o.Name, MaxOptionLen); err != nil {
				return err
			}
			if err := printable("option value", o.Value, MaxOptionLen); err != nil {
				return err
			}
			if slices.ContainsFunc(set[:i], func(p Option) bool { return p.Name == o.Name }) {
				return invalid("option %q given twice", o.Name)
			}
		}
	}
	return nil
}

func printable(what, s string, max int) error {
	if len(s) > max {
		return invalid("%s of %d bytes (at most %d)", what, len(s), max)
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return invalid("%s with a control character", what)
	}
	return nil
}

// SignFunc signs msg with the authority's key and returns the signature in
// the key's own form: 64 bytes of pure Ed25519; ECDSA, ASN.1 DER over
// SHA-256 (P-256) or SHA-384 (P-384); RSA, PKCS #1 v1.5 over SHA-512.
type SignFunc func(msg []byte) ([]byte, error)

// Issue makes the certificate r describes for subject, signed by the
// authority whose public key is ca through sign; rand gives its nonce.
func Issue(subject ssh.PublicKey, r *Request, ca crypto.PublicKey, sign SignFunc, rand io.Reader) (*ssh.Certificate, error) {
	if err := r.Check(); err != nil {
		return nil, err
	}
	s, err := newSigner(ca, sign)
	if err != nil {
		return nil, err
	}
	cert := &ssh.Certificate{
		Key:             subject,
		Serial:          r.Serial,
		CertType:        r.Type,
		KeyId:           r.KeyID,
		ValidPrincipals: slices.Clone(r.Principals),
		ValidAfter:      r.ValidAfter,
		ValidBefore:     r.ValidBefore,
		Permissions: ssh.Permissions{
			CriticalOptions: optionMap(r.CriticalOptions),
			Extensions:      optionMap(r.Extensions),
		},
	}
	if err := cert.SignCert(rand, s); err != nil {
		return nil, err
	}
	// Check what was made as a verifier would: the signature is the
	// authority's over these bytes.
	if err := s.pub.Verify(certSignedBytes(cert), cert.Signature); err != nil {
		return nil, fmt.Errorf("the certificate's signature does not verify: %w", err)
	}
	return cert, nil
}

func optionMap(opts []Option) map[string]string {
	if len(opts) == 0 {
		return nil
	}
	m := make(map[string]string, len(opts))
	for _, o := range opts {
		m[o.Name] = o.Value
	}
	return m
}

// certSignedBytes is the certificate's encoding up to its signature,
// the bytes the signature covers.
func certSignedBytes(c *ssh.Certificate) []byte {
	b := c.Marshal()
	// Marshal ends with the signature as a string; cut it off.
	sig := ssh.Marshal(c.Signature)
	return b[:len(b)-4-len(sig)]
}

// signer is an ssh.MultiAlgorithmSigner over a SignFunc, offering the one
// algorithm the authority signs with.
type signer struct {
	pub  ssh.PublicKey
	alg  string
	kind string // "ed25519", "ecdsa" or "rsa"
	sign SignFunc
}

var _ ssh.MultiAlgorithmSigner = (*signer)(nil)

func newSigner(ca crypto.PublicKey, sign SignFunc) (*signer, error) {
	pub, err := ssh.NewPublicKey(ca)
	if err != nil {
		return nil, invalid("the authority's key has no SSH form: %v", err)
	}
	s := &signer{pub: pub, sign: sign}
	switch k := ca.(type) {
	case ed25519.PublicKey:
		s.alg, s.kind = ssh.KeyAlgoED25519, "ed25519"
	case *ecdsa.PublicKey:
		if k.Curve.Params().BitSize > 384 {
			return nil, invalid("ECDSA P-521 authorities are not supported")
		}
		s.alg, s.kind = pub.Type(), "ecdsa"
	case *rsa.PublicKey:
		s.alg, s.kind = ssh.KeyAlgoRSASHA512, "rsa"
	default:
		return nil, invalid("a %T cannot be an SSH authority", ca)
	}
	return s, nil
}

func (s *signer) PublicKey() ssh.PublicKey { return s.pub }
func (s *signer) Algorithms() []string     { return []string{s.alg} }

func (s *signer) Sign(rand io.Reader, data []byte) (*ssh.Signature, error) {
	return s.SignWithAlgorithm(rand, data, s.alg)
}

func (s *signer) SignWithAlgorithm(_ io.Reader, data []byte, alg string) (*ssh.Signature, error) {
	if alg != s.alg {
		return nil, fmt.Errorf("sshcert: the authority signs with %s, not %s", s.alg, alg)
	}
	raw, err := s.sign(data)
	if err != nil {
		return nil, err
	}
	blob := raw
	if s.kind == "ecdsa" {
		if blob, err = ecdsaBlob(raw); err != nil {
			return nil, err
		}
	}
	return &ssh.Signature{Format: s.alg, Blob: blob}, nil
}

// ecdsaBlob turns an ASN.1 ECDSA signature into SSH's: r and s as mpints.
func ecdsaBlob(der []byte) ([]byte, error) {
	var r, s big.Int
	in := cryptobyte.String(der)
	var seq cryptobyte.String
	if !in.ReadASN1(&seq, asn1.SEQUENCE) || !in.Empty() ||
		!seq.ReadASN1Integer(&r) || !seq.ReadASN1Integer(&s) || !seq.Empty() {
		return nil, errors.New("sshcert: malformed ECDSA signature")
	}
	return ssh.Marshal(struct{ R, S *big.Int }{&r, &s}), nil
}

// Fingerprint is a key's SHA-256 fingerprint as ssh-keygen -l prints it.
func Fingerprint(k ssh.PublicKey) string { return ssh.FingerprintSHA256(k) }

// TypeName is "user" or "host".
func TypeName(t uint32) string {
	if t == ssh.HostCert {
		return "host"
	}
	return "user"
}
