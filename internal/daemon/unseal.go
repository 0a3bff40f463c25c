package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/ownfile"
	"github.com/keywarden/keywarden/internal/server"
)

// startSealed says what a persistent daemon needs before it serves keys,
// and unseals it at once if given a passphrase file.
func startSealed(ctx context.Context, srv *server.Server, cfg Config, log *slog.Logger) error {
	st := srv.SealState()
	switch {
	case !st.Initialized:
		log.Warn("the store has no master key yet: run \"keywarden init\"; until then key operations are refused", "state", cfg.StateDir)
		return nil
	case cfg.UnsealPassphraseFile == "":
		log.Warn("sealed: run \"keywarden unseal\"; until then key operations are refused", "state", cfg.StateDir)
		return nil
	}
	path, err := credentialPath(cfg.UnsealPassphraseFile, os.Getenv("CREDENTIALS_DIRECTORY"))
	if err != nil {
		return err
	}
	pass, err := readSecretFile(path)
	if err != nil {
		return err
	}
	if err := srv.UnsealWith(ctx, pass); err != nil {
		if aerr := srv.RecordEvent(audit.OpUnseal, "FAILED", "at start, with the passphrase file: "+err.Error()); aerr != nil {
			log.Error("audit log: cannot record the unseal attempt", "err", aerr)
		}
		return fmt.Errorf("unseal with %s: %w", cfg.UnsealPassphraseFile, err)
	}
	if err := srv.RecordEvent(audit.OpUnseal, "OK", "at start, with the passphrase file"); err != nil {
		srv.SealAll()
		return fmt.Errorf("audit log: cannot record the unseal: %w", err)
	}
	log.Info("unsealed with the passphrase file", "file", cfg.UnsealPassphraseFile)
	return nil
}

// credentialPrefix names a systemd credential instead of a file
// (--unseal-passphrase-file credential:NAME): the file NAME in
// $CREDENTIALS_DIRECTORY, which systemd fills from LoadCredential= or
// LoadCredentialEncrypted= for the service alone, on a file system that
// is never swapped out.
const credentialPrefix = "credential:"

// credentialPath resolves a --unseal-passphrase-file value.
func credentialPath(v, dir string) (string, error) {
	name, ok := strings.CutPrefix(v, credentialPrefix)
	if !ok {
		return v, nil
	}
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return "", fmt.Errorf("--unseal-passphrase-file %s: a credential's name is one path element", v)
	}
	if dir == "" {
		return "", fmt.Errorf("--unseal-passphrase-file %s: $CREDENTIALS_DIRECTORY is not set: give the unit LoadCredentialEncrypted=%s:FILE (docs/operations.md, \"Unattended unseal\")", v, name)
	}
	return filepath.Join(dir, name), nil
}

// readSecretFile reads a passphrase file, refusing one that others may
// read or that another user owns (they could read it whenever they
// liked), and strips one trailing newline. The checks are made on the
// file opened, so a file swapped in after them is never read; O_NONBLOCK
// keeps a FIFO from stalling the start.
func readSecretFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if uid := ownfile.Owner(fi); uid != 0 && int(uid) != os.Geteuid() {
		return nil, fmt.Errorf("%s belongs to uid %d, neither root nor this user (uid %d): its owner can read it; give it to root or this user, mode 0600",
			path, uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %04o): make it 0600", path, fi.Mode().Perm())
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r")), nil
}
