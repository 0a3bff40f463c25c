package audit

import (
	"bufio"
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"math"
	"os"
	"slices"
	"strings"
)

// VerifyOptions say what a verifier knows besides the log.
type VerifyOptions struct {
	// PublicKeys are the checkpoint keys the verifier trusts, obtained
	// independently of the log (the daemon publishes its key). Without
	// any, checkpoints are checked against the keys the log itself
	// states, which proves only that the log is consistent: whoever can
	// write the log could have made it up whole.
	PublicKeys []ed25519.PublicKey
	// Keys, if given (the daemon verifying its own log), also check the
	// MAC of every record written under them; their public keys are
	// trusted too.
	Keys []*Keys
	// Expect lists checkpoints published earlier (Log.OnCheckpoint): the
	// log must contain each. One the log ends before means its tail was
	// cut. One that is exactly the record the log given continues from
	// (the seq before its first record, and its first segment's prev)
	// vouches for its start: the files before it were archived.
	Expect []Checkpoint
	// RequireClosed: the log must end with the final checkpoint of a
	// clean Close (for the logs of a daemon that is not running). The
	// unsigned audit-close event of a log closed without keys counts only
	// in a log that has never had keys, with no pinned key.
	RequireClosed bool
}

// Input is one file of a log.
type Input struct {
	Name string
	R    io.Reader
}

// Problem is the first thing wrong with a log.
type Problem struct {
	File        string
	Line        int    // 1-based; 0 for a problem at the end of the log
	Seq         uint64 // the record's seq, if known
	Reason      string
	MissingTail bool // records are missing at the end of the log
}

func (p *Problem) Error() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	if p.Seq > 0 {
		fmt.Fprintf(&b, " (seq %d)", p.Seq)
	}
	b.WriteString(": ")
	b.WriteString(p.Reason)
	return b.String()
}

// FileReport summarizes one file.
type FileReport struct {
	Name              string
	FirstSeq, LastSeq uint64
	Records           uint64
	TornBytes         int64
}

// Report is what Verify found.
type Report struct {
	Intact  bool
	Problem *Problem // the first problem, when not Intact
	Files   []FileReport

	Records           uint64
	FirstSeq, LastSeq uint64
	LastHash          [32]byte
	Checkpoints       int
	LastCheckpoint    uint64 // seq of the last checkpoint, 0 if none
	// Pinned: the verifier was given keys to trust.
	Pinned bool
	// TrustedThrough is the last seq covered by a checkpoint signed with a
	// trusted key: every record up to it is authentic.
	TrustedThrough uint64
	SigningKeys    []ed25519.PublicKey // the keys that signed checkpoints
	MACsChecked    uint64              // records whose MAC was verified
	Unkeyed        uint64              // records without a MAC (the daemon had no keys)
	Closed         bool                // the log ends with a clean close (see RequireClosed)
	TornBytes      int64               // an incomplete last line, ignored (a crash during a write)
	Warnings       []string
}

// VerifyFiles verifies the files of one log, in chain order: the order of
// the seq of their first records, whatever their names.
func VerifyFiles(paths []string, o VerifyOptions) (*Report, error) {
	type file struct {
		path  string
		first uint64
		f     *os.File
	}
	files := make([]file, 0, len(paths))
	defer func() {
		for _, f := range files {
			f.f.Close()
		}
	}()
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		first := uint64(math.MaxUint64)
		line, err := bufio.NewReaderSize(io.LimitReader(f, MaxLineBytes+1), 64<<10).ReadSlice('\n')
		if err == nil || err == bufio.ErrBufferFull || err == io.EOF {
			if r, perr := ParseRecord(line); perr == nil {
				first = r.Seq
			}
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			f.Close()
			return nil, err
		}
		files = append(files, file{p, first, f})
	}
	slices.SortStableFunc(files, func(a, b file) int {
		switch {
		case a.first < b.first:
			return -1
		case a.first > b.first:
			return 1
		}
		return 0
	})
	in := make([]Input, len(files))
	for i, f := range files {
		in[i] = Input{Name: f.path, R: f.f}
	}
	return Verify(in, o)
}

