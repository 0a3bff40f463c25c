package cli

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/secmem"
)

// TestMain lets the test binary be the keywarden command, for the shells
// that run the completion scripts.
func TestMain(m *testing.M) {
	if os.Getenv("KEYWARDEN_CLI_TEST_MAIN") == "1" {
		os.Exit(Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// run runs the command line with no daemon to reach.
func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	t.Setenv("KEYWARDEN_SOCKET", filepath.Join(t.TempDir(), "none.sock"))
	var out, errb bytes.Buffer
	code = Main(args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// A mistake in a flag is a usage error (exit 2) that names the flag and
// the form it wants.
func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		// A boolean flag followed by a value: it was "want a key name".
		{[]string{"key", "set", "k", "--exportable", "true"}, "keywarden: --exportable takes no separate value: write --exportable=true (or --exportable alone for true)\n"},
		{[]string{"key", "generate", "--type", "aes256-gcm", "--wrappable", "false", "--name", "x"}, "--wrappable takes no separate value: write --wrappable=false"},
		// A duration it cannot read: it was "parse error".
		{[]string{"key", "lifecycle", "k", "--rotate-after", "30x"}, `keywarden: invalid value "30x" for --rotate-after: want a duration such as 90m, 36h or 30d` + "\n"},
		{[]string{"key", "generate", "--type", "aes256-gcm", "--name", "x", "--rotate-after", "soon"}, `invalid value "soon" for --rotate-after: want a duration such as 90s, 15m, 36h or 30d`},
		{[]string{"status", "--wait", "5"}, `invalid value "5" for --wait: want a duration`},
		{[]string{"audit", "tail", "-n", "ten"}, `invalid value "ten" for -n: want a whole number`},
		{[]string{"key", "set", "k", "--exportable=maybe"}, `invalid value "maybe" for --exportable: want true or false`},
		{[]string{"key", "list", "--bogus"}, `keywarden: unknown flag --bogus for "key list"; "keywarden help key list" lists its flags`},
		{[]string{"key", "generate", "--nmae", "x"}, `unknown flag --nmae for "key generate" (did you mean --name?)`},
		{[]string{"key", "list", "--timeout"}, "keywarden: --timeout needs a value: --timeout DURATION\n"},
		{[]string{"encrypt", "--encoding", "octal"}, `invalid value "octal" for --encoding: want raw, hex or base64`},
		{[]string{"completion", "tcsh"}, "want a shell: bash, zsh or fish"},
		{[]string{"key", "info", "a", "b"}, `keywarden: unexpected argument "b" after a key name` + "\n"},
		{[]string{"key", "info"}, "keywarden: want a key name\n"},
	} {
		code, _, stderr := run(t, tc.args...)
		if code != ExitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 and %q", tc.args, code, stderr, tc.want)
		}
		if lines := strings.Split(strings.TrimSpace(stderr), "\n"); len(lines) > 2 || (len(lines) == 2 && !strings.HasPrefix(lines[1], "usage: keywarden ")) {
			t.Errorf("%q: stderr is not one error and its usage line: %q", tc.args, stderr)
		}
	}
}

// Flags come before, between and after arguments, as --flag value,
// --flag=value, Go's -flag, and the short forms; "--" ends them.
func TestFlagForms(t *testing.T) {
	e := &env{stdin: strings.NewReader(""), stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, getenv: func(string) string { return "" }}
	f := newFlags("key generate", e)
	var s specFlags
	s.register(f, true)
	pos, err := f.parse([]string{"first", "-n", "mine", "--type=ed25519", "second", "--rotate-after", "30d", "--exportable", "-json", "--", "--third"})
	if err != nil {
		t.Fatal(err)
	}
	if s.name != "mine" || s.typ != "ed25519" || s.rotate != 30*24*time.Hour || !s.exportable || !f.json {
		t.Fatalf("flags: %+v json=%v", s, f.json)
	}
	if strings.Join(pos, " ") != "first second --third" {
		t.Fatalf("arguments %q", pos)
	}

	f = newFlags("encrypt", e)
	key := f.String("key", "", "the key `name`")
	if _, err := f.parse([]string{"-k", "k1", "-o", filepath.Join(t.TempDir(), "out")}); err != nil || *key != "k1" || f.output == "" {
		t.Fatalf("-k, -o: %v %q %q", err, *key, f.output)
	}

	stdout := e.stdout
	f = newFlags("sign", e)
	if _, err := f.parse([]string{"-o", "-"}); err != nil || e.stdout != stdout || len(e.finish) != 1 {
		t.Fatalf("-o -: %v, stdout replaced: %v", err, e.stdout != stdout)
	}

	// A command's own one-letter flag wins over the short form, and has
	// its GNU long form: audit tail's -n is a count, --lines its name.
	f = newFileFlags("audit tail", e, "")
	n := f.Int("n", 10, "")
	follow := f.Bool("f", false, "")
	if _, err := f.parse([]string{"--lines", "3", "--follow"}); err != nil || *n != 3 || !*follow {
		t.Fatalf("--lines, --follow: %v %d %v", err, *n, *follow)
	}
	if _, err := f.parse([]string{"-n", "4"}); err != nil || *n != 4 {
		t.Fatalf("-n: %v %d", err, *n)
	}
	// "-" is an argument (stdin), not a flag.
	if pos, err := f.parse([]string{"-"}); err != nil || len(pos) != 1 {
		t.Fatalf("-: %v %q", err, pos)
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"90s": 90 * time.Second, "36h": 36 * time.Hour, "30d": 720 * time.Hour,
		"1d12h": 36 * time.Hour, "0d": 0} {
		if d, err := parseDuration(in); err != nil || d != want {
			t.Errorf("%q: %v %v, want %v", in, d, err, want)
		}
	}
	for _, in := range []string{"", "d", "30", "-1d", "1d-2h", "1.5d", "30days", "99999999d"} {
		if d, err := parseDuration(in); err == nil {
			t.Errorf("%q: %v, want an error", in, d)
		}
	}
}

// Help for every group, and an unknown command is an error even after help.
func TestHelp(t *testing.T) {
	code, out, _ := run(t, "key")
	if code != ExitUsage || !strings.Contains(out, "key generate") || !strings.Contains(out, "key derive-passphrase") || strings.Contains(out, "encrypt") {
		t.Fatalf("keywarden key: exit %d\n%s", code, out)
	}
	if code, out, _ := run(t, "help", "key"); code != ExitOK || !strings.Contains(out, "key rotate") {
		t.Fatalf("help key: exit %d\n%s", code, out)
	}
	if code, out, _ := run(t, "key", "--help"); code != ExitOK || !strings.Contains(out, "key rotate") {
		t.Fatalf("key --help: exit %d\n%s", code, out)
	}
	if code, _, errs := run(t, "help", "bogus"); code != ExitUsage || !strings.Contains(errs, `no such command "bogus"`) {
		t.Fatalf("help bogus: exit %d %q", code, errs)
	}
	if code, _, errs := run(t, "key", "bogus"); code != ExitUsage || !strings.Contains(errs, `unknown command "key bogus"`) {
		t.Fatalf("key bogus: exit %d %q", code, errs)
	}
	code, out, _ = run(t, "help", "key", "generate")
	if code != ExitOK || !strings.Contains(out, "  -n, --name NAME\n") || !strings.Contains(out, "  --rotate-after DURATION\n") {
		t.Fatalf("help key generate: exit %d\n%s", code, out)
	}
	if _, out, _ := run(t, "help"); strings.Contains(out, "__complete") {
		t.Fatal("help lists the hidden __complete")
	}
}

// With --json an error is a JSON object on stderr, whatever its kind.
func TestJSONErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code string
		exit int
	}{
		{[]string{"key", "list", "--bogus", "--json"}, "usage", ExitUsage},
		{[]string{"key", "list", "--json"}, "unavailable", ExitFailed}, // no daemon
		{[]string{"key", "set", "k", "--json", "--exportable", "true"}, "usage", ExitUsage},
	} {
		code, stdout, stderr := run(t, tc.args...)
		var v struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		dec := json.NewDecoder(strings.NewReader(stderr))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&v); err != nil || dec.More() {
			t.Fatalf("%q: stderr is not one JSON error: %v %q", tc.args, err, stderr)
		}
		if code != tc.exit || v.Error.Code != tc.code || v.Error.Message == "" || stdout != "" {
			t.Fatalf("%q: exit %d, %+v, stdout %q", tc.args, code, v, stdout)
		}
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		code, out, _ := run(t, args...)
		if code != ExitOK || !strings.HasPrefix(out, "keywarden "+Version+" (protocol 1)\n") {
			t.Fatalf("%q: exit %d\n%s", args, code, out)
		}
		for _, want := range []string{"\ncommit:", "\ngo:            go1.", "\nruntimesecret: ", "\nfips140:       "} {
			if !strings.Contains(out, want) {
				t.Fatalf("%q: no %q in\n%s", args, want, out)
			}
		}
	}
	_, out, _ := run(t, "version", "--json")
	var b buildInfo
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		t.Fatal(err)
	}
	if b.RuntimeSecret != secmem.RuntimeSecret || b.Go == "" || b.Commit == "" || b.Protocol != 1 {
		t.Fatalf("%+v", b)
	}
}

