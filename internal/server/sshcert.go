package server

import (
	"crypto/x509"
	"encoding/binary"
	"errors"

	"golang.org/x/crypto/ssh"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/sshcert"
	"github.com/keywarden/keywarden/internal/wire"
)

// SSH certificates (docs/ssh.md, "A certificate authority"): the daemon
// issues them, so that the authority's key never leaves it and the audit
// record of each request carries what each certificate says
// (sshCertsOf).

// sshCertifyBound bounds an issued certificate with its result: the subject
// key and the authority's (RSA, 4 KiB each at most), the signature, and
// the fields, which come from the request.
func sshCertifyBound(op *wire.Op, _ int) int {
	return boundSmall + 3*sshcert.MaxSubjectLen + 1024 + op.GetSshCertify().SizeVT()
}

func (ss *Session) opSSHCertify(c *wire.SshCertify, id Identity) (*wire.Result, error) {
	o, err := ss.authorized(c.Handle, id, policy.Use, key.Sign)
	if err != nil {
		return nil, err
	}
	params, ok := sshSignParams(o.Spec.Family)
	if !ok {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "an SSH certificate authority is an Ed25519, ECDSA or RSA key").
			WithDetail("a %s key", o.Spec.Name)
	}
	subject, err := sshcert.ParseSubject(c.PublicKey)
	if err != nil {
		return nil, invalidCert(err)
	}
	req := sshcert.Request{
		Type:        sshCertType(c.CertType),
		KeyID:       c.KeyId,
		Principals:  c.Principals,
		ValidAfter:  c.ValidAfter,
		ValidBefore: c.ValidBefore,
	}
	for _, opt := range c.CriticalOptions {
		req.CriticalOptions = append(req.CriticalOptions, sshcert.Option{Name: opt.Name, Value: opt.Value})
	}
	for _, opt := range c.Extensions {
		req.Extensions = append(req.Extensions, sshcert.Option{Name: opt.Name, Value: opt.Value})
	}
	if err := req.Check(); err != nil {
		return nil, invalidCert(err)
	}
	if c.Serial != nil {
		req.Serial = *c.Serial
	} else {
		var b [8]byte
		if err := random.Read(b[:]); err != nil {
			return nil, err
		}
		req.Serial = binary.BigEndian.Uint64(b[:])
	}
	v, err := ss.current(o)
	if err != nil {
		return nil, err
	}
	var cert *ssh.Certificate
	err = o.UseVersion(v, func(m *mech.Key) error {
		ca, err := x509.ParsePKIXPublicKey(m.PublicDER())
		if err != nil {
			return wire.Errorf(wire.Status_STATUS_INTERNAL, "internal error").WithDetail("the authority's public key: %v", err)
		}
		sign := func(msg []byte) ([]byte, error) { return m.Sign(params, msg) }
		cert, err = sshcert.Issue(subject, &req, ca, sign, random.Reader)
		return err
	})
	if err != nil {
		var we *wire.Error
		if errors.As(err, &we) {
			return nil, err
		}
		if errors.Is(err, sshcert.ErrInvalid) {
			return nil, invalidCert(err)
		}
		return nil, wire.Errorf(wire.Status_STATUS_INTERNAL, "internal error").WithDetail("issuing an SSH certificate: %v", err)
	}
	return &wire.Result{Data: cert.Marshal(), KeyVersion: v.N}, nil
}

func invalidCert(err error) error {
	return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "invalid SSH certificate request").WithDetail("%v", err)
}

// sshSignParams is how an authority of a family signs a certificate: pure
// Ed25519, ECDSA over the curve's hash (SHA-256 for P-256, SHA-384 for
// P-384: mech's default), RSA PKCS #1 v1.5 over SHA-512 (rsa-sha2-512).
func sshSignParams(f key.Family) (mech.SignParams, bool) {
	switch f {
	case key.FamilyEd25519, key.FamilyECDSA:
		return mech.SignParams{}, true
	case key.FamilyRSA:
		return mech.SignParams{Hash: wire.HashAlg_HASH_ALG_SHA512, Padding: wire.Padding_PADDING_PKCS1V15}, true
	}
	return mech.SignParams{}, false
}

func sshCertType(t wire.SshCertType) uint32 {
	switch t {
	case wire.SshCertType_SSH_CERT_TYPE_USER:
		return ssh.UserCert
	case wire.SshCertType_SSH_CERT_TYPE_HOST:
		return ssh.HostCert
	}
	return 0
}

// sshCertsOf appends to r what the certificates that req's operations
// issued say, read back from their results.
func sshCertsOf(r *audit.Record, req *wire.Request, rep *wire.Reply) {
	for i, op := range req.Ops {
		if _, ok := op.GetOp().(*wire.Op_SshCertify); !ok || i >= len(rep.Results) {
			continue
		}
		res := rep.Results[i]
		if res == nil || res.Status != wire.Status_STATUS_OK {
			continue
		}
		k, err := ssh.ParsePublicKey(res.Data)
		cert, ok := k.(*ssh.Certificate)
		if err != nil || !ok {
			// Not reached: the data is the certificate the daemon made.
			r.SSHCerts = append(r.SSHCerts, audit.SSHCert{Type: "unreadable"})
			continue
		}
		r.SSHCerts = append(r.SSHCerts, audit.SSHCert{
			Type:        sshcert.TypeName(cert.CertType),
			Serial:      cert.Serial,
			KeyID:       cert.KeyId,
			Principals:  cert.ValidPrincipals,
			ValidAfter:  cert.ValidAfter,
			ValidBefore: cert.ValidBefore,
			Key:         sshcert.Fingerprint(cert.Key),
		})
	}
}

// sshCertSize bounds the size of c in the log.
func sshCertSize(c *audit.SSHCert) int {
	n := len(`{"type":,"serial":,"principals":[],"valid_after":,"valid_before":,"key":},`) + jsonLen(c.Type) + 3*20 +
		strFieldLen("key_id", c.KeyID) + jsonLen(c.Key)
	for _, p := range c.Principals {
		n += jsonLen(p) + 1
	}
	return n
}
