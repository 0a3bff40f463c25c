package sshagent

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"strconv"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/ssh"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/wire"
)

// listed is a key a listing offered: a persistent key of the core's, or
// one added with ssh-add.
type listed struct {
	pub     ssh.PublicKey
	comment string
	typ     wire.KeyType
	id      []byte // persistent key id; nil for an added key
	added   *added
}

// do runs one operation on ss for id, through the core, and returns its
// result, or an error for a request refused as a whole or an operation
// that failed (with its status; the audit log has the precise reason).
func (c *conn) do(ss *server.Session, id server.Identity, op *wire.Op) (*wire.Result, error) {
	return c.run(ss, id, &wire.Request{Version: wire.ProtocolVersion, Id: c.reqID(), Ops: []*wire.Op{op}})
}

// run is do for a request of one operation that the caller made.
func (c *conn) run(ss *server.Session, id server.Identity, req *wire.Request) (*wire.Result, error) {
	rep, err := ss.Do(c.a.ctx, id, req)
	if err != nil {
		return nil, err
	}
	if rep.Status != wire.Status_STATUS_OK {
		return nil, fmt.Errorf("%s: %s", rep.Status, rep.Message)
	}
	if len(rep.Results) != 1 {
		return nil, errors.New("no result")
	}
	r := rep.Results[0]
	if r.Status != wire.Status_STATUS_OK {
		return nil, fmt.Errorf("%s: %s", r.Status, r.Message)
	}
	return r, nil
}

// sshTypes are the key types with an SSH form.
func sshType(t wire.KeyType) bool {
	switch t {
	case wire.KeyType_KEY_TYPE_ED25519, wire.KeyType_KEY_TYPE_ECDSA_P256, wire.KeyType_KEY_TYPE_ECDSA_P384,
		wire.KeyType_KEY_TYPE_RSA_2048, wire.KeyType_KEY_TYPE_RSA_3072, wire.KeyType_KEY_TYPE_RSA_4096:
		return true
	}
	return false
}

// keys lists what the connection's client may use: the persistent keys
// marked for SSH that its uid may sign with (the core's list, filtered),
// then the keys its uid added with ssh-add that its session bindings
// allow. A persistent key is opened on the connection's session the first
// time it is listed (in one batch), which gives its public key and the
// handle it signs with.
func (c *conn) keys() ([]listed, error) {
	var out []listed
	var after []byte
	id := c.ident()
	var toOpen []*wire.KeyInfo
	for {
		r, err := c.do(c.ss, id, &wire.Op{Op: &wire.Op_List{List: &wire.List{After: after}}})
		if err != nil {
			return nil, err
		}
		l := r.GetList()
		for _, info := range l.GetKeys() {
			if !info.GetLifecycle().GetSsh() || info.CallerUsage&uint32(wire.Usage_USAGE_SIGN) == 0 ||
				info.Class != wire.KeyClass_KEY_CLASS_PRIVATE || !sshType(info.Type) {
				continue
			}
			if _, ok := c.opened[string(info.Id)]; !ok && len(c.opened)+len(toOpen) < maxHandles {
				toOpen = append(toOpen, info)
			}
			comment := info.Name
			if info.OwnerUid != c.id.UID {
				comment = strconv.FormatUint(uint64(info.OwnerUid), 10) + ":" + info.Name
			}
			out = append(out, listed{comment: comment, typ: info.Type, id: info.Id})
		}
		if len(l.GetNext()) == 0 {
			break
		}
		after = l.Next
	}
	if err := c.open(toOpen); err != nil {
		return nil, err
	}
	keep := out[:0]
	for _, k := range out {
		if o, ok := c.opened[string(k.id)]; ok {
			k.pub = o.pub
			keep = append(keep, k)
		}
	}
	out = keep
	for _, k := range c.u.addedKeys() {
		if c.permitted(k, "") == nil {
			out = append(out, listed{pub: k.pub, comment: k.comment, typ: k.typ, added: k})
		}
	}
	c.listed = make(map[string]listed, len(out))
	for _, k := range out {
		c.listed[string(k.pub.Marshal())] = k
	}
	return out, nil
}

// openedKey is a persistent key open on the connection's session.
type openedKey struct {
	handle uint32
	pub    ssh.PublicKey
}

// openBatch is how many keys one request opens.
const openBatch = 64