// Progress overwrites one line on a terminal and is one line a step
// elsewhere, with no "\r" in a log.
func TestProgress(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf)
	p.update("re-wrapped 1 of 3 keys")
	p.update("re-wrapped 1 of 3 keys")
	p.update("re-wrapped 3 of 3 keys")
	p.done()
	if got := buf.String(); got != "re-wrapped 1 of 3 keys\nre-wrapped 3 of 3 keys\n" {
		t.Fatalf("not a terminal: %q", got)
	}
	master, slave := openPTY(t)
	p = newProgress(slave)
	p.update("step 1")
	p.update("step 10")
	p.update("step 2")
	p.done()
	want := "\rstep 1\rstep 10\rstep 2 "
	var got []byte
	chunk := make([]byte, 100)
	for len(got) < len(want) {
		n, err := master.Read(chunk)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, chunk[:n]...)
	}
	if !strings.HasPrefix(string(got), want) {
		t.Fatalf("terminal: %q", got)
	}
}

// Every command hands over its flags without running, which completion,
// man pages and help rely on: a command that did something before parsing
// its flags would fail here.
func TestEveryCommandDescribes(t *testing.T) {
	for _, c := range commands {
		if f := describeCommand(c); f == nil && c.name != "__complete" {
			t.Errorf("%q does not parse its flags with newFlags before anything else", c.name)
		}
	}
}

