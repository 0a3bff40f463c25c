package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/keywarden/keywarden"
)

// describeCommand returns c's flags without running it: every command
// makes its flags with newFlags (or newFileFlags) and parses them before
// it does anything else, and parse hands them over when env.describe is
// set. (help relies on the same order: "-h" ends a command at its parse.)
func describeCommand(c *command) *flags {
	var got *flags
	e := &env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard,
		getenv: func(string) string { return "" }, describe: func(f *flags) { got = f }}
	c.run(e, nil)
	return got
}

// shells are the shells "keywarden completion" writes scripts for.
var shells = map[string]string{"bash": bashCompletion, "zsh": zshCompletion, "fish": fishCompletion}

func runCompletion(e *env, args []string) error {
	f := &flags{FlagSet: flag.NewFlagSet("completion", flag.ContinueOnError), e: e}
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || shells[pos[0]] == "" {
		return usagef("want a shell: bash, zsh or fish")
	}
	_, err = io.WriteString(e.stdout, shells[pos[0]])
	return err
}

// runComplete is the hidden "keywarden __complete WORD... CURRENT" that
// the completion scripts call: it prints the candidates for CURRENT, the
// word being completed after WORD..., one a line, each with a tab and a
// description where there is one. Nothing printed means "complete file
// names". It never fails: a completion must not print errors.
func runComplete(e *env, args []string) error {
	if len(args) == 0 {
		return nil
	}
	cur := args[len(args)-1]
	for _, c := range completions(e, args[:len(args)-1], cur) {
		name, _, _ := strings.Cut(c, "\t")
		if strings.HasPrefix(name, cur) {
			fmt.Fprintln(e.stdout, c)
		}
	}
	return nil
}

// completions lists the candidates for cur after words (unfiltered).
func completions(e *env, words []string, cur string) []string {
	if len(words) > 0 && words[0] == "help" {
		words = words[1:]
		if c := lookup(words); c != nil && len(strings.Fields(c.name)) == len(words) {
			return nil
		}
	}
	if len(words) == 0 {
		if strings.HasPrefix(cur, "-") {
			return []string{"--help\tshow the commands", "--version\tprint the version"}
		}
		return commandWords("")
	}
	c := lookup(words)
	if c == nil || hidden(c) {
		if len(words) == 1 && isGroup(words[0]) {
			return commandWords(words[0])
		}
		return nil
	}
	f := describeCommand(c)
	if f == nil {
		return nil
	}
	// Walk the words after the command: which flag, if any, awaits its
	// value, how many arguments are given, and which daemon to ask.
	var pending *flag.Flag
	socket, args, dashes := "", 0, false
	for _, w := range words[len(strings.Fields(c.name)):] {
		switch {
		case pending != nil:
			if pending.Name == "socket" {
				socket = w
			}
			pending = nil
		case w == "--":
			dashes = true
		case !dashes && len(w) > 1 && w[0] == '-':
			spelled, v, has := strings.Cut(w, "=")
			fl := f.resolve(strings.TrimLeft(spelled, "-"))
			if fl != nil && !has && !isBoolFlag(fl) {
				pending = fl
			}
			if fl != nil && fl.Name == "socket" && has {
				socket = v
			}
		default:
			args++
		}
	}
	switch {
	case pending != nil:
		if keyRefFlags[pending.Name] {
			return keyNames(e, socket)
		}
		if values, ok := flagValues[pending.Name]; ok {
			return values()
		}
		return nil
	case strings.HasPrefix(cur, "-") && !dashes:
		var out []string
		for _, d := range f.docs() {
			desc, _, _ := strings.Cut(d.usage, "\n")
			out = append(out, flagSpelling(d.name)+"\t"+desc)
			if d.short != "" {
				out = append(out, "-"+d.short+"\t"+desc)
			}
			if d.long != "" {
				out = append(out, "--"+d.long+"\t"+desc)
			}
		}
		return out
	case c.name == "completion" && args == 0:
		return []string{"bash", "fish", "zsh"}
	case takesKey(c) && args == 0:
		return keyNames(e, socket)
	}
	return nil
}

// flagValues are the values of flags that take one of a few words.
var flagValues = map[string]func() []string{
	"type": func() []string {
		var out []string
		for _, t := range keywarden.KeyTypes() {
			out = append(out, string(t))
		}
		return out
	},
	"encoding":   func() []string { return []string{"raw", "hex", "base64"} },
	"log-level":  func() []string { return []string{"debug", "info", "warn", "error"} },
	"log-format": func() []string { return []string{"text", "json"} },
}