// open opens infos' keys on the connection's session, in batches; a key
// the core refuses to open is left out.
func (c *conn) open(infos []*wire.KeyInfo) error {
	for len(infos) > 0 {
		n := min(len(infos), openBatch)
		req := &wire.Request{Version: wire.ProtocolVersion, Id: c.reqID()}
		for _, info := range infos[:n] {
			req.Ops = append(req.Ops, &wire.Op{Op: &wire.Op_Open{Open: &wire.Open{Key: &wire.Open_Id{Id: info.Id}}}})
		}
		rep, err := c.ss.Do(c.a.ctx, c.ident(), req)
		if err != nil {
			return err
		}
		if rep.Status != wire.Status_STATUS_OK {
			return fmt.Errorf("%s: %s", rep.Status, rep.Message)
		}
		for i, res := range rep.Results {
			if res == nil || res.Status != wire.Status_STATUS_OK || i >= n {
				continue
			}
			kr := res.GetKey()
			pub, err := sshPublic(kr.GetInfo().GetPublicKey())
			if err != nil {
				c.a.log.Warn("key left out of the listing: its public key is unreadable", "key", fmt.Sprintf("%x", infos[i].Id), "err", err)
				continue
			}
			c.opened[string(infos[i].Id)] = openedKey{handle: kr.GetHandle(), pub: pub}
		}
		infos = infos[n:]
	}
	return nil
}

func sshPublic(spki []byte) (ssh.PublicKey, error) {
	pub, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		return nil, err
	}
	return ssh.NewPublicKey(pub)
}

// identities answers SSH2_AGENTC_REQUEST_IDENTITIES.
func (c *conn) identities() []byte {
	ks, err := c.keys()
	if err != nil {
		c.a.log.Info("listing refused", "uid", c.id.UID, "pid", c.id.PID, "err", err)
		return replyFailure
	}
	var b cryptobyte.Builder
	b.AddUint8(msgIdentitiesAnswer)
	b.AddUint32(uint32(len(ks)))
	for _, k := range ks {
		addString(&b, k.pub.Marshal())
		addString(&b, []byte(k.comment))
	}
	return b.BytesOrPanic()
}

// sign answers SSH2_AGENTC_SIGN_REQUEST: the key is found among those the
// client may list, and signs through the core (one request, one audit
// record naming the client and, if it bound the connection, the host).
// What the agent refuses itself (an unknown key, a SHA-1 signature, a
// destination or a confirmation refused) is recorded through the core
// too, before the failure is sent.
func (c *conn) sign(body []byte) []byte {
	s := cryptobyte.String(body)
	var blob, data []byte
	var flags uint32
	if !readString(&s, &blob) || !readString(&s, &data) || !s.ReadUint32(&flags) || !s.Empty() {
		return c.refuse("sign", nil, wire.Status_STATUS_INVALID_ARGUMENT, "malformed sign request")
	}
	k, ok := c.listed[string(blob)]
	if !ok {
		if _, err := c.keys(); err != nil {
			// Refused by the core, which recorded it.
			c.a.log.Info("sign refused: the keys could not be listed", "uid", c.id.UID, "pid", c.id.PID, "err", err)
			return replyFailure
		}
		if k, ok = c.listed[string(blob)]; !ok {
			return c.refuse("sign", nil, wire.Status_STATUS_NOT_FOUND, "no such key for this user"+fingerprintOf(blob))
		}
	}
	kid := k.keyID()
	format, op, err := signOp(&c.signReq.sg, k.typ, data, flags)
	if err != nil {
		return c.refuseErr("sign", kid, err)
	}
	var res *wire.Result
	if k.added != nil {
		if err := c.checkDestination(k.added, data); err != nil {
			return c.refuse("sign", kid, wire.Status_STATUS_PERMISSION_DENIED, "ssh-add -h: "+err.Error())
		}
		if k.added.confirm {
			if err := c.confirm(k.added); err != nil {
				return c.refuse("sign", kid, wire.Status_STATUS_PERMISSION_DENIED, "ssh-add -c: "+err.Error())
			}
		}
		// The confirmation may have waited long: another connection of
		// the uid may have locked the agent meanwhile (ssh-add -x).
		if c.u.isLocked() {
			return c.refuse("sign", kid, wire.Status_STATUS_PERMISSION_DENIED, "the agent was locked while the use of the key was being confirmed")
		}
		op.Handle = k.added.handle
		res, err = c.run(k.added.ss, c.viaIdent(), c.signReq.request(c.reqID(), op))
		if errors.Is(err, server.ErrSessionClosed) {
			// Removed (ssh-add -d, -D, -t) since it was listed: the core
			// recorded nothing.
			return c.refuse("sign", kid, wire.Status_STATUS_NOT_FOUND, "the key was removed before it could sign")
		}
	} else {
		o, ok := c.opened[string(k.id)]
		if !ok {
			return c.refuse("sign", kid, wire.Status_STATUS_INTERNAL, "the key is not open on the connection")
		}
		op.Handle = o.handle
		res, err = c.run(c.ss, c.ident(), c.signReq.request(c.reqID(), op))
	}
	if err != nil {
		// Refused by the core, which recorded it.
		c.a.log.Info("sign refused", "uid", c.id.UID, "pid", c.id.PID, "key", ssh.FingerprintSHA256(k.pub), "reason", err)
		return replyFailure
	}
	sig := res.Data
	if k.typ == wire.KeyType_KEY_TYPE_ECDSA_P256 || k.typ == wire.KeyType_KEY_TYPE_ECDSA_P384 {
		if sig, err = ecdsaDERToSSH(sig); err != nil {
			c.a.log.Error("sign failed", "err", err)
			return replyFailure
		}
	}
	return appendSignResponse(c.out, format, sig)
}

