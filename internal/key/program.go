package key

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"strings"
)

// Program is an executable allowed to use a key: the path the kernel
// gives for the process's executable (/proc/PID/exe), and, optionally, the
// SHA-256 of the file it runs. Written PATH or PATH@sha256:HEX.
type Program struct {
	Path   string
	SHA256 []byte // nil: whatever file is at Path
}

// MaxPrograms bounds the programs one key may list.
const MaxPrograms = 16

// maxProgramPath is PATH_MAX.
const maxProgramPath = 4096

// hashSep introduces a program's hash in its text form.
const hashSep = "@sha256:"

func (p Program) String() string {
	if p.SHA256 == nil {
		return p.Path
	}
	return p.Path + hashSep + hex.EncodeToString(p.SHA256)
}

// Equal reports whether p and q name the same program.
func (p Program) Equal(q Program) bool {
	return p.Path == q.Path && bytes.Equal(p.SHA256, q.SHA256) && (p.SHA256 == nil) == (q.SHA256 == nil)
}

// ParseProgram parses PATH or PATH@sha256:HEX and checks it (Check).
func ParseProgram(s string) (Program, error) {
	p := Program{Path: s}
	if i := strings.LastIndex(s, hashSep); i >= 0 {
		h, err := hex.DecodeString(s[i+len(hashSep):])
		if err != nil || len(h) != sha256.Size {
			return Program{}, fmt.Errorf("program %q: the hash after %q must be %d hex digits", s, hashSep, 2*sha256.Size)
		}
		p = Program{Path: s[:i], SHA256: h}
	}
	return p, p.Check()
}

// Check reports whether p is well formed: an absolute, clean path of at
// most PATH_MAX bytes without NUL, and no hash or a SHA-256 one.
func (p Program) Check() error {
	switch {
	case p.Path == "" || !path.IsAbs(p.Path):
		return fmt.Errorf("program %q: the path must be absolute", p.Path)
	case path.Clean(p.Path) != p.Path:
		return fmt.Errorf("program %q: the path must be clean (no //, . or .., no trailing /)", p.Path)
	case len(p.Path) > maxProgramPath:
		return errors.New("program path longer than PATH_MAX")
	case strings.IndexByte(p.Path, 0) >= 0:
		return errors.New("program path with a NUL byte")
	case p.SHA256 != nil && len(p.SHA256) != sha256.Size:
		return fmt.Errorf("program %q: a SHA-256 hash is %d bytes", p.Path, sha256.Size)
	}
	return nil
}
