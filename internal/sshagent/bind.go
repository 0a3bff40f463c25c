package sshagent

import (
	"bytes"
	"errors"
	"fmt"
	"path"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/ssh"

	"github.com/keywarden/keywarden/internal/wire"
)

// OpenSSH's bounds on session bindings per connection and destination
// constraints per key.
const (
	maxBinds       = 16
	maxConstraints = 16
)

// bind is one session-bind@openssh.com: the host key a connection's
// client authenticated the server by, the SSH session id it signed, and
// whether the connection is an agent forwarded to that host.
type bind struct {
	key       ssh.PublicKey
	fp        string
	sid       []byte
	forwarded bool
}

// destConstraint is one restrict-destination-v00@openssh.com constraint
// (ssh-add -h): a key may be used from one hop (none: from here) to the
// next.
type destConstraint struct {
	from, to hop
}

type hop struct {
	user, host string
	keys       []ssh.PublicKey
	ca         []bool
}

// extension answers SSH_AGENTC_EXTENSION: session-bind@openssh.com only.
func (c *conn) extension(body []byte) []byte {
	s := cryptobyte.String(body)
	var name []byte
	if !readString(&s, &name) {
		return c.refuse("extension", nil, wire.Status_STATUS_INVALID_ARGUMENT, "malformed extension request")
	}
	if string(name) != "session-bind@openssh.com" {
		return c.refuse("extension", nil, wire.Status_STATUS_UNIMPLEMENTED, fmt.Sprintf("unsupported extension %q", name))
	}
	if err := c.sessionBind(&s); err != nil {
		return c.refuseErr("session-bind", nil, err)
	}
	return c.done("session-bind", nil, c.bindText())
}

// sessionBind checks and records a binding, as ssh-agent does: the host
// key's signature of the session id must verify, a connection bound for
// authentication takes no further binding, and a session id is bound to
// one host key only.
func (c *conn) sessionBind(s *cryptobyte.String) error {
	var keyBlob, sid, sigBlob []byte
	var fwd uint8
	if !readString(s, &keyBlob) || !readString(s, &sid) || !readString(s, &sigBlob) || !s.ReadUint8(&fwd) || !s.Empty() {
		return errors.New("malformed session-bind")
	}
	key, err := ssh.ParsePublicKey(bytes.Clone(keyBlob)) // the message is wiped once answered
	if err != nil {
		return fmt.Errorf("host key: %v", err)
	}
	var sig ssh.Signature
	if err := ssh.Unmarshal(sigBlob, &sig); err != nil {
		return errors.New("malformed host signature")
	}
	if err := key.Verify(sid, &sig); err != nil {
		return refusedf(wire.Status_STATUS_VERIFICATION_FAILED, "the host key's signature of the session id does not verify: %v", err)
	}
	// The fingerprint names the host key, as ssh-keygen -l and sshd do,
	// also when the host presented a certificate of it (whose own hash
	// would change at every reissue).
	fpKey := key
	if cert, ok := key.(*ssh.Certificate); ok {
		fpKey = cert.Key
	}
	fp := ssh.FingerprintSHA256(fpKey)
	for _, b := range c.binds {
		if !b.forwarded {
			return refusedf(wire.Status_STATUS_PERMISSION_DENIED, "the connection is already bound for an authentication")
		}
		if bytes.Equal(b.sid, sid) {
			if bytes.Equal(b.key.Marshal(), key.Marshal()) {
				return nil
			}
			return refusedf(wire.Status_STATUS_PERMISSION_DENIED, "the session id is bound to another host key")
		}
	}
	if len(c.binds) >= maxBinds {
		return refusedf(wire.Status_STATUS_RESOURCE_EXHAUSTED, "too many session bindings")
	}
	c.binds = append(c.binds, bind{key: key, fp: fp, sid: bytes.Clone(sid), forwarded: fwd != 0})
	c.a.log.Debug("session bound", "uid", c.id.UID, "pid", c.id.PID, "host_key", fp, "forwarded", fwd != 0)
	return nil
}

// readDestConstraints reads the body of restrict-destination-v00.
func readDestConstraints(b []byte) ([]destConstraint, error) {
	s := cryptobyte.String(b)
	var out []destConstraint
	for !s.Empty() {
		if len(out) >= maxConstraints {
			return nil, errors.New("too many destination constraints")
		}
		var one, from, to, ext []byte
		if !readString(&s, &one) {
			return nil, errors.New("malformed destination constraint")
		}
		cs := cryptobyte.String(one)
		if !readString(&cs, &from) || !readString(&cs, &to) || !readString(&cs, &ext) || !cs.Empty() {
			return nil, errors.New("malformed destination constraint")
		}
		if len(ext) != 0 {
			return nil, errors.New("destination constraint extensions are not supported")
		}
		var d destConstraint
		var err error
		if d.from, err = readHop(from); err != nil {
			return nil, err
		}
		if d.to, err = readHop(to); err != nil {
			return nil, err
		}
		if (d.from.host == "") != (len(d.from.keys) == 0) || d.from.user != "" {
			return nil, errors.New("inconsistent \"from\" in a destination constraint")
		}
		if d.to.host == "" || len(d.to.keys) == 0 {
			return nil, errors.New("incomplete \"to\" in a destination constraint")
		}
		out = append(out, d)
	}
	if len(out) == 0 {
		return nil, errors.New("empty destination constraints")
	}
	return out, nil
}

