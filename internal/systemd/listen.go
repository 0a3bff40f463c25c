package systemd

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// listenFDsStart is the first file descriptor systemd passes.
const listenFDsStart = 3

// Socket is a listening socket passed by the service manager.
type Socket struct {
	// FD is the descriptor, close-on-exec.
	FD int
	// Name is its FileDescriptorName= (by default the socket unit's name).
	Name string
	// Path is the Unix socket's path ("" for another address family).
	Path string
	// Family is unix.AF_UNIX, unix.AF_INET or unix.AF_INET6 (0 when the
	// socket has no address the daemon knows).
	Family int
	// Addr is a TCP socket's bound address, host:port ("" otherwise).
	Addr string
	// Type is unix.SOCK_STREAM, unix.SOCK_SEQPACKET, ...
	Type int
}

// Sockets returns the sockets passed by socket activation, or none when
// $LISTEN_PID is not this process. It unsets the variables, so that child
// processes do not take the descriptors for theirs.
func Sockets() ([]Socket, error) {
	pid, fds, names := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES")
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	if pid == "" || fds == "" {
		return nil, nil
	}
	if p, err := strconv.Atoi(pid); err != nil || p != os.Getpid() {
		return nil, nil
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 || n > 64 {
		return nil, fmt.Errorf("LISTEN_FDS=%q: want a small number", fds)
	}
	var nameList []string
	if names != "" {
		nameList = strings.Split(names, ":")
	}
	out := make([]Socket, 0, n)
	for i := range n {
		fd := listenFDsStart + i
		unix.CloseOnExec(fd)
		s := Socket{FD: fd, Name: "unknown"}
		if i < len(nameList) && nameList[i] != "" {
			s.Name = nameList[i]
		}
		typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil {
			return nil, fmt.Errorf("passed file descriptor %d (%s) is not a socket: %w", fd, s.Name, err)
		}
		s.Type = typ
		if sa, err := unix.Getsockname(fd); err == nil {
			switch a := sa.(type) {
			case *unix.SockaddrUnix:
				s.Family, s.Path = unix.AF_UNIX, a.Name
			case *unix.SockaddrInet4:
				s.Family = unix.AF_INET
				s.Addr = net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
			case *unix.SockaddrInet6:
				s.Family = unix.AF_INET6
				s.Addr = net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// TypeName names a socket type as systemd's socket units do.
func TypeName(t int) string {
	switch t {
	case unix.SOCK_STREAM:
		return "stream"
	case unix.SOCK_SEQPACKET:
		return "seqpacket"
	case unix.SOCK_DGRAM:
		return "datagram"
	}
	return strconv.Itoa(t)
}
