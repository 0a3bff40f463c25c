package server

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math"

	"strings"
	"sync"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/wire"
)

// Every request is recorded in the audit log (docs/audit.md) before its
// reply is sent: the caller as the kernel attested it for that message,
// read when the message arrived; each operation's key, version and
// status; the precise reason of a refusal. A request is refused with
// UNAVAILABLE, before anything is done, when the log cannot take records;
// and its results are withheld when its record cannot be written.

// auditNote is what one operation tells its audit record, beyond its
// status: filled while the operation runs.
type auditNote struct {
	key     audit.KeyID
	alg     string
	kv      uint32
	session uint32
	msg     string // the precise reason of a refusal or failure
	// likePrev: the operation is of the same run as the one before (same
	// kind, key and version); only its status may differ.
	likePrev bool
}

func (n *auditNote) setObject(o *keystore.Object) {
	n.key, n.alg = audit.KeyID(o.ID), o.Spec.Name
}

func (n *auditNote) setInfo(info *wire.KeyInfo) {
	if info == nil || len(info.Id) != len(n.key) {
		return
	}
	copy(n.key[:], info.Id)
	if s := key.Lookup(info.Type); s != nil {
		n.alg = s.Name
	}
	n.kv = info.Version
}

// setErr records why an operation failed: the detail the client does not
// get, where there is one, after the public reason.
func (n *auditNote) setErr(err error) {
	if n == nil || err == nil {
		return
	}
	var we *wire.Error
	switch {
	case errors.As(err, &we) && we.Detail != "" && we.Detail != we.Public:
		n.msg = we.Public + ": " + we.Detail
	case errors.As(err, &we):
		n.msg = we.Public
	default:
		n.msg = "internal error"
	}
}

// dataHandle returns the handle a data-path operation uses, found without
// reflection: these are the operations of most requests.
func dataHandle(op *wire.Op) (uint32, bool) {
	switch o := op.GetOp().(type) {
	case *wire.Op_Encrypt:
		return o.Encrypt.GetHandle(), true
	case *wire.Op_Decrypt:
		return o.Decrypt.GetHandle(), true
	case *wire.Op_Sign:
		return o.Sign.GetHandle(), true
	case *wire.Op_Verify:
		return o.Verify.GetHandle(), true
	case *wire.Op_Mac:
		return o.Mac.GetHandle(), true
	case *wire.Op_MacVerify:
		return o.MacVerify.GetHandle(), true
	}
	return 0, false
}

// noteBefore fills n with the key (and session) op names, before it runs:
// a key that the operation destroys is still there.
func (ss *Session) noteBefore(op *wire.Op, n *auditNote) {
	if h, ok := dataHandle(op); ok {
		if o, err := ss.object(h); err == nil {
			n.setObject(o)
		}
		return
	}
	r := rowOf(op)
	if r == nil {
		return
	}
	m := op.ProtoReflect().Get(r.field).Message()
	h := r.target
	if h == nil {
		h = r.handle
	}
	if h != nil {
		if o, err := ss.object(uint32(m.Get(h).Uint())); err == nil {
			n.setObject(o)
		}
	}
	if r.session != nil {
		n.session = uint32(m.Get(r.session).Uint())
		if sess, err := ss.session(n.session); err == nil && sess.obj != nil {
			n.setObject(sess.obj)
		}
	}
}

// noteAfter completes n from the operation's result: the key a creating
// operation made, the version used, the session opened.
func noteAfter(n *auditNote, res *wire.Result) {
	if res == nil {
		return
	}
	switch v := res.Value.(type) {
	case *wire.Result_Key:
		n.setInfo(v.Key.GetInfo())
	case *wire.Result_Info:
		if n.key.IsZero() {
			n.setInfo(v.Info)
		}
	case *wire.Result_Session:
		n.session = v.Session.GetSession()
	}
	if res.KeyVersion != 0 {
		n.kv = res.KeyVersion
	}
}

