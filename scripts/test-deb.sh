#!/bin/sh
# Builds the Debian package (make deb), installs it with dpkg -i, checks
# what it installed (the account and its directories, keywarden --version,
# the completion script, the manual pages, the PKCS #11 module and its
# p11-kit registration, keywarden doctor where the
# command exists), runs the daemon briefly in the foreground as the unit's
# ExecStart line says (or, without a unit, as the keywarden account with
# the package's directories), asks it for its status, stops it, and
# removes the package with dpkg -r. Run as root; scripts/test.sh runs it.
# What the test made that the package keeps (the account, the state
# directory) goes too, unless it was there before.
set -eu
cd "$(dirname "$0")/.."
say() { printf 'test-deb: %s\n' "$*" >&2; }
fail() {
	say "FAILED: $*"
	exit 1
}
[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i)"
case "$(dpkg-query -W -f '${Status}' keywarden 2>/dev/null)" in
*" installed") fail "a keywarden package is installed already; not touching it" ;;
esac

had_user=no had_state=no
getent passwd keywarden >/dev/null && had_user=yes
[ -e /var/lib/keywarden ] && had_state=yes
# What an earlier daemon left in /run/keywarden (a daemon run by root on
# the default socket leaves its lock and its development-mode audit log
# there, owned by root) would stop the package's daemon, which runs as
# the keywarden account, from taking its lock. Such a directory is moved
# aside for the test and put back after. If a daemon still runs there
# (it holds a lock), it is left alone: the package's daemon then serves
# on a socket of the test's own, and the directory gets back its owner
# and mode, which installing the package changes.
saved_run="" live_run="" alt_run=""
if [ -e /run/keywarden ]; then
	for l in /run/keywarden/*.lock; do
		[ -e "$l" ] || continue
		# A running daemon holds its lock (flock).
		flock -n "$l" true || live_run=$(stat -c '%u:%g %a' /run/keywarden)
	done
	if [ -n "$live_run" ]; then
		say "a keywarden daemon runs in /run/keywarden; the package's daemon will serve on a socket of its own"
	else
		saved_run=/run/keywarden.before-test-deb.$$
		mv /run/keywarden "$saved_run"
		say "moved the existing /run/keywarden aside to $saved_run for the test"
	fi
fi
work=$(mktemp -d)
deb=""
pid=""
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	dpkg -P keywarden >/dev/null 2>&1 || true
	[ $had_state = yes ] || rm -rf /var/lib/keywarden
	[ -z "$alt_run" ] || rm -rf "$alt_run"
	if [ -n "$live_run" ]; then
		chown "${live_run% *}" /run/keywarden
		chmod "${live_run#* }" /run/keywarden
	else
		rm -rf /run/keywarden
		[ -z "$saved_run" ] || mv "$saved_run" /run/keywarden
	fi
	[ $had_user = yes ] || userdel keywarden 2>/dev/null || true
	[ -n "$deb" ] && rm -f "$deb"
	rm -rf "$work"
}
trap cleanup EXIT

deb=$(make --no-print-directory deb)
say "installing $deb"
dpkg -i "$deb" >/dev/null

getent passwd keywarden >/dev/null || fail "no keywarden account"
[ "$(stat -c '%U:%G %a' /var/lib/keywarden)" = "keywarden:keywarden 700" ] || fail "/var/lib/keywarden: $(stat -c '%U:%G %a' /var/lib/keywarden)"
[ "$(stat -c '%U' /run/keywarden)" = keywarden ] || fail "/run/keywarden is not the account's"
for u in /etc/systemd/system/*.wants/*keywarden*; do
	if [ -e "$u" ]; then
		fail "$u: the package enabled a unit"
	fi
done

/usr/bin/keywarden --version >"$work/version" || fail "keywarden --version"
cat "$work/version" >&2
grep -q '^runtimesecret: yes$' "$work/version" || fail "the package's binary is not the official runtimesecret build"
bash -c '. /usr/share/bash-completion/completions/keywarden && complete -p keywarden' >/dev/null || fail "the installed bash completion does not load"
bash -c 'source <(/usr/bin/keywarden completion bash) && complete -p keywarden' >/dev/null || fail "keywarden completion bash does not load"
for sh in zsh fish; do
	f=/usr/share/zsh/vendor-completions/_keywarden
	[ $sh = fish ] && f=/usr/share/fish/vendor_completions.d/keywarden.fish
	if command -v $sh >/dev/null 2>&1; then
		$sh -n "$f" || fail "$f: not valid $sh"
	fi
done
for page in man1/keywarden.1 man8/keywarden-serve.8 man5/keywarden.conf.5; do
	MANPAGER=cat MANWIDTH=80 man -l "/usr/share/man/$page.gz" 2>"$work/man.err" | grep -q '^NAME' || fail "man -l $page: $(cat "$work/man.err")"
done

# The PKCS #11 module, where p11-kit finds it.
module=$(dpkg -L keywarden | grep '/pkcs11/libkeywarden-pkcs11.so$' || true)
[ -n "$module" ] && [ -f "$module" ] || fail "the package has no PKCS #11 module"
[ -f /usr/share/p11-kit/modules/keywarden.module ] || fail "the package has no p11-kit module file"
dpkg-deb -f "$deb" Depends | grep -q 'libc6 (>= ' || fail "the package does not depend on libc6: $(dpkg-deb -f "$deb" Depends)"
if command -v p11-kit >/dev/null 2>&1; then
	p11-kit list-modules 2>"$work/p11.err" | grep -q '^keywarden: ' ||
		fail "p11-kit list-modules does not show the module: $(cat "$work/p11.err")"
fi

if /usr/bin/keywarden help doctor >/dev/null 2>&1; then
	# Exit 1 is a check that failed on this machine (shown above); only a
	# crash or a usage error fails the test.
	rc=0
	/usr/bin/keywarden doctor >&2 || rc=$?
	[ $rc -le 1 ] || fail "keywarden doctor: exit $rc"
else
	say "no keywarden doctor in this build: skipped"
fi

# The daemon as the unit starts it, in the foreground.
unit=/usr/lib/systemd/system/keywarden.service
if [ -f "$unit" ]; then
	execstart=$(sed -n 's/^ExecStart=[-@:+!]*//p' "$unit" | head -n 1)
	user=$(sed -n 's/^User=//p' "$unit" | head -n 1)
	# The specifiers a unit's command line may use.
	execstart=$(printf '%s' "$execstart" | sed 's|%t|/run|g; s|%S|/var/lib|g; s|%E|/etc|g; s|%C|/var/cache|g; s|%L|/var/log|g; s|%%|%|g')
	say "the unit's ExecStart: $execstart (User=${user:-root})"
