package keywarden

import (
	"context"
	"time"

	"github.com/keywarden/keywarden/internal/wire"
)

// SSHCertType is the type of an OpenSSH certificate.
type SSHCertType int

const (
	// SSHUserCert certifies a user's key, for sshd's TrustedUserCAKeys.
	SSHUserCert SSHCertType = 1
	// SSHHostCert certifies a host's key, for ssh's @cert-authority.
	SSHHostCert SSHCertType = 2
)

// SSHOption is a critical option or an extension of an SSH certificate:
// a name and a value (empty for flags such as permit-pty).
type SSHOption struct{ Name, Value string }

// SSHDefaultExtensions are the extensions ssh-keygen gives a user
// certificate unless told otherwise.
var SSHDefaultExtensions = []SSHOption{
	{Name: "permit-X11-forwarding"},
	{Name: "permit-agent-forwarding"},
	{Name: "permit-port-forwarding"},
	{Name: "permit-pty"},
	{Name: "permit-user-rc"},
}

// SSHCertRequest is what an SSH certificate says about its key.
type SSHCertRequest struct {
	Type SSHCertType
	// Principals: at least one; user names, or host names.
	Principals []string
	// The certificate is valid from ValidAfter (the zero time: since
	// always) until ValidBefore. A zero ValidBefore is refused unless
	// NoExpiry is set: a certificate that never expires is asked for.
	ValidAfter, ValidBefore time.Time
	NoExpiry                bool
	// Serial is the certificate's serial number; nil lets the daemon pick
	// a random one.
	Serial *uint64
	// KeyID names the certificate in sshd's log.
	KeyID string
	// CriticalOptions and Extensions apply to user certificates. The
	// daemon takes them as given: SSHDefaultExtensions are ssh-keygen's.
	CriticalOptions, Extensions []SSHOption
}

// SSHCertify has the daemon issue an OpenSSH certificate for pub (a
// public key in SSH wire format: ssh.PublicKey.Marshal), signed by k as
// the certificate authority (RSA keys sign with rsa-sha2-512). It
// returns the certificate in SSH wire format, which
// golang.org/x/crypto/ssh.ParsePublicKey reads. k needs sign usage; the
// audit log records the certificate's serial, principals and validity.
func (k *Key) SSHCertify(ctx context.Context, pub []byte, r SSHCertRequest) ([]byte, error) {
	c := &wire.SshCertify{Handle: k.handle, PublicKey: pub, Principals: r.Principals, Serial: r.Serial, KeyId: r.KeyID}
	switch r.Type {
	case SSHUserCert:
		c.CertType = wire.SshCertType_SSH_CERT_TYPE_USER
	case SSHHostCert:
		c.CertType = wire.SshCertType_SSH_CERT_TYPE_HOST
	default:
		return nil, argError("ssh-certify", "certificate type must be SSHUserCert or SSHHostCert")
	}
	if !r.ValidAfter.IsZero() {
		if r.ValidAfter.Unix() < 0 {
			return nil, argError("ssh-certify", "ValidAfter before 1970")
		}
		c.ValidAfter = uint64(r.ValidAfter.Unix())
	}
	switch {
	case r.NoExpiry && !r.ValidBefore.IsZero():
		return nil, argError("ssh-certify", "NoExpiry with a ValidBefore")
	case r.NoExpiry:
		c.ValidBefore = 1<<64 - 1
	case r.ValidBefore.IsZero():
		return nil, argError("ssh-certify", "no ValidBefore: set it, or NoExpiry for a certificate that never expires")
	case r.ValidBefore.Unix() <= 0:
		return nil, argError("ssh-certify", "ValidBefore before 1970")
	default:
		c.ValidBefore = uint64(r.ValidBefore.Unix())
	}
	for _, o := range r.CriticalOptions {
		c.CriticalOptions = append(c.CriticalOptions, &wire.SshCertOption{Name: o.Name, Value: o.Value})
	}
	for _, o := range r.Extensions {
		c.Extensions = append(c.Extensions, &wire.SshCertOption{Name: o.Name, Value: o.Value})
	}
	return k.c.doData(ctx, "ssh-certify", &wire.Op{Op: &wire.Op_SshCertify{SshCertify: c}})
}
