package cli

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/keywarden/keywarden"
)

// specFlags are the flags that describe a new key.
type specFlags struct {
	typ        string
	name       string
	usage      string
	exportable bool
	wrappable  bool
	ephemeral  bool
	shares     shareList
	rotate     time.Duration
	refuse     bool
	ssh        bool
}

func (s *specFlags) register(f *flags, withType bool) {
	if withType {
		f.StringVar(&s.typ, "type", "", "key `type`: "+typeNames())
	}
	f.StringVar(&s.name, "name", "", "key `name`, unique among your keys")
	f.StringVar(&s.usage, "usage", "", "comma-separated `usages` (encrypt,decrypt,sign,verify,wrap,unwrap,derive); default: all the type allows")
	f.BoolVar(&s.exportable, "exportable", false, "allow the key to leave the daemon in plaintext (cannot be switched on later)")
	f.BoolVar(&s.wrappable, "wrappable", false, "allow the key to leave the daemon wrapped under another key")
	f.BoolVar(&s.ephemeral, "ephemeral", false, "the key dies with this command's connection")
	f.Var(&s.shares, "share", "grant `uid:U=USAGES` or gid:G=USAGES (repeatable)")
	f.DurationVar(&s.rotate, "rotate-after", 0, "make a new version when the newest is older than this `duration` (default: never)")
	f.BoolVar(&s.ssh, "ssh", false, "offer the key to SSH clients through the daemon's ssh-agent sockets (as \"key set --ssh\")")
	f.BoolVar(&s.refuse, "refuse-when-spent", false, "refuse encryption when a version's nonce budget (2^32) is spent, instead of rotating")
}

// finish marks a new key k for SSH if --ssh asks for it, and prints it.
func (s *specFlags) finish(ctx context.Context, e *env, f *flags, k *keywarden.Key) error {
	info := k.Info()
	if s.ssh {
		yes := true
		var err error
		if info, err = k.SetLifecycle(ctx, keywarden.LifecycleChange{SSH: &yes}); err != nil {
			return fmt.Errorf("the key was made, but not marked for SSH: %w", err)
		}
	}
	return printKey(e, f.json, info)
}

func typeNames() string {
	var n []string
	for _, t := range keywarden.KeyTypes() {
		n = append(n, string(t))
	}
	return strings.Join(n, ", ")
}

func (s *specFlags) spec() (keywarden.KeySpec, error) {
	if s.typ == "" {
		return keywarden.KeySpec{}, usagef("--type is required (%s)", typeNames())
	}
	return s.specOf(keywarden.KeyType(s.typ))
}

// specOf is spec for a key of type t, which a key file may name.
func (s *specFlags) specOf(t keywarden.KeyType) (keywarden.KeySpec, error) {
	if !t.Valid() {
		return keywarden.KeySpec{}, usagef("unknown key type %q (want %s)", s.typ, typeNames())
	}
	if s.name == "" && !s.ephemeral {
		return keywarden.KeySpec{}, usagef("--name is required")
	}
	u, err := keywarden.ParseUsage(s.usage)
	if err != nil {
		return keywarden.KeySpec{}, usagef("%v", err)
	}
	if s.rotate < 0 {
		return keywarden.KeySpec{}, usagef("--rotate-after must not be negative")
	}
	return keywarden.KeySpec{Name: s.name, Type: t, Usage: u, Exportable: s.exportable,
		Wrappable: s.wrappable, Ephemeral: s.ephemeral, ACL: s.shares, RotateAfter: s.rotate, RefuseWhenSpent: s.refuse}, nil
}

// shareList parses repeated --share uid:U=USAGES / gid:G=USAGES.
type shareList []keywarden.ACLEntry

func (l *shareList) String() string { return "" }

func (l *shareList) Set(v string) error {
	who, usages, _ := strings.Cut(v, "=")
	kind, num, ok := strings.Cut(who, ":")
	if !ok || (kind != "uid" && kind != "gid") {
		return fmt.Errorf("want uid:U=USAGES or gid:G=USAGES, got %q", v)
	}
	id, err := strconv.ParseUint(num, 10, 32)
	if err != nil {
		return fmt.Errorf("invalid %s %q", kind, num)
	}
	u, err := keywarden.ParseUsage(usages)
	if err != nil {
		return err
	}
	*l = append(*l, keywarden.ACLEntry{Group: kind == "gid", ID: uint32(id), Usage: u})
	return nil
}

