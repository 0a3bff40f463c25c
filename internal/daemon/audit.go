package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/linuxaudit"
)

// auditLog is the daemon's audit log with what it needs besides: the lock
// that keeps a second daemon from writing the same log, and the sender to
// the kernel's audit subsystem.
type auditLog struct {
	*audit.Log
	lock  *os.File
	linux *linuxaudit.Sender
}

// openAudit opens the audit log at path (docs/audit.md), after taking its
// lock: two daemons writing one log would break its chain.
func openAudit(path string, sync audit.SyncMode, version string, onSync func(time.Duration), log *slog.Logger) (*auditLog, error) {
	lock, err := lockAuditLog(path)
	if err != nil {
		return nil, err
	}
	linux := linuxaudit.New(log)
	l, err := audit.Open(audit.Options{Path: path, Sync: sync, Software: "keywarden " + version, Linux: linux, Logger: log, OnSync: onSync})
	if err != nil {
		linux.Close()
		lock.Close()
		return nil, fmt.Errorf("audit log %s: %w", path, err)
	}
	st := l.Status()
	ls := linux.Status()
	log.Info("audit log open", "path", path, "sync", sync.String(), "seq", st.Seq, "linux_audit", ls.Enabled, "linux_audit_reason", ls.Reason)
	return &auditLog{Log: l, lock: lock, linux: linux}, nil
}

// lockAuditLog takes an exclusive lock on PATH.lock beside the log. The
// log's directory must be one that no one else may write to (not even a
// sticky one): the log's files are found by name there (the active file,
// the rotated ones, the public key), and another user could put their own.
func lockAuditLog(path string) (*os.File, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit log directory: %w", err)
	}
	if err := checkDir("audit log directory", dir, false); err != nil {
		return nil, fmt.Errorf("%w (see --audit-log)", err)
	}
	f, err := lockOwn("audit log lock", path+".lock")
	var held *errLocked
	if errors.As(err, &held) {
		return nil, fmt.Errorf("the audit log %s is in use by another keywarden daemon (pid %s): stop it, or give this one --audit-log PATH", path, held.pid)
	}
	return f, err
}

// close records the stop, closes the log (a final checkpoint), and
// releases the lock.
func (a *auditLog) close(log *slog.Logger) {
	if err := a.Append(&audit.Record{Kind: audit.KindEvent, Op: audit.OpStop, Msg: "stopped"}); err != nil {
		log.Error("audit log: cannot record the stop", "err", err)
	}
	if err := a.Close(); err != nil {
		log.Error("audit log: close", "err", err)
	}
	a.linux.Close()
	a.lock.Close()
}

// event records something the daemon did on its own.
func (a *auditLog) event(op, status, msg string) error {
	if a == nil {
		return nil
	}
	return a.Append(&audit.Record{Kind: audit.KindEvent, Op: op, Status: status, Msg: msg})
}

// get returns the log, or nil for none.
func (a *auditLog) get() *audit.Log {
	if a == nil {
		return nil
	}
	return a.Log
}

// auditPubPath is where the daemon publishes the audit log's public
// checkpoint key: audit.pub beside audit.log.
func auditPubPath(cfg Config) string {
	if cfg.AuditLog == "" {
		return ""
	}
	return strings.TrimSuffix(cfg.AuditLog, ".log") + ".pub"
}

// linuxStatus reports on the copies sent to the kernel's audit subsystem.
func (a *auditLog) linuxStatus() linuxaudit.Status {
	if a == nil {
		return linuxaudit.Status{Reason: "no audit log"}
	}
	return a.linux.Status()
}
