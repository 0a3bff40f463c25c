package daemon

import (
	"log/slog"
	"slices"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/sshagent"
	"github.com/keywarden/keywarden/internal/transit"
)

// running is what a reload may change in the serving daemon.
type running struct {
	srv *server.Server
	// principals is the mapping the transit front's TCP listeners use;
	// nil without one.
	principals *transit.Principals
	// agent is the ssh-agent front; nil without one.
	agent *sshagent.Agent
}

// reloadable applies, for each setting (a serve flag name) that may change
// while the daemon runs, its new value. The limits in limitFields may
// change too; every other setting needs a restart: the listeners, paths,
// store, KDF and audit settings, and the limits restartLimits names.
var reloadable = map[string]func(cur, next *Config, r *running){
	"log-level": func(cur, next *Config, _ *running) {
		if cur.LogLevel != nil && next.LogLevel != nil {
			cur.LogLevel.Set(next.LogLevel.Level())
		}
	},
	"admin":              setRoles,
	"generation-admin":   setRoles,
	"generation-watcher": setRoles,
	// The mapping file is read again at every reload (readPrincipals),
	// whether its path changed or not.
	"http-principals": func(cur, next *Config, _ *running) { cur.HTTPPrincipals = next.HTTPPrincipals },
	// The next confirmation of a key added with ssh-add -c runs the new
	// program; "" refuses such keys.
	"ssh-askpass": func(cur, next *Config, r *running) {
		cur.SSHAskpass = next.SSHAskpass
		if r.agent != nil {
			r.agent.SetAskpass(cur.SSHAskpass)
		}
	},
}

// limitFields are the limit settings that may change while the daemon
// runs, with their field of server.Limits: a reload applies the changed
// ones together (server.SetLimits), or none.
var limitFields = map[string]func(*server.Limits) *int{
	"max-in-flight":              func(l *server.Limits) *int { return &l.MaxInFlight },
	"max-sessions":               func(l *server.Limits) *int { return &l.MaxSessions },
	"max-handles":                func(l *server.Limits) *int { return &l.MaxHandles },
	"max-keys-per-user":          func(l *server.Limits) *int { return &l.MaxKeysPerUser },
	"max-batch-ops":              func(l *server.Limits) *int { return &l.MaxBatchOps },
	"max-connections":            func(l *server.Limits) *int { return &l.MaxConnections },
	"admin-connections":          func(l *server.Limits) *int { return &l.AdminConnections },
	"max-connections-per-uid":    func(l *server.Limits) *int { return &l.MaxConnectionsPerUID },
	"max-in-flight-per-uid":      func(l *server.Limits) *int { return &l.MaxInFlightPerUID },
	"max-request-memory-per-uid": func(l *server.Limits) *int { return &l.MaxRequestBytesPerUID },
	"max-long-polls-per-uid":     func(l *server.Limits) *int { return &l.MaxLongPollsPerUID },
	"max-sessions-per-uid":       func(l *server.Limits) *int { return &l.MaxSessionsPerUID },
	"heavy-slots":                func(l *server.Limits) *int { return &l.HeavySlots },
	"max-heavy-per-uid":          func(l *server.Limits) *int { return &l.MaxHeavyPerUID },
	"audit-rate-per-uid":         func(l *server.Limits) *int { return &l.AuditBytesPerSecondPerUID },
	"audit-burst-per-uid":        func(l *server.Limits) *int { return &l.AuditBurstPerUID },
}

// restartLimits are the limit settings that need a restart, and why: the
// daemon sized something by them when it started.
var restartLimits = map[string]string{
	"max-message-bytes":          "sizes every connection's receive buffer and the reply buffers",
	"max-named-watchers-per-uid": "bounds the generation tracker, made at start",
	"max-computing-per-uid":      "sizes each uid's computing slots, made when it first connects",
}

func setRoles(cur, next *Config, r *running) {
	cur.Admins, cur.GenerationAdmins, cur.GenerationWatchers = next.Admins, next.GenerationAdmins, next.GenerationWatchers
	r.srv.SetRoles(cur.Admins, cur.GenerationAdmins, cur.GenerationWatchers)
}

// reload reads the configuration again (SIGHUP) and applies what may
// change at run time. A configuration that does not load changes
// nothing.
func reload(cur *Config, r *running, log *slog.Logger) {
	if cur.Reload == nil {
		log.Warn("SIGHUP: no configuration file to reload (start with --config FILE)")
		return
	}
	next, err := cur.Reload()
	if err != nil {
		log.Error("reload failed: nothing changed", "err", err)
		return
	}
	if cur.Settings == nil {
		cur.Settings = map[string]string{}
	}
	// The transit principals, read again, and the administrators as they
	// will be: a certificate never acts as an administrator, so a reload
	// that would make one (a new --admin uid that a certificate maps to,
	// or a new mapping to an administrator) changes nothing.
	var principals *transit.Principals
	if r.principals != nil {
		path := next.HTTPPrincipals
		if path == "" {
			path = cur.HTTPPrincipals
		}
		if principals, err = loadPrincipals(path, nil); err != nil {
			log.Error("reload: the transit principals were not read again; the previous mapping stays", "file", path, "err", err)
			principals = nil
		}
		in := principals
		if in == nil {
			in = r.principals
		}
		if err := principalsNotAdmin(in, next.Admins); err != nil {
			log.Error("reload refused: nothing changed", "file", path, "err", err)
			return
		}
	}
	var applied, restart, limits []string
	oldLimits := cur.Limits
	for name, v := range next.Settings {
		if old, ok := cur.Settings[name]; ok && old == v {
			continue
		}
		if field, ok := limitFields[name]; ok {
			*field(&cur.Limits) = *field(&next.Limits)
			limits = append(limits, name)
			continue
		}
		apply, ok := reloadable[name]
		if !ok {
			restart = append(restart, name)
			continue
		}
		apply(cur, &next, r)
		cur.Settings[name] = v
		applied = append(applied, name)
	}
	if len(limits) > 0 {
		if err := r.srv.SetLimits(cur.Limits); err != nil {
			cur.Limits = oldLimits
			log.Error("reload: the limits were not changed", "settings", limits, "err", err)
		} else {
			for _, name := range limits {
				cur.Settings[name] = next.Settings[name]
			}
			applied = append(applied, limits...)
		}
	}
	if principals != nil {
		r.principals.Replace(principals)
		log.Info("reload: the transit principals were read again; TLS clients are checked against them from now on", "file", cur.HTTPPrincipals)
	}
	slices.Sort(applied)
	slices.Sort(restart)
	if len(restart) > 0 {
		var why []any
		for _, name := range restart {
			if reason, ok := restartLimits[name]; ok {
				why = append(why, name, reason)
			}
		}
		log.Warn("reload: these settings changed but take effect only after a restart; the daemon keeps the ones it started with",
			append([]any{"restart_needed", restart}, why...)...)
	}
	log.Info("reload: done", "applied", applied)
}
