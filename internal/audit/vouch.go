package audit

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The log signs only what it has verified (docs/audit.md, "What the
// daemon checks when it starts").
//
// A checkpoint vouches for every record before it: its signature covers
// the chain hash, which covers them all. So before a run of the log signs
// anything (when it gets its keys: at Open, or at the first SetKeys after
// an Open without them), it checks, under those keys, what earlier runs
// wrote after the last checkpoint signed with them: each record must
// follow the chain and carry a MAC that verifies under the MAC key, and a
// segment or checkpoint among them must name those keys. What the run
// itself wrote since it started needs no check. The first record that
// fails, and everything after it, is set aside: the file is kept whole as
// evidence, the chain keeps the records before it, and a recovery segment
// continues from the last of them, with an audit-recovered event saying
// what was set aside, why and where; the run's own records follow again,
// renumbered, and only then is anything signed. A file whose end is
// damaged (a last line that is not a record) is set aside the same way,
// from its first record that does not follow the chain.
//
// Records written without keys by an earlier run (a daemon that was
// stopped, or crashed, while sealed) fail the check too: nobody can tell
// them from forgeries, so nobody may sign them.

// earlier is where the records of earlier runs end: the chain a run
// continues from, not yet checked under its keys.
type earlier struct {
	file string // the file holding the last of them: the active file, or the newest rotated one if the active one was empty
	end  int64  // where they end in it
	seq  uint64 // the last of them
	h    [32]byte
}

// cut is where the verified records of an earlier file end.
type cut struct {
	off int64    // the records set aside begin here in the file
	seq uint64   // the last record kept: the chain continues from it
	h   [32]byte // its chain hash; zero if none is kept and a new chain starts
	bad uint64   // the seq of the first record set aside
	why string   // what is wrong with it
}

// checkEarlier applies the rule to the records of earlier runs under the
// keys k: nil if every record since the last checkpoint signed with k is
// verified, else where the verified ones end. logPath is the log's active
// file (the previous file of the series may hold that checkpoint). The
// error is for I/O failures only.
func checkEarlier(logPath string, e *earlier, k *Keys) (*cut, error) {
	f, err := os.Open(e.file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d := newDigest()

	// The anchor: the last checkpoint signed with k that the hash chain
	// reaches from the file's first record. The chain is followed line by
	// line (seq and chain hash) up to the first line that breaks it: a
	// copy of a checkpoint put after records that do not chain to it is
	// no anchor, and the check below starts before such records and fails
	// at them.
	var (
		first  *Record
		anchor int64 = -1
		aSeq   uint64
		aH     [32]byte
		aFinal bool
		cSeq   uint64   // the chain so far: the last record that follows it
		cH     [32]byte // and its hash
		off    int64
	)
	err = scanLines(io.NewSectionReader(f, 0, e.end), func(line []byte, n int) error {
		if line[len(line)-1] != '\n' {
			return errStop
		}
		body := line[:len(line)-1]
		if n == 1 {
			r, err := ParseRecord(body)
			if err != nil || r.Kind != KindSegment {
				return errStop
			}
			first, cSeq, cH = r, r.Seq-1, r.Segment.Prev
		}
		seq, h, prefix, ok := chainFields(body)
		if !ok || seq != cSeq+1 || chainHashOf(d, &cH, body[:prefix]) != h {
			return errStop
		}
		if bytes.Contains(body, []byte(`"kind":"checkpoint"`)) {
			if r, err := ParseRecord(body); err == nil && ownCheckpoint(d, body, r, k) && r.Checkpoint.UptoHash == cH {
				anchor, aSeq, aH, aFinal = off+int64(len(line)), r.Seq, r.Hash, r.Checkpoint.Final
			}
		}
		cSeq, cH = seq, h
		off += int64(len(line))
		return nil
	})
	if err != nil && err != errStop {
		return nil, err
	}
	base := uint64(0) // where a new chain would continue the seq
	if first != nil && first.Seq > 0 {
		base = first.Seq - 1
	}
	// The series: the file must continue the one before it, if there is
	// one. A file that does not (another log swapped in, an older copy of
	// this one) is set aside whole, and the chain goes on from the end of
	// the file before it if a checkpoint signed with k ends that file.
	// (A file may also start a new chain, from a zero hash, where the one
	// before it ends: the daemon does so when it keeps nothing of what it
	// set aside.)
	var firstOf uint64 // the active file comes after every rotated one
	if first != nil && e.file != logPath {
		firstOf = first.Seq
	}
	prevName, prev, prevEnd, prevLine := previousFile(logPath, e.file, firstOf)
	if prev != nil {
		base = prev.Seq
	}
	// prevGood: the file before ends with a checkpoint signed with k, or
	// with records that verify under k since the last one (checked as
	// this file is, back along the series as far as it takes).
	prevGood := prev != nil && ownCheckpoint(d, prevLine, prev, k)
	if prev != nil && !prevGood && (anchor < 0 || first.Seq != prev.Seq+1 || first.Segment.Prev != prev.Hash) {
		c, err := checkEarlier(logPath, &earlier{file: prevName, end: prevEnd, seq: prev.Seq, h: prev.Hash}, k)
		prevGood = err == nil && c == nil
	}
	newChain := first != nil && first.Segment.Prev == [32]byte{}
	if first != nil && prev != nil && (first.Seq != prev.Seq+1 || first.Segment.Prev != prev.Hash && !newChain) {
		why := "the file does not continue the chain of " + filepath.Base(prevName) + ", the file before it"
		if prevGood {
			return &cut{seq: prev.Seq, h: prev.Hash, bad: first.Seq, why: why}, nil
		}
		return &cut{seq: base, bad: first.Seq, why: why}, nil
	}
	if anchor < 0 && first != nil && prevGood && !newChain {
		// The file continues one whose end is verified (a rotation, then
		// a crash before the next checkpoint).
		anchor, aSeq, aH, aFinal = 0, prev.Seq, prev.Hash, prev.Kind == KindCheckpoint && prev.Checkpoint.Final
	}
	if anchor < 0 && newChain && (prevName == "" && first.Seq == 1 || prev != nil) {
		// The start of the log, or of a new chain: every record of it
		// must verify.
		anchor, aSeq, aH, aFinal = 0, first.Seq-1, [32]byte{}, false
	}
	if anchor < 0 {
		return &cut{seq: base, bad: base + 1, why: "no checkpoint signed with this log's key comes before them; " +
			"another daemon wrote them, with other keys, or one that never had its keys"}, nil
	}

	seq, h, closed := aSeq, aH, aFinal
	off = anchor
	var bad *cut
	err = scanLines(io.NewSectionReader(f, anchor, e.end-anchor), func(line []byte, _ int) error {
		fail := func(at uint64, why string) error {
			bad = &cut{off: off, seq: seq, h: h, bad: at, why: why}
			return errStop
		}
		if line[len(line)-1] != '\n' {
			return fail(seq+1, "an incomplete line")
		}
		body := line[:len(line)-1]
		r, err := ParseRecord(body)
		if err != nil {
			return fail(seq+1, err.Error())
		}
		if why := verifiedUnder(d, body, r, seq, &h, closed, k); why != "" {
			return fail(seq+1, why)
		}
		seq, h = r.Seq, r.Hash
		closed = r.Kind == KindCheckpoint && r.Checkpoint.Final
		off += int64(len(line))
		return nil
	})
	if err != nil && err != errStop {
		return nil, err
	}
	if bad != nil {
		return bad, nil
	}
	if seq != e.seq || h != e.h {
		return &cut{off: off, seq: seq, h: h, bad: seq + 1, why: "the file changed after the log was opened"}, nil
	}
	return nil, nil
}

// ownCheckpoint reports whether line, a record r, is a checkpoint signed
// and MACed with k, whose chain hash follows from the hash it covers.
func ownCheckpoint(d hash.Hash, line []byte, r *Record, k *Keys) bool {
	if r.Kind != KindCheckpoint || !r.HasMAC {
		return false
	}
	c := r.Checkpoint
	prefix, signed := rawParts(line, r)
	mac := k.macOf(&r.Hash)
	return c.PublicKey.Equal(k.pub) && c.MACKeyID == k.macID && c.Upto+1 == r.Seq &&
		chainHashOf(d, &c.UptoHash, line[:prefix]) == r.Hash && macEqual(&mac, &r.MAC) &&
		verifyCheckpoint(k.pub, line[:signed], c.Signature)
}

// chainFields reads, without parsing the whole record, a line's seq, its
// chain hash, and where the bytes the hash covers end (rawParts); ok is
// false if the line does not have the form of a record.
func chainFields(line []byte) (seq uint64, h [32]byte, prefix int, ok bool) {
	const head = `{"v":1,"seq":`
	if !bytes.HasPrefix(line, []byte(head)) {
		return 0, h, 0, false
	}
	i := len(head)
	for ; i < len(line) && line[i] >= '0' && line[i] <= '9'; i++ {
		seq = seq*10 + uint64(line[i]-'0')
	}
	if i == len(head) || i > len(head)+19 {
		return 0, h, 0, false
	}
	prefix = len(line) - tailWithMAC
	if prefix < 0 || !bytes.HasPrefix(line[prefix:], []byte(hashField)) {
		prefix = len(line) - tailNoMAC
	}
	if prefix < i || !bytes.HasPrefix(line[prefix:], []byte(hashField)) {
		return 0, h, 0, false
	}
	if _, err := hex.Decode(h[:], line[prefix+len(hashField):prefix+len(hashField)+64]); err != nil {
		return 0, h, 0, false
	}
	return seq, h, prefix, true
}

// verifiedUnder checks one record after the anchor: it must follow the
// chain at seq and *h, carry a MAC that verifies under k, and, if it is a
// segment or a checkpoint, name k (a checkpoint signed with it). closed:
// the record before was a final checkpoint, after which only a segment
// may come. It returns what is wrong, or "".
func verifiedUnder(d hash.Hash, line []byte, r *Record, seq uint64, h *[32]byte, closed bool, k *Keys) string {
	switch {
	case r.Seq != seq+1:
		return fmt.Sprintf("it has seq %d: records are missing, duplicated or out of order", r.Seq)
	case closed && r.Kind != KindSegment:
		return "it follows the log's clean close without a segment"
	case r.Kind == KindSegment && r.Segment.Prev != *h:
		return "it is a segment that does not continue the chain"
	}
	prefix, signed := rawParts(line, r)
	if chainHashOf(d, h, line[:prefix]) != r.Hash {
		return "its chain hash does not match: it, or the record before it, was altered"
	}
	if !r.HasMAC {
		return "it has no MAC; a run of the daemon wrote it without keys, or it was forged"
	}
	if mac := k.macOf(&r.Hash); !macEqual(&mac, &r.MAC) {
		return "its MAC does not verify under this log's MAC key; it was written with other keys, or forged"
	}
	switch r.Kind {
	case KindSegment:
		if !r.Segment.PublicKey.Equal(k.pub) || r.Segment.MACKeyID != k.macID {
			return "it is a segment that names other keys than this log's"
		}
	case KindCheckpoint:
		c := r.Checkpoint
		if !c.PublicKey.Equal(k.pub) || c.Upto != seq || c.UptoHash != *h || !verifyCheckpoint(k.pub, line[:signed], c.Signature) {
			return "it is a checkpoint not signed with this log's key"
		}
	}
	return ""
}

// previousFile returns the name and the last record of the file of the
// log at logPath that comes before file, whose first record has seq
// first (0: file is the active file, or its first seq is unknown), in the
// series, where its records end, and the last
// line; name is "" if there is none, last nil if its end is not a record
// that follows the chain. The series is ordered by the seq of each
// rotated file's first record, not by the names, which anyone who can
// write the directory can swap.
func previousFile(logPath, file string, first uint64) (name string, last *Record, end int64, line []byte) {
	names, err := LogFiles(logPath)
	if err != nil {
		return "", nil, 0, nil
	}
	if first == 0 {
		first = math.MaxUint64
	}
	prev, best := "", uint64(0)
	for _, name := range names {
		if name == file || name == logPath {
			continue
		}
		fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		n := firstSeq(fd, 0)
		unix.Close(fd)
		if n > 0 && n < first && (prev == "" || n > best) {
			prev, best = name, n
		}
	}
	if prev == "" {
		return "", nil, 0, nil
	}
	fd, err := unix.Open(prev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, 0, nil
	}
	defer unix.Close(fd)
	size, err := fileSize(fd)
	if err != nil {
		return "", nil, 0, nil
	}
	t, err := readTail(fd, size)
	if err != nil || t.last == nil || !t.hasPrev || t.tornBytes > 0 || t.goodSize != size {
		return prev, nil, 0, nil
	}
	return prev, t.last, t.goodSize, t.lastLine
}

// asideName names the file that keeps path as evidence.
func asideName(path, kind string) string {
	return fmt.Sprintf("%s.%s-%s", path, kind, time.Now().UTC().Format("20060102T150405.000000000Z"))
}

// setAsideLocked sets aside the records of e's file from c on: the file
// is kept whole as evidence (kind: "unverified" or "damaged"), and a new
// file under its name holds the records before c, then a recovery segment
// and an audit-recovered event, then what this run has written and queued
// since it started, renumbered, and, with k, a keys checkpoint signed with
// k. It runs with l.mu held in the writer role (the I/O under l.mu is
// rare: once, when a damaged or forged log is found), and returns the
// batch it wrote, whose waiters and callbacks the caller runs (finishBatch)
// once l.mu is released. On failure nothing has changed.
func (l *Log) setAsideLocked(e *earlier, c *cut, kind string, k *Keys) (*batch, error) {
	active := e.file == l.curName
	// What this run has written: in the active file after e.end, or all
	// of it if e.file is another one.
	from := int64(0)
	if active {
		from = e.end
	}
	if l.fd >= 0 {
		l.giveBackReserve()
	}
	var own []byte
	if l.fd >= 0 && l.off > from {
		own = make([]byte, l.off-from)
		if err := preadFull(l.fd, own, from); err != nil {
			return nil, err
		}
	}
	aside := asideName(e.file, kind)

	// The new chain, sequenced into a batch of its own.
	old, saved, savedSince := l.queue, l.stateLocked(), l.sinceCP
	savedKeys, savedFresh := l.chainKeys, l.freshChain
	l.queue = &batch{}
	l.seq, l.h = c.seq, c.h
	restore := func() {
		l.queue, l.sinceCP = old, savedSince
		l.seq, l.h, l.keys = saved.seq, saved.h, saved.keys
		l.chainKeys, l.freshChain = savedKeys, savedFresh
	}
	if c.h == ([32]byte{}) {
		// A new chain: the keys of the one set aside are not its keys.
		l.chainKeys, l.freshChain = nil, true
		l.addChainKeyLocked(l.keys)
	}
	var note strings.Builder
	fmt.Fprintf(&note, "%s was set aside as %s: the records from seq %d on cannot be verified (%s). ",
		filepath.Base(e.file), filepath.Base(aside), c.bad, c.why)
	if c.off == 0 && c.h == ([32]byte{}) {
		note.WriteString("No record of it is kept: a new chain starts")
	} else {
		fmt.Fprintf(&note, "The chain continues from seq %d, the last record verified", c.seq)
	}
	ownRecs, ok := ownRecords(own, e.h, l.written.h)
	if !ok {
		fmt.Fprintf(&note, "; the records this run wrote before it had its keys were altered in the file since, and are only in %s",
			filepath.Base(aside))
		ownRecs = nil
	}
	if n := len(ownRecs) + bytes.Count(old.buf, []byte{'\n'}); n > 0 {
		fmt.Fprintf(&note, "; the %s this run wrote before it had its keys follow, renumbered", plural(uint64(n), "record", "records"))
	}
	l.segmentLocked("recovery")
	l.eventLocked(OpAuditRecovered, note.String())
	for _, r := range ownRecs {
		l.requeueLocked(r)
	}
	queued, ok := ownRecords(old.buf, l.written.h, saved.h) // in memory, as sequenced
	if !ok {
		restore()
		return nil, errors.New("audit: the queued records do not follow the chain")
	}
	for _, r := range queued {
		l.requeueLocked(r)
	}
	if k != nil && l.keys == nil {
		l.keys = k
		l.checkpointLocked("keys", nil, false, false)
		l.addChainKeyLocked(k)
	}
	b := l.queue
	l.queue = &batch{}
	b.waiters = append(b.waiters, old.waiters...)
	b.linux = append(b.linux, old.linux...)

	// The files: each new one is written whole under a temporary name,
	// then takes the old one's name, which the evidence keeps: a crash
	// leaves either the old file or the new one.
	var (
		curFd         = -1
		curTmp, eTmp  string
		curOff        int64
		linked, moved bool
	)
	fail := func(err error) (*batch, error) {
		if curFd >= 0 {
			unix.Close(curFd)
		}
		for _, t := range []string{curTmp, eTmp} {
			if t != "" {
				os.Remove(t)
			}
		}
		if linked && !moved {
			os.Remove(aside)
		}
		restore()
		return nil, err
	}
	src := l.fd
	if !active {
		fd, err := unix.Open(e.file, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fail(err)
		}
		defer unix.Close(fd)
		src = fd
	}
	if active {
		fd, tmp, err := newFileFrom(e.file, src, c.off, b.buf)
		curFd, curTmp, curOff = fd, tmp, c.off+int64(len(b.buf))
		if err != nil {
			return fail(err)
		}
	} else {
		if c.off > 0 {
			fd, tmp, err := newFileFrom(e.file, src, c.off, nil)
			eTmp = tmp
			if fd >= 0 {
				unix.Close(fd)
			}
			if err != nil {
				return fail(err)
			}
		}
		fd, tmp, err := newFileFrom(l.curName, -1, 0, b.buf)
		curFd, curTmp, curOff = fd, tmp, int64(len(b.buf))
		if err != nil {
			return fail(err)
		}
	}
	if err := os.Link(e.file, aside); err != nil {
		return fail(err)
	}
	linked = true
	var err error
	switch {
	case active:
		err = os.Rename(curTmp, e.file)
	case c.off > 0:
		err = os.Rename(eTmp, e.file)
	default:
		err = os.Remove(e.file)
	}
	if err != nil {
		return fail(err)
	}
	moved = true
	if !active {
		rename := os.Rename
		if l.hookRename != nil {
			rename = l.hookRename
		}
		if err := rename(curTmp, l.curName); err != nil {
			// e.file is set aside already; the active file stays as it
			// was, and the next start sets it aside in turn.
			l.log.Error("audit log: cannot replace the active file after setting records aside", "err", err)
			return fail(err)
		}
	}
	if err := syncDir(filepath.Dir(e.file)); err != nil {
		l.log.Warn("audit log: cannot sync the directory after setting records aside", "err", err)
	}

	l.fmu.Lock()
	if l.fd >= 0 {
		unix.Close(l.fd)
	}
	l.fd = curFd
	l.fmu.Unlock()
	l.off, l.reservedTo = curOff, curOff
	l.size.Store(curOff)
	l.dirty.Store(false)
	if active && c.off > 0 {
		l.fileFirstSeq = firstSeq(curFd, c.seq+1)
	} else {
		l.fileFirstSeq = c.seq + 1
	}
	l.written = b.last
	if n := len(b.checkpoints); n > 0 {
		l.lastCP = b.checkpoints[n-1]
	}
	// What is left to check under the keys: the records kept, if the
	// log has no keys yet.
	l.earlier = nil
	if l.keys == nil && c.off > 0 {
		l.earlier = &earlier{file: e.file, end: c.off, seq: c.seq, h: c.h}
	}
	l.log.Warn("audit log: records set aside", "evidence", aside, "detail", note.String())
	return b, nil
}

// ownRecords parses lines the log wrote, which must chain from h to end;
// ok is false if they do not (the file was altered since).
func ownRecords(lines []byte, h, end [32]byte) (recs []*Record, ok bool) {
	d := newDigest()
	for len(lines) > 0 {
		i := bytes.IndexByte(lines, '\n')
		if i < 0 {
			return nil, false
		}
		line := lines[:i]
		lines = lines[i+1:]
		r, err := ParseRecord(line)
		if err != nil || r.Kind == KindCheckpoint {
			return nil, false
		}
		prefix, _ := rawParts(line, r)
		if chainHash(d, &h, line[:prefix], &h); h != r.Hash {
			return nil, false
		}
		recs = append(recs, r)
	}
	return recs, h == end
}

// requeueLocked sequences again a record this run wrote before its
// records were set aside: its seq and chain change, nothing else (its
// time is when it was first written).
func (l *Log) requeueLocked(r *Record) {
	q := l.queue
	start := len(q.buf)
	l.seq++
	q.buf = appendHeader(q.buf, l.seq, r.Time, r.Mono, r.Kind)
	if r.Kind == KindSegment {
		s := *r.Segment
		s.Prev = l.h
		q.buf = appendSegment(q.buf, &s)
	} else {
		q.buf = appendBody(q.buf, r)
	}
	l.finishLocked(q, start)
}

// newFileFrom writes, under a temporary name beside name, the first n
// bytes of the file open at src followed by data, durably, and returns
// the open file and its name.
func newFileFrom(name string, src int, n int64, data []byte) (int, string, error) {
	tmp := name + ".recovering"
	os.Remove(tmp)
	fd, err := unix.Open(tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return -1, "", err
	}
	err = copyPrefix(fd, src, n)
	if err == nil {
		err = pwriteAll(fd, data, n)
	}
	if err == nil {
		err = retryEINTR(func() error { return unix.Fdatasync(fd) })
	}
	if err != nil {
		unix.Close(fd)
		os.Remove(tmp)
		return -1, "", err
	}
	return fd, tmp, nil
}

// copyPrefix copies the first n bytes of the file open at src to the
// start of the one open at dst.
func copyPrefix(dst, src int, n int64) error {
	buf := make([]byte, min(n, 1<<20))
	for off := int64(0); off < n; {
		m, err := unix.Pread(src, buf[:min(int64(len(buf)), n-off)], off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if m == 0 {
			return io.ErrUnexpectedEOF
		}
		if err := pwriteAll(dst, buf[:m], off); err != nil {
			return err
		}
		off += int64(m)
	}
	return nil
}

func preadFull(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := unix.Pread(fd, b, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// vouchAtOpenLocked sets aside, at Open, the damaged end of the active
// file that resume found, and, if the log has its keys already, whatever
// earlier runs wrote that it cannot verify under them. It runs with l.mu
// held, in the writer role.
func (l *Log) vouchAtOpenLocked() error {
	e, c := l.earlier, l.damaged
	kind := "damaged"
	if c == nil {
		kind = "unverified"
	}
	l.damaged = nil
	if l.keys != nil && e != nil {
		c2, err := checkEarlier(l.opts.Path, e, l.keys)
		if err != nil {
			return err
		}
		if c2 != nil {
			c = c2
		}
		l.earlier = nil
	}
	if c == nil {
		return nil
	}
	_, err := l.setAsideLocked(e, c, kind, nil)
	return err
}

// vouchLocked checks the records of earlier runs under k, the first keys
// the log gets in this run (SetKeys), and sets aside what it cannot
// verify. It is called with l.mu held, and returns with it held unless it
// is done or fails: done means that it gave the log k and wrote the keys
// checkpoint itself, after a set-aside.
func (l *Log) vouchLocked(w *waiter, k *Keys) (done bool, err error) {
	e := l.earlier
	l.mu.Unlock()
	// The run does not write e.file up to e.end: read it unlocked.
	c, err := checkEarlier(l.opts.Path, e, k)
	if err != nil {
		return true, &Error{Op: "verify", Err: err}
	}
	l.mu.Lock()
	if err := l.usableLocked(); err != nil {
		l.mu.Unlock()
		return true, err
	}
	if c == nil {
		l.earlier = nil
		return false, nil
	}
	l.leadLocked(w)
	if err := l.usableLocked(); err != nil {
		l.releaseLead()
		return true, err
	}
	b, err := l.setAsideLocked(e, c, "unverified", k)
	l.releaseLead()
	if err != nil {
		return true, &Error{Op: "set aside", Err: err}
	}
	l.finishBatch(b, nil, nil)
	return true, nil
}