func TestCompletions(t *testing.T) {
	complete := func(words ...string) string {
		var out bytes.Buffer
		e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &out, getenv: func(string) string { return "" }}
		if err := runComplete(e, words); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	t.Setenv("KEYWARDEN_SOCKET", filepath.Join(t.TempDir(), "none.sock"))
	for _, tc := range []struct {
		words      []string
		want, not_ string
	}{
		{[]string{""}, "key\tkey commands\n", "__complete"},
		{[]string{"ke"}, "key\t", "encrypt"},
		{[]string{"key", "ge"}, "generate\tcreate a key\n", "list"},
		{[]string{"help", "key", ""}, "rotate\t", "encrypt"},
		{[]string{"key", "generate", "--ty"}, "--type\tkey type: ", "--name"},
		{[]string{"key", "generate", "-"}, "-n\tkey name", "--follow"},
		{[]string{"audit", "tail", "--f"}, "--follow\t", "--type"},
		{[]string{"completion", ""}, "bash\nfish\nzsh\n", "--"},
		{[]string{"key", "generate", "--name", "k", "--type", "ed"}, "ed25519\n", "aes"},
		{[]string{"serve", "--log-level", ""}, "debug\ninfo\nwarn\nerror\n", "--"},
		{[]string{"-"}, "--version\t", "key"},
	} {
		got := complete(tc.words...)
		if !strings.Contains(got, tc.want) || (tc.not_ != "" && strings.Contains(got, tc.not_)) {
			t.Errorf("%q: got\n%s\nwant %q and no %q", tc.words, got, tc.want, tc.not_)
		}
	}
	// No daemon: no key names and no error, for a key argument and --key.
	for _, words := range [][]string{{"key", "info", ""}, {"encrypt", "--key", ""}, {"key", "info", "--socket", "/nonexistent", ""}} {
		if got := complete(words...); got != "" {
			t.Errorf("%q: %q, want nothing", words, got)
		}
	}
}

// asKeywarden puts a "keywarden" that is this test binary on PATH.
func asKeywarden(t *testing.T) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(self, filepath.Join(dir, "keywarden")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("KEYWARDEN_CLI_TEST_MAIN", "1")
	t.Setenv("KEYWARDEN_SOCKET", filepath.Join(dir, "none.sock"))
}

