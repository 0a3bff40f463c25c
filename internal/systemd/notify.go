package systemd

import (
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Notifier sends state changes to the service manager. The zero value and
// a nil *Notifier send nothing.
type Notifier struct {
	mu   sync.Mutex // guards conn and last
	conn *net.UnixConn
	last string // the last STATUS= sent, to send only changes
	// watchdog is the interval at which WATCHDOG=1 must be sent; 0: none.
	watchdog time.Duration
}

// NewNotifier returns a Notifier for $NOTIFY_SOCKET, or nil when it is not
// set (not started by systemd, or the unit is not Type=notify). It unsets
// the variables it consumed, so that child processes (KDF workers) do not
// talk to the service manager on the daemon's behalf.
func NewNotifier() (*Notifier, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil, nil
	}
	os.Unsetenv("NOTIFY_SOCKET")
	wd := watchdogInterval(os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID"), os.Getpid())
	os.Unsetenv("WATCHDOG_USEC")
	os.Unsetenv("WATCHDOG_PID")
	// An abstract socket is written with a leading '@'.
	name := path
	if strings.HasPrefix(name, "@") {
		name = "\x00" + name[1:]
	}
	if !strings.HasPrefix(name, "/") && !strings.HasPrefix(name, "\x00") {
		return nil, errors.New("NOTIFY_SOCKET is neither an absolute path nor an abstract socket")
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	return &Notifier{conn: conn, watchdog: wd}, nil
}

// watchdogInterval returns the WATCHDOG_USEC interval if it is meant for
// this process (WATCHDOG_PID unset or equal to pid).
func watchdogInterval(usec, wpid string, pid int) time.Duration {
	if usec == "" {
		return 0
	}
	if wpid != "" {
		if p, err := strconv.Atoi(wpid); err != nil || p != pid {
			return 0
		}
	}
	n, err := strconv.ParseUint(usec, 10, 63)
	if err != nil || n == 0 {
		return 0
	}
	return time.Duration(n) * time.Microsecond
}

// Send sends one notification of newline-separated VAR=value lines.
func (n *Notifier) Send(state string) error {
	if n == nil {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conn == nil {
		return nil
	}
	// A receiver that does not read (a hung or hostile $NOTIFY_SOCKET)
	// must not stall the daemon: a notification that cannot be queued in
	// time is dropped.
	n.conn.SetWriteDeadline(time.Now().Add(notifyTimeout))
	_, err := n.conn.Write([]byte(state))
	return err
}

// notifyTimeout bounds one notification's send.
const notifyTimeout = time.Second

// Ready says the daemon serves, with a status line.
func (n *Notifier) Ready(status string) error {
	if n == nil {
		return nil
	}
	n.mu.Lock()
	n.last = status
	n.mu.Unlock()
	return n.Send("READY=1\nSTATUS=" + status)
}

// Status sends STATUS=status if it differs from the last one sent.
func (n *Notifier) Status(status string) error {
	if n == nil {
		return nil
	}
	n.mu.Lock()
	same := n.last == status
	n.last = status
	n.mu.Unlock()
	if same {
		return nil
	}
	return n.Send("STATUS=" + status)
}

// Reloading says a configuration reload has begun; Ready ends it. The
// monotonic time lets Type=notify-reload units see the reload's start.
func (n *Notifier) Reloading() error {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return err
	}
	return n.Send("RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(ts.Nano()/1000, 10))
}

// Stopping says the daemon is shutting down.
func (n *Notifier) Stopping() error { return n.Send("STOPPING=1\nSTATUS=stopping") }

// Watchdog returns the interval at which the service manager expects
// WATCHDOG=1 (0: it expects none).
func (n *Notifier) Watchdog() time.Duration {
	if n == nil {
		return 0
	}
	return n.watchdog
}

// Ping sends WATCHDOG=1.
func (n *Notifier) Ping() error { return n.Send("WATCHDOG=1") }

// Close closes the socket; later sends do nothing.
func (n *Notifier) Close() error {
	if n == nil {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conn == nil {
		return nil
	}
	err := n.conn.Close()
	n.conn = nil
	return err
}
