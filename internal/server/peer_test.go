package server

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/seqpacket"
)

// markCaller against the connection's peer: the ordinary message adds
// nothing; another process's is claimed and names the peer; another
// program of the same process names the peer only.
func TestMarkCaller(t *testing.T) {
	s := mustNew(t, Config{})
	s.resolver = audit.NewResolver()
	a, b, err := seqpacket.Pair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	cn := testConn(t, s, a, 1000)
	me := int32(os.Getpid())
	alive, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		t.Skip(err)
	}
	defer unix.Close(alive)
	// The pidfd of a process that has gone: its pid may be another's now.
	gone := exec.Command("true")
	if err := gone.Start(); err != nil {
		t.Fatal(err)
	}
	goneFD, err := unix.PidfdOpen(gone.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(goneFD)
	gone.Wait()
	exe, _ := os.Executable()
	peer0 := peer{Peer: audit.Peer{PID: me, UID: 1000, GID: 1000, Exe: exe}}
	for _, tc := range []struct {
		name    string
		peer    peer
		caller  audit.Caller
		claimed bool
		named   bool // the record names the peer
		goneNow bool // the process that connected has exited since
	}{
		{name: "the peer", peer: peer0, caller: audit.Caller{PID: me, UID: 1000, GID: 1000, Exe: exe}},
		{name: "another process", peer: peer0, caller: audit.Caller{PID: 1, UID: 1000, GID: 1000, Exe: "/sbin/init"}, claimed: true, named: true},
		{name: "another program", peer: peer0, caller: audit.Caller{PID: me, UID: 1000, GID: 1000, Exe: "/bin/other"}, named: true},
		{name: "exited", peer: peer0, caller: audit.Caller{PID: me, UID: 1000, GID: 1000, Exited: true}},
		{name: "unknown peer", caller: audit.Caller{PID: me, UID: 1000, GID: 1000, Exe: exe}},
		// The peer's namespaces, read at connect time, stand for its own
		// messages.
		{name: "the peer, in other namespaces", peer: peer{Peer: peer0.Peer, otherUser: true, otherPID: true},
			caller: audit.Caller{PID: me, UID: 1000, GID: 1000, Exe: exe}, claimed: true},
		// Once the process that connected is gone, a process with its pid
		// (in this test, this one: not in other namespaces) is looked at
		// anew, not taken for the peer.
		{name: "the peer's pid, the peer gone", peer: peer{Peer: peer0.Peer, otherUser: true, otherPID: true},
			caller: audit.Caller{PID: me, UID: 1000, GID: 1000, Exe: exe}, goneNow: true},
	} {
		cn.peer = tc.peer
		cn.opener.Pidfd = alive
		if tc.goneNow {
			cn.opener.Pidfd = goneFD
		}
		c := tc.caller
		cn.markCaller(&c, -1, false)
		if c.Claimed != tc.claimed || c.Peer.IsZero() == tc.named {
			t.Errorf("%s: %+v, want claimed %v, peer named %v", tc.name, c, tc.claimed, tc.named)
		}
		if tc.named && c.Peer != tc.peer.Peer {
			t.Errorf("%s: peer %+v, want %+v", tc.name, c.Peer, tc.peer.Peer)
		}
		if want := tc.peer.otherUser && tc.caller.PID == tc.peer.PID && !tc.goneNow; c.OtherUserNS != want || c.OtherPIDNS != want {
			t.Errorf("%s: namespaces %v %v, want %v", tc.name, c.OtherUserNS, c.OtherPIDNS, want)
		}
	}
}

// BenchmarkCallerOf measures the audit's view of a sender: the ordinary
// message, from the process that connected (its namespaces known since
// it connected), and one from another process of the same uid, whose
// namespaces are read. Besides the time it reports the processor time of
// the benchmark's thread per message (cpu-ns/op), which a machine busy
// with other work changes less than the time: most of it is system calls.
func BenchmarkCallerOf(b *testing.B) {
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		b.Skip(err)
	}
	defer unix.Close(pidfd)
	s := mustNew(b, Config{})
	s.resolver = audit.NewResolver()
	cn := testConn(b, s, benchConn(b), uint32(os.Getuid()))
	cn.opener.Pidfd = pidfd
	id := Identity{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Pidfd: pidfd}
	c := s.callerOf(id)
	s.resolver.FillNamespaces(&c, pidfd)
	cn.peer = peer{Peer: audit.Peer{PID: c.PID, UID: c.UID, GID: c.GID, Exe: c.Exe}}
	b.Run("peer", func(b *testing.B) {
		b.ReportAllocs()
		cpuPerOp(b, func() {
			if c := cn.callerOf(id); c.Claimed {
				b.Fatal(c)
			}
		})
	})
	cn.peer.PID++
	cn.opener.PID++
	b.Run("other-process", func(b *testing.B) {
		b.ReportAllocs()
		cpuPerOp(b, func() {
			if c := cn.callerOf(id); !c.Claimed {
				b.Fatal(c)
			}
		})
	})
	b.Run("resolver-only", func(b *testing.B) {
		b.ReportAllocs()
		cpuPerOp(b, func() { s.callerOf(id) })
	})
}

// cpuPerOp runs f in b's loop on one thread and reports that thread's
// processor time per call.
func cpuPerOp(b *testing.B, f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	threadCPU := func() int64 {
		var ts unix.Timespec
		unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
		return ts.Nano()
	}
	n, t0 := 0, threadCPU()
	for b.Loop() {
		f()
		n++
	}
	b.ReportMetric(float64(threadCPU()-t0)/float64(n), "cpu-ns/op")
}

