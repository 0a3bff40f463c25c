package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/seqpacket"
)

// Exit codes.
const (
	ExitOK       = 0
	ExitFailed   = 1
	ExitUsage    = 2
	ExitNoVerify = 3
)

// Version is the keywarden version, set at build time with
// -ldflags "-X github.com/keywarden/keywarden/internal/cli.Version=...".
var Version = "dev"

// env is what a command may touch.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	// jsonErrors: the command line has --json, so errors are JSON too.
	jsonErrors bool
	// describe, when set, receives the command's flags in place of a
	// run: parse hands them over and ends the command (describeCommand).
	describe func(*flags)
	// finish runs after the command, told whether it succeeded.
	finish []func(ok bool) error
}

type command struct {
	name    string
	args    string // synopsis after the name
	summary string
	run     func(e *env, args []string) error
}

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (u *usageError) Error() string { return u.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// errNotVerified is returned when a signature or MAC does not verify.
var errNotVerified = errors.New("does not verify")

var commands []*command

func init() {
	commands = []*command{
		{"serve", "[--dev] [--socket PATH] [flags]", "run the daemon", runServe},
		{"status", "[--wait DURATION] [--json]", "show the daemon's status and limits", runStatus},
		{"key generate", "--type T --name N [--usage U,...] [--exportable] [--wrappable] [--ephemeral] [--share uid:U=USAGES]...", "create a key", runKeyGenerate},
		{"key import", "--name N [--type T] [--usage U,...] [--exportable] [--wrappable] [--format F] [--passphrase-file F] < keyfile", "import a key (PKCS #8, SPKI, OpenSSH; the file names its type)", runKeyImport},
		{"key export", "N [--format F]", "print an exportable key's bytes", runKeyExport},
		{"key public", "N [--format pem|der|ssh]", "print a key's public half (SPKI, or an authorized_keys line)", runKeyPublic},
		{"key info", "N [--json]", "describe a key", runKeyInfo},
		{"key list", "[--json]", "list the keys you own or are granted", runKeyList},
		{"key destroy", "N", "destroy a key", runKeyDestroy},
		{"key set", "N [--usage U,...] [--exportable=false] [--wrappable=false] [--deletion-allowed[=false]] [--allow-exe PATH[,PATH]]", "narrow a key's attributes; allow deletion; restrict it to programs", runKeySet},
		{"key share", "N (--uid U | --gid G) [--usage U,...]", "grant a user or group some of a key's usages", runKeyShare},
		{"key unshare", "N (--uid U | --gid G)", "revoke a grant", runKeyUnshare},
		{"key rotate", "N", "add a new version of a key", runKeyRotate},
		{"key lifecycle", "N [--min-version V] [--trim-below V] [--rotate-after D] [--refuse-when-spent] [--trusted]", "change a key's versions and rotation settings", runKeyLifecycle},
		{"key wrap", "N --with W [--format keywarden|kw|kwp|rsa-aes-kwp] [--hash H] > blob", "wrap a key under another for transport", runKeyWrap},
		{"key unwrap", "--with W --name NEW [--type T --usage U,...] [--format F] < blob", "make a key from a wrapped blob", runKeyUnwrap},
		{"key derive-passphrase", "--name N --salt S [--type T] [--time T --memory KIB --threads P] [--usage U,...] [--exportable] [--passphrase-file F]", "derive a key from a passphrase (Argon2id)", runKeyDerivePassphrase},
		{"encrypt", "--key N [--aad A] [--hash H] [--format auto|oneshot|envelope|stream] [--chunk-size B] < plaintext > ciphertext", "encrypt stdin, of any size with an AES key", runEncrypt},
		{"decrypt", "--key N [--aad A] [--hash H] < ciphertext > plaintext", "decrypt stdin (a one-shot ciphertext or a stream)", runDecrypt},
		{"sign", "--key N [--hash H] [--padding pss|pkcs1v15] [--ed25519ph] [--format sshsig --namespace NS] < data > signature", "sign stdin", runSign},
		{"verify", "--key N --signature FILE [--hash H] [--padding P] [--ed25519ph] [--format sshsig --namespace NS] < data", "verify a signature over stdin (exit 3 if it does not verify)", runVerify},
		{"mac", "--key N [--verify FILE] < data", "compute or verify an HMAC tag (exit 3 if it does not verify)", runMAC},
		{"hash", "--alg H < data", "hash stdin (hex digest)", runHash},
		{"derive", "--key N [--peer PUBFILE] --name NEW [--type T] [--usage U,...] [--hash H] [--salt S] [--info I] [--kdf hkdf|none|x963]", "derive a new key", runDerive},
		{"rewrap", "--key N [--aad A] < ciphertext > ciphertext", "re-encrypt a ciphertext under the key's newest version", runRewrap},
		{"datakey", "--key N [--bytes 32] [--aad A] [--plaintext-out FILE] > encrypted-key", "make a data key encrypted under a key (envelope encryption)", runDataKey},
		{"ssh certify", "--ca NAME --principals P,... --validity INTERVAL [--host] [--serial N] [--key-id ID] [--option OPT]... PUBKEY_FILE", "issue an OpenSSH certificate for PUBKEY_FILE, written to PUBKEY-cert.pub", runSSHCertify},
		{"ssh-agent", "[-s | -c] [--agent-socket PATH]", "print the commands that point SSH_AUTH_SOCK at the daemon's ssh-agent socket (eval \"$(keywarden ssh-agent)\")", runSSHAgent},
		{"init", "[--passphrase-file F] [--shares N --threshold K --share-dir D] [--no-passphrase] [--force]", "create the master key (administrators)", runInit},
		{"unseal", "[--passphrase-file F | --share-file F ...] [--accept-store]", "unseal the daemon (administrators)", runUnseal},
		{"seal", "", "wipe the master key and every key from the daemon's memory (administrators)", runSeal},
		{"master rotate", "[--passphrase-file F] [--shares N --threshold K --share-dir D] [--no-wait]", "replace the master key and re-wrap every key (administrators)", runMasterRotate},
		{"backup", "FILE", "copy the whole store (ciphertext only) to FILE (administrators)", runBackup},
		{"restore", "FILE", "replace the store with a backup; the daemon is sealed after (administrators)", runRestore},
		{"store migrate", "--from bolt:DIR|etcd --to bolt:DIR|etcd [--etcd-endpoints URLS --etcd-prefix P --etcd-cert F --etcd-key F --etcd-ca F]", "copy the store between a state directory and an etcd cluster, checking every record (every daemon stopped)", runStoreMigrate},
		{"password hash", "[--time T --memory KIB --threads P] [--passphrase-file F]", "hash a password (Argon2id, PHC string)", runPasswordHash},
		{"password verify", "--hash PHC [--passphrase-file F]", "check a password against a PHC string (exit 3 if it does not match)", runPasswordVerify},
		{"kdf calibrate", "--target-ms MS [--max-memory KIB] [--threads P]", "find Argon2id parameters that take MS on the daemon's machine", runKDFCalibrate},
		{"kdf bench", "[--count N] [--memory KIB] [--time T] [--threads P] [--kdf-cgroup auto|off] [--json]", "measure the daemon's memory over many derivations and a worker's fixed cost", runKDFBench},
		{"generation show", "[--json]", "show the machine generation (VM restores and clones) and how the daemon learns of changes", runGenerationShow},
		{"generation watch", "[--after G] [--count N] [--name W] [--ack] [--json]", "print each new machine generation as the daemon sees it", runGenerationWatch},
		{"generation ack", "G [--name W]", "acknowledge generation G for a named watcher", runGenerationAck},
		{"generation forget", "--name W", "remove a named watcher", runGenerationForget},
		{"generation wait-watchers", "[--timeout D] [--json]", "wait until every watcher that counts (administrators', --generation-watcher uids', your own) has acknowledged the current generation (exit 1 on timeout)", runGenerationWaitWatchers},
		{"generation bump", "[--json]", "increase the generation after a restore the daemon cannot see (root or a --generation-admin)", runGenerationBump},
		{"audit verify", "[--public-key FILE] [--expect SEQ:HASH]... [--closed] [--json] FILE...", "check that the files of an audit log are intact (exit 1 if not)", runAuditVerify},
		{"audit tail", "[-n N] [-f] [FILTERS] [--json] [--log PATH]", "print the last audit records, and with -f each new one", runAuditTail},
		{"audit query", "[FILTERS] [--json] [--log PATH | FILE...]", "print the audit records that match the filters", runAuditQuery},
		{"doctor", "[--config FILE] [--state DIR] [--socket PATH] [--json]", "check that this machine gives the daemon what it needs (exit 1 if a check fails)", runDoctor},
		{"bench", "[--socket PATH] [--duration D] [--ops LIST] [--batch N] [--pipeline N] [--http | --ssh-agent | ...] [--json]", "measure operations in-process and through the daemon", runBench},
		{"version", "[--json]", "print the version, the source commit and how it was built (also --version)", runVersion},
		{"completion", "bash|zsh|fish", "print the shell's completion script (source <(keywarden completion bash))", runCompletion},
		{"man", "DIR", "write the manual pages keywarden(1), keywarden-serve(8) and keywarden.conf(5) to DIR", runMan},
		{"__complete", "WORD... CURRENT", "list the completions of CURRENT (for the completion scripts)", runComplete},
	}
}

// Main runs the command line args (without the program name) and returns
// the exit status.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr, getenv: os.Getenv, jsonErrors: wantsJSON(args)}
	if len(args) == 0 {
		printUsage(stdout)
		return ExitUsage
	}
	switch args[0] {
	case "help", "-h", "--help":
		return help(e, args[1:])
	case "--version", "-V":
		args = append([]string{"version"}, args[1:]...)
	}
	c := lookup(args)
	if c == nil {
		if isGroup(args[0]) {
			if len(args) == 1 || args[1] == "-h" || args[1] == "--help" {
				printGroup(stdout, args[0])
				if len(args) == 1 {
					return ExitUsage
				}
				return ExitOK
			}
			return report(e, nil, usagef("unknown command %q (run \"keywarden help %s\" for its commands)", strings.Join(args[:2], " "), args[0]))
		}
		return report(e, nil, usagef("unknown command %q (run \"keywarden help\")", args[0]))
	}
	rest := args[len(strings.Fields(c.name)):]
	err := c.run(e, rest)
	for _, fin := range e.finish {
		if ferr := fin(err == nil); err == nil {
			err = ferr
		}
	}
	return report(e, c, err)
}