func runKeyGenerate(e *env, args []string) error {
	f := newFlags("key generate", e)
	var s specFlags
	s.register(f, true)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	spec, err := s.spec()
	if err != nil {
		return err
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	k, err := c.Generate(ctx, spec)
	if err != nil {
		return err
	}
	return s.finish(ctx, e, f, k)
}

func parseFormat(s string, public bool) (keywarden.KeyFormat, error) {
	switch strings.ToLower(s) {
	case "", "auto":
		return keywarden.FormatAuto, nil
	case "raw":
		return keywarden.FormatRaw, nil
	case "der":
		if public {
			return keywarden.FormatSPKIDER, nil
		}
		return keywarden.FormatPKCS8DER, nil
	case "pem":
		if public {
			return keywarden.FormatSPKIPEM, nil
		}
		return keywarden.FormatPKCS8PEM, nil
	case "pkcs8", "pkcs8-der":
		return keywarden.FormatPKCS8DER, nil
	case "pkcs8-pem":
		return keywarden.FormatPKCS8PEM, nil
	case "spki", "spki-der":
		return keywarden.FormatSPKIDER, nil
	case "spki-pem":
		return keywarden.FormatSPKIPEM, nil
	}
	return 0, usagef("unknown key format %q (want auto, raw, der, pem, pkcs8, pkcs8-pem, spki, spki-pem)", s)
}

// maxKeyFile bounds what import reads from stdin.
const maxKeyFile = 64 << 10

func runKeyImport(e *env, args []string) error {
	f := newFlags("key import", e)
	var s specFlags
	s.register(f, true)
	format := f.String("format", "auto", "input `format`: auto, raw, der, pem, pkcs8, pkcs8-pem, spki, spki-pem (auto also reads OpenSSH keys)")
	passFile := f.String("passphrase-file", "", "read an encrypted OpenSSH key's passphrase from `FILE` (one trailing newline is removed) instead of the terminal")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, "the key on stdin"); err != nil {
		return err
	}
	// Check the flags before reading the key: with no --type, the other
	// flags are checked as for any type and the file names the type.
	typ := keywarden.KeyType(s.typ)
	if s.typ == "" {
		typ = keywarden.Ed25519
	}
	spec, err := s.specOf(typ)
	if err != nil {
		return err
	}
	kf, err := parseFormat(*format, false)
	if err != nil {
		return err
	}
	if s.typ == "" && kf == keywarden.FormatRaw {
		return usagef("raw key bytes do not name their type: give --type (%s)", typeNames())
	}
	if *passFile == "-" {
		return usagef("the key is on stdin: --passphrase-file needs a file")
	}
	data, err := io.ReadAll(io.LimitReader(e.stdin, maxKeyFile+1))
	if err != nil {
		return fmt.Errorf("read key: %w", err)
	}
	defer clear(data)
	if len(data) == 0 {
		return usagef("no key on stdin")
	}
	if len(data) > maxKeyFile {
		return fmt.Errorf("the key file is larger than %d bytes", maxKeyFile)
	}
	// The file names its type; an OpenSSH key is converted to PKCS #8 (or
	// SPKI) here, the daemon knowing only those.
	if s.typ == "" || (kf == keywarden.FormatAuto && isOpenSSH(data)) {
		file, err := readKeyFile(data, func() ([]byte, error) {
			if *passFile == "" && !haveTerminal() {
				return nil, usagef("the OpenSSH key is encrypted and there is no terminal to ask for its passphrase: give --passphrase-file FILE")
			}
			return readPassphrase(e, *passFile, "passphrase", false)
		})
		if errors.Is(err, errNoType) {
			return usagef("%v", err)
		}
		if err != nil {
			return err
		}
		if file.wipe {
			defer clear(file.data)
		}
		if s.typ == "" {
			spec.Type = file.typ
		}
		if kf == keywarden.FormatAuto || file.wipe {
			kf, data = file.format, file.data
		}
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	k, err := c.Import(ctx, spec, kf, data)
	if err != nil {
		return err
	}
	return s.finish(ctx, e, f, k)
}

// openOne parses flags, expects one key reference, and opens it.
func openOne(e *env, name string, args []string, extra func(*flags)) (*flags, *keywarden.Key, func(), error) {
	f := newFlags(name, e)
	if extra != nil {
		extra(f)
	}
	pos, err := f.parse(args)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := want(pos, 1, "a key name"); err != nil {
		return nil, nil, nil, err
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return nil, nil, nil, err
	}
	k, err := c.OpenRef(ctx, pos[0])
	if err != nil {
		done()
		return nil, nil, nil, err
	}
	return f, k, done, nil
}

func runKeyExport(e *env, args []string) error {
	var format string
	f, k, done, err := openOne(e, "key export", args, func(f *flags) {
		f.StringVar(&format, "format", "", "output `format`: raw (secret keys), pem (default for private keys), der")
	})
	if err != nil {
		return err
	}
	defer done()
	kf := keywarden.FormatAuto
	switch {
	case format == "" && k.Info().Class == keywarden.ClassPrivate:
		kf = keywarden.FormatPKCS8PEM
	case format == "" && k.Info().Class == keywarden.ClassPublic:
		kf = keywarden.FormatSPKIPEM
	case format != "":
		if kf, err = parseFormat(format, k.Info().Class == keywarden.ClassPublic); err != nil {
			return err
		}
	}
	ctx := f.context
	b, err := k.Export(ctx, kf)
	if err != nil {
		return err
	}
	defer clear(b)
	if f.json {
		return printJSON(e, map[string]string{"key": base64.StdEncoding.EncodeToString(b)})
	}
	_, err = e.stdout.Write(b)
	return err
}

func runKeyPublic(e *env, args []string) error {
	var format string
	f, k, done, err := openOne(e, "key public", args, func(f *flags) {
		f.StringVar(&format, "format", "pem", "output `format`: pem, der, or ssh (an authorized_keys line, usable in allowed_signers)")
	})
	if err != nil {
		return err
	}
	defer done()
	if format == "ssh" {
		line, err := authorizedKey(k.Info())
		if err != nil {
			return err
		}
		if f.json {
			return printJSON(e, map[string]string{"public_key": strings.TrimSuffix(string(line), "\n")})
		}
		_, err = e.stdout.Write(line)
		return err
	}
	kf := keywarden.FormatSPKIPEM
	if format == "der" {
		kf = keywarden.FormatSPKIDER
	} else if format != "pem" {
		return usagef("unknown format %q (want pem, der or ssh)", format)
	}
	ctx := f.context
	b, err := k.ExportPublic(ctx, kf)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(e, map[string]string{"public_key": base64.StdEncoding.EncodeToString(b)})
	}
	_, err = e.stdout.Write(b)
	return err
}

