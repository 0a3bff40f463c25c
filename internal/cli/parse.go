package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
)

// shortFlags are the one-letter forms people expect, each standing for a
// long flag: -n NAME for --name, -k for --key, -o for --output. A short
// form applies to a command only where the long flag exists and the
// command has no flag of that letter of its own (audit tail's -n is a
// count, and its -f follows).
var shortFlags = map[string]string{"n": "name", "k": "key", "o": "output"}

// longAliases are the GNU long forms of one-letter flags: --follow for
// -f and --lines for -n, where a command has those letters.
var longAliases = map[string]string{"follow": "f", "lines": "n"}

// errDescribed ends a command at its flag parsing when the command line
// is only being described (completion, man pages): see describeCommand.
var errDescribed = errors.New("described")

// parse parses the command line: GNU-style --flag and --flag=value (and
// Go's -flag), the short forms of shortFlags, flags before, between or
// after positional arguments, and "--" before arguments that begin with
// a dash. It returns the positional arguments. Every mistake is a usage
// error that names the flag and the form it wants.
func (f *flags) parse(args []string) ([]string, error) {
	if f.e.describe != nil {
		f.e.describe(f)
		return nil, errDescribed
	}
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a) // "-" is an argument: stdin
			continue
		}
		spelled, value, hasValue := strings.Cut(a, "=")
		name := strings.TrimPrefix(strings.TrimPrefix(spelled, "-"), "-")
		if name == "h" || name == "help" {
			if f.Lookup(name) == nil {
				f.printUsage()
				return nil, flag.ErrHelp
			}
		}
		fl := f.resolve(name)
		if fl == nil {
			return nil, f.unknownFlag(spelled)
		}
		shown := flagSpelling(fl.Name)
		if isBoolFlag(fl) {
			if !hasValue {
				value = "true"
				if i+1 < len(args) && looksBool(args[i+1]) {
					return nil, usagef("%s takes no separate value: write %s=%s (or %s alone for true)", shown, shown, args[i+1], shown)
				}
			}
		} else if !hasValue {
			if i+1 >= len(args) {
				return nil, usagef("%s needs a value: %s %s", shown, shown, valueName(fl))
			}
			i++
			value = args[i]
		}
		if err := f.set(fl, value); err != nil {
			return nil, err
		}
	}
	switch f.encoding {
	case "", "raw", "hex", "base64":
	default:
		return nil, usagef("invalid value %q for --encoding: want raw, hex or base64", f.encoding)
	}
	if err := f.openOutput(); err != nil {
		return nil, err
	}
	return pos, nil
}

// resolve finds the flag that name (as written, without dashes) stands for.
func (f *flags) resolve(name string) *flag.Flag {
	if fl := f.Lookup(name); fl != nil {
		return fl
	}
	if long, ok := shortFlags[name]; ok {
		return f.Lookup(long)
	}
	if short, ok := longAliases[name]; ok {
		return f.Lookup(short)
	}
	return nil
}

// shortFor is the one-letter form of the long flag name in f, if any.
func (f *flags) shortFor(name string) string {
	for s, long := range shortFlags {
		if long == name && f.Lookup(s) == nil {
			return s
		}
	}
	return ""
}

// longFor is the GNU long form of the one-letter flag name in f, if any.
func (f *flags) longFor(name string) string {
	for long, s := range longAliases {
		if s == name && f.Lookup(long) == nil {
			return long
		}
	}
	return ""
}

// set gives fl its value, with durations also in days (30d) and an error
// that names the flag and the form it wants.
func (f *flags) set(fl *flag.Flag, value string) error {
	if isDuration(fl) {
		d, err := parseDuration(value)
		if err != nil {
			return usagef("invalid value %q for %s: want a duration such as 90s, 15m, 36h or 30d", value, flagSpelling(fl.Name))
		}
		value = d.String()
	}
	err := f.FlagSet.Set(fl.Name, value)
	if err == nil {
		return nil
	}
	want := err.Error()
	switch {
	case isBoolFlag(fl):
		want = "want true or false"
	case isInt(fl):
		want = "want a whole number"
		if strings.Contains(err.Error(), "out of range") {
			want = "out of range"
		}
	}
	return usagef("invalid value %q for %s: %s", value, flagSpelling(fl.Name), want)
}

// unknownFlag is the error for a flag the command does not have, with the
// nearest one it has when that is close.
func (f *flags) unknownFlag(spelled string) error {
	name := strings.TrimLeft(spelled, "-")
	msg := fmt.Sprintf("unknown flag %s for %q", spelled, f.Name())
	best, bestD := "", 3
	f.VisitAll(func(fl *flag.Flag) {
		if d := editDistance(name, fl.Name); d < bestD {
			best, bestD = fl.Name, d
		}
	})
	if best != "" {
		msg += fmt.Sprintf(" (did you mean %s?)", flagSpelling(best))
	}
	return usagef("%s; \"keywarden help %s\" lists its flags", msg, f.Name())
}

