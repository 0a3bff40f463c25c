package cli

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/audit"
)

// The audit log commands (docs/audit.md, "Verifying" and "Commands"):
// they read the log's files directly and never talk to the daemon.

// followPoll is how often `audit tail -f` looks for new records.
var followPoll = 200 * time.Millisecond

// defaultAuditLog is the log of a daemon started without --audit-log:
// audit.log in the default state directory.
func defaultAuditLog() string { return filepath.Join(DefaultStateDir(), "audit.log") }

// daemonAuditLog is the path of the audit log of the daemon at the socket
// ($KEYWARDEN_SOCKET or the default), if one answers at once; else the
// default path in the default state directory.
func daemonAuditLog(f *flags) string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if c, err := f.dialContext(ctx); err == nil {
		defer c.Close()
		if st, err := c.Status(ctx); err == nil && st.Audit != nil && st.Audit.Path != "" {
			return st.Audit.Path
		}
	}
	return defaultAuditLog()
}

// newFileFlags is newFlags for commands that read files instead of talking
// to the daemon: --json, but no --socket or --timeout.
func newFileFlags(name string, e *env, jsonUsage string) *flags {
	f := &flags{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), e: e}
	f.SetOutput(io.Discard)
	f.BoolVar(&f.json, "json", false, jsonUsage)
	return f
}

// addDaemonLog gives tail and query --socket: without --log they read the
// log of the daemon that answers there.
func addDaemonLog(f *flags) {
	f.StringVar(&f.socket, "socket", "", "without --log, read the audit log of the daemon at this socket `path` (default $"+keywarden.SocketEnv+" or the default path)")
}

const recordsJSONUsage = "print the records as the log's own JSON lines"

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

// filterFlags are the record filters of `audit tail` and `audit query`.
type filterFlags struct {
	key, uid, op, status, since, until string
	failed                             bool
}

func (ff *filterFlags) register(f *flags) {
	f.StringVar(&ff.key, "key", "", "only records of this key: its id in hex or a prefix of one (id:HEX), or a key `name` (NAME for one of yours, UID:NAME for another user's key shared with you), which the daemon resolves; matches the operations of batches too")
	f.StringVar(&ff.uid, "uid", "", "only requests from this `uid`")
	f.StringVar(&ff.op, "op", "", "only records of this `operation` (e.g. sign, generate, unseal), including the operations of batches")
	f.StringVar(&ff.status, "status", "", "only records with this `status` (e.g. OK, PERMISSION_DENIED), including the operations of batches")
	f.BoolVar(&ff.failed, "failed", false, "only records with a status other than OK")
	f.StringVar(&ff.since, "since", "", "only records written at or after this `time`: RFC 3339, a date (2026-03-01, local midnight), a date and time (2026-03-01 14:30), or an age (90s, 15m, 1h, 7d)")
	f.StringVar(&ff.until, "until", "", "only records written before this `time` (as --since)")
}

// filter makes the audit filter of the flags; f is where a key name is
// resolved (through the daemon at f's socket).
func (ff *filterFlags) filter(f *flags) (audit.Filter, error) {
	var flt audit.Filter
	if ff.key != "" {
		k, err := auditKeyFilter(f, ff.key)
		if err != nil {
			return flt, err
		}
		flt.Key = k
	}
	if ff.uid != "" {
		u, err := strconv.ParseUint(ff.uid, 10, 32)
		if err != nil {
			return flt, usagef("invalid --uid %q: want a number", ff.uid)
		}
		flt.UID, flt.HasUID = uint32(u), true
	}
	flt.Op = ff.op
	flt.Status = strings.ToUpper(ff.status)
	flt.Failed = ff.failed
	now := time.Now()
	for _, t := range []struct {
		name, s string
		dst     *time.Time
	}{{"since", ff.since, &flt.Since}, {"until", ff.until, &flt.Until}} {
		if t.s == "" {
			continue
		}
		v, err := parseAuditTime(t.s, now)
		if err != nil {
			return flt, usagef("invalid --%s %q: want an RFC 3339 time (2026-03-01T00:00:00Z), a date (2026-03-01), a date and time (2026-03-01 14:30) or an age (90s, 15m, 1h, 7d)", t.name, t.s)
		}
		*t.dst = v
	}
	if !flt.Since.IsZero() && !flt.Until.IsZero() && !flt.Until.After(flt.Since) {
		return flt, usagef("--until must be after --since")
	}
	return flt, nil
}

