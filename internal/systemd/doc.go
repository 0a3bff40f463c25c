// Package systemd speaks the two small protocols a daemon shares with
// systemd: readiness notification (sd_notify: READY=1, STATUS=,
// STOPPING=1, WATCHDOG=1 over the datagram socket of $NOTIFY_SOCKET) and
// socket activation (the listening sockets passed as file descriptors 3
// and up, described by $LISTEN_PID, $LISTEN_FDS and $LISTEN_FDNAMES).
//
// Without those variables every function here does nothing, so the
// daemon runs unchanged outside systemd. The package never reads or
// sends anything about keys.
package systemd
