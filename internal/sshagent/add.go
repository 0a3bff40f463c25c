package sshagent

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/ssh"

	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/wire"
)

// user is what the agent keeps for one uid: the keys it added with
// ssh-add, and its lock. Every connection of the uid shares it.
type user struct {
	uid uint32

	// mu guards the fields below; never held across a request to the core
	// (added keys are taken out of the list before they are destroyed).
	mu    sync.Mutex
	added []*added
	// The lock (ssh-add -x): the passphrase is kept only as an HMAC under
	// a random salt, drawn when locking. locked is changed under mu, and
	// read without it by every message (isLocked).
	locked   atomic.Bool
	lockSalt [32]byte
	lockMAC  [32]byte
	failures int // unlocks refused since the last that succeeded
}

// added is a key given by ssh-add: an ephemeral key of a core session of
// its own (ss), which destroys it when closed.
type added struct {
	ss      *server.Session
	handle  uint32
	id      []byte // the key's id in the core, for the audit log
	pub     ssh.PublicKey
	typ     wire.KeyType
	comment string
	confirm bool
	dests   []destConstraint
	expiry  *time.Timer // nil: no lifetime
}

func (u *user) isLocked() bool { return u.locked.Load() }

func (u *user) addedKeys() []*added {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.added)
}

// take removes the key whose public blob is blob from the list.
func (u *user) take(blob []byte) *added {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i, k := range u.added {
		if string(k.pub.Marshal()) == string(blob) {
			u.added = slices.Delete(u.added, i, i+1)
			return k
		}
	}
	return nil
}

// drop ends k's session, which destroys its key.
func (k *added) drop() {
	if k.expiry != nil {
		k.expiry.Stop()
	}
	k.ss.Close()
}

// removeAll destroys every key the uid added.
func (u *user) removeAll() int {
	u.mu.Lock()
	ks := u.added
	u.added = nil
	u.mu.Unlock()
	for _, k := range ks {
		k.drop()
	}
	return len(ks)
}

// add answers SSH2_AGENTC_ADD_IDENTITY and ADD_ID_CONSTRAINED: the
// private key is imported into the core, as a non-exportable ephemeral key
// owned by the caller's uid, on a session of its own that lives as long
// as the key may.
func (c *conn) add(body []byte, constrained bool) []byte {
	s := cryptobyte.String(body)
	pkcs8, typ, pub, err := readPrivateKey(&s)
	defer clear(pkcs8)
	if err != nil {
		return c.refuseErr("import", nil, err)
	}
	fp := ssh.FingerprintSHA256(pub)
	var comment []byte
	if !readString(&s, &comment) {
		return c.refuse("import", nil, wire.Status_STATUS_INVALID_ARGUMENT, "malformed message: the comment of "+fp)
	}
	k := &added{pub: pub, typ: typ, comment: string(comment)}
	var life uint32
	if constrained {
		if life, err = readConstraints(&s, k); err != nil {
			return c.refuseErr("import", nil, fmt.Errorf("%s: %w", fp, err))
		}
	}
	if !s.Empty() {
		return c.refuse("import", nil, wire.Status_STATUS_INVALID_ARGUMENT, "malformed message: trailing data after "+fp)
	}
	if k.confirm && *c.a.askpass.Load() == "" {
		return c.refuse("import", nil, wire.Status_STATUS_UNIMPLEMENTED,
			"ssh-add -c of "+fp+": no confirmation program is configured (serve --ssh-askpass PROG)")
	}
	if old := c.u.take(pub.Marshal()); old != nil {
		old.drop() // added again: its constraints are the new ones
	}
	if n := len(c.u.addedKeys()); n >= c.a.cfg.MaxAddedPerUID {
		return c.refuse("import", nil, wire.Status_STATUS_RESOURCE_EXHAUSTED,
			fmt.Sprintf("%s: the user has added %d keys, the most the agent keeps", fp, n))
	}
	// The key's own session: opened for the uid by no process (its records
	// name the client of each request), closed when the key goes.
	ss, err := c.a.cfg.Server.NewSession(c.a.ctx, Front, server.Identity{UID: c.id.UID, GID: c.id.GID, Pidfd: -1})
	if err != nil {
		c.a.log.Warn("ssh-add refused by the core", "uid", c.id.UID, "pid", c.id.PID, "err", err)
		return replyFailure
	}
	r, err := c.do(ss, c.viaIdent(), &wire.Op{Op: &wire.Op_Import{Import: &wire.Import{
		Template: &wire.KeyTemplate{Name: "ssh-add", Type: typ, Usage: uint32(wire.Usage_USAGE_SIGN | wire.Usage_USAGE_VERIFY), Ephemeral: true},
		Format:   wire.KeyFormat_KEY_FORMAT_PKCS8_DER, Data: pkcs8}}})
	if err != nil {
		ss.Close()
		c.a.log.Info("ssh-add refused by the core", "uid", c.id.UID, "pid", c.id.PID, "err", err)
		return replyFailure
	}
	k.ss, k.handle, k.id = ss, r.GetKey().GetHandle(), r.GetKey().GetInfo().GetId()
	u := c.u
	// The count is checked again, and the key published with its timer,
	// under the lock: connections of one uid adding at once stay within
	// the bound, and a removal from another connection always finds the
	// timer it must stop.
	u.mu.Lock()
	if n := len(u.added); n >= c.a.cfg.MaxAddedPerUID {
		u.mu.Unlock()
		ss.Close()
		return c.refuse("import", nil, wire.Status_STATUS_RESOURCE_EXHAUSTED,
			fmt.Sprintf("%s: the user has added %d keys, the most the agent keeps", fp, n))
	}
	if life > 0 {
		a, gid := c.a, c.id.GID
		k.expiry = time.AfterFunc(time.Duration(life)*time.Second, func() {
			if u.take(k.pub.Marshal()) != k {
				return // removed already
			}
			// The end of its lifetime is recorded, for the uid (no process
			// asked), on the key's own session before it closes: the audit
			// log says when a key ssh-add gave stopped signing.
			err := k.ss.Record(a.ctx, server.Identity{UID: u.uid, GID: gid, Pidfd: -1}, server.Refusal{
				Op: "destroy", Key: k.id, Status: wire.Status_STATUS_OK,
				Reason: fmt.Sprintf("ssh-add -t: the lifetime of %d s of %s ended: the key is destroyed", life, ssh.FingerprintSHA256(k.pub))})
			k.drop()
			if err != nil {
				a.log.Error("the end of an added key's lifetime could not be recorded", "uid", u.uid, "key", ssh.FingerprintSHA256(k.pub), "err", err)
			}
			a.log.Info("key added with a lifetime expired", "uid", u.uid, "key", ssh.FingerprintSHA256(k.pub))
		})
	}
	u.added = append(u.added, k)
	u.mu.Unlock()
	c.a.log.Info("key added", "uid", c.id.UID, "pid", c.id.PID, "key", ssh.FingerprintSHA256(pub), "type", typ.String(),
		"lifetime_seconds", life, "confirm", k.confirm, "destination_constraints", len(k.dests))
	return replySuccess
}