// help is "keywarden help [COMMAND]": the commands, a group's commands, or
// one command's flags. An unknown command is an error.
func help(e *env, args []string) int {
	if len(args) == 0 {
		printUsage(e.stdout)
		return ExitOK
	}
	if c := lookup(args); c != nil && len(strings.Fields(c.name)) == len(args) && !hidden(c) {
		return report(e, c, c.run(e, []string{"-h"}))
	}
	if len(args) == 1 && isGroup(args[0]) {
		printGroup(e.stdout, args[0])
		return ExitOK
	}
	return report(e, nil, usagef("no such command %q (run \"keywarden help\" for the commands)", strings.Join(args, " ")))
}

// isGroup reports whether word is the first word of commands that have
// more, as "key" is of "key generate".
func isGroup(word string) bool {
	for _, c := range commands {
		if strings.HasPrefix(c.name, word+" ") {
			return true
		}
	}
	return false
}

// hidden commands serve the shell completion scripts, not people.
func hidden(c *command) bool { return strings.HasPrefix(c.name, "__") }

// wantsJSON reports whether the command line asks for JSON, so that even
// an error in it is reported as JSON.
func wantsJSON(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "--json", "-json", "--json=true", "-json=true":
			return true
		}
	}
	return false
}

func lookup(args []string) *command {
	for _, c := range commands {
		words := strings.Fields(c.name)
		if len(args) >= len(words) && strings.Join(args[:len(words)], " ") == c.name {
			return c
		}
	}
	return nil
}