// verifier is the state of one verification.
type verifier struct {
	o       VerifyOptions
	rep     *Report
	trusted map[string]bool
	macKeys map[[8]byte]*Keys
	expect  map[uint64][32]byte
	found   map[uint64]bool

	started bool
	seq     uint64
	h       [32]byte
	keyed   bool
	pub     ed25519.PublicKey
	macID   [8]byte
	last    *Record
	d       hash.Hash

	// Where the record being checked is, for problems found later.
	name string
	line int
	// firstName and firstPrev: the file the log given begins with, and
	// the chain hash its first record continues from (zero: it starts a
	// chain).
	firstName string
	firstPrev [32]byte
	// everKeyed: the log has used keys (a keyed segment or a checkpoint),
	// so only a signed final checkpoint is a clean close.
	everKeyed bool
	// closedAt is the seq of the record just checked if it closed the log
	// (only a segment may follow it), else 0.
	closedAt uint64
	// unsigned is the last segment that changed the keys in use and that
	// no checkpoint has covered yet: a log that ends before one does is
	// not intact.
	unsigned *Problem
}

// Verify checks the files of one log in the order given, and reports the
// first problem: a line that is not a canonical record, a seq that does
// not follow (a record deleted, duplicated or moved), a chain hash that
// does not match (a record altered), a file that does not continue the
// one before, a MAC or checkpoint signature that does not verify, a
// checkpoint signed with a key that is not trusted, or, from
// VerifyOptions, a tail that was cut. An incomplete last line of the last
// file, which a crash during a write leaves, is reported in TornBytes but
// is not a problem. The error is for I/O failures only.
func Verify(files []Input, o VerifyOptions) (*Report, error) {
	v := &verifier{o: o, rep: &Report{}, trusted: map[string]bool{}, macKeys: map[[8]byte]*Keys{},
		expect: map[uint64][32]byte{}, found: map[uint64]bool{}, d: newDigest()}
	for _, k := range o.PublicKeys {
		v.trusted[string(k)] = true
	}
	for _, k := range o.Keys {
		v.trusted[string(k.pub)] = true
		v.macKeys[k.macID] = k
	}
	v.rep.Pinned = len(v.trusted) > 0
	for _, c := range o.Expect {
		v.expect[c.Seq] = c.Hash
	}
	for i, in := range files {
		p, err := v.file(in, i == len(files)-1)
		if err != nil {
			return nil, err
		}
		if p != nil {
			return v.fail(p), nil
		}
	}
	if p := v.end(files); p != nil {
		return v.fail(p), nil
	}
	v.rep.Intact = true
	v.warn()
	return v.rep, nil
}

func (v *verifier) fail(p *Problem) *Report {
	v.rep.Problem = p
	v.rep.Intact = false
	return v.rep
}

func (v *verifier) file(in Input, lastFile bool) (*Problem, error) {
	fr := FileReport{Name: in.Name}
	var prob *Problem
	err := scanLines(in.R, func(line []byte, n int) error {
		bad := func(seq uint64, format string, args ...any) error {
			prob = &Problem{File: in.Name, Line: n, Seq: seq, Reason: fmt.Sprintf(format, args...)}
			return errStop
		}
		if line[len(line)-1] != '\n' {
			if len(line) > MaxLineBytes {
				return bad(0, "a line longer than %d bytes", MaxLineBytes)
			}
			if lastFile {
				// Perhaps more follows; scanLines gives a line without a
				// newline only at the end of the input.
				fr.TornBytes = int64(len(line))
				v.rep.TornBytes = fr.TornBytes
				return nil
			}
			return bad(0, "an incomplete last line in a file that is not the last of the log")
		}
		line = line[:len(line)-1]
		r, err := ParseRecord(line)
		if err != nil {
			return bad(0, "%v", err)
		}
		v.name, v.line = in.Name, n
		if reason := v.record(line, r, n == 1); reason != "" {
			return bad(r.Seq, "%s", reason)
		}
		if fr.Records == 0 {
			fr.FirstSeq = r.Seq
		}
		fr.LastSeq = r.Seq
		fr.Records++
		return nil
	})
	if err != nil && err != errStop {
		return nil, fmt.Errorf("%s: %w", in.Name, err)
	}
	if prob == nil && fr.Records == 0 && fr.TornBytes == 0 {
		if lastFile {
			// What a crash right after a rotation leaves.
			v.rep.Warnings = append(v.rep.Warnings, in.Name+" is empty")
		} else {
			prob = &Problem{File: in.Name, Reason: "the file holds no record"}
		}
	}
	v.rep.Files = append(v.rep.Files, fr)
	return prob, nil
}