// flagSpelling is how a flag is written: --name, or -n for one letter.
func flagSpelling(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// valueName is the placeholder of a flag's value in usage: its
// back-quoted word, else a word for its type.
func valueName(fl *flag.Flag) string {
	name, _ := flag.UnquoteUsage(fl)
	if name == "" || name == "value" {
		return "VALUE"
	}
	return strings.ToUpper(name)
}

func isBoolFlag(fl *flag.Flag) bool {
	b, ok := fl.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func isDuration(fl *flag.Flag) bool {
	g, ok := fl.Value.(flag.Getter)
	if !ok {
		return false
	}
	_, ok = g.Get().(time.Duration)
	return ok
}

func isInt(fl *flag.Flag) bool {
	g, ok := fl.Value.(flag.Getter)
	if !ok {
		return false
	}
	switch reflect.TypeOf(g.Get()).Kind() {
	case reflect.Int, reflect.Int64, reflect.Uint, reflect.Uint64:
		return true
	}
	return false
}

func looksBool(s string) bool {
	switch strings.ToLower(s) {
	case "true", "false", "yes", "no", "on", "off":
		return true
	}
	return false
}

// parseDuration is time.ParseDuration that also takes whole days ("30d",
// "1d12h"), the unit people use for rotation and retention.
func parseDuration(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return d, nil
	}
	days, rest, ok := strings.Cut(s, "d")
	if !ok {
		return 0, errors.New("not a duration")
	}
	n, err := strconv.ParseUint(days, 10, 16)
	if err != nil {
		return 0, errors.New("not a duration")
	}
	d := time.Duration(n) * 24 * time.Hour
	if rest != "" {
		r, err := time.ParseDuration(rest)
		if err != nil || strings.HasPrefix(rest, "-") || strings.HasPrefix(rest, "+") {
			return 0, errors.New("not a duration")
		}
		d += r
	}
	return d, nil
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// flagDoc is one flag as help, completion and man pages show it.
type flagDoc struct {
	name, short, long string // long is a GNU alias of a one-letter name
	value             string // "" for a boolean flag
	usage, def        string
	keyRef            bool // the value is a key name
}

// keyRefFlags are the flags whose value names an existing key.
var keyRefFlags = map[string]bool{"key": true, "with": true, "ca": true}

// docs lists f's flags, sorted by name.
func (f *flags) docs() []flagDoc {
	var out []flagDoc
	f.VisitAll(func(fl *flag.Flag) {
		value, usage := flag.UnquoteUsage(fl)
		if isBoolFlag(fl) {
			value = ""
		} else if value == "" || value == "value" {
			value = "VALUE"
		} else if strings.ToLower(value) == value && !strings.ContainsAny(value, " ,") {
			value = strings.ToUpper(value)
		}
		d := flagDoc{name: fl.Name, short: f.shortFor(fl.Name), long: f.longFor(fl.Name), value: value, usage: usage, keyRef: keyRefFlags[fl.Name]}
		if fl.DefValue != "" && fl.DefValue != "0" && fl.DefValue != "false" && fl.DefValue != "0s" && !strings.Contains(usage, "default") {
			d.def = fl.DefValue
		}
		out = append(out, d)
	})
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// spelling is how d is written in usage: "-n, --name NAME".
func (d flagDoc) spelling() string {
	s := flagSpelling(d.name)
	switch {
	case d.short != "":
		s = "-" + d.short + ", " + s
	case d.long != "":
		s += ", --" + d.long
	}
	if d.value != "" {
		s += " " + d.value
	}
	return s
}

// printDefaults prints f's flags as GNU-style usage.
func (f *flags) printDefaults(w io.Writer) {
	for _, d := range f.docs() {
		fmt.Fprintf(w, "  %s\n", d.spelling())
		u := strings.ReplaceAll(d.usage, "\n", "\n    \t")
		if d.def != "" {
			u += fmt.Sprintf(" (default %s)", d.def)
		}
		fmt.Fprintf(w, "    \t%s\n", u)
	}
}

// openOutput points the command's stdout at --output's file, written
// under a temporary name and put in place only if the command succeeds
// (finish), so that a failed command leaves no partial file.
func (f *flags) openOutput() error {
	if f.output == "" || f.output == "-" {
		return nil // "-": stdout, as without the flag
	}
	dir, base := filepath.Split(f.output)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-")
	if err != nil {
		return fmt.Errorf("--output: %w", err)
	}
	f.e.stdout = tmp
	f.e.finish = append(f.e.finish, func(ok bool) error {
		err := tmp.Close()
		if ok && err == nil {
			if err = os.Rename(tmp.Name(), f.output); err == nil {
				return nil
			}
		}
		os.Remove(tmp.Name())
		if err != nil {
			return fmt.Errorf("--output: %w", err)
		}
		return nil
	})
	return nil
}
