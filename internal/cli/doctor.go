package cli

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/doctor"
	"github.com/keywarden/keywarden/internal/secmem"
)

// serviceUser is the system account the shipped unit runs the daemon as.
const serviceUser = "keywarden"

func runDoctor(e *env, args []string) error {
	f := newFlags("doctor", e)
	config := f.String("config", "", "the daemon's config `file`, for its state directory, socket and audit log (default "+DefaultConfigPath+" if it exists)")
	state := f.String("state", "", "the daemon's state `directory` (default: the config's, else "+DefaultStateDir()+")")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	var serveArgs []string
	switch {
	case *config != "":
		serveArgs = append(serveArgs, "--config", *config)
	case fileExists(DefaultConfigPath):
		serveArgs = append(serveArgs, "--config", DefaultConfigPath)
	}
	if *state != "" {
		serveArgs = append(serveArgs, "--state", *state)
	}
	if f.socket != "" {
		serveArgs = append(serveArgs, "--socket", f.socket)
	}
	cfg, _, err := serveConfig(e, append(serveArgs, "--check-config"))
	if err != nil {
		return err
	}
	dc := doctor.Config{StateDir: cfg.StateDir, SocketPath: cfg.SocketPath, AuditLog: cfg.AuditLog,
		DaemonUID: os.Geteuid(), RuntimeSecret: secmem.RuntimeSecret}
	if u, err := user.Lookup(serviceUser); err == nil && os.Geteuid() == 0 {
		if n, err := strconv.Atoi(u.Uid); err == nil {
			dc.DaemonUID = n
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if c, err := keywarden.DialWithOptions(ctx, cfg.SocketPath, &keywarden.DialOptions{DaemonUID: f.daemonUID}); err == nil {
		if st, err := c.Status(ctx); err == nil {
			m := st.Memory
			dc.Daemon = &doctor.Daemon{Backing: m.Backing, LimitBytes: m.LimitBytes, RuntimeSecret: m.RuntimeSecret,
				Mlockall: m.Mlockall, Dumpable: m.Dumpable, Keys: st.Keys}
		}
		c.Close()
	}
	checks := doctor.Run(dc)
	if f.json {
		if err := printJSON(e, map[string]any{"checks": checks, "failed": doctor.Failed(checks)}); err != nil {
			return err
		}
	} else {
		for _, c := range checks {
			fmt.Fprintf(e.stdout, "%-4s  %-18s %s\n", c.Level, c.Name, c.Detail)
			if c.Fix != "" {
				fmt.Fprintf(e.stdout, "      %-18s fix: %s\n", "", c.Fix)
			}
		}
	}
	if doctor.Failed(checks) {
		return errDoctorFailed
	}
	return nil
}

// errDoctorFailed: a check failed (exit status 1, after the checks were
// printed).
var errDoctorFailed = fmt.Errorf("doctor: a check failed")

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