// record checks one record against the state of the chain, and advances
// it. It returns what is wrong, or "".
func (v *verifier) record(line []byte, r *Record, firstOfFile bool) string {
	if firstOfFile && r.Kind != KindSegment {
		return "the file does not begin with a segment record"
	}
	prefix, signed := rawParts(line, r)
	if !v.started {
		if r.Kind != KindSegment {
			return "the log does not begin with a segment record"
		}
		if r.Seq == 0 {
			return "seq 0"
		}
		if r.Seq == 1 && r.Segment.Prev != ([32]byte{}) {
			return "the first record of the log does not start a chain"
		}
		if r.Seq > 1 {
			v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf(
				"the log given starts at seq %d: the records before it were not checked", r.Seq))
		}
		v.started = true
		v.seq, v.h = r.Seq-1, r.Segment.Prev
		v.rep.FirstSeq = r.Seq
		v.firstName, v.firstPrev = v.name, r.Segment.Prev
	}
	switch {
	case r.Seq == v.seq+1:
	case r.Seq <= v.seq:
		return fmt.Sprintf("seq %d comes after seq %d: a record is duplicated or out of order", r.Seq, v.seq)
	default:
		return fmt.Sprintf("seq %d follows seq %d: %s missing", r.Seq, v.seq, plural(r.Seq-v.seq-1, "record is", "records are"))
	}
	if r.Kind == KindSegment && r.Segment.Prev != v.h {
		if firstOfFile {
			return "the file does not continue the chain of the file before it"
		}
		return "the segment does not continue the chain"
	}
	if v.closedAt != 0 && r.Kind != KindSegment {
		return fmt.Sprintf("the log was closed at seq %d, and this record follows without a segment: records were appended to a closed log", v.closedAt)
	}
	if chainHashOf(v.d, &v.h, line[:prefix]) != r.Hash {
		return "the chain hash does not match: this record, or the chain before it, was altered"
	}

	// Keys and MACs.
	macID := v.macID
	switch r.Kind {
	case KindSegment:
		s := r.Segment
		keyed := s.PublicKey != nil
		if v.rep.Records > 0 && (keyed != v.keyed || keyed && (!s.PublicKey.Equal(v.pub) || s.MACKeyID != v.macID)) {
			// A segment that changes the keys in use counts only once a
			// checkpoint signed with a trusted key covers it.
			v.unsigned = &Problem{File: v.name, Line: v.line, Seq: r.Seq, Reason: keyChange(v.keyed, v.pub, keyed, s.PublicKey) +
				", and no checkpoint " + v.signedBy() + " follows it: the records from here on are not authenticated. " +
				"They were forged, or written by a daemon that has not had its keys since it started (sealed): " +
				"verify again once it has been unsealed"}
		}
		v.keyed = keyed
		v.everKeyed = v.everKeyed || keyed
		v.pub, v.macID = s.PublicKey, s.MACKeyID
		macID = v.macID
	case KindCheckpoint:
		c := r.Checkpoint
		if v.keyed && (!c.PublicKey.Equal(v.pub) || c.MACKeyID != v.macID) {
			return "the checkpoint names other keys than the log is using"
		}
		v.keyed, v.pub, v.macID = true, c.PublicKey, c.MACKeyID
		macID = v.macID
	}
	if r.HasMAC != v.keyed {
		if v.keyed {
			return "the record has no MAC although the log has keys"
		}
		return "the record has a MAC although the log has no keys"
	}
	if r.HasMAC {
		if k := v.macKeys[macID]; k != nil {
			if mac := k.macOf(&r.Hash); !macEqual(&mac, &r.MAC) {
				return "the MAC does not verify: the record was altered"
			}
			v.rep.MACsChecked++
		}
	} else {
		v.rep.Unkeyed++
	}

	if r.Kind == KindCheckpoint {
		c := r.Checkpoint
		if c.Upto != r.Seq-1 || c.UptoHash != v.h {
			return "the checkpoint does not cover the record before it"
		}
		if !verifyCheckpoint(c.PublicKey, line[:signed], c.Signature) {
			return "the checkpoint signature does not verify"
		}
		if v.rep.Pinned {
			if !v.trusted[string(c.PublicKey)] {
				return "the checkpoint is signed with a key that is not trusted"
			}
			v.rep.TrustedThrough = r.Seq
			if c.NextPublicKey != nil {
				v.trusted[string(c.NextPublicKey)] = true
			}
		}
		if !slices.ContainsFunc(v.rep.SigningKeys, func(k ed25519.PublicKey) bool { return k.Equal(c.PublicKey) }) {
			v.rep.SigningKeys = append(v.rep.SigningKeys, c.PublicKey)
		}
		v.rep.Checkpoints++
		v.rep.LastCheckpoint = r.Seq
		v.unsigned = nil
		v.everKeyed = true
		switch {
		case c.NextPublicKey != nil:
			v.pub, v.macID = c.NextPublicKey, c.NextMACKeyID
		case c.KeysOff:
			v.keyed, v.pub, v.macID = false, nil, [8]byte{}
		}
	}

	if want, ok := v.expect[r.Seq]; ok {
		if want != r.Hash {
			return "the record differs from the checkpoint published for this seq: the log was rewritten"
		}
		v.found[r.Seq] = true
	}
	v.seq, v.h, v.last = r.Seq, r.Hash, r
	v.rep.Records++
	v.rep.LastSeq, v.rep.LastHash = r.Seq, r.Hash
	// A clean close: the final checkpoint, signed; or, in a log that has
	// never had keys and whose verifier pins none, the audit-close event
	// of a daemon that never had them (nothing there is signed anyway).
	closing := (r.Kind == KindCheckpoint && r.Checkpoint.Final) || (r.Kind == KindEvent && r.Op == OpAuditClose)
	v.rep.Closed = closing && (r.Kind == KindCheckpoint || !v.everKeyed && !v.rep.Pinned)
	v.closedAt = 0
	if closing {
		v.closedAt = r.Seq
	}
	return ""
}