// noteOrigin says in n's message what a key made by a derivation or an
// unwrapping came from: the parent or unwrapping key (from, which
// noteBefore found) and, for a derivation, the key derivation function.
// The new key is the record's key; without this the log could not tell
// which key a derived key's bytes depend on, nor a raw ECDH secret from
// one passed through HKDF.
func noteOrigin(n *auditNote, op *wire.Op, res *wire.Result, from audit.KeyID) {
	if res == nil || res.Status != wire.Status_STATUS_OK || from.IsZero() || from == n.key {
		return
	}
	switch o := op.GetOp().(type) {
	case *wire.Op_Derive:
		n.msg = "derived from key " + hex.EncodeToString(from[:]) + " with " + deriveKDFName(o.Derive)
	case *wire.Op_Unwrap:
		n.msg = "unwrapped with key " + hex.EncodeToString(from[:])
	}
}

// deriveKDFName names d's key derivation function as the log writes it.
func deriveKDFName(d *wire.Derive) string {
	switch d.GetKdf() {
	case wire.DeriveKdf_DERIVE_KDF_NONE:
		return "the raw shared secret"
	case wire.DeriveKdf_DERIVE_KDF_X963:
		return "ANSI X9.63"
	default:
		return "HKDF"
	}
}

// callerOf is the audit's view of who sent a message: what the kernel
// attached to it, and what the resolver reads through its pidfd.
func (s *Server) callerOf(id Identity) audit.Caller {
	c := audit.Caller{PID: id.PID, UID: id.UID, GID: id.GID}
	if s.resolver != nil {
		s.resolver.Fill(&c, id.Pidfd)
	}
	return c
}

// errAuditDown is the reply to a request the audit log cannot take.
var errAuditDown = wire.Errorf(wire.Status_STATUS_UNAVAILABLE,
	"the audit log cannot be written: the daemon refuses every request until it can")

// errAuditLost replaces the results of a request whose record could not
// be written.
var errAuditLost = wire.Errorf(wire.Status_STATUS_UNAVAILABLE,
	"the audit log could not record this request: its results are withheld")

// auditRequest appends the record of req (reqBytes long), answered by
// rep. A non-nil error means the record is not in the log: the reply must
// not be sent.
func (ss *Session) auditRequest(req *wire.Request, rep *wire.Reply, caller *audit.Caller, notes []auditNote, reqBytes int) error {
	if isCombined(req, rep, notes) {
		recs := ss.requestRecords(nil, req, rep, caller, notes, reqBytes)
		defer func() {
			for _, r := range recs {
				putRecord(r)
			}
		}()
		for _, r := range recs {
			ss.spendAudit(r)
		}
		return ss.s.alog.AppendAll(recs)
	}
	r := ss.requestRecord(req, rep, caller, notes, reqBytes)
	defer putRecord(r)
	ss.spendAudit(r)
	return ss.s.alog.Append(r)
}

// maxCombinedRecords bounds the records one combined request makes: a
// larger one is recorded as a batch, so that no message makes more than
// this many records.
const maxCombinedRecords = 64

// isCombined reports whether req, answered by rep, is recorded one
// operation at a time (Request.combined).
func isCombined(req *wire.Request, rep *wire.Reply, notes []auditNote) bool {
	n := len(req.Ops)
	return req.Combined && n > 1 && n <= maxCombinedRecords && len(rep.Results) == n && len(notes) == n
}

