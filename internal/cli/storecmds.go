package cli

import (
	"context"
	"crypto"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/shamir"
)

// The master-key, store, version and wrapping commands
// (docs/operations.md). Secrets (passphrases, shares) are read from the
// terminal without echo or from files, never from the command line.

// sealingFlags are init's and master rotate's.
type sealingFlags struct {
	passFile  string
	noPass    bool
	shares    int
	threshold int
	shareDir  string
	argon2    argon2Flags
	allowWeak bool
}

func (s *sealingFlags) register(f *flags) {
	f.StringVar(&s.passFile, "passphrase-file", "", "read the master passphrase from `file` (- for stdin); default: ask on the terminal")
	f.BoolVar(&s.noPass, "no-passphrase", false, "seal with shares only")
	f.IntVar(&s.shares, "shares", 0, "split the master key into `N` shares")
	f.IntVar(&s.threshold, "threshold", 0, "any `K` of the shares unseal")
	f.StringVar(&s.shareDir, "share-dir", "", "write the shares to share-1.txt ... share-N.txt in this `directory` (created 0700)")
	f.UintVar(&s.argon2.time, "time", 0, "Argon2id `passes` for the passphrase (default 3; passes × memory at least 3 × 65536)")
	f.UintVar(&s.argon2.memory, "memory", 0, "Argon2id memory in `KiB` for the passphrase (default 262144, at least 65536)")
	f.UintVar(&s.argon2.threads, "threads", 0, "Argon2id `lanes` for the passphrase (default 4)")
	f.BoolVar(&s.allowWeak, "allow-weak", false, fmt.Sprintf("accept a master passphrase shorter than %d characters (for tests only)", minMasterPassphrase))
}

// minMasterPassphrase is the fewest characters a new master passphrase
// may have (without --allow-weak): the Argon2id floor slows a guesser, but
// no cost saves a passphrase a guesser tries early.
const minMasterPassphrase = 12

// sealing reads the passphrase (unless shares only) and checks the flags.
func (s *sealingFlags) sealing(e *env) (keywarden.MasterSealing, error) {
	var ms keywarden.MasterSealing
	if s.shares > 0 || s.threshold > 0 {
		if s.shares < 2 || s.threshold < 2 || s.threshold > s.shares || s.shares > 255 {
			return ms, usagef("--shares N --threshold K need 2 <= K <= N <= 255")
		}
		if s.shareDir == "" {
			return ms, usagef("--shares needs --share-dir: where to write the shares")
		}
		if err := checkShareDir(s.shareDir, s.shares); err != nil {
			return ms, err
		}
	} else if s.noPass {
		return ms, usagef("--no-passphrase needs --shares and --threshold")
	}
	if s.shareDir != "" && s.shares == 0 {
		return ms, usagef("--share-dir needs --shares and --threshold")
	}
	p, err := s.argon2.params()
	if err != nil {
		return ms, err
	}
	ms.Argon2, ms.Shares, ms.Threshold = p, s.shares, s.threshold
	if !s.noPass {
		if ms.Passphrase, err = readPassphrase(e, s.passFile, "new master passphrase", true); err != nil {
			return ms, err
		}
		if n := utf8.RuneCount(ms.Passphrase); n < minMasterPassphrase && !s.allowWeak {
			clear(ms.Passphrase)
			return ms, usagef("the master passphrase has %d characters: it needs at least %d (--allow-weak accepts a shorter one, for tests only)", n, minMasterPassphrase)
		}
	}
	return ms, nil
}

// checkShareDir refuses a share directory that would overwrite shares.
func checkShareDir(dir string, n int) error {
	for i := 1; i <= n; i++ {
		if _, err := os.Stat(filepath.Join(dir, shareFileName(i))); err == nil {
			return fmt.Errorf("%s already holds %s: move the old shares away first", dir, shareFileName(i))
		}
	}
	return nil
}

func shareFileName(i int) string { return fmt.Sprintf("share-%d.txt", i) }