// end checks what only the end of the log tells.
func (v *verifier) end(files []Input) *Problem {
	name := ""
	if len(files) > 0 {
		name = files[len(files)-1].Name
	}
	if !v.started {
		return &Problem{File: name, Reason: "the log holds no record"}
	}
	// The head: a log whose first segment continues a chain (names a hash
	// before it) is a part of a longer log. Its earlier records were cut,
	// unless the verifier holds the checkpoint it continues from.
	headVouched := v.firstPrev == [32]byte{}
	if want, ok := v.expect[v.rep.FirstSeq-1]; ok && v.rep.FirstSeq > 1 {
		if want != v.firstPrev {
			return &Problem{File: v.firstName, Line: 1, Seq: v.rep.FirstSeq, Reason: fmt.Sprintf(
				"the log given does not continue the checkpoint published for seq %d: the log was rewritten", v.rep.FirstSeq-1)}
		}
		v.found[v.rep.FirstSeq-1] = true
		headVouched = true
	}
	var missing []uint64
	for seq := range v.expect {
		if !v.found[seq] {
			missing = append(missing, seq)
		}
	}
	slices.Sort(missing)
	for _, seq := range missing {
		if seq > v.seq {
			return &Problem{File: name, Seq: seq, MissingTail: true, Reason: fmt.Sprintf(
				"the log ends at seq %d, but a checkpoint at seq %d was published: its tail was cut", v.seq, seq)}
		}
		return &Problem{File: name, Seq: seq, Reason: fmt.Sprintf(
			"the published checkpoint at seq %d is not in the log given", seq)}
	}
	if !headVouched {
		return &Problem{File: v.firstName, Line: 1, Seq: v.rep.FirstSeq, Reason: fmt.Sprintf(
			"the log given starts at seq %d, in the middle of a chain (its first segment continues from a record "+
				"that is not given): records were cut from its head, or the files before it were archived. Give those "+
				"files too, or, with --expect, the last checkpoint before it, kept apart from the log", v.rep.FirstSeq)}
	}
	if v.unsigned != nil {
		return v.unsigned
	}
	if v.rep.Pinned && v.rep.TrustedThrough == 0 && v.rep.MACsChecked == 0 {
		// Nothing is vouched for: a log without a trusted key's checkpoint
		// (or a MAC the verifier could check) is one anybody could have
		// written.
		return &Problem{File: name, Reason: "no checkpoint in the log is signed with a trusted key, so nothing in it is " +
			"vouched for: it was written by another daemon, or by one that never had its keys, or forged; or the " +
			"daemon stopped before its first checkpoint (verify again once it has run)"}
	}
	if v.o.RequireClosed && !v.rep.Closed {
		if v.last.Kind == KindEvent && v.last.Op == OpAuditClose {
			return &Problem{File: name, Seq: v.seq, MissingTail: true, Reason: fmt.Sprintf(
				"the log ends at seq %d with an audit-close event, which is not signed: a log that has had keys "+
					"(or whose verifier pins a key) is closed only by a signed final checkpoint. Its tail was cut and "+
					"the close forged, or the daemon was stopped while sealed", v.seq)}
		}
		return &Problem{File: name, Seq: v.seq, MissingTail: true, Reason: fmt.Sprintf(
			"the log ends at seq %d without the final record of a clean close: its tail was cut, or the daemon is running or crashed", v.seq)}
	}
	return nil
}