// commandWords are the words that may follow prefix ("" or a group).
func commandWords(prefix string) []string {
	seen := map[string]bool{}
	var out []string
	for _, c := range commands {
		if hidden(c) || (prefix != "" && !strings.HasPrefix(c.name, prefix+" ")) {
			continue
		}
		words := strings.Fields(c.name)
		w, desc := words[0], c.summary
		if prefix != "" {
			w = words[1]
		} else if len(words) > 1 {
			desc = w + " commands"
		}
		if !seen[w] {
			seen[w] = true
			out = append(out, w+"\t"+desc)
		}
	}
	if prefix == "" {
		out = append(out, "help\tshow the commands, or a command's flags")
	}
	sort.Strings(out)
	return out
}

// takesKey reports whether c's first argument is a key name (N).
func takesKey(c *command) bool {
	return c.args == "N" || strings.HasPrefix(c.args, "N ")
}

// keyNames are the names of the keys the daemon shows the caller: its own
// as NAME, others' as UID:NAME. Any failure gives none, quietly.
func keyNames(e *env, socket string) []string {
	f := newFlags("__complete", e)
	f.socket = socket
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := f.dialContext(ctx)
	if err != nil {
		return nil
	}
	defer c.Close()
	keys, err := c.List(ctx)
	if err != nil {
		return nil
	}
	uid := uint32(os.Getuid())
	var out []string
	for _, k := range keys {
		if k.Name == "" {
			continue
		}
		name := k.Name
		if k.Owner != uid {
			name = fmt.Sprintf("%d:%s", k.Owner, k.Name)
		}
		out = append(out, name+"\t"+string(k.Type)+" key")
	}
	sort.Strings(out)
	return out
}

const bashCompletion = `# bash completion for keywarden (written by "keywarden completion bash").
# Load it with: source <(keywarden completion bash)
_keywarden() {
    local cur words cword line
    if declare -F _get_comp_words_by_ref >/dev/null 2>&1; then
        _get_comp_words_by_ref -n =: cur words cword
    else
        cur=${COMP_WORDS[COMP_CWORD]} words=("${COMP_WORDS[@]}") cword=$COMP_CWORD
    fi
    local IFS=$'\n'
    local -a out
    out=($("${words[0]}" __complete "${words[@]:1:cword-1}" "$cur" 2>/dev/null))
    COMPREPLY=()
    for line in "${out[@]}"; do
        COMPREPLY+=("${line%%$'\t'*}")
    done
    if declare -F __ltrim_colon_completions >/dev/null 2>&1; then
        __ltrim_colon_completions "$cur"
    fi
    return 0
}
complete -o default -F _keywarden keywarden
`

const zshCompletion = `#compdef keywarden
# zsh completion for keywarden (written by "keywarden completion zsh").
# Put it in a directory of $fpath as _keywarden, or load it with:
# source <(keywarden completion zsh)
_keywarden() {
  local -a out cands
  local line name desc
  out=("${(@f)$(${words[1]} __complete "${(@)words[2,CURRENT-1]}" "${words[CURRENT]}" 2>/dev/null)}")
  for line in "${out[@]}"; do
    [[ -z $line ]] && continue
    name=${line%%$'\t'*}
    desc=
    [[ $line == *$'\t'* ]] && desc=${line#*$'\t'}
    name=${name//:/\\:}
    if [[ -n $desc ]]; then
      cands+=("$name:$desc")
    else
      cands+=("$name")
    fi
  done
  if (( ${#cands} == 0 )); then
    _files
    return
  fi
  _describe -t values keywarden cands
}
if [[ $funcstack[1] == _keywarden ]]; then
  _keywarden "$@"
else
  compdef _keywarden keywarden
fi
`

const fishCompletion = `# fish completion for keywarden (written by "keywarden completion fish").
# Put it in ~/.config/fish/completions/keywarden.fish, or load it with:
# keywarden completion fish | source
function __keywarden_complete
    set -l words (commandline -opc)
    set -l cur (commandline -ct)
    set -l out ($words[1] __complete $words[2..-1] $cur 2>/dev/null)
    if test (count $out) -eq 0
        __fish_complete_path $cur
        return
    end
    printf '%s\n' $out
end
complete -c keywarden -f -a '(__keywarden_complete)'
`
