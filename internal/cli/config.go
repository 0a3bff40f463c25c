package cli

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/keywarden/keywarden/internal/ownfile"
)

// DefaultConfigPath is where the shipped units point --config.
const DefaultConfigPath = "/etc/keywarden/keywarden.conf"

// The config file of `keywarden serve` is TOML whose keys are the serve
// flags' names: every flag is a setting, with nothing to declare twice.
// A key set on the command line wins over the file.

// notSettings are serve flags that are not settings of the daemon.
var notSettings = map[string]bool{"config": true, "check-config": true, "json": true, "timeout": true}

// repeatable is a flag that may be given several times; in the file it is
// an array.
type repeatable interface{ values() []string }

func (l *stringList) values() []string { return *l }
func (u *uidList) values() []string {
	var s []string
	for _, v := range *u {
		s = append(s, strconv.FormatUint(uint64(v), 10))
	}
	return s
}

type boolFlag interface{ IsBoolFlag() bool }

func isBool(fl *flag.Flag) bool {
	b, ok := fl.Value.(boolFlag)
	return ok && b.IsBoolFlag()
}

// configError is a mistake in the config file: it names the file, the
// line and the key.
type configError struct {
	path string
	line int
	key  string
	msg  string
}

func (e *configError) Error() string {
	if e.key == "" {
		return fmt.Sprintf("%s:%d: %s", e.path, e.line, e.msg)
	}
	return fmt.Sprintf("%s:%d: %q: %s", e.path, e.line, e.key, e.msg)
}

// applyConfigFile reads the TOML file at path and sets each serve flag it
// names, except those given on the command line (set). It refuses a key
// that is not a serve flag, a table, and a value of the wrong form, naming
// the key and its line.
func applyConfigFile(f *flag.FlagSet, path string, set map[string]bool) error {
	data, err := readConfigFile(path)
	if err != nil {
		return err
	}
	var values map[string]any
	if err := toml.Unmarshal(data, &values); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			line, _ := de.Position()
			return &configError{path: path, line: line, msg: "not valid TOML: " + de.Error()}
		}
		return fmt.Errorf("config %s: %w", path, err)
	}
	lines, err := keyLines(data)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	names := make([]string, 0, len(values))
	for k := range values {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool { return lines[names[i]] < lines[names[j]] })
	for _, k := range names {
		line := lines[k]
		fl := f.Lookup(k)
		if fl == nil || notSettings[k] {
			if _, ok := values[k].(map[string]any); ok {
				return &configError{path: path, line: line, key: k,
					msg: "tables are not settings: the file is a flat list of serve flags as keys (keywarden help serve lists them)"}
			}
			return &configError{path: path, line: line, key: k,
				msg: "unknown setting: the keys are the flags of keywarden serve without the dashes (keywarden help serve lists them)"}
		}
		if set[k] {
			continue // the command line wins
		}
		if err := setFromTOML(f, fl, values[k]); err != nil {
			return &configError{path: path, line: line, key: k, msg: err.Error()}
		}
	}
	return nil
}

// readConfigFile reads the config file, refusing one that another user
// could have written: its settings name the administrators and the files
// the daemon trusts (an admin line of theirs would make them one). The
// file, and every directory above it, must belong to root or this user and
// not be writable by group or others (a sticky directory such as /tmp
// excepted: others cannot replace a file there).
func readConfigFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("config %s: not a regular file", path)
	}
	if err := trustedByOwner("config file", path, fi, false); err != nil {
		return nil, err
	}
	real, err := filepath.EvalSymlinks(path)
	if err == nil {
		real, err = filepath.Abs(real)
	}
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	given, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	// Every directory up to /, both on the path as given and on the path
	// it resolves to: the owner of any of them could move the subtree
	// below it aside and put one of theirs in its place, or a symbolic
	// link to another file (an old config naming them an administrator).
	for _, p := range []string{given, real} {
		for dir := filepath.Dir(p); ; dir = filepath.Dir(dir) {
			di, err := os.Stat(dir)
			if err != nil {
				return nil, fmt.Errorf("config: %w", err)
			}
			if err := trustedByOwner("config file's directory", dir, di, true); err != nil {
				return nil, err
			}
			if dir == "/" {
				break
			}
		}
	}
	return io.ReadAll(io.LimitReader(f, 1<<20))
}

func trustedByOwner(what, path string, fi os.FileInfo, sticky bool) error {
	uid := ownfile.Owner(fi)
	if uid != 0 && int(uid) != os.Geteuid() {
		return fmt.Errorf("%s %s belongs to uid %d, neither root nor this user (uid %d): another user could set the daemon's administrators; refusing it",
			what, path, uid, os.Geteuid())
	}
	if m := fi.Mode(); m.Perm()&0o022 != 0 && !(sticky && m&os.ModeSticky != 0) {
		return fmt.Errorf("%s %s is writable by group or others (mode %04o): they could set the daemon's administrators; chmod go-w %s",
			what, path, m.Perm(), path)
	}
	return nil
}