// requestRecords appends the records of req to out: the one requestRecord
// makes or, for a combined request (isCombined), one for each operation,
// exactly the record of a request of that operation alone with req's id.
func (ss *Session) requestRecords(out []*audit.Record, req *wire.Request, rep *wire.Reply, caller *audit.Caller, notes []auditNote, reqBytes int) []*audit.Record {
	if !isCombined(req, rep, notes) {
		return append(out, ss.requestRecord(req, rep, caller, notes, reqBytes))
	}
	one := &wire.Request{Version: req.Version, Id: req.Id}
	oneRep := &wire.Reply{Version: rep.Version, Id: rep.Id, Status: rep.Status}
	var note [1]auditNote
	for i := range req.Ops {
		// An operation of a run alike its predecessor (likePrev) has
		// the key of the run's first only in that one's note.
		n := notes[i]
		if n.likePrev {
			p := &note[0]
			n.key, n.alg, n.kv, n.session = p.key, p.alg, p.kv, p.session
			n.likePrev = false
		}
		note[0] = n
		one.Ops, oneRep.Results = req.Ops[i:i+1], rep.Results[i:i+1]
		out = append(out, ss.requestRecord(one, oneRep, caller, note[:], req.Ops[i].SizeVT()))
	}
	return out
}

// spendAudit charges r's size to the uid of the connection (peruid.go).
func (ss *Session) spendAudit(r *audit.Record) {
	if !ss.acct.admin {
		ss.acct.spendAudit(recordSize(r))
	}
}

func putRecord(r *audit.Record) { r.Reset(); auditRecordPool.Put(r) }

// requestRecord builds the record of req, reqBytes long, answered by rep
// (putRecord returns it). Records are per request: a request of several
// operations is one "batch" record that lists them, in as many bytes as
// the request at most twice (or opsBudgetMin): operations alike in a row
// are one entry with a count, and the operations whose entries would not
// fit are summarised by kind and status in the record's message.
func (ss *Session) requestRecord(req *wire.Request, rep *wire.Reply, caller *audit.Caller, notes []auditNote, reqBytes int) *audit.Record {
	r := auditRecordPool.Get().(*audit.Record)
	r.Kind, r.Caller, r.Conn, r.Front, r.Request = audit.KindRequest, *caller, ss.id, ss.auditFront, req.Id
	r.Status = statusName(rep.Status)
	if len(req.Ops) == 1 && len(rep.Results) == 1 && len(notes) == 1 {
		n := &notes[0]
		r.Op = opName(req.Ops[0])
		r.Alg, r.Key, r.KeyVersion, r.Session, r.Msg = n.alg, n.key, n.kv, uint64(n.session), n.msg
		r.Status = statusName(rep.Results[0].Status)
	} else {
		r.Op = audit.OpBatch
		budget := max(2*reqBytes, opsBudgetMin) - summaryBytes
		size := 0
		var sum *opSummary
		for i, op := range req.Ops {
			if sum != nil {
				sum.add(opName(op), resultStatus(rep, i))
				continue
			}
			var e audit.OpEntry
			if i < len(notes) && notes[i].likePrev && len(r.Ops) > 0 && i < len(rep.Results) && rep.Results[i] != nil {
				// The common case of a batch, without building an entry.
				last := &r.Ops[len(r.Ops)-1]
				if st := rep.Results[i].Status; st == wire.Status_STATUS_OK && last.Status == "OK" && last.Count < math.MaxUint32 {
					last.Count = max(last.Count, 1) + 1
					continue
				}
				e = *last
				e.Status, e.Count = statusName(rep.Results[i].Status), 0
			} else {
				e = audit.OpEntry{Op: opName(op)}
				if i < len(notes) {
					n := &notes[i]
					e.Alg, e.Key, e.KeyVersion = n.alg, n.key, n.kv
				}
				e.Status = resultStatus(rep, i)
			}
			n := len(r.Ops)
			if k := n - 1; k >= 0 && r.Ops[k].Op == e.Op && r.Ops[k].Alg == e.Alg && r.Ops[k].Key == e.Key &&
				r.Ops[k].KeyVersion == e.KeyVersion && r.Ops[k].Status == e.Status {
				r.AddOp(e) // merged into the last entry: no new bytes
				continue
			}
			if es := entrySize(&e); size+es <= budget {
				r.AddOp(e)
				size += es
				continue
			}
			sum = &opSummary{from: i, total: len(req.Ops)}
			sum.add(e.Op, e.Status)
		}
		if sum != nil {
			r.Msg = sum.String()
		}
	}
	sshCertsOf(r, req, rep)
	return r
}

