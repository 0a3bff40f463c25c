package cli

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/keywarden/keywarden"
)

// The manual pages are made from the command table and the commands' own
// flags, so they cannot fall behind: keywarden(1) for the commands,
// keywarden-serve(8) for the daemon, keywarden.conf(5) for its
// configuration file, whose keys are serve's flags.

func runMan(e *env, args []string) error {
	f := &flags{FlagSet: flag.NewFlagSet("man", flag.ContinueOnError), e: e}
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want the directory to write the pages to")
	}
	pages := manPages()
	for _, name := range []string{"keywarden.1", "keywarden-serve.8", "keywarden.conf.5"} {
		if err := os.WriteFile(filepath.Join(pos[0], name), []byte(pages[name]), 0o644); err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, filepath.Join(pos[0], name))
	}
	return nil
}

// roff escapes s as text in a man page.
func roff(s string) string {
	s = strings.NewReplacer(`\`, `\e`, "-", `\-`).Replace(s)
	var ascii strings.Builder
	for _, r := range s {
		if r < 128 {
			ascii.WriteRune(r)
		} else {
			fmt.Fprintf(&ascii, `\[u%04X]`, r)
		}
	}
	lines := strings.Split(ascii.String(), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			lines[i] = `\&` + l
		}
	}
	return strings.Join(lines, "\n")
}

// neutral replaces what depends on who made the pages (the state
// directory's default, the home directory) by what holds for everyone.
func neutral(s string) string {
	r := []string{DefaultStateDir(), "/var/lib/keywarden (as root; else $XDG_STATE_HOME/keywarden)"}
	if h, err := os.UserHomeDir(); err == nil && h != "/" {
		r = append(r, h, "~")
	}
	return strings.NewReplacer(r...).Replace(s)
}

func manHeader(b *strings.Builder, title, section, name, what string) {
	fmt.Fprintf(b, ".TH %s %s \"\" \"keywarden %s\" \"%s\"\n", title, section, roff(Version), map[string]string{
		"1": "User Commands", "5": "File Formats", "8": "System Administration"}[section])
	fmt.Fprintf(b, ".SH NAME\n%s \\- %s\n", name, roff(what))
}

// manFlags writes docs as a list of tagged paragraphs, leaving out those
// in skip (flags described once for every command).
func manFlags(b *strings.Builder, docs []flagDoc, skip map[string]string) {
	for _, d := range docs {
		if u, ok := skip[d.name]; ok && u == d.usage {
			continue
		}
		b.WriteString(".TP\n")
		var tag []string
		if d.short != "" {
			tag = append(tag, `\fB\-`+d.short+`\fR`)
		}
		tag = append(tag, `\fB`+roff(flagSpelling(d.name))+`\fR`)
		if d.long != "" {
			tag = append(tag, `\fB\-\-`+roff(d.long)+`\fR`)
		}
		t := strings.Join(tag, ", ")
		if d.value != "" {
			t += ` \fI` + roff(d.value) + `\fR`
		}
		b.WriteString(t + "\n")
		u := neutral(d.usage)
		if d.def != "" {
			u += " (default " + neutral(d.def) + ")"
		}
		b.WriteString(roff(strings.ReplaceAll(u, "\n", " ")) + "\n")
	}
}

// manPages returns each page by its file name.
func manPages() map[string]string {
	pages := map[string]string{}
	var common map[string]string
	if c := lookup([]string{"version"}); c != nil {
		if f := describeCommand(c); f != nil {
			common = map[string]string{}
			for _, d := range f.docs() {
				common[d.name] = d.usage
			}
		}
	}

	var b strings.Builder
	manHeader(&b, "KEYWARDEN", "1", "keywarden", "hold cryptographic keys so that the programs using them never do")
	b.WriteString(".SH SYNOPSIS\n.B keywarden\n.I command\n.RI [ flags ]\n.RI [ arguments ]\n")
	b.WriteString(".SH DESCRIPTION\n" + roff("keywarden is a local key service for Linux. Applications use keys; the keywarden daemon holds them, "+
		"in locked memory, and performs the operations the keys allow for the callers the kernel identifies. "+
		"\"keywarden serve\" runs the daemon (keywarden-serve(8)); every other command talks to it.") + "\n")
	b.WriteString(".PP\n" + roff("Flags may come before or after arguments; --flag=value and --flag value are the same; "+
		"-n, -k and -o stand for --name, --key and --output where a command has those. Key names are NAME (your key), "+
		"UID:NAME (a key another user shares) or id:HEX.") + "\n")
	b.WriteString(".SH COMMON FLAGS\nThese apply to every command that talks to the daemon.\n")
	if c := lookup([]string{"version"}); c != nil {
		if f := describeCommand(c); f != nil {
			manFlags(&b, f.docs(), nil)
		}
	}
	b.WriteString(".SH COMMANDS\n")
	for _, c := range commands {
		if hidden(c) {
			continue
		}
		fmt.Fprintf(&b, ".SS \"keywarden %s\"\n", roff(c.name))
		if c.args != "" {
			fmt.Fprintf(&b, ".B keywarden %s\n.I \"%s\"\n.PP\n", roff(c.name), strings.ReplaceAll(roff(c.args), `"`, `\(dq`))
		}
		b.WriteString(roff(neutral(c.summary)) + ".\n")
		if c.name == "serve" {
			b.WriteString(".PP\nSee keywarden\\-serve(8) for its flags.\n")
			continue
		}
		if f := describeCommand(c); f != nil {
			manFlags(&b, f.docs(), common)
		}
	}
	fmt.Fprintf(&b, ".SH ENVIRONMENT\n.TP\n.B %s\nthe daemon's socket (default %s for root or when the system daemon runs, else $XDG_RUNTIME_DIR/keywarden/keywarden.sock)\n",
		keywarden.SocketEnv, roff(keywarden.SystemSocketPath))
	fmt.Fprintf(&b, ".TP\n.B %s\na uid whose daemon to trust besides root and the caller\n", keywarden.DaemonUIDEnv)
	b.WriteString(".SH EXIT STATUS\n0 success, 1 refused or failed, 2 bad usage, 3 not verified (a signature, MAC or password).\n" +
		"With \\-\\-json an error is printed on stderr as {\"error\":{\"code\":\"...\",\"message\":\"...\"}}.\n")
	b.WriteString(".SH SEE ALSO\n.BR keywarden\\-serve (8),\n.BR keywarden.conf (5)\n")
	pages["keywarden.1"] = b.String()

	var serveDocs []flagDoc
	if c := lookup([]string{"serve"}); c != nil {
		if f := describeCommand(c); f != nil {
			serveDocs = f.docs()
		}
	}
	b.Reset()
	manHeader(&b, "KEYWARDEN-SERVE", "8", "keywarden-serve", "the keywarden daemon")
	b.WriteString(".SH SYNOPSIS\n.B keywarden serve\n.RI [ flags ]\n")
	b.WriteString(".SH DESCRIPTION\n" + roff("keywarden serve runs the daemon: it listens on a Unix socket, holds keys in locked memory "+
		"under a master key that starts sealed, and appends a record for every operation to its audit log before it replies. "+
		"Every flag can also be set in the configuration file (keywarden.conf(5)); a flag given on the command line overrides the file.") + "\n")
	b.WriteString(".SH FLAGS\n")
	manFlags(&b, serveDocs, nil)
	b.WriteString(".SH FILES\n.TP\n.I /var/lib/keywarden\nthe state directory of the system daemon: the key store and the audit log\n" +
		".TP\n.I " + roff(keywarden.SystemSocketPath) + "\nthe system daemon's socket\n.TP\n.I /etc/keywarden/keywarden.conf\nthe configuration file\n")
	b.WriteString(".SH SEE ALSO\n.BR keywarden (1),\n.BR keywarden.conf (5)\n")
	pages["keywarden-serve.8"] = b.String()

	b.Reset()
	manHeader(&b, "KEYWARDEN.CONF", "5", "keywarden.conf", "configuration of the keywarden daemon")
	b.WriteString(".SH SYNOPSIS\n.I /etc/keywarden/keywarden.conf\n")
	b.WriteString(".SH DESCRIPTION\n" + roff("The configuration file holds the settings of \"keywarden serve\" (keywarden-serve(8)). "+
		"It is TOML: one \"key = value\" per line, strings quoted (durations and sizes too, such as \"30s\" and \"64M\"), "+
		"numbers and true or false bare, and # comments; it has no tables. "+
		"Each key is the name of a serve flag without its dashes, and takes the value the flag takes; "+
		"a flag that may be repeated takes an array, such as admin = [1000, 1001]. A flag on the command line overrides the file. "+
		"An unknown key, a table or a value of the wrong form is an error that names the file, the line and the key. "+
		"The file and its directory must belong to root or the daemon's user and not be writable by group or others. "+
		"No file is read without --config. SIGHUP reads it again: log-level, admin, generation-admin, generation-watcher "+
		"and the limits take effect at once (all but max-message-bytes, max-named-watchers-per-uid and max-computing-per-uid), "+
		"ssh-askpass applies to the next confirmation, and the file named by http-principals is read again; "+
		"the daemon logs every other changed key as needing a restart. "+
		"\"keywarden serve --check-config\" checks the file and prints the settings in effect.") + "\n")
	b.WriteString(".SH KEYS\n")
	var keys []flagDoc
	for _, d := range serveDocs {
		switch d.name {
		case "config", "check-config", "help":
			continue
		}
		d.short, d.long = "", ""
		if d.value == "" {
			d.value = "true|false"
		}
		keys = append(keys, d)
	}
	for _, d := range keys {
		fmt.Fprintf(&b, ".TP\n\\fB%s\\fR = \\fI%s\\fR\n", roff(d.name), roff(d.value))
		u := neutral(d.usage)
		if d.def != "" {
			u += " (default " + neutral(d.def) + ")"
		}
		b.WriteString(roff(strings.ReplaceAll(u, "\n", " ")) + "\n")
	}
	b.WriteString(".SH SEE ALSO\n.BR keywarden (1),\n.BR keywarden\\-serve (8)\n")
	pages["keywarden.conf.5"] = b.String()
	return pages
}