// signedBy says which checkpoints count: with pinned keys, those signed
// with a trusted key.
func (v *verifier) signedBy() string {
	if v.rep.Pinned {
		return "signed with a trusted key"
	}
	return "signed with the keys the log states"
}

// keyChange describes a segment's change of the keys in use.
func keyChange(wasKeyed bool, was ed25519.PublicKey, keyed bool, now ed25519.PublicKey) string {
	name := func(on bool, k ed25519.PublicKey) string {
		if !on {
			return "none"
		}
		return hex.EncodeToString(k[:8]) + "…"
	}
	return "the segment changes the keys in use, from " + name(wasKeyed, was) + " to " + name(keyed, now)
}

func (v *verifier) warn() {
	r := v.rep
	if !r.Pinned {
		r.Warnings = append(r.Warnings, "no trusted public key given: the checkpoints were checked against the "+
			"keys the log states, which proves only that the log is consistent, not who wrote it")
	} else if r.TrustedThrough < r.LastSeq {
		what := "only the hash chain protects them"
		if len(v.macKeys) > 0 {
			what = "their MACs protect them"
		}
		r.Warnings = append(r.Warnings, fmt.Sprintf("%s after the last trusted checkpoint (seq %d): %s",
			plural(r.LastSeq-r.TrustedThrough, "record", "records"), r.TrustedThrough, what))
	}
	if r.Unkeyed > 0 {
		r.Warnings = append(r.Warnings, fmt.Sprintf("%s written while the daemon had no keys "+
			"(sealed): a later checkpoint, not a MAC, authenticates them", plural(r.Unkeyed, "record was", "records were")))
	}
	if r.TornBytes > 0 {
		r.Warnings = append(r.Warnings, fmt.Sprintf("the last %d bytes are an incomplete record, left by a crash during a write", r.TornBytes))
	}
	if !r.Closed {
		r.Warnings = append(r.Warnings, "the log does not end with a clean close: the daemon is running, "+
			"or crashed, or the tail was cut (only a published checkpoint tells)")
	}
}

func plural(n uint64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
