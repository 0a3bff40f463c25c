package policy

import (
	"slices"

	"github.com/keywarden/keywarden/internal/wire"
)

// Roles says which uids hold the daemon's privileged roles. Root holds
// every one; the others are configured (--admin, --generation-admin,
// --generation-watcher) or are the daemon's own uid.
type Roles struct {
	// Self is the uid the daemon runs as: an administrator.
	Self uint32
	// Admins may run the master-key and store operations (init, unseal,
	// seal, master rotation, backup, restore) and trust wrapping keys.
	Admins []uint32
	// GenerationAdmins may bump the machine generation.
	GenerationAdmins []uint32
	// GenerationWatchers are uids whose generation watchers count for
	// every caller (see CountsWatcher).
	GenerationWatchers []uint32
}

// Admin reports whether uid is an administrator: root, the daemon's own
// uid, or a configured administrator.
func (r *Roles) Admin(uid uint32) bool {
	return uid == 0 || uid == r.Self || slices.Contains(r.Admins, uid)
}

// CheckAdmin allows administrators only.
func (r *Roles) CheckAdmin(c Caller) Decision {
	if r.Admin(c.UID) {
		return allow
	}
	return deny(wire.Status_STATUS_PERMISSION_DENIED,
		"only an administrator may do this (root, the daemon's uid, or an --admin uid)",
		"uid %d is not an administrator", c.UID)
}

// CheckBump allows root and the generation administrators to bump the
// machine generation.
func (r *Roles) CheckBump(c Caller) Decision {
	if c.UID == 0 || slices.Contains(r.GenerationAdmins, c.UID) {
		return allow
	}
	return deny(wire.Status_STATUS_PERMISSION_DENIED,
		"only root or a generation admin may bump the generation",
		"uid %d is neither root nor a --generation-admin", c.UID)
}

// CountsWatcher reports whether the generation watchers of uid w count
// for a caller of uid caller: those of the administrators, the generation
// administrators and watchers, and the caller's own. Any user may
// register watchers; one that never acknowledges must not hold up an
// orchestrator that does not rely on it.
func (r *Roles) CountsWatcher(caller, w uint32) bool {
	return w == caller || r.Admin(w) || slices.Contains(r.GenerationAdmins, w) || slices.Contains(r.GenerationWatchers, w)
}