// The bash script loads, registers the function and completes through
// "keywarden __complete"; zsh and fish check theirs where installed.
func TestCompletionScripts(t *testing.T) {
	asKeywarden(t)
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	out, err := exec.Command("bash", "-c", `source <(keywarden completion bash) && complete -p keywarden &&
		COMP_WORDS=(keywarden key gen) COMP_CWORD=2 && _keywarden && echo "${COMPREPLY[*]}" &&
		COMP_WORDS=(keywarden key set mykey --exp) COMP_CWORD=4 && _keywarden && echo "${COMPREPLY[*]}"`).CombinedOutput()
	if err != nil || string(out) != "complete -o default -F _keywarden keywarden\ngenerate\n--exportable\n" {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	for _, sh := range []string{"zsh", "fish"} {
		if _, err := exec.LookPath(sh); err != nil {
			t.Logf("no %s: its script is not checked", sh)
			continue
		}
		script := filepath.Join(t.TempDir(), "keywarden."+sh)
		if err := os.WriteFile(script, []byte(shells[sh]), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(sh, "-n", script).CombinedOutput(); err != nil {
			t.Errorf("%s -n: %v\n%s", sh, err, out)
		}
	}
	if _, err := exec.LookPath("zsh"); err == nil {
		// Registered with compdef, and completing: _describe and _files
		// stand in for zsh's, printing what they are given.
		out, err := exec.Command("zsh", "-c", `autoload -U compinit && compinit -u && source <(keywarden completion zsh) &&
			print -r -- ${_comps[keywarden]} &&
			_describe() { print -l -- "${(@P)${@[-1]}}"; } && _files() { print FILES; } &&
			words=(keywarden key gen) CURRENT=3 && _keywarden &&
			words=(keywarden backup "") CURRENT=3 && _keywarden`).CombinedOutput()
		if err != nil || string(out) != "_keywarden\ngenerate:create a key\nFILES\n" {
			t.Errorf("zsh: %v\n%s", err, out)
		}
	}
	if _, err := exec.LookPath("fish"); err == nil {
		out, err := exec.Command("fish", "--no-config", "-c", `keywarden completion fish | source; complete -C'keywarden key gen'`).CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "generate\tcreate a key") {
			t.Errorf("fish: %v\n%s", err, out)
		}
	}
}

// The pages render without warnings and keywarden.conf(5) has a key for
// every serve flag but --config and --check-config.
func TestManPages(t *testing.T) {
	pages := manPages()
	serve := describeCommand(lookup([]string{"serve"}))
	serve.VisitAll(func(fl *flag.Flag) {
		// The file cannot name itself, nor ask to be checked.
		if fl.Name != "config" && fl.Name != "check-config" && !strings.Contains(pages["keywarden.conf.5"], "\n.TP\n\\fB"+roff(fl.Name)+"\\fR = ") {
			t.Errorf("keywarden.conf(5) has no key %s", fl.Name)
		}
		if !strings.Contains(pages["keywarden-serve.8"], `\fB`+roff(flagSpelling(fl.Name))+`\fR`) {
			t.Errorf("keywarden-serve(8) has no flag --%s", fl.Name)
		}
	})
	for _, c := range commands {
		if !hidden(c) && !strings.Contains(pages["keywarden.1"], `.SS "keywarden `+roff(c.name)+`"`) {
			t.Errorf("keywarden(1) has no %q", c.name)
		}
	}
	if strings.Contains(pages["keywarden.1"], "__complete") {
		t.Error("keywarden(1) shows __complete")
	}
	if _, err := exec.LookPath("groff"); err != nil {
		t.Skip("no groff: the pages are not rendered")
	}
	dir := t.TempDir()
	var out bytes.Buffer
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &out, getenv: func(string) string { return "" }}
	if err := runMan(e, []string{dir}); err != nil {
		t.Fatal(err)
	}
	for name, title := range map[string]string{"keywarden.1": "KEYWARDEN(1)", "keywarden-serve.8": "KEYWARDEN-SERVE(8)", "keywarden.conf.5": "KEYWARDEN.CONF(5)"} {
		p := filepath.Join(dir, name)
		if out, err := exec.Command("groff", "-man", "-ww", "-z", p).CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("groff %s: %v\n%s", name, err, out)
		}
		if _, err := exec.LookPath("man"); err == nil {
			cmd := exec.Command("man", "-l", p)
			cmd.Env = append(os.Environ(), "MANPAGER=cat", "MANWIDTH=80")
			out, err := cmd.Output()
			if err != nil || !strings.Contains(string(out), title) || !strings.Contains(string(out), "NAME") {
				t.Errorf("man -l %s: %v\n%s", name, err, out)
			}
		}
	}
}