// resultStatus is the status of rep's i-th result as the log writes it.
func resultStatus(rep *wire.Reply, i int) string {
	if i < len(rep.Results) && rep.Results[i] != nil {
		return statusName(rep.Results[i].Status)
	}
	return ""
}

// opsBudgetMin is the room a batch record's entries always have, however
// small the request; summaryBytes bounds the message that summarises the
// operations after the entries that fit.
const (
	opsBudgetMin = 4 << 10
	summaryBytes = 1 << 10
)

// opSummary counts the operations of a batch, from the first whose entry
// did not fit, by kind and status.
type opSummary struct {
	from, total int
	kinds       []opCount
}

type opCount struct {
	op, status string
	n          int
}

// maxSummaryKinds bounds the kinds a summary names; the others are
// counted together.
const maxSummaryKinds = 12

func (s *opSummary) add(op, status string) {
	for i := range s.kinds {
		if k := &s.kinds[i]; k.op == op && k.status == status {
			k.n++
			return
		}
	}
	s.kinds = append(s.kinds, opCount{op, status, 1})
}

func (s *opSummary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "operations %d to %d not listed, the record being as large as its request allows:", s.from+1, s.total)
	rest := 0
	for i, k := range s.kinds {
		if i >= maxSummaryKinds {
			rest += k.n
			continue
		}
		fmt.Fprintf(&b, " %s %s %d,", k.op, k.status, k.n)
	}
	if rest > 0 {
		fmt.Fprintf(&b, " others %d,", rest)
	}
	return strings.TrimSuffix(b.String(), ",")
}

// Sizes of a record's encoding (package audit, encode.go), as upper
// bounds: what the per-uid audit allowance is charged, and what bounds a
// batch record.
const (
	// The header ({"v":1,"seq":…,"time":"…","mono":…,"kind":"request"),
	// the caller's numbers and flags, the numeric fields (conn, session,
	// request, kv), and the tail (chain hash, MAC, closing brace,
	// newline).
	recordFixedBytes = 118 + 95 + 106 + 146
	// An entry's ,"kv":<uint32> and ,"n":<uint32>.
	entryNumberBytes = 16 + 15
)

// jsonLen bounds the encoded length of s as a JSON string: quotes, escapes,
// and three bytes for every byte of a multi-byte or invalid sequence.
func jsonLen(s string) int {
	n := 2
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			n += 2
		case c < 0x20:
			n += 6
		case c >= 0x80:
			n += 3
		default:
			n++
		}
	}
	return n
}

// strFieldLen bounds ,"name":"value" (nothing when value is empty).
func strFieldLen(name, v string) int {
	if v == "" {
		return 0
	}
	return len(name) + 4 + jsonLen(v)
}

// entrySize bounds the encoding of one entry of a batch, with its comma
// and room for a count.
func entrySize(e *audit.OpEntry) int {
	n := len(`{"op":},`) + jsonLen(e.Op) + strFieldLen("alg", e.Alg) + strFieldLen("status", e.Status) + entryNumberBytes
	if !e.Key.IsZero() {
		n += 41 // ,"key":"<32 hex>"
	}
	return n
}

// recordSize bounds the size of r in the log.
func recordSize(r *audit.Record) int {
	c := &r.Caller
	n := recordFixedBytes + strFieldLen("op", r.Op) + strFieldLen("alg", r.Alg) + strFieldLen("status", r.Status) +
		strFieldLen("exe", c.Exe) + strFieldLen("exe_error", c.ExeError) + strFieldLen("cgroup", c.Cgroup) + strFieldLen("ssh_dest", c.SSHDest) + strFieldLen("principal", c.Principal) +
		strFieldLen("msg", r.Msg) + strFieldLen("front", r.Front)
	if !r.Key.IsZero() {
		n += 41
	}
	if len(r.Ops) > 0 {
		n += len(`,"ops":[]`)
	}
	for i := range r.Ops {
		n += entrySize(&r.Ops[i])
	}
	if len(r.SSHCerts) > 0 {
		n += len(`,"ssh_certs":[]`)
	}
	for i := range r.SSHCerts {
		n += sshCertSize(&r.SSHCerts[i])
	}
	return n
}