func runKeyInfo(e *env, args []string) error {
	f, k, done, err := openOne(e, "key info", args, nil)
	if err != nil {
		return err
	}
	defer done()
	return printKey(e, f.json, k.Info())
}

func runKeyList(e *env, args []string) error {
	f := newFlags("key list", e)
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
	keys, err := c.List(ctx)
	if err != nil {
		return err
	}
	return printKeyList(e, f.json, keys)
}

func runKeyDestroy(e *env, args []string) error {
	f, k, done, err := openOne(e, "key destroy", args, nil)
	if err != nil {
		return err
	}
	defer done()
	ctx := f.context
	info := k.Info()
	if err := k.Destroy(ctx); err != nil {
		return err
	}
	if f.json {
		return printJSON(e, map[string]string{"destroyed": info.ID.String()})
	}
	fmt.Fprintf(e.stdout, "destroyed %s (%s)\n", info.Name, info.ID)
	return nil
}

// optBool is a boolean flag that remembers whether it was given.
type optBool struct{ v *bool }

func (o *optBool) String() string {
	if o == nil || o.v == nil {
		return ""
	}
	return strconv.FormatBool(*o.v)
}
func (o *optBool) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	o.v = &b
	return nil
}
func (o *optBool) IsBoolFlag() bool { return true }

func runKeySet(e *env, args []string) error {
	var usage string
	var exp, wrap, del, sshMark optBool
	var exes programsFlag
	f, k, done, err := openOne(e, "key set", args, func(f *flags) {
		f.StringVar(&usage, "usage", "", "the new, narrower `usages`")
		f.Var(&exp, "exportable", "set exportable (only false is allowed once it is off)")
		f.Var(&wrap, "wrappable", "set wrappable (only false is allowed once it is off)")
		f.Var(&del, "deletion-allowed", "allow \"key destroy\" to delete the key (=false: protect it again)")
		f.Var(&sshMark, "ssh", "offer the key to SSH clients through the daemon's ssh-agent sockets (=false: stop)")
		f.Var(&exes, "allow-exe", "let only these programs use the key: `PATH[,PATH]`, each PATH or PATH@sha256:HEX\n(PATH@sha256: the file's hash now); repeatable; \"\" lets any program use it again")
	})
	if err != nil {
		return err
	}
	defer done()
	var a keywarden.Attributes
	if usage != "" {
		u, err := keywarden.ParseUsage(usage)
		if err != nil {
			return usagef("%v", err)
		}
		a.Usage = &u
	}
	a.Exportable, a.Wrappable = exp.v, wrap.v
	if a.Usage == nil && a.Exportable == nil && a.Wrappable == nil && del.v == nil && sshMark.v == nil && !exes.set {
		return usagef("nothing to change: give --usage, --exportable, --wrappable, --deletion-allowed, --ssh or --allow-exe")
	}
	var lc keywarden.LifecycleChange
	lc.DeletionAllowed, lc.SSH = del.v, sshMark.v
	if exes.set {
		ps, err := exes.programs()
		if err != nil {
			return usagef("--allow-exe: %v", err)
		}
		lc.AllowedPrograms = &ps
	}
	ctx := f.context
	info := k.Info()
	if a.Usage != nil || a.Exportable != nil || a.Wrappable != nil {
		if info, err = k.SetAttributes(ctx, a); err != nil {
			return err
		}
	}
	if lc.DeletionAllowed != nil || lc.AllowedPrograms != nil || lc.SSH != nil {
		if info, err = k.SetLifecycle(ctx, lc); err != nil {
			return err
		}
	}
	return printKey(e, f.json, info)
}