// keyLines returns the line of each top-level key in a TOML document.
func keyLines(data []byte) (map[string]int, error) {
	lines := map[string]int{}
	var p unstable.Parser
	p.Reset(data)
	inTable := false
	for p.NextExpression() {
		n := p.Expression()
		switch n.Kind {
		case unstable.Table, unstable.ArrayTable:
			it := n.Key()
			if it.Next() {
				k := string(it.Node().Data)
				if _, ok := lines[k]; !ok {
					lines[k] = p.Shape(it.Node().Raw).Start.Line
				}
			}
			inTable = true
		case unstable.KeyValue:
			if inTable {
				continue
			}
			it := n.Key()
			if it.Next() {
				k := string(it.Node().Data)
				if _, ok := lines[k]; !ok {
					lines[k] = p.Shape(it.Node().Raw).Start.Line
				}
			}
		}
	}
	return lines, p.Error()
}

// setFromTOML sets fl from a decoded TOML value.
func setFromTOML(f *flag.FlagSet, fl *flag.Flag, v any) error {
	want := expectedForm(fl)
	if _, ok := fl.Value.(repeatable); ok {
		arr, ok := v.([]any)
		if !ok {
			arr = []any{v}
		}
		for _, e := range arr {
			s, ok := scalarText(e, false)
			if !ok {
				return fmt.Errorf("want %s", want)
			}
			if err := f.Set(fl.Name, s); err != nil {
				return fmt.Errorf("%v (want %s)", err, want)
			}
		}
		return nil
	}
	s, ok := scalarText(v, isBool(fl))
	if !ok {
		return fmt.Errorf("want %s", want)
	}
	if err := f.Set(fl.Name, s); err != nil {
		return fmt.Errorf("invalid value %s (want %s)", tomlValue(v), want)
	}
	return nil
}

// scalarText turns a TOML scalar into flag text: booleans only for
// boolean flags, numbers and strings for the others.
func scalarText(v any, boolean bool) (string, bool) {
	switch x := v.(type) {
	case bool:
		return strconv.FormatBool(x), boolean
	case int64:
		return strconv.FormatInt(x, 10), !boolean
	case float64:
		if x == math.Trunc(x) && !boolean {
			return strconv.FormatFloat(x, 'f', -1, 64), true
		}
		return "", false
	case string:
		return x, true
	}
	return "", false
}

func tomlValue(v any) string {
	if s, ok := v.(string); ok {
		return strconv.Quote(s)
	}
	return fmt.Sprint(v)
}

// expectedForm says what a flag's value looks like.
func expectedForm(fl *flag.Flag) string {
	name, _ := flag.UnquoteUsage(fl)
	switch {
	case isBool(fl):
		return "true or false"
	}
	if _, ok := fl.Value.(repeatable); ok {
		return "an array of " + orValue(name) + " values, e.g. [\"1000\"]"
	}
	if g, ok := fl.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case int, int64, uint, uint64:
			return "an integer"
		case time.Duration:
			return "a duration such as \"30s\", \"5m\" or \"1h\""
		}
	}
	if name == "" || name == "value" {
		return "a string"
	}
	return "a " + name + " (a string: " + firstSentence(fl.Usage) + ")"
}

func orValue(s string) string {
	if s == "" {
		return "value"
	}
	return s
}

func firstSentence(s string) string {
	if i := strings.Index(s, " ("); i > 0 {
		s = s[:i]
	}
	return strings.ReplaceAll(s, "`", "")
}

// effectiveSettings returns every serve setting's value as TOML value
// text, by name.
func effectiveSettings(f *flag.FlagSet) map[string]string {
	m := map[string]string{}
	f.VisitAll(func(fl *flag.Flag) {
		if !notSettings[fl.Name] {
			m[fl.Name] = renderTOML(fl)
		}
	})
	return m
}

// renderTOML writes a flag's value as a TOML value that applyConfigFile
// reads back to the same setting.
func renderTOML(fl *flag.Flag) string {
	if r, ok := fl.Value.(repeatable); ok {
		var parts []string
		for _, v := range r.values() {
			parts = append(parts, quoteTOML(v))
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	if isBool(fl) {
		return fl.Value.String()
	}
	if g, ok := fl.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case int, int64, uint, uint64:
			return fl.Value.String()
		}
	}
	return quoteTOML(fl.Value.String())
}

// quoteTOML writes s as a TOML basic string.
func quoteTOML(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\u%04X", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// writeSettings prints the effective configuration as a config file.
func writeSettings(f *flag.FlagSet, source string) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# keywarden serve: the effective configuration (%s)\n", source)
	s := effectiveSettings(f)
	f.VisitAll(func(fl *flag.Flag) {
		if v, ok := s[fl.Name]; ok {
			fmt.Fprintf(&b, "%s = %s\n", fl.Name, v)
		}
	})
	return b.String()
}