// report prints err as one line (or, for --json, as a JSON object) and
// maps it to an exit status. c is nil for an error before a command.
func report(e *env, c *command, err error) int {
	if err == nil {
		return ExitOK
	}
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK // usage already printed
	}
	msg := strings.TrimPrefix(err.Error(), "keywarden: ")
	msg = strings.Join(strings.Fields(msg), " ") // one line
	code, status := errorCode(err)
	if e.jsonErrors {
		b, _ := json.Marshal(map[string]any{"error": map[string]string{"code": code, "message": msg}})
		fmt.Fprintf(e.stderr, "%s\n", b)
		return status
	}
	fmt.Fprintf(e.stderr, "keywarden: %s\n", msg)
	if status == ExitUsage && c != nil {
		fmt.Fprintf(e.stderr, "usage: keywarden %s %s\n", c.name, c.args)
	}
	return status
}

// errorCode is the code of err in a JSON error, and its exit status.
func errorCode(err error) (string, int) {
	var ue *usageError
	var ke *keywarden.Error
	var de *seqpacket.DialError
	switch {
	case errors.As(err, &ue):
		return "usage", ExitUsage
	case errors.Is(err, errNotVerified), errors.Is(err, keywarden.ErrVerification):
		return "not_verified", ExitNoVerify
	case errors.As(err, &ke):
		if ke.Code == keywarden.CodeInternal {
			return "internal", ExitFailed
		}
		return strings.ReplaceAll(ke.Code.String(), " ", "_"), ExitFailed
	case errors.As(err, &de):
		return "unavailable", ExitFailed // no daemon, or not one we may reach
	}
	return "failed", ExitFailed
}