type principalFlags struct {
	uid, gid int64
}

func (p *principalFlags) register(f *flags) {
	f.Int64Var(&p.uid, "uid", -1, "the user `uid`")
	f.Int64Var(&p.gid, "gid", -1, "the group `gid`")
}

func (p *principalFlags) entry() (keywarden.ACLEntry, error) {
	switch {
	case (p.uid >= 0) == (p.gid >= 0):
		return keywarden.ACLEntry{}, usagef("give exactly one of --uid and --gid")
	case p.uid > 0xffffffff || p.gid > 0xffffffff:
		return keywarden.ACLEntry{}, usagef("uid or gid out of range")
	case p.uid >= 0:
		return keywarden.ACLEntry{ID: uint32(p.uid)}, nil
	}
	return keywarden.ACLEntry{Group: true, ID: uint32(p.gid)}, nil
}

func runKeyShare(e *env, args []string) error {
	var p principalFlags
	var usage string
	f, k, done, err := openOne(e, "key share", args, func(f *flags) {
		p.register(f)
		f.StringVar(&usage, "usage", "", "the `usages` to grant (default: none, the key is only visible)")
	})
	if err != nil {
		return err
	}
	defer done()
	ent, err := p.entry()
	if err != nil {
		return err
	}
	if ent.Usage, err = keywarden.ParseUsage(usage); err != nil {
		return usagef("%v", err)
	}
	acl := []keywarden.ACLEntry{ent}
	for _, old := range k.Info().ACL {
		if old.Group != ent.Group || old.ID != ent.ID {
			acl = append(acl, old)
		}
	}
	ctx := f.context
	info, err := k.SetACL(ctx, acl)
	if err != nil {
		return err
	}
	return printKey(e, f.json, info)
}

func runKeyUnshare(e *env, args []string) error {
	var p principalFlags
	f, k, done, err := openOne(e, "key unshare", args, p.register)
	if err != nil {
		return err
	}
	defer done()
	ent, err := p.entry()
	if err != nil {
		return err
	}
	var acl []keywarden.ACLEntry
	for _, old := range k.Info().ACL {
		if old.Group != ent.Group || old.ID != ent.ID {
			acl = append(acl, old)
		}
	}
	ctx := f.context
	info, err := k.SetACL(ctx, acl)
	if err != nil {
		return err
	}
	return printKey(e, f.json, info)
}

// programsFlag collects --allow-exe: comma-separated programs, the flag
// repeatable; given empty, it lifts the restriction.
type programsFlag struct {
	set     bool
	entries []string
}

func (p *programsFlag) String() string {
	if p == nil {
		return ""
	}
	return strings.Join(p.entries, ",")
}

func (p *programsFlag) Set(s string) error {
	p.set = true
	for e := range strings.SplitSeq(s, ",") {
		if e != "" {
			p.entries = append(p.entries, e)
		}
	}
	return nil
}

// programs resolves the entries as the kernel names executables: an
// absolute path with symbolic links resolved (/proc/PID/exe shows the file
// run, not the link). PATH@sha256 takes the hash of the file now.
func (p *programsFlag) programs() ([]keywarden.Program, error) {
	ps := []keywarden.Program{}
	for _, e := range p.entries {
		path, hashNow := strings.CutSuffix(e, "@sha256")
		var prog keywarden.Program
		if hashNow {
			prog.Path = path
		} else {
			var err error
			if prog, err = keywarden.ParseProgram(e); err != nil {
				return nil, err
			}
		}
		abs, err := filepath.Abs(prog.Path)
		if err != nil {
			return nil, err
		}
		if r, err := filepath.EvalSymlinks(abs); err == nil {
			abs = r
		} else if hashNow {
			return nil, err
		}
		prog.Path = abs
		if hashNow {
			b, err := os.ReadFile(abs)
			if err != nil {
				return nil, err
			}
			sum := sha256.Sum256(b)
			prog.SHA256 = sum[:]
		}
		ps = append(ps, prog)
	}
	return ps, nil
}