func readHop(b []byte) (hop, error) {
	s := cryptobyte.String(b)
	var user, host, ext []byte
	if !readString(&s, &user) || !readString(&s, &host) || !readString(&s, &ext) {
		return hop{}, errors.New("malformed destination hop")
	}
	if len(ext) != 0 {
		return hop{}, errors.New("destination hop extensions are not supported")
	}
	h := hop{user: string(user), host: string(host)}
	for !s.Empty() {
		var blob []byte
		var ca uint8
		if !readString(&s, &blob) || !s.ReadUint8(&ca) {
			return hop{}, errors.New("malformed destination hop key")
		}
		k, err := ssh.ParsePublicKey(bytes.Clone(blob))
		if err != nil {
			return hop{}, fmt.Errorf("destination hop key: %v", err)
		}
		h.keys, h.ca = append(h.keys, k), append(h.ca, ca != 0)
	}
	return h, nil
}

// matchKey reports whether key is one of h's keys. A CA entry (a host
// certificate's authority) never matches: this agent does not check host
// certificates, so a key constrained to a CA is usable for no host.
func (h *hop) matchKey(key ssh.PublicKey) bool {
	kb := key.Marshal()
	for i, k := range h.keys {
		if !h.ca[i] && bytes.Equal(k.Marshal(), kb) {
			return true
		}
	}
	return false
}

// permittedBy reports whether one of k's constraints allows a hop from
// from (nil: this machine) to to (nil: anywhere onward) as user ("": not
// a signature).
func (k *added) permittedBy(from, to ssh.PublicKey, user string) bool {
	for i := range k.dests {
		d := &k.dests[i]
		if from == nil {
			if d.from.host != "" || len(d.from.keys) != 0 {
				continue
			}
		} else if !d.from.matchKey(from) {
			continue
		}
		if to != nil && !d.to.matchKey(to) {
			continue
		}
		if d.to.user != "" && user != "" {
			if ok, _ := path.Match(d.to.user, user); !ok {
				continue
			}
		}
		return true
	}
	return false
}

// permitted checks the connection's bindings against k's destination
// constraints, as ssh-agent's identity_permitted does: every hop the
// bindings record must be allowed, the last one for user if this is a
// signature. A connection bound to no host is a local use, allowed.
func (c *conn) permitted(k *added, user string) error {
	if len(k.dests) == 0 || len(c.binds) == 0 {
		return nil
	}
	var from ssh.PublicKey
	for i, b := range c.binds {
		testUser := ""
		if i == len(c.binds)-1 {
			testUser = user
			if b.forwarded && user != "" {
				return errors.New("a signature was asked on a forwarding hop")
			}
		} else if !b.forwarded {
			return errors.New("forwarding through a connection bound for authentication")
		}
		if !k.permittedBy(from, b.key, testUser) {
			return fmt.Errorf("the destination constraints do not allow the host key %s", b.fp)
		}
		from = b.key
	}
	if last := c.binds[len(c.binds)-1]; last.forwarded && user == "" && !k.permittedBy(last.key, nil, "") {
		return errors.New("the key may be used at the host but not beyond it")
	}
	return nil
}

// checkDestination checks a signature by a destination-constrained key k
// of data: it must be a public key authentication for the session last
// bound, to a host and as a user k's constraints allow.
func (c *conn) checkDestination(k *added, data []byte) error {
	if len(k.dests) == 0 {
		return nil
	}
	if len(c.binds) == 0 {
		return errors.New("a destination-constrained key signs only on a connection bound to a host (session-bind)")
	}
	user, sid, hostKey, err := parseUserauth(data, k.pub)
	if err != nil {
		return fmt.Errorf("a destination-constrained key signs only SSH user authentications: %v", err)
	}
	if err := c.permitted(k, user); err != nil {
		return err
	}
	last := c.binds[len(c.binds)-1]
	if !bytes.Equal(sid, last.sid) {
		return errors.New("the authentication is not for the session last bound")
	}
	if len(c.binds) > 1 && hostKey == nil {
		return errors.New("a forwarded authentication names no host key")
	}
	if hostKey != nil && !bytes.Equal(hostKey.Marshal(), last.key.Marshal()) {
		return errors.New("the authentication names another host key than the session's")
	}
	return nil
}

// parseUserauth reads data as an SSH public key user authentication
// request (RFC 4252 section 7, or publickey-hostbound-v00) by key.
func parseUserauth(data []byte, key ssh.PublicKey) (user string, sid []byte, hostKey ssh.PublicKey, err error) {
	s := cryptobyte.String(data)
	var t, follows uint8
	var u, service, method, alg, blob []byte
	if !readString(&s, &sid) || len(sid) == 0 || !s.ReadUint8(&t) || !readString(&s, &u) || !readString(&s, &service) ||
		!readString(&s, &method) || !s.ReadUint8(&follows) || !readString(&s, &alg) || !readString(&s, &blob) {
		return "", nil, nil, errors.New("malformed")
	}
	if t != 50 || follows != 1 || string(service) != "ssh-connection" || !bytes.Equal(blob, key.Marshal()) {
		return "", nil, nil, errors.New("not a user authentication by this key")
	}
	switch string(method) {
	case "publickey-hostbound-v00@openssh.com":
		var hk []byte
		if !readString(&s, &hk) {
			return "", nil, nil, errors.New("malformed host key")
		}
		if hostKey, err = ssh.ParsePublicKey(bytes.Clone(hk)); err != nil {
			return "", nil, nil, err
		}
	case "publickey":
	default:
		return "", nil, nil, errors.New("not a public key authentication")
	}
	if !s.Empty() {
		return "", nil, nil, errors.New("trailing data")
	}
	return string(u), sid, hostKey, nil
}

// bindText says, for the audit log, what the connection's last binding
// bound it to.
func (c *conn) bindText() string {
	b := c.binds[len(c.binds)-1]
	if b.forwarded {
		return "bound to the host key " + b.fp + ", forwarded"
	}
	return "bound to the host key " + b.fp
}