// readConstraints reads the constraints of ADD_ID_CONSTRAINED into k and
// returns its lifetime in seconds (0: none).
func readConstraints(s *cryptobyte.String, k *added) (life uint32, err error) {
	seen := map[uint8]bool{}
	for !s.Empty() {
		var t uint8
		if !s.ReadUint8(&t) {
			return 0, errors.New("malformed constraint")
		}
		if seen[t] && t != constrainExtension {
			return 0, fmt.Errorf("constraint %d given twice", t)
		}
		seen[t] = true
		switch t {
		case constrainLifetime:
			if !s.ReadUint32(&life) {
				return 0, errors.New("malformed lifetime")
			}
		case constrainConfirm:
			k.confirm = true
		case constrainExtension:
			var name []byte
			if !readString(s, &name) {
				return 0, errors.New("malformed constraint extension")
			}
			if string(name) != "restrict-destination-v00@openssh.com" {
				return 0, refusedf(wire.Status_STATUS_UNIMPLEMENTED, "unsupported constraint %q", name)
			}
			if k.dests != nil {
				return 0, errors.New("destination constraints given twice")
			}
			var all []byte
			if !readString(s, &all) {
				return 0, errors.New("malformed destination constraints")
			}
			if k.dests, err = readDestConstraints(all); err != nil {
				return 0, err
			}
		default:
			// Including maxsign, which only FIDO/XMSS keys have.
			return 0, refusedf(wire.Status_STATUS_UNIMPLEMENTED, "unsupported constraint %d", t)
		}
	}
	return life, nil
}