else
	execstart="/usr/bin/keywarden serve --state /var/lib/keywarden --socket /run/keywarden/keywarden.sock"
	user=keywarden
	say "no unit in this build: running $execstart as $user"
fi
eval "set -- $execstart"
sock=/run/keywarden/keywarden.sock
prev=""
for a in "$@"; do
	case "$prev:$a" in
	--socket:* | -socket:*) sock=$a ;;
	*:--socket=* | *:-socket=*) sock=${a#*=} ;;
	esac
	prev=$a
done
if [ -n "$live_run" ]; then
	alt_run=/run/keywarden-test-deb.$$
	install -d -m 0755 -o "${user:-root}" "$alt_run"
	sock=$alt_run/keywarden.sock
	set -- "$@" --socket "$sock"
fi
if [ -n "$user" ] && [ "$user" != root ]; then
	set -- setpriv --reuid="$user" --regid="$user" --init-groups -- "$@"
fi
"$@" >"$work/daemon.log" 2>&1 &
pid=$!
/usr/bin/keywarden status --wait 10s --socket "$sock" >"$work/status" 2>&1 ||
	fail "the daemon does not answer at $sock: $(cat "$work/status") $(cat "$work/daemon.log")"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=""
[ $rc -eq 0 ] || fail "the daemon exited $rc on SIGTERM: $(cat "$work/daemon.log")"
say "the daemon answered at $sock and stopped"

dpkg -r keywarden >/dev/null
[ ! -e /usr/bin/keywarden ] || fail "dpkg -r left /usr/bin/keywarden"
[ ! -e "$module" ] || fail "dpkg -r left $module"
# A unit the administrator enabled is disabled on purge, not left linked.
mkdir -p /etc/systemd/system/sockets.target.wants
ln -sf /usr/lib/systemd/system/keywarden-pkcs11.socket /etc/systemd/system/sockets.target.wants/keywarden-pkcs11.socket
dpkg -P keywarden >/dev/null
[ ! -L /etc/systemd/system/sockets.target.wants/keywarden-pkcs11.socket ] || fail "dpkg -P left an enabled unit's link"
say "ok"