// appendSignResponse appends SSH2_AGENT_SIGN_RESPONSE with the signature
// (format, blob) to b: the signature as ssh.Marshal makes an
// ssh.Signature, as a string.
func appendSignResponse(b []byte, format string, blob []byte) []byte {
	b = append(b, msgSignResponse)
	b = binary.BigEndian.AppendUint32(b, uint32(4+len(format)+4+len(blob)))
	b = binary.BigEndian.AppendUint32(b, uint32(len(format)))
	b = append(b, format...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(blob)))
	return append(b, blob...)
}

// signRequest is a connection's request of one signature to the core,
// reused from one signature to the next: the core keeps no part of a
// request, and the connection makes one at a time.
type signRequest struct {
	req  wire.Request
	ops  [1]*wire.Op
	o    wire.Op
	sign wire.Op_Sign
	sg   wire.Sign
}

// request returns the request, numbered id, of the signature sg asks for.
func (r *signRequest) request(id uint64, sg *wire.Sign) *wire.Request {
	r.sign.Sign = sg
	r.o.Reset()
	r.o.Op = &r.sign
	r.ops[0] = &r.o
	r.req.Reset()
	r.req.Version, r.req.Id, r.req.Ops = wire.ProtocolVersion, id, r.ops[:]
	return &r.req
}

// keyID is k's persistent id, for the audit log.
func (k *listed) keyID() []byte {
	if k.added != nil {
		return k.added.id
	}
	return k.id
}

// fingerprintOf is ": " and the SHA-256 fingerprint of the public key
// blob, or "" if it is not one.
func fingerprintOf(blob []byte) string {
	pub, err := ssh.ParsePublicKey(bytes.Clone(blob))
	if err != nil {
		return ""
	}
	return ": " + ssh.FingerprintSHA256(pub)
}

// signOp fills sg with the core's sign operation (without its handle) that makes
// an SSH signature of data with a key of type t, and the signature's
// format. RSA signs with SHA-256 or SHA-512, as the flags ask; a request
// for an SHA-1 signature (ssh-rsa, no flag) is refused.
func signOp(sg *wire.Sign, t wire.KeyType, data []byte, flags uint32) (string, *wire.Sign, error) {
	sg.Reset()
	sg.Data = data
	switch t {
	case wire.KeyType_KEY_TYPE_ED25519:
		return ssh.KeyAlgoED25519, sg, nil
	case wire.KeyType_KEY_TYPE_ECDSA_P256:
		sg.Hash = wire.HashAlg_HASH_ALG_SHA256
		return ssh.KeyAlgoECDSA256, sg, nil
	case wire.KeyType_KEY_TYPE_ECDSA_P384:
		sg.Hash = wire.HashAlg_HASH_ALG_SHA384
		return ssh.KeyAlgoECDSA384, sg, nil
	}
	sg.Padding = wire.Padding_PADDING_PKCS1V15
	switch {
	case flags&flagRSASHA512 != 0:
		sg.Hash = wire.HashAlg_HASH_ALG_SHA512
		return ssh.KeyAlgoRSASHA512, sg, nil
	case flags&flagRSASHA256 != 0:
		sg.Hash = wire.HashAlg_HASH_ALG_SHA256
		return ssh.KeyAlgoRSASHA256, sg, nil
	}
	return "", nil, refusedf(wire.Status_STATUS_POLICY_VIOLATION,
		"an ssh-rsa (SHA-1) signature was asked for: only rsa-sha2-256 and rsa-sha2-512 are made")
}

// maxHandles bounds the keys a connection opens.
const maxHandles = 256

// ecdsaDERToSSH turns an ASN.1 ECDSA signature into SSH's: the mpints r
// and s.
func ecdsaDERToSSH(der []byte) ([]byte, error) {
	var rs struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &rs); err != nil || len(rest) != 0 {
		return nil, errors.New("malformed ECDSA signature from the core")
	}
	return ssh.Marshal(rs), nil
}