// remove answers SSH2_AGENTC_REMOVE_IDENTITY (ssh-add -d): only a key
// the uid added through the agent is removed; a key of the store is
// destroyed with keywarden key destroy, never by ssh-add.
func (c *conn) remove(body []byte) []byte {
	s := cryptobyte.String(body)
	var blob []byte
	if !readString(&s, &blob) || !s.Empty() {
		return c.refuse("destroy", nil, wire.Status_STATUS_INVALID_ARGUMENT, "malformed remove request")
	}
	k := c.u.take(blob)
	if k == nil {
		var kid []byte
		if l, ok := c.listed[string(blob)]; ok {
			kid = l.keyID()
		}
		return c.refuse("destroy", kid, wire.Status_STATUS_NOT_FOUND,
			"ssh-add -d: the key was not added through the agent (keywarden key destroy removes a stored key)"+fingerprintOf(blob))
	}
	// Destroyed through the core, so that the removal has its record.
	if _, err := c.do(k.ss, c.viaIdent(), &wire.Op{Op: &wire.Op_Destroy{Destroy: &wire.Destroy{Handle: k.handle}}}); err != nil {
		c.a.log.Warn("destroying a removed key failed; it dies with its session", "uid", c.id.UID, "err", err)
	}
	k.drop()
	c.a.log.Info("key removed", "uid", c.id.UID, "pid", c.id.PID, "key", ssh.FingerprintSHA256(k.pub))
	return replySuccess
}

// removeAll answers SSH2_AGENTC_REMOVE_ALL_IDENTITIES (ssh-add -D): every
// key the uid added through the agent, and only those.
func (c *conn) removeAll() []byte {
	for _, k := range c.u.addedKeys() {
		if c.u.take(k.pub.Marshal()) != k {
			continue
		}
		if _, err := c.do(k.ss, c.viaIdent(), &wire.Op{Op: &wire.Op_Destroy{Destroy: &wire.Destroy{Handle: k.handle}}}); err != nil {
			c.a.log.Warn("destroying a removed key failed; it dies with its session", "uid", c.id.UID, "err", err)
		}
		k.drop()
	}
	c.a.log.Info("keys added through the agent removed", "uid", c.id.UID, "pid", c.id.PID)
	return replySuccess
}

// lock answers SSH_AGENTC_LOCK and UNLOCK (ssh-add -x, -X) for the uid's
// every connection. A wrong passphrase delays the reply a little more
// each time, up to 10 seconds, as ssh-agent does.
func (c *conn) lock(body []byte, lock bool) []byte {
	op := "unlock"
	if lock {
		op = "lock"
	}
	s := cryptobyte.String(body)
	var pass []byte
	if !readString(&s, &pass) || !s.Empty() || len(pass) == 0 {
		return c.refuse(op, nil, wire.Status_STATUS_INVALID_ARGUMENT, "malformed message, or an empty passphrase")
	}
	u := c.u
	u.mu.Lock()
	switch {
	case lock && !u.locked.Load():
		if err := random.Read(u.lockSalt[:]); err != nil {
			u.mu.Unlock()
			c.a.log.Error("agent lock refused: no random salt", "err", err)
			return c.refuse(op, nil, wire.Status_STATUS_INTERNAL, "no random salt for the lock")
		}
		u.lockMAC = lockMAC(u.lockSalt[:], pass)
		u.locked.Store(true)
		u.mu.Unlock()
		c.a.log.Info("agent locked", "uid", c.id.UID, "pid", c.id.PID)
		return c.done(op, nil, "the agent is locked for this uid")
	case !lock && u.locked.Load():
		m := lockMAC(u.lockSalt[:], pass)
		if subtle.ConstantTimeCompare(m[:], u.lockMAC[:]) == 1 {
			u.locked.Store(false)
			u.failures = 0
			clear(u.lockMAC[:])
			u.mu.Unlock()
			c.a.log.Info("agent unlocked", "uid", c.id.UID, "pid", c.id.PID)
			return c.done(op, nil, "the agent is unlocked for this uid")
		}
		u.failures = min(u.failures+1, 100)
		n, delay := u.failures, unlockDelay(u.failures)
		u.mu.Unlock()
		reply := c.refuse(op, nil, wire.Status_STATUS_PERMISSION_DENIED,
			fmt.Sprintf("wrong passphrase (%d since the last unlock; the reply waits %s)", n, delay))
		time.Sleep(delay)
		return reply
	}
	u.mu.Unlock()
	if lock {
		return c.refuse(op, nil, wire.Status_STATUS_INVALID_ARGUMENT, "the agent is already locked")
	}
	return c.refuse(op, nil, wire.Status_STATUS_INVALID_ARGUMENT, "the agent is not locked")
}

// unlockDelay is how long the reply to the n-th wrong unlock passphrase
// in a row waits: 0.1 s more each time, at most 10 s.
func unlockDelay(n int) time.Duration {
	return time.Duration(min(n, 100)) * 100 * time.Millisecond
}

func lockMAC(salt, pass []byte) [32]byte {
	m := hmac.New(sha256.New, salt)
	m.Write(pass)
	var out [32]byte
	m.Sum(out[:0])
	return out
}