// writeShares writes each share to its own file, mode 0600, in a 0700
// directory, and syncs them: the daemon stores the master key only once
// this returns nil.
func writeShares(dir string, shares []keywarden.Share) error {
	if len(shares) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for i, s := range shares {
		b, err := shamir.Encode(shamir.Share{SplitID: shamir.SplitID(s.SplitID), Threshold: s.Threshold, X: s.X, Y: s.Y})
		if err != nil {
			return err
		}
		path := filepath.Join(dir, shareFileName(i+1))
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			clear(b)
			return err
		}
		_, err = f.Write(b)
		clear(b)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

func runInit(e *env, args []string) error {
	f := newFlags("init", e)
	var s sealingFlags
	s.register(f)
	force := f.Bool("force", false, "replace the master key of a store that holds no keys")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	if !*force {
		// Nothing is asked for, and no Argon2id runs, for a store that
		// has its master key already.
		ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
		if c, err := f.dialContext(ctx); err == nil {
			st, err := c.Status(ctx)
			c.Close()
			if err == nil && st.Seal.Initialized {
				cancel()
				return errors.New("the store already has a master key: unseal it with \"keywarden unseal\" (--force replaces the master key of a store that holds no keys)")
			}
		}
		cancel()
	}
	ms, err := s.sealing(e)
	if err != nil {
		return err
	}
	defer clear(ms.Passphrase)
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	if !s.noPass {
		fmt.Fprintln(e.stderr, "deriving the passphrase key (Argon2id) ...")
	}
	ms.KeepShares = func(shares []keywarden.Share) error { return writeShares(s.shareDir, shares) }
	info, err := c.Admin().Init(ctx, ms, &keywarden.InitOptions{Force: *force})
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(e, map[string]any{"store_id": hex.EncodeToString(info.StoreID[:]), "generation": info.Generation,
			"passphrase": !s.noPass, "shares": s.shares, "threshold": s.threshold, "share_dir": s.shareDir})
	}
	fmt.Fprintf(e.stdout, "master key created (store %x); the daemon is unsealed\n", info.StoreID)
	if s.shares > 0 {
		fmt.Fprintf(e.stdout, "%d shares written to %s (any %d unseal): give each to its holder, then delete them here\n", s.shares, s.shareDir, s.threshold)
	}
	return nil
}

// shareFiles collects repeated --share-file flags.
type shareFiles []string

func (s *shareFiles) String() string     { return strings.Join(*s, ",") }
func (s *shareFiles) Set(v string) error { *s = append(*s, v); return nil }

func readShare(path string) (keywarden.Share, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return keywarden.Share{}, err
	}
	defer clear(b)
	sh, err := shamir.Parse(b)
	if err != nil {
		return keywarden.Share{}, fmt.Errorf("%s: %w", path, err)
	}
	return keywarden.Share{SplitID: sh.SplitID, Threshold: sh.Threshold, X: sh.X, Y: sh.Y}, nil
}