// createdHandles returns the handles of the keys that req's operations
// made (generate, import, derive, unwrap, derive_passphrase), nil if none.
func createdHandles(req *wire.Request, rep *wire.Reply) []uint32 {
	var hs []uint32
	for i, op := range req.Ops {
		if i >= len(rep.Results) || rep.Results[i] == nil || rep.Results[i].Status != wire.Status_STATUS_OK {
			continue
		}
		switch op.GetOp().(type) {
		case *wire.Op_Generate, *wire.Op_Import, *wire.Op_Derive, *wire.Op_Unwrap, *wire.Op_DerivePassphrase:
			if k := rep.Results[i].GetKey(); k != nil {
				hs = append(hs, k.Handle)
			}
		}
	}
	return hs
}

// undoHandles destroys the keys behind hs, made by a request that could
// not be recorded: no key exists that the log does not know of. (Other
// changes, such as a destruction or an attribute change, stand
// unrecorded; the log's reserve makes a failed record after a passed
// Ready rare.)
func (ss *Session) undoHandles(hs []uint32, id Identity, reqID uint64) {
	for _, h := range hs {
		if _, err := ss.destroy(h, id, true); err != nil {
			ss.log.Error("a key made by a request that could not be recorded could not be destroyed", "request", reqID, "err", err)
			continue
		}
		ss.log.Warn("destroyed a key made by a request that could not be recorded", "request", reqID)
	}
}

// auditRefusal records a request refused as a whole (malformed, over a
// limit, from a generation the machine has left). A non-nil error means
// the record is not in the log.
func (ss *Session) auditRefusal(caller *audit.Caller, reqID uint64, st wire.Status, public, detail string) error {
	r := auditRecordPool.Get().(*audit.Record)
	defer func() { r.Reset(); auditRecordPool.Put(r) }()
	r.Kind, r.Op, r.Conn, r.Front, r.Request, r.Status = audit.KindRequest, "request", ss.id, ss.auditFront, reqID, statusName(st)
	if caller != nil {
		r.Caller = *caller
	}
	r.Msg = public
	if detail != "" {
		r.Msg += ": " + detail
	}
	ss.spendAudit(r)
	return ss.s.alog.Append(r)
}

// auditFrontRefusal records r, a request its front refused (Refuse). A
// non-nil error means the record is not in the log.
func (ss *Session) auditFrontRefusal(caller *audit.Caller, r *Refusal) error {
	rec := auditRecordPool.Get().(*audit.Record)
	defer putRecord(rec)
	rec.Kind, rec.Op, rec.Conn, rec.Front, rec.Request = audit.KindRequest, r.Op, ss.id, ss.auditFront, r.Request
	rec.Status, rec.Caller, rec.Msg = statusName(r.Status), *caller, r.Reason
	copy(rec.Key[:], r.Key)
	ss.spendAudit(rec)
	return ss.s.alog.Append(rec)
}

var auditRecordPool = sync.Pool{New: func() any { return &audit.Record{Ops: make([]audit.OpEntry, 0, 8)} }}

// statusName is a status as the audit log writes it: "OK",
// "PERMISSION_DENIED", ...
func statusName(st wire.Status) string {
	if st == wire.Status_STATUS_OK {
		return "OK"
	}
	return strings.TrimPrefix(st.String(), "STATUS_")
}

// auditEvent records something the daemon did on its own (a generation
// change, a self-test failure).
func (s *Server) auditEvent(op, msg string) error { return s.RecordEvent(op, "", msg) }