// readPrivateKey reads a private key in the agent's form (the key type's
// fields, as sshkey_private_serialize writes them) and returns it as
// PKCS #8 DER, with its type and public key. Ed25519, ECDSA P-256 and
// P-384, and RSA keys of 2048, 3072 and 4096 bits are taken;
// certificates and other types are refused.
func readPrivateKey(s *cryptobyte.String) (pkcs8 []byte, typ wire.KeyType, pub ssh.PublicKey, err error) {
	var name []byte
	if !readString(s, &name) {
		return nil, 0, nil, errors.New("malformed key")
	}
	var priv any
	switch string(name) {
	case ssh.KeyAlgoED25519:
		var pk, sk []byte
		if !readString(s, &pk) || !readString(s, &sk) || len(pk) != ed25519.PublicKeySize || len(sk) != ed25519.PrivateKeySize ||
			subtle.ConstantTimeCompare(sk[32:], pk) != 1 {
			return nil, 0, nil, errors.New("malformed Ed25519 key")
		}
		k := ed25519.NewKeyFromSeed(sk[:32])
		defer clear(k)
		if subtle.ConstantTimeCompare(k[32:], pk) != 1 {
			return nil, 0, nil, errors.New("the Ed25519 key's public half does not match its seed")
		}
		priv, typ = k, wire.KeyType_KEY_TYPE_ED25519
	case ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384:
		var curveName, q, d []byte
		if !readString(s, &curveName) || !readString(s, &q) || !readString(s, &d) {
			return nil, 0, nil, errors.New("malformed ECDSA key")
		}
		curve, size := elliptic.P256(), 32
		typ = wire.KeyType_KEY_TYPE_ECDSA_P256
		if string(name) == ssh.KeyAlgoECDSA384 {
			curve, size, typ = elliptic.P384(), 48, wire.KeyType_KEY_TYPE_ECDSA_P384
		}
		if string(curveName) != "nistp"+fmt.Sprint(curve.Params().BitSize) {
			return nil, 0, nil, errors.New("malformed ECDSA key: curve")
		}
		// d is an mpint: at most one leading zero byte, no sign bit.
		for len(d) > size && d[0] == 0 {
			d = d[1:]
		}
		if len(d) > size || len(d) > 0 && d[0]&0x80 != 0 && len(d) == size+1 {
			return nil, 0, nil, errors.New("malformed ECDSA key: scalar")
		}
		raw := make([]byte, size)
		copy(raw[size-len(d):], d)
		defer clear(raw)
		k, err := ecdsa.ParseRawPrivateKey(curve, raw)
		if err != nil {
			return nil, 0, nil, errors.New("malformed ECDSA key: scalar")
		}
		qk, err := k.PublicKey.Bytes()
		if err != nil || subtle.ConstantTimeCompare(qk, q) != 1 {
			return nil, 0, nil, errors.New("the ECDSA key's public point does not match its scalar")
		}
		priv = k
	case ssh.KeyAlgoRSA:
		var n, e, d, iqmp, p, q *big.Int
		if !readMPInt(s, &n) || !readMPInt(s, &e) || !readMPInt(s, &d) || !readMPInt(s, &iqmp) || !readMPInt(s, &p) || !readMPInt(s, &q) {
			return nil, 0, nil, errors.New("malformed RSA key")
		}
		switch n.BitLen() {
		case 2048:
			typ = wire.KeyType_KEY_TYPE_RSA_2048
		case 3072:
			typ = wire.KeyType_KEY_TYPE_RSA_3072
		case 4096:
			typ = wire.KeyType_KEY_TYPE_RSA_4096
		default:
			return nil, 0, nil, refusedf(wire.Status_STATUS_UNIMPLEMENTED, "RSA keys of %d bits are not keywarden types (2048, 3072 and 4096 are)", n.BitLen())
		}
		if !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
			return nil, 0, nil, errors.New("malformed RSA key: exponent")
		}
		k := &rsa.PrivateKey{PublicKey: rsa.PublicKey{N: n, E: int(e.Int64())}, D: d, Primes: []*big.Int{p, q}}
		if err := k.Validate(); err != nil {
			return nil, 0, nil, errors.New("inconsistent RSA key")
		}
		k.Precompute()
		priv = k
	default:
		return nil, 0, nil, refusedf(wire.Status_STATUS_UNIMPLEMENTED, "keys of type %q are not taken (Ed25519, ECDSA P-256 and P-384, and RSA are)", name)
	}
	pkcs8, err = x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, 0, nil, errors.New("the key could not be converted")
	}
	pub, err = ssh.NewPublicKey(priv.(interface{ Public() crypto.PublicKey }).Public())
	if err != nil {
		clear(pkcs8)
		return nil, 0, nil, err
	}
	return pkcs8, typ, pub, nil
}