func runUnseal(e *env, args []string) error {
	f := newFlags("unseal", e)
	passFile := f.String("passphrase-file", "", "read the master passphrase from `file` (- for stdin); default: ask on the terminal")
	var files shareFiles
	f.Var(&files, "share-file", "submit the share in `file` (repeatable)")
	accept := f.Bool("accept-store", false, "accept a store whose records no longer add up to what the daemon last wrote (see docs/operations.md)")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	if len(files) > 0 && *passFile != "" {
		return usagef("give --passphrase-file or --share-file, not both")
	}
	var shares []keywarden.Share
	for _, p := range files {
		sh, err := readShare(p)
		if err != nil {
			return err
		}
		defer clear(sh.Y)
		shares = append(shares, sh)
	}
	// The daemon's state first: nothing is asked for, and no Argon2id
	// runs, for an unseal that cannot be attempted now.
	if already, err := unsealWait(e, f); err != nil || already {
		if already {
			return printAlreadyUnsealed(e, f.json)
		}
		return err
	}
	var pass []byte
	if len(shares) == 0 {
		if pass, err = readPassphrase(e, *passFile, "master passphrase", false); err != nil {
			return err
		}
		defer clear(pass)
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	if len(shares) == 0 {
		if err := c.Admin().Unseal(ctx, pass, &keywarden.UnsealOptions{AcceptStore: *accept}); err != nil {
			if unsealedMeanwhile(ctx, c, err) {
				return printAlreadyUnsealed(e, f.json)
			}
			return err
		}
		return printUnsealed(e, f.json, keywarden.UnsealProgress{Unsealed: true})
	}
	p, err := c.Admin().UnsealShares(ctx, shares, &keywarden.UnsealOptions{AcceptStore: *accept})
	if err != nil {
		if unsealedMeanwhile(ctx, c, err) {
			return printAlreadyUnsealed(e, f.json)
		}
		return err
	}
	return printUnsealed(e, f.json, p)
}

// unsealedMeanwhile reports whether an unseal refused with err was refused
// because someone else unsealed the daemon meanwhile (ALREADY_EXISTS is
// also a share submitted twice).
func unsealedMeanwhile(ctx context.Context, c *keywarden.Client, err error) bool {
	if !errors.Is(err, keywarden.ErrAlreadyExists) {
		return false
	}
	st, serr := c.Status(ctx)
	return serr == nil && st.Seal.Initialized && !st.Seal.Sealed
}

// maxUnsealWait is the longest back-off after failed unseals that the CLI
// waits out by itself; a longer one is reported.
const maxUnsealWait = time.Minute

// unsealWait asks the daemon's state before an unseal: already says it is
// unsealed; a back-off after failed attempts of up to maxUnsealWait is
// waited out, saying so; a longer one is an error. A daemon that cannot be
// asked, or a store without a master key, is left to the unseal itself to
// report.
func unsealWait(e *env, f *flags) (already bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	c, err := f.dialContext(ctx)
	if err != nil {
		return false, nil
	}
	st, err := c.Status(ctx)
	c.Close()
	if err != nil {
		return false, nil
	}
	switch s := st.Seal; {
	case !s.Initialized:
		// The unseal itself will say so (or the daemon knows better).
	case !s.Sealed:
		return true, nil
	case s.RetryAfter > maxUnsealWait:
		return false, fmt.Errorf("too many failed unseal attempts: try again in %s", ceilSecond(s.RetryAfter))
	case s.RetryAfter > 0:
		w := ceilSecond(s.RetryAfter)
		fmt.Fprintf(e.stderr, "too many failed unseal attempts: waiting %s before trying again\n", w)
		time.Sleep(w)
	}
	return false, nil
}

// ceilSecond rounds d up to a whole second: a wait is never said shorter
// than it is.
func ceilSecond(d time.Duration) time.Duration {
	return (d + time.Second - 1).Truncate(time.Second)
}

func printAlreadyUnsealed(e *env, asJSON bool) error {
	if asJSON {
		return printJSON(e, map[string]any{"unsealed": true, "already": true})
	}
	fmt.Fprintln(e.stdout, "already unsealed: nothing to do")
	return nil
}

func printUnsealed(e *env, asJSON bool, p keywarden.UnsealProgress) error {
	if asJSON {
		return printJSON(e, map[string]any{"unsealed": p.Unsealed, "shares_held": p.SharesHeld, "threshold": p.Threshold})
	}
	if p.Unsealed {
		fmt.Fprintln(e.stdout, "unsealed")
	} else {
		fmt.Fprintf(e.stdout, "still sealed: %d of %d shares submitted\n", p.SharesHeld, p.Threshold)
	}
	return nil
}

func runSeal(e *env, args []string) error {
	f := newFlags("seal", e)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	sealed := func() bool {
		st, err := c.Status(ctx)
		return err == nil && st.Seal.Initialized && st.Seal.Sealed
	}
	if sealed() {
		if f.json {
			return printJSON(e, map[string]bool{"sealed": true, "already": true})
		}
		fmt.Fprintln(e.stdout, "already sealed: nothing to do")
		return nil
	}
	if err := c.Admin().Seal(ctx); err != nil {
		// Sealed meanwhile by someone else: what was asked for is so.
		if keywarden.CodeOf(err) != keywarden.CodeUnavailable || !sealed() {
			return err
		}
	}
	if f.json {
		return printJSON(e, map[string]bool{"sealed": true})
	}
	fmt.Fprintln(e.stdout, "sealed: the master key and every key are wiped from the daemon's memory")
	return nil
}

func runMasterRotate(e *env, args []string) error {
	f := newFlags("master rotate", e)
	var s sealingFlags
	s.register(f)
	noWait := f.Bool("no-wait", false, "return once the new master key is in place, while keys are re-wrapped in the background")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	ms, err := s.sealing(e)
	if err != nil {
		return err
	}
	defer clear(ms.Passphrase)
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	ms.KeepShares = func(shares []keywarden.Share) error { return writeShares(s.shareDir, shares) }
	gen, err := c.Admin().RotateMaster(ctx, ms)
	if err != nil {
		return err
	}
	if !f.json {
		fmt.Fprintf(e.stdout, "master key generation %d in place; re-wrapping keys\n", gen)
	}
	var st *keywarden.ServerStatus
	progress := newProgress(e.stderr)
	for !*noWait {
		if st, err = c.Status(ctx); err != nil {
			return err
		}
		if !st.Seal.Rotating {
			break
		}
		if !f.json {
			progress.update(fmt.Sprintf("re-wrapped %d of %d keys", st.Seal.RotationDone, st.Seal.RotationTotal))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if f.json {
		return printJSON(e, map[string]any{"generation": gen, "done": !*noWait})
	}
	if !*noWait {
		progress.done()
		fmt.Fprintln(e.stdout, "every key is re-wrapped under the new master key")
	}
	if s.shares > 0 {
		fmt.Fprintf(e.stdout, "%d new shares written to %s (any %d unseal); the old shares no longer do\n", s.shares, s.shareDir, s.threshold)
	}
	return nil
}

func runKeyRotate(e *env, args []string) error {
	f, k, done, err := openOne(e, "key rotate", args, nil)
	if err != nil {
		return err
	}
	defer done()
	info, err := k.Rotate(f.context)
	if err != nil {
		return err
	}
	return printKey(e, f.json, info)
}

func runKeyLifecycle(e *env, args []string) error {
	var minV, trim optUint
	var refuse, trusted optBool
	var rotateAfter optDuration
	f, k, done, err := openOne(e, "key lifecycle", args, func(f *flags) {
		f.Var(&minV, "min-version", "retire the versions below `V`: they no longer decrypt or verify (can only be raised)")
		f.Var(&trim, "trim-below", "delete the versions below `V` (retired ones only)")
		f.Var(&rotateAfter, "rotate-after", "make a new version when the newest is older than `duration` (0: never)")
		f.Var(&refuse, "refuse-when-spent", "refuse encryption when a version's budget is spent instead of rotating")
		f.Var(&trusted, "trusted", "make the key a trusted wrapping key (administrators only)")
	})
	if err != nil {
		return err
	}
	defer done()
	ch := keywarden.LifecycleChange{MinVersion: minV.v, TrimBelow: trim.v, RefuseWhenSpent: refuse.v, Trusted: trusted.v, RotateAfter: rotateAfter.v}
	info, err := k.SetLifecycle(f.context, ch)
	if err != nil {
		return err
	}
	return printKey(e, f.json, info)
}

// optUint and optDuration are flags that are nil unless given.
type optUint struct{ v *uint32 }

func (o *optUint) String() string { return "" }
func (o *optUint) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return errors.New("want a version number")
	}
	v := uint32(n)
	o.v = &v
	return nil
}

type optDuration struct{ v *time.Duration }

func (o *optDuration) String() string { return "" }
func (o *optDuration) Set(s string) error {
	d, err := parseDuration(s)
	if err != nil || d < 0 {
		return errors.New("want a duration such as 90m, 36h or 30d")
	}
	o.v = &d
	return nil
}

func parseWrapFormat(s string) (keywarden.WrapFormat, error) {
	switch s {
	case "", "keywarden":
		return keywarden.WrapKeywarden, nil
	case "kw":
		return keywarden.WrapKW, nil
	case "kwp":
		return keywarden.WrapKWP, nil
	case "rsa-aes-kwp":
		return keywarden.WrapRSAAESKWP, nil
	}
	return 0, usagef("unknown --format %q (want keywarden, kw, kwp or rsa-aes-kwp)", s)
}

func wrapOptions(hashName string) (*keywarden.WrapOptions, error) {
	h, err := optHash(hashName)
	if err != nil {
		return nil, err
	}
	if h == 0 {
		return nil, nil
	}
	return &keywarden.WrapOptions{Hash: crypto.Hash(h)}, nil
}

func runKeyWrap(e *env, args []string) error {
	var with, format, hashName string
	f, k, done, err := openOne(e, "key wrap", args, func(f *flags) {
		f.StringVar(&with, "with", "", "the wrapping key's `name`")
		f.StringVar(&format, "format", "keywarden", "`format`: keywarden (attributes bound), kw (RFC 3394), kwp (RFC 5649), rsa-aes-kwp")
		f.StringVar(&hashName, "hash", "", "rsa-aes-kwp: the OAEP `hash` (default sha256)")
	})
	if err != nil {
		return err
	}
	defer done()
	if with == "" {
		return usagef("--with is required")
	}
	wf, err := parseWrapFormat(format)
	if err != nil {
		return err
	}
	opts, err := wrapOptions(hashName)
	if err != nil {
		return err
	}
	ctx := f.context
	w, err := k.Client().OpenRef(ctx, with)
	if err != nil {
		return err
	}
	blob, err := w.Wrap(ctx, k, wf, opts)
	if err != nil {
		return err
	}
	return writeOutput(e, f, "blob", blob)
}

func runKeyUnwrap(e *env, args []string) error {
	f := newFlags("key unwrap", e)
	var s specFlags
	s.register(f, true)
	with := f.String("with", "", "the unwrapping key's `name`")
	format := f.String("format", "keywarden", "`format`: keywarden (attributes bound), kw (RFC 3394), kwp (RFC 5649), rsa-aes-kwp")
	hashName := f.String("hash", "", "rsa-aes-kwp: the OAEP `hash` (default sha256)")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, "the blob on stdin"); err != nil {
		return err
	}
	if *with == "" {
		return usagef("--with is required")
	}
	wf, err := parseWrapFormat(*format)
	if err != nil {
		return err
	}
	opts, err := wrapOptions(*hashName)
	if err != nil {
		return err
	}
	var spec keywarden.KeySpec
	if wf == keywarden.WrapKeywarden {
		if s.typ != "" || s.exportable || s.wrappable {
			return usagef("the keywarden format carries the key's type and flags: give only --name, --ephemeral, --share and, to narrow it, --usage")
		}
		if s.name == "" && !s.ephemeral {
			return usagef("--name is required")
		}
		u, err := keywarden.ParseUsage(s.usage)
		if err != nil {
			return usagef("%v", err)
		}
		spec = keywarden.KeySpec{Name: s.name, Ephemeral: s.ephemeral, ACL: s.shares, Usage: u}
	} else if spec, err = s.spec(); err != nil {
		return err
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	blob, big, err := readInput(e.stdin, c.MaxData())
	if err != nil {
		return err
	}
	defer clear(blob)
	if big {
		return errors.New("blob larger than one message")
	}
	w, err := c.OpenRef(ctx, *with)
	if err != nil {
		return err
	}
	k, err := w.Unwrap(ctx, blob, wf, spec, opts)
	if err != nil {
		return err
	}
	return printKey(e, f.json, k.Info())
}

func runRewrap(e *env, args []string) error {
	f := newFlags("rewrap", e)
	ref := f.String("key", "", "the key `name`")
	aad := f.String("aad", "", "the ciphertext's additional authenticated `data`")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, "the ciphertext on stdin"); err != nil {
		return err
	}
	if *ref == "" {
		return usagef("--key is required")
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	k, err := c.OpenRef(ctx, *ref)
	if err != nil {
		return err
	}
	in, big, err := readInput(e.stdin, c.MaxData())
	if err != nil {
		return err
	}
	if big {
		return fmt.Errorf("ciphertext larger than %d bytes", c.MaxData())
	}
	out, err := k.Rewrap(ctx, in, []byte(*aad))
	if err != nil {
		return err
	}
	return writeOutput(e, f, "ciphertext", out)
}

func runDataKey(e *env, args []string) error {
	f := newFlags("datakey", e)
	ref := f.String("key", "", "the AES-GCM key `name` to encrypt the data key under")
	n := f.Int("bytes", 32, "data key length in `bytes` (16 to 64)")
	aad := f.String("aad", "", "additional authenticated `data` for the encrypted data key")
	plainOut := f.String("plaintext-out", "", "also write the data key itself to this `file` (created 0600)")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	if *ref == "" {
		return usagef("--key is required")
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	k, err := c.OpenRef(ctx, *ref)
	if err != nil {
		return err
	}
	dk, err := k.GenerateDataKey(ctx, []byte(*aad), &keywarden.DataKeyOptions{Length: *n, Plaintext: *plainOut != ""})
	if err != nil {
		return err
	}
	defer clear(dk.Plaintext)
	if *plainOut != "" {
		pf, err := os.OpenFile(*plainOut, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		_, err = pf.Write(dk.Plaintext)
		if cerr := pf.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return writeOutput(e, f, "ciphertext", dk.Ciphertext)
}

func runBackup(e *env, args []string) error {
	f := newFlags("backup", e)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 1, "the backup FILE (- for stdout)"); err != nil {
		return err
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	var w io.Writer = e.stdout
	var out *os.File
	if pos[0] != "-" {
		tmp := pos[0] + ".partial"
		if out, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600); err != nil {
			return err
		}
		defer func() {
			out.Close()
			os.Remove(tmp)
		}()
		w = out
	}
	n, err := c.Admin().Backup(ctx, w)
	if err != nil {
		return err
	}
	if out != nil {
		if err := out.Sync(); err != nil {
			return err
		}
		if err := os.Rename(out.Name(), pos[0]); err != nil {
			return err
		}
		if f.json {
			return printJSON(e, map[string]any{"file": pos[0], "bytes": n})
		}
		fmt.Fprintf(e.stdout, "backed up the store to %s (%d bytes)\n", pos[0], n)
	}
	return nil
}

func runRestore(e *env, args []string) error {
	f := newFlags("restore", e)
	force := f.Bool("force", false, "replace a store that holds keys (the keys made, rotated or changed since the backup are lost; the store replaced is kept beside it)")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 1, "the backup FILE (- for stdin)"); err != nil {
		return err
	}
	var r io.Reader = e.stdin
	if pos[0] != "-" {
		in, err := os.Open(pos[0])
		if err != nil {
			return err
		}
		defer in.Close()
		r = in
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	res, err := c.Admin().Restore(ctx, r, &keywarden.RestoreOptions{Force: *force})
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(e, map[string]any{"restored_bytes": res.Bytes, "sealed": true,
			"keys_before": res.KeysBefore, "keys_in_backup": res.KeysInBackup,
			"created": res.Created, "rotated": res.Rotated, "changed": res.Changed, "returning": res.Returning,
			"yours_created": res.YoursCreated, "yours_rotated": res.YoursRotated,
			"yours_changed": res.YoursChanged, "yours_returning": res.YoursReturning, "replaced": res.Replaced})
	}
	printRestoreReport(e, res)
	fmt.Fprintf(e.stdout, "restored %d bytes; the daemon is sealed: unseal it with the backup's master passphrase or shares\n", res.Bytes)
	return nil
}

// printRestoreReport says what a restore replaced, when it replaced keys.
func printRestoreReport(e *env, res keywarden.RestoreResult) {
	if res.KeysBefore == 0 {
		return
	}
	fmt.Fprintf(e.stdout, "the store held %d keys, the backup %d\n", res.KeysBefore, res.KeysInBackup)
	line := func(what string, n uint64, desc string, yours []string) {
		if n == 0 {
			return
		}
		fmt.Fprintf(e.stdout, "%s: %d %s", what, n, desc)
		if len(yours) > 0 {
			fmt.Fprintf(e.stdout, " (yours: %s)", strings.Join(yours, ", "))
		}
		fmt.Fprintln(e.stdout)
	}
	line("lost", res.Created, "created since the backup", res.YoursCreated)
	line("lost", res.Rotated, "rotated since the backup (their newer versions)", res.YoursRotated)
	line("lost", res.Changed, "changed since the backup (attributes, access or versions)", res.YoursChanged)
	line("back", res.Returning, "destroyed since the backup", res.YoursReturning)
	if res.Replaced != "" {
		fmt.Fprintf(e.stdout, "the store replaced is kept in %s until you remove it\n", res.Replaced)
	}
}