// parseAuditTime reads the time of --since and --until: an RFC 3339 time,
// a date or a date and time (in local time), or an age before now (Go's
// durations, and days: "7d").
func parseAuditTime(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02", "2006-01-02 15:04", "2006-01-02 15:04:05", "2006-01-02T15:04", "2006-01-02T15:04:05"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 16)
		if err != nil {
			return time.Time{}, err
		}
		return now.AddDate(0, 0, -int(n)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return time.Time{}, err
	}
	if d < 0 {
		return time.Time{}, errors.New("negative age")
	}
	return now.Add(-d), nil
}

// auditKeyFilter turns --key into the hex key id (or prefix) that records
// are matched by. A value of hex digits is an id or a prefix of one (as is
// id:HEX); anything else is a key name, which only the daemon can turn
// into an id: it is opened there as the CLI names keys (NAME, or
// UID:NAME), with the caller's rights.
func auditKeyFilter(f *flags, ref string) (string, error) {
	k := strings.ToLower(strings.TrimPrefix(ref, "id:"))
	if k != "" && len(k) <= 32 && strings.Trim(k, "0123456789abcdef") == "" {
		return k, nil
	}
	if strings.HasPrefix(ref, "id:") || ref == "" {
		return "", usagef("invalid --key %q: want a key id in hex (32 digits) or a prefix of one, or a key name", ref)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := f.dialContext(ctx)
	if err != nil {
		return "", fmt.Errorf("--key %q names a key, which the daemon turns into its id, and the daemon cannot be reached: %w (give the key's id instead: keywarden key list shows it)", ref, err)
	}
	defer c.Close()
	key, err := c.OpenRef(ctx, ref)
	if err != nil {
		return "", fmt.Errorf("--key %q: %w (a name is looked up among your keys, and UID:NAME among the keys shared with you; for any other key give its id)", ref, err)
	}
	defer key.Close(context.Background())
	id := key.ID()
	return hex.EncodeToString(id[:]), nil
}

// logReadError explains an error reading the audit log at path: the log
// is readable only by administrators.
func logReadError(path string, err error) error {
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("the audit log at %s is readable only by administrators (root or the daemon's user): %w", path, err)
	}
	return err
}

// printRecord prints r as one line: readable, or the log's own line.
func printRecord(w io.Writer, asJSON bool, r *audit.Record) error {
	var err error
	if asJSON {
		_, err = w.Write(audit.AppendLine(nil, r))
	} else {
		_, err = io.WriteString(w, r.Text()+"\n")
	}
	return err
}

// --- verify ---

func runAuditVerify(e *env, args []string) error {
	f := newFileFlags("audit verify", e, "print the report as JSON")
	var pubFiles, expects stringList
	f.Var(&pubFiles, "public-key", "trust the first (oldest) checkpoint key in this `file` (the daemon's audit.pub, kept apart from the log; hex or PEM; repeatable); later keys count when the log's signed rekey checkpoints name them")
	f.Var(&expects, "expect", "the log must reach this checkpoint, published earlier, as `SEQ:HASH` (repeatable)")
	closed := f.Bool("closed", false, "the log must end with the final record of a clean close")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("want the log's files")
	}
	var o audit.VerifyOptions
	for _, p := range pubFiles {
		data, err := os.ReadFile(p)
		if err != nil {
			return usagef("--public-key: %v", err)
		}
		// The file's first key; the later ones count once the log's
		// signed rekey checkpoints name them.
		key, err := audit.TrustedPublicKey(data)
		if err != nil {
			return usagef("--public-key %s: %v", p, strings.TrimPrefix(err.Error(), "audit: "))
		}
		o.PublicKeys = append(o.PublicKeys, key)
	}
	for _, s := range expects {
		c, err := audit.ParseCheckpoint(s)
		if err != nil {
			return usagef("--expect: %v", strings.TrimPrefix(err.Error(), "audit: "))
		}
		o.Expect = append(o.Expect, c)
	}
	o.RequireClosed = *closed
	rep, err := audit.VerifyFiles(pos, o)
	if err != nil {
		// The files could not be read: exit status 2, as documented.
		return usagef("%v", err)
	}
	if f.json {
		if err := printJSON(e, verifyReportJSON(rep)); err != nil {
			return err
		}
	} else if err := rep.WriteText(e.stdout); err != nil {
		return err
	}
	if !rep.Intact {
		return fmt.Errorf("the audit log is NOT INTACT: %v", rep.Problem)
	}
	return nil
}

