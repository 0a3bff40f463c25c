package daemon

import (
	"log/slog"
	"slices"

	"github.com/keywarden/keywarden/internal/server"
)

// reloadable applies, for each setting (a serve flag name) that may change
// while the daemon runs, its new value. Every other setting needs a
// restart.
var reloadable = map[string]func(cur, next *Config, srv *server.Server){
	"log-level": func(cur, next *Config, _ *server.Server) {
		if cur.LogLevel != nil && next.LogLevel != nil {
			cur.LogLevel.Set(next.LogLevel.Level())
		}
	},
	"admin":              setRoles,
	"generation-admin":   setRoles,
	"generation-watcher": setRoles,
}

func setRoles(cur, next *Config, srv *server.Server) {
	cur.Admins, cur.GenerationAdmins, cur.GenerationWatchers = next.Admins, next.GenerationAdmins, next.GenerationWatchers
	srv.SetRoles(cur.Admins, cur.GenerationAdmins, cur.GenerationWatchers)
}

// reload reads the configuration again (SIGHUP) and applies what may
// change at run time. A configuration that does not load changes
// nothing.
func reload(cur *Config, srv *server.Server, log *slog.Logger) {
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
	var applied, restart []string
	for name, v := range next.Settings {
		if old, ok := cur.Settings[name]; ok && old == v {
			continue
		}
		apply, ok := reloadable[name]
		if !ok {
			restart = append(restart, name)
			continue
		}
		apply(cur, &next, srv)
		cur.Settings[name] = v
		applied = append(applied, name)
	}
	slices.Sort(applied)
	slices.Sort(restart)
	if len(restart) > 0 {
		log.Warn("reload: these settings changed but take effect only after a restart; the daemon keeps the ones it started with", "restart_needed", restart)
	}
	log.Info("reload: done", "applied", applied)
}
