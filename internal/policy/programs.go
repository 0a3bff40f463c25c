package policy

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// Process is the program that sent a request, as the daemon read it
// through the request's pidfd: what CheckProgram decides on.
type Process struct {
	// Exe is the path of its executable (/proc/PID/exe); empty when it
	// could not be read, and Unknown then says why.
	Exe     string
	Unknown string
	// SHA256 is the hash of the file it runs, read through /proc/PID/exe;
	// nil when no entry for Exe asks for one, or it could not be read.
	SHA256 []byte
	// OtherUserNS: it is in another user namespace than the daemon. There
	// it may claim another process's pid, and run a setuid program without
	// its privileges (which is how one is hijacked): who sent the message
	// is then not known well enough to hold to a list of programs.
	OtherUserNS bool
}

// Restricted reports whether k may be used only by some programs.
func (k Key) Restricted() bool { return len(k.Programs) > 0 }

// NeedsHash reports whether deciding on a process whose executable is exe
// needs the hash of its file: an entry for exe names one.
func NeedsHash(k Key, exe string) bool {
	for _, p := range k.Programs {
		if p.Path == exe && p.SHA256 != nil {
			return true
		}
	}
	return false
}

// CheckProgram decides whether a request from process p may use k (name
// says which key, for the messages). A key with no programs listed may be
// used by any; one with a list, only by a process whose executable is at
// one of the paths listed and, for an entry with a hash, whose file has
// that hash. A process whose executable is not known is refused (the
// kernel gave no pidfd, it exited, it could not be read), as is one in
// another user namespace. The client is told which programs may use the
// key and which one asked: neither is secret from whoever may see the
// key, and without them a refusal cannot be acted on.
func CheckProgram(k Key, name string, p Process) Decision {
	if !k.Restricted() {
		return allow
	}
	allowed := programList(k.Programs)
	switch {
	case p.Exe == "":
		why := p.Unknown
		if why == "" {
			why = "its executable could not be read"
		}
		return deny(wire.Status_STATUS_PERMISSION_DENIED,
			fmt.Sprintf("key %s may be used only by %s; the program that sent this request is not known (%s)", name, allowed, why),
			"key restricted to %s; the caller's program is not known: %s", allowed, why)
	case p.OtherUserNS:
		return deny(wire.Status_STATUS_PERMISSION_DENIED,
			fmt.Sprintf("key %s may be used only by %s; this request came from %s in another user namespace, where the program cannot be vouched for", name, allowed, p.Exe),
			"key restricted to %s; request from %s in another user namespace", allowed, p.Exe)
	}
	pathListed := false
	for _, e := range k.Programs {
		if e.Path != p.Exe {
			continue
		}
		pathListed = true
		if e.SHA256 == nil || (p.SHA256 != nil && bytes.Equal(e.SHA256, p.SHA256)) {
			return allow
		}
	}
	if pathListed {
		got := "its file could not be hashed"
		if p.SHA256 != nil {
			got = fmt.Sprintf("its file's SHA-256 is %x", p.SHA256)
		}
		return deny(wire.Status_STATUS_PERMISSION_DENIED,
			fmt.Sprintf("key %s may be used only by %s; this request came from %s, but %s", name, allowed, p.Exe, got),
			"key restricted to %s; request from %s, %s", allowed, p.Exe, got)
	}
	return deny(wire.Status_STATUS_PERMISSION_DENIED,
		fmt.Sprintf("key %s may be used only by %s; this request came from %s", name, allowed, p.Exe),
		"key restricted to %s; request from %s", allowed, p.Exe)
}

// programList writes programs for a message: "/usr/bin/ssh-keygen", or
// "/usr/bin/a or /usr/bin/b", hashes shown.
func programList(ps []key.Program) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, " or ")
}

// CheckPrograms validates a key's list of programs: bounded, each well
// formed, none twice.
func CheckPrograms(ps []key.Program) Decision {
	if len(ps) > key.MaxPrograms {
		return deny(wire.Status_STATUS_RESOURCE_EXHAUSTED, fmt.Sprintf("a key lists at most %d programs", key.MaxPrograms),
			"%d programs", len(ps))
	}
	for i, p := range ps {
		if err := p.Check(); err != nil {
			return deny(wire.Status_STATUS_INVALID_ARGUMENT, err.Error(), "%v", err)
		}
		for _, q := range ps[:i] {
			if p.Equal(q) {
				return deny(wire.Status_STATUS_INVALID_ARGUMENT, fmt.Sprintf("program %s is listed twice", p), "program %s twice", p)
			}
		}
	}
	return allow
}