type verifyProblemJSON struct {
	File        string `json:"file"`
	Line        int    `json:"line,omitempty"`
	Seq         uint64 `json:"seq,omitempty"`
	Reason      string `json:"reason"`
	MissingTail bool   `json:"missing_tail,omitempty"`
}

type verifyFileJSON struct {
	Name      string `json:"name"`
	FirstSeq  uint64 `json:"first_seq"`
	LastSeq   uint64 `json:"last_seq"`
	Records   uint64 `json:"records"`
	TornBytes int64  `json:"torn_bytes,omitempty"`
}

type verifyJSON struct {
	Intact   bool               `json:"intact"`
	Problem  *verifyProblemJSON `json:"problem,omitempty"`
	Files    []verifyFileJSON   `json:"files"`
	Records  uint64             `json:"records"`
	FirstSeq uint64             `json:"first_seq"`
	LastSeq  uint64             `json:"last_seq"`
	// Last is the last record checked as SEQ:HASH, the form --expect reads.
	Last              string   `json:"last"`
	Checkpoints       int      `json:"checkpoints"`
	LastCheckpointSeq uint64   `json:"last_checkpoint_seq"`
	Pinned            bool     `json:"pinned"`
	TrustedThrough    uint64   `json:"trusted_through"`
	SigningKeys       []string `json:"signing_keys"`
	MACsChecked       uint64   `json:"macs_checked"`
	Unkeyed           uint64   `json:"unkeyed"`
	Closed            bool     `json:"closed"`
	TornBytes         int64    `json:"torn_bytes"`
	Warnings          []string `json:"warnings"`
}

func verifyReportJSON(rep *audit.Report) verifyJSON {
	j := verifyJSON{
		Intact: rep.Intact, Files: []verifyFileJSON{}, Records: rep.Records, FirstSeq: rep.FirstSeq, LastSeq: rep.LastSeq,
		Checkpoints: rep.Checkpoints, LastCheckpointSeq: rep.LastCheckpoint, Pinned: rep.Pinned,
		TrustedThrough: rep.TrustedThrough, SigningKeys: []string{}, MACsChecked: rep.MACsChecked, Unkeyed: rep.Unkeyed,
		Closed: rep.Closed, TornBytes: rep.TornBytes, Warnings: []string{},
	}
	if rep.Records > 0 {
		j.Last = audit.Checkpoint{Seq: rep.LastSeq, Hash: rep.LastHash}.String()
	}
	if p := rep.Problem; p != nil {
		j.Problem = &verifyProblemJSON{File: p.File, Line: p.Line, Seq: p.Seq, Reason: p.Reason, MissingTail: p.MissingTail}
	}
	for _, fr := range rep.Files {
		j.Files = append(j.Files, verifyFileJSON{fr.Name, fr.FirstSeq, fr.LastSeq, fr.Records, fr.TornBytes})
	}
	for _, k := range rep.SigningKeys {
		j.SigningKeys = append(j.SigningKeys, hex.EncodeToString(k))
	}
	j.Warnings = append(j.Warnings, rep.Warnings...)
	return j
}