func printUsage(w io.Writer) {
	fmt.Fprintf(w, "keywarden holds cryptographic keys so that the programs using them never do.\n\nUsage: keywarden COMMAND [flags]\n\nCommands:\n")
	for _, c := range commands {
		if !hidden(c) {
			fmt.Fprintf(w, "  %-24s %s\n", c.name, c.summary)
		}
	}
	fmt.Fprintf(w, `
Every command that talks to the daemon takes --socket PATH (default: $%s,
else %s for root or when the system daemon runs, else
%s) and --timeout DURATION. It talks only to a daemon
run by root, by you, or by the uid of --daemon-uid UID (default $%s).
Key names: NAME (your key), UID:NAME (a key another user shares), id:HEX.
Exit status: 0 success, 1 refused or failed, 2 bad usage, 3 not verified.
Flags may come before or after arguments; --flag=value and --flag value
are the same, and -n, -k and -o stand for --name, --key and --output.
Run "keywarden help COMMAND" for a command's flags, "keywarden help key"
for a group's commands.
`, keywarden.SocketEnv, keywarden.SystemSocketPath, keywarden.UserSocketPath(), keywarden.DaemonUIDEnv)
}

func (f *flags) printUsage() {
	w := f.e.stdout
	if c := lookup(strings.Fields(f.Name())); c != nil {
		fmt.Fprintf(w, "usage: keywarden %s %s\n\n%s.\n", c.name, c.args, c.summary)
	}
	fmt.Fprintln(w, "\nflags:")
	f.printDefaults(w)
}

// printGroup lists the commands of a group, such as "key".
func printGroup(w io.Writer, group string) {
	fmt.Fprintf(w, "Usage: keywarden %s COMMAND [flags]\n\nCommands:\n", group)
	for _, c := range commands {
		if strings.HasPrefix(c.name, group+" ") {
			fmt.Fprintf(w, "  %-24s %s\n", c.name, c.summary)
		}
	}
	fmt.Fprintf(w, "\nRun \"keywarden help %s COMMAND\" for a command's flags.\n", group)
}

// flags is a FlagSet with the flags every client command shares.
type flags struct {
	*flag.FlagSet
	e      *env
	socket string
	// daemonUID is --daemon-uid: a uid whose daemon to trust besides root
	// and the caller (0: $KEYWARDEN_DAEMON_UID, else none).
	daemonUID uint32
	json      bool
	encoding  string // --encoding, for commands whose result is binary
	output    string // --output, for commands whose result is binary
	timeout   time.Duration
	// context is the command's deadline, set by dial.
	context context.Context
}

func newFlags(name string, e *env) *flags {
	f := &flags{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), e: e}
	f.SetOutput(io.Discard)
	f.StringVar(&f.socket, "socket", "", "daemon socket `path` (default $"+keywarden.SocketEnv+" or the default path)")
	if binaryResult[name] {
		f.StringVar(&f.encoding, "encoding", "", "print the result as `raw` bytes, hex or base64 (default: raw bytes to a pipe or file, hex to a terminal)")
		f.StringVar(&f.output, "output", "", "write the result to `file` (mode 0600, in place only once complete) instead of stdout")
	}
	if name != "serve" {
		f.Func("daemon-uid", "trust a daemon run by this `uid` too, besides root and you (default $"+keywarden.DaemonUIDEnv+")", func(v string) error {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return fmt.Errorf("want a numeric uid (id -u USER prints it)")
			}
			f.daemonUID = uint32(n)
			return nil
		})
	}
	f.BoolVar(&f.json, "json", false, "print the result as JSON")
	f.DurationVar(&f.timeout, "timeout", 2*time.Minute, "give up after this `duration`")
	return f
}

// binaryResult names the commands whose result is binary (a ciphertext,
// signature, tag, digest or blob): one rule prints them all (writeBinary).
var binaryResult = map[string]bool{"encrypt": true, "sign": true, "mac": true, "hash": true, "key wrap": true, "rewrap": true, "datakey": true}

// want checks the number of positional arguments.
func want(pos []string, n int, what string) error {
	switch {
	case len(pos) > n && n == 0:
		return usagef("unexpected argument %q", pos[n])
	case len(pos) > n:
		return usagef("unexpected argument %q after %s", pos[n], what)
	case len(pos) < n:
		return usagef("want %s", what)
	}
	return nil
}

func (f *flags) socketPath() string {
	if f.socket != "" {
		return f.socket
	}
	if p := f.e.getenv(keywarden.SocketEnv); p != "" {
		return p
	}
	return keywarden.DefaultSocketPath()
}

// dial connects to the daemon; the returned cancel also closes the client.
func (f *flags) dial() (context.Context, *keywarden.Client, func(), error) {
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	c, err := f.dialContext(ctx)
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	f.context = ctx
	return ctx, c, func() { c.Close(); cancel() }, nil
}

// dialContext connects to the daemon at socketPath(), trusting the uid of
// --daemon-uid besides root and the caller.
func (f *flags) dialContext(ctx context.Context) (*keywarden.Client, error) {
	return keywarden.DialWithOptions(ctx, f.socketPath(), &keywarden.DialOptions{DaemonUID: f.daemonUID})
}