// callerOf reads a message that names the opener's pid through the
// opener's pidfd, and falls back to the message's own pidfd when the
// opener is gone; a message from another process is read through its own.
// Neither caches what it read: a program the opener execs is seen at its
// next message.
func TestCallerOfOpener(t *testing.T) {
	s := mustNew(t, Config{})
	s.resolver = audit.NewResolver()
	a, b, err := seqpacket.Pair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	cn := testConn(t, s, a, uint32(os.Getuid()))
	me := int32(os.Getpid())
	alive, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		t.Skip(err)
	}
	defer unix.Close(alive)
	gone := exec.Command("true")
	if err := gone.Start(); err != nil {
		t.Fatal(err)
	}
	goneFD, err := unix.PidfdOpen(gone.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(goneFD)
	gone.Wait()
	exe, _ := os.Executable()
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	cn.peer = peer{Peer: audit.Peer{PID: me, UID: uid, GID: gid, Exe: exe}}

	// The opener lives: its pidfd vouches for the message (whose own
	// pidfd, here, names a process that has gone).
	cn.opener.PID, cn.opener.Pidfd = me, alive
	if c := cn.callerOf(Identity{PID: me, UID: uid, GID: gid, Pidfd: goneFD}); c.Exe != exe || c.Exited || c.Claimed || !c.Peer.IsZero() {
		t.Errorf("the opener's message: %+v", c)
	}
	// The opener has gone: the message's pidfd decides.
	cn.opener.Pidfd = goneFD
	if c := cn.callerOf(Identity{PID: me, UID: uid, GID: gid, Pidfd: alive}); c.Exe != exe || c.Exited {
		t.Errorf("the opener gone, a live sender: %+v", c)
	}
	if c := cn.callerOf(Identity{PID: me, UID: uid, GID: gid, Pidfd: goneFD}); !c.Exited || c.Exe != "" {
		t.Errorf("the opener gone, the sender gone: %+v", c)
	}

	// A process that execs another program while connected: each message
	// names the program running when it is read.
	sh := exec.Command("/bin/sh", "-c", "read x; exec sleep 60")
	in, err := sh.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sh.Process.Kill(); sh.Wait() }()
	shFD, err := unix.PidfdOpen(sh.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(shFD)
	pid := int32(sh.Process.Pid)
	shExe, err := os.Readlink("/proc/" + strconv.Itoa(sh.Process.Pid) + "/exe")
	if err != nil {
		t.Fatal(err)
	}
	cn.opener.PID, cn.opener.Pidfd = pid, shFD
	cn.peer = peer{Peer: audit.Peer{PID: pid, UID: uid, GID: gid, Exe: shExe}}
	id := Identity{PID: pid, UID: uid, GID: gid, Pidfd: shFD}
	if c := cn.callerOf(id); c.Exe != shExe || c.Exited || !c.Peer.IsZero() {
		t.Fatalf("before exec: %+v, want %s", c, shExe)
	}
	in.Write([]byte("\n"))
	sleepExe, _ := exec.LookPath("sleep")
	sleepExe, _ = filepath.EvalSymlinks(sleepExe)
	var c audit.Caller
	for range 500 {
		if c = cn.callerOf(id); c.Exe != shExe {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c.Exe != sleepExe || c.Exited || c.Peer.Exe != shExe {
		t.Errorf("after exec: %+v, want %s, the peer named as %s", c, sleepExe, shExe)
	}
}

// A request a front hands to a session no process opened (the ssh-agent
// front's session of a key ssh-add gave it), naming the session of the
// connection it came on (Identity.Via), is read as that session reads its
// own: the namespaces read when its process connected stand for them,
// rather than being read again for every request; without Via they are
// read now.
func TestCallerOfVia(t *testing.T) {
	s := mustNew(t, Config{})
	s.resolver = audit.NewResolver()
	me, uid, gid := int32(os.Getpid()), uint32(os.Getuid()), uint32(os.Getgid())
	opener, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		t.Skip(err)
	}
	conn, err := s.NewSession(context.Background(), "test", Identity{PID: me, UID: uid, GID: gid, Pidfd: opener})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	held, err := s.NewSession(context.Background(), "test", Identity{UID: uid, GID: gid, Pidfd: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	exe, _ := os.Executable()
	if conn.peer.Exe != exe || !held.peer.IsZero() {
		t.Fatalf("peers %+v and %+v", conn.peer, held.peer)
	}
	// What was read at connect time, unlike what a read now finds.
	conn.peer.otherUser, conn.peer.otherPID = true, true
	alive, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(alive)
	id := Identity{PID: me, UID: uid, GID: gid, Pidfd: alive, SSHDest: "dest"}

	c := held.callerOf(id)
	if c.OtherUserNS || c.OtherPIDNS || c.Exe != exe || c.SSHDest != "dest" {
		t.Errorf("without Via: %+v", c)
	}
	id.Via = conn
	c = held.callerOf(id)
	if !c.OtherUserNS || !c.OtherPIDNS || !c.Claimed || c.Exe != exe || !c.Peer.IsZero() || c.SSHDest != "dest" {
		t.Errorf("via the connection's session: %+v, want its namespaces read at connect time", c)
	}
}