// --- tail and query ---

func runAuditTail(e *env, args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return auditTail(ctx, e, args)
}

// auditTail is `audit tail`; with -f it follows the log until ctx is done.
func auditTail(ctx context.Context, e *env, args []string) error {
	f := newFileFlags("audit tail", e, recordsJSONUsage)
	n := f.Int("n", 10, "print the last `N` records that match")
	follow := f.Bool("f", false, "then print each new record that matches as it is written, across rotations, until interrupted")
	logPath := f.String("log", "", "the log's active `file` (default: the running daemon's, else "+defaultAuditLog()+")")
	addDaemonLog(f)
	var ff filterFlags
	ff.register(f)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	if *n < 0 {
		return usagef("-n must not be negative")
	}
	flt, err := ff.filter(f)
	if err != nil {
		return err
	}
	path := *logPath
	if path == "" {
		path = daemonAuditLog(f)
	}
	files, err := audit.LogFiles(path)
	if err != nil && !(*follow && errors.Is(err, os.ErrNotExist)) {
		return logReadError(path, err)
	}
	if len(files) == 0 && !*follow {
		return fmt.Errorf("no audit log at %s (the daemon's --audit-log; see --log)", path)
	}
	var after uint64
	if len(files) > 0 {
		recs, last, err := audit.Last(path, *n, flt)
		if err != nil {
			return logReadError(path, err)
		}
		for _, r := range recs {
			if err := printRecord(e.stdout, f.json, r); err != nil {
				return err
			}
			after = max(after, r.Seq)
		}
		after = max(after, last)
	}
	if !*follow {
		return nil
	}
	return audit.Follow(ctx, path, after, flt, followPoll, func(r *audit.Record) error {
		return printRecord(e.stdout, f.json, r)
	})
}

func runAuditQuery(e *env, args []string) error {
	f := newFileFlags("audit query", e, recordsJSONUsage)
	logPath := f.String("log", "", "read every file of the log whose active `file` this is (default: the running daemon's, else "+defaultAuditLog()+"), unless files are given")
	addDaemonLog(f)
	var ff filterFlags
	ff.register(f)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	flt, err := ff.filter(f)
	if err != nil {
		return err
	}
	var files []string
	switch {
	case len(pos) > 0 && *logPath != "":
		return usagef("give either --log or files, not both")
	case len(pos) > 0:
		if files, err = chainOrder(pos); err != nil {
			return err
		}
	default:
		path := *logPath
		if path == "" {
			path = daemonAuditLog(f)
		}
		if files, err = audit.LogFiles(path); err == nil && len(files) == 0 {
			err = fmt.Errorf("no audit log at %s (the daemon's --audit-log; see --log)", path)
		}
		if err != nil {
			return logReadError(path, err)
		}
	}
	err = audit.ScanFiles(files, flt, func(r *audit.Record) error {
		return printRecord(e.stdout, f.json, r)
	})
	if len(files) > 0 {
		err = logReadError(files[0], err)
	}
	return err
}

// chainOrder sorts the files of a log by the seq of their first records,
// as verify does, so that "audit.log*" (where the active audit.log sorts
// before the rotated files) reads in order. A file whose first line is
// not a record goes last; Scan then reports it.
func chainOrder(paths []string) ([]string, error) {
	type file struct {
		path  string
		first uint64
	}
	files := make([]file, 0, len(paths))
	for _, p := range paths {
		fh, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		first := uint64(math.MaxUint64)
		line, err := bufio.NewReaderSize(io.LimitReader(fh, audit.MaxLineBytes+1), 64<<10).ReadSlice('\n')
		fh.Close()
		if err == nil || err == io.EOF || err == bufio.ErrBufferFull {
			if r, perr := audit.ParseRecord(line); perr == nil {
				first = r.Seq
			}
		}
		files = append(files, file{p, first})
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
	out := make([]string, len(files))
	for i, f := range files {
		out[i] = f.path
	}
	return out, nil
}