// RecordEvent records in the audit log something the daemon did on its
// own: an unseal at start, a self-test failure. A nil error means it is in
// the log (or there is no log).
func (s *Server) RecordEvent(op, status, msg string) error {
	if s.alog == nil {
		return nil
	}
	return s.alog.Append(&audit.Record{Kind: audit.KindEvent, Op: op, Status: status, Msg: msg})
}

// SealAll seals the daemon: the master key and every key are wiped.
func (s *Server) SealAll() {
	s.store.SealAll()
	s.syncAuditKeys()
}

// syncAuditKeys gives the audit log the keys derived from the audit secret
// kept under the master key while the daemon is unsealed, and takes them
// back when it is sealed. It runs after every operation that can change
// the seal state.
func (s *Server) syncAuditKeys() {
	if s.alog == nil {
		return
	}
	s.auditMu.Lock()
	defer s.auditMu.Unlock()
	l, err := s.store.Lease()
	if err != nil {
		if s.auditKeyed {
			if err := s.alog.ClearKeys("keys-off"); err != nil {
				s.log.Error("audit log: cannot record that it drops its keys", "err", err)
				return
			}
			s.auditKeyed = false
		}
		return
	}
	defer l.Release()
	k := l.Keys()
	// The audit secret is the master key's generation's: a rotation
	// changes it, and the log starts a new key epoch (a rekey checkpoint,
	// signed with the old key, names the new one).
	epoch := auditEpoch(k)
	if s.auditKeyed && s.auditStore == epoch {
		return
	}
	ak, err := auditKeys(k)
	if err != nil {
		s.log.Error("audit log: cannot derive its keys; records carry no MAC", "err", err)
		return
	}
	if err := s.alog.SetKeys(ak); err != nil {
		s.log.Error("audit log: cannot take its keys", "err", err)
		ak.Destroy()
		return
	}
	s.auditKeyed, s.auditStore = true, epoch
	if s.cfg.AuditPublicKey != "" {
		if err := s.alog.PublishPublicKeys(s.cfg.AuditPublicKey); err != nil {
			s.log.Error("audit log: cannot publish its public key", "path", s.cfg.AuditPublicKey, "err", err)
		}
	}
	s.log.Info("audit log keyed: records carry MACs, checkpoints are signed",
		"public_key", hex.EncodeToString(ak.PublicKey()))
}

// auditEpoch names the audit secret of k: its store and master-key
// generation.
func auditEpoch(k *seal.Keys) string {
	return fmt.Sprintf("%x/%d", k.StoreID, k.Generation)
}

// auditKeys derives the audit log's keys from the master key's audit
// secret.
func auditKeys(k *seal.Keys) (*audit.Keys, error) {
	var ak *audit.Keys
	err := k.Audit.Canonical(func(b []byte) error {
		var err error
		ak, err = audit.DeriveKeys(b)
		return err
	})
	return ak, err
}

// auditStatus describes the audit log for Status.
func (s *Server) auditStatus() *wire.AuditStatus {
	if s.alog == nil {
		return nil
	}
	st := s.alog.Status()
	as := &wire.AuditStatus{
		Path: st.Path, Sync: st.Sync.String(), Healthy: st.Healthy && !st.LowSpace, Refused: st.Refused,
		Seq: st.Seq, FileBytes: uint64(st.FileBytes), Keyed: st.Keyed, PublicKey: st.PublicKey,
	}
	switch {
	case st.Err != nil:
		as.Error = st.Err.Error()
		as.FailedSinceUnixNano = st.FailedSince.UnixNano()
	case st.LowSpace:
		as.Error = "no room left on its file system for the reserve"
	}
	if st.LastCheckpoint.Seq != 0 {
		as.LastCheckpoint = st.LastCheckpoint.String()
	}
	if s.cfg.AuditLinux != nil {
		ls := s.cfg.AuditLinux()
		as.LinuxEnabled, as.LinuxReason, as.LinuxSent, as.LinuxDropped = ls.Enabled, ls.Reason, ls.Sent, ls.Dropped
	}
	return as
}
