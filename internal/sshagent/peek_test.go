package sshagent

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/unixsock"
)

// peekPair is a socket pair whose agent end has SO_PASSCRED and a reader
// for this process; peer is the client's end.
func peekPair(t *testing.T) (peer *os.File, rd *reader) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		t.Fatal(err)
	}
	peer = os.NewFile(uintptr(fds[0]), "peer")
	t.Cleanup(func() { peer.Close() })
	f := os.NewFile(uintptr(fds[1]), "agent")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fc.Close() })
	rd, err = newReader(fc.(*net.UnixConn), int32(os.Getpid()), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !rd.peek {
		t.Skip("no SO_PEEK_OFF on this kernel")
	}
	return peer, rd
}

// unsentOf is how much of what peer wrote the agent's end has not taken.
func unsentOf(t *testing.T, peer *os.File) int {
	t.Helper()
	n, err := unix.IoctlGetInt(int(peer.Fd()), unix.SIOCOUTQ)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// nextWithin is rd.next, failing the test if it has not returned within
// 5 s (a reader that waits forever, or spins).
func nextWithin(t *testing.T, rd *reader) ([]byte, error) {
	t.Helper()
	type res struct {
		m   []byte
		err error
	}
	ch := make(chan res, 1)
	go func() {
		m, _, err := rd.next()
		ch <- res{bytes.Clone(m), err}
	}()
	select {
	case r := <-ch:
		return r.m, r.err
	case <-time.After(5 * time.Second):
		t.Fatal("next did not return")
		return nil, nil
	}
}

// writeFromChild has another process (sh) write b on the peer's end.
func writeFromChild(t *testing.T, peer *os.File, b []byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bytes")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", `cat "$1" >&3`, "sh", p)
	cmd.ExtraFiles = []*os.File{peer}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sh: %v\n%s", err, out)
	}
}

func isOtherWriter(err error) bool {
	var ow unixsock.OtherWriter
	return errors.As(err, &ow)
}

// With reads that peek, every byte used is still one the process that
// connected wrote: a part of a message, or a whole message, written by
// another process sharing the connection (here a child it was passed to)
// fails the read, whether it comes first, last, or in the middle, and
// whether the answered bytes before it are still in the socket or not.
func TestPeekOtherWriterRefused(t *testing.T) {
	req := msg(msgSignRequest, sshString([]byte("blob")), sshString([]byte("data")), u32(0))
	mine := msg(msgRequestIdentities)
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, peer *os.File, rd *reader)
	}{
		{"child completes the parent's message", func(t *testing.T, peer *os.File, rd *reader) {
			peer.Write(req[:9])
			writeFromChild(t, peer, req[9:])
			if m, err := nextWithin(t, rd); !isOtherWriter(err) {
				t.Fatalf("next: %x %v, want another writer's error", m, err)
			}
		}},
		{"child writes the length, the parent the body", func(t *testing.T, peer *os.File, rd *reader) {
			writeFromChild(t, peer, req[:4])
			peer.Write(req[4:])
			if m, err := nextWithin(t, rd); !isOtherWriter(err) {
				t.Fatalf("next: %x %v, want another writer's error", m, err)
			}
		}},
		{"child's message after the parent's, both waiting", func(t *testing.T, peer *os.File, rd *reader) {
			peer.Write(mine)
			writeFromChild(t, peer, req)
			if m, err := nextWithin(t, rd); err != nil || len(m) != 1 || m[0] != msgRequestIdentities {
				t.Fatalf("next: %x %v", m, err)
			}
			if m, err := nextWithin(t, rd); !isOtherWriter(err) {
				t.Fatalf("next: %x %v, want another writer's error", m, err)
			}
		}},
		{"child's message after the parent's answered one is peeked, not taken", func(t *testing.T, peer *os.File, rd *reader) {
			peer.Write(mine)
			peer.Write(mine)
			for range 2 {
				if m, err := nextWithin(t, rd); err != nil || len(m) != 1 {
					t.Fatalf("next: %x %v", m, err)
				}
			}
			if rd.held == 0 {
				t.Fatal("nothing held: the case is not the one meant")
			}
			writeFromChild(t, peer, req)
			if m, err := nextWithin(t, rd); !isOtherWriter(err) {
				t.Fatalf("next: %x %v, want another writer's error", m, err)
			}
		}},
		{"child's message after the parent's answered one was taken", func(t *testing.T, peer *os.File, rd *reader) {
			peer.Write(mine)
			if m, err := nextWithin(t, rd); err != nil || len(m) != 1 {
				t.Fatalf("next: %x %v", m, err)
			}
			done := make(chan error, 1)
			go func() { _, _, err := rd.next(); done <- err }()
			for deadline := time.Now().Add(5 * time.Second); unsentOf(t, peer) != 0; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the answered message was not taken")
				}
			}
			writeFromChild(t, peer, req)
			select {
			case err := <-done:
				if !isOtherWriter(err) {
					t.Fatalf("next: %v, want another writer's error", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("next did not return")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peer, rd := peekPair(t)
			tc.run(t, peer, rd)
			rd.close()
		})
	}
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// Descriptors passed with a message (SCM_RIGHTS) are closed, however often
// a peek receives them, and the message is read once, whole.
func TestPeekPassedDescriptorsClosed(t *testing.T) {
	peer, rd := peekPair(t)
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	fds := make([]int, 20) // more than the room for them: the rest dropped
	for i := range fds {
		fds[i] = int(null.Fd())
	}
	before := openFDs(t)
	req := msg(msgLock, sshString(bytes.Repeat([]byte("p"), 100)))
	for round := range 50 {
		cut := 1 + round%(len(req)-1)
		if err := unix.Sendmsg(int(peer.Fd()), req[:cut], unix.UnixRights(fds[:1+round%20]...), nil, 0); err != nil {
			t.Fatal(err)
		}
		if err := unix.Sendmsg(int(peer.Fd()), req[cut:], unix.UnixRights(fds[:3]...), nil, 0); err != nil {
			t.Fatal(err)
		}
		m, err := nextWithin(t, rd)
		if err != nil || !bytes.Equal(m, req[4:]) {
			t.Fatalf("round %d: %x %v", round, m, err)
		}
	}
	rd.close()
	if n := unsentOf(t, peer); n != 0 {
		t.Errorf("%d bytes left in the socket", n)
	}
	if after := openFDs(t); after != before {
		t.Errorf("%d descriptors open before, %d after", before, after)
	}
}

// Many messages of every size up to the largest, written in pieces that
// cut them anywhere, with pauses that let the socket empty at random
// places, are each read once, in order, whole: what the socket keeps and
// what the reader takes of it never drift apart. A message of the largest
// size, more than the socket can hold, arrives (the reader takes the
// answered part before it waits for the rest).
func TestPeekOffsetNeverDrifts(t *testing.T) {
	peer, rd := peekPair(t)
	var want [][]byte
	var stream []byte
	for i := range 300 {
		n := 1 + (i*7919)%3000
		switch i % 50 {
		case 13:
			n = MaxMessage
		case 29:
			n = maxHeld + 3
		}
		body := make([]byte, n)
		for j := range body {
			body[j] = byte(i + j)
		}
		want = append(want, body)
		stream = append(stream, frame(body)...)
	}
	go func() {
		for off, k := 0, 0; off < len(stream); k++ {
			n := min(1+(k*104729)%9000, len(stream)-off)
			if _, err := peer.Write(stream[off : off+n]); err != nil {
				return
			}
			off += n
			if k%7 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	for i, w := range want {
		m, err := nextWithin(t, rd)
		if err != nil || !bytes.Equal(m, w) {
			t.Fatalf("message %d (%d bytes): got %d bytes, %v", i, len(w), len(m), err)
		}
	}
	rd.close()
	if n := unsentOf(t, peer); n != 0 {
		t.Errorf("%d bytes left in the socket", n)
	}
}

// A client that closes inside a message ends the read with
// io.ErrUnexpectedEOF, and one over the largest size with errTooLarge;
// neither waits, and closing the reader then takes what it holds.
func TestPeekCutShortAndTooLarge(t *testing.T) {
	peer, rd := peekPair(t)
	peer.Write(msg(msgRequestIdentities))
	if _, err := nextWithin(t, rd); err != nil {
		t.Fatal(err)
	}
	peer.Write(frame(make([]byte, MaxMessage))[:MaxMessage/2])
	peer.Close()
	if _, err := nextWithin(t, rd); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("next: %v, want io.ErrUnexpectedEOF", err)
	}
	rd.close()

	peer, rd = peekPair(t)
	peer.Write(msg(msgRequestIdentities))
	peer.Write(u32(MaxMessage + 1))
	if _, err := nextWithin(t, rd); err != nil {
		t.Fatal(err)
	}
	if _, err := nextWithin(t, rd); !errors.Is(err, errTooLarge) {
		t.Fatalf("next: %v, want errTooLarge", err)
	}
	rd.close()
}

// A byte sent out of band (MSG_OOB) is read in line with the rest: a
// peek past the start of the socket would read it so, and the read that
// takes the answered bytes must take the same bytes, or it takes one
// the reader never peeked (or fails for want of it) and the two drift
// apart.
func TestPeekOutOfBandByteInLine(t *testing.T) {
	peer, rd := peekPair(t)
	peer.Write(msg(msgRequestIdentities))
	if err := unix.Sendmsg(int(peer.Fd()), []byte{0}, nil, nil, unix.MSG_OOB); err != nil {
		t.Skipf("no MSG_OOB on Unix stream sockets: %v", err)
	}
	peer.Write([]byte{0, 0, 1, msgRemoveAllIdentities}) // with the byte above, a message
	peer.Write(msg(msgRequestIdentities))
	for i, want := range []byte{msgRequestIdentities, msgRemoveAllIdentities, msgRequestIdentities} {
		if m, err := nextWithin(t, rd); err != nil || len(m) != 1 || m[0] != want {
			t.Fatalf("message %d: %x %v, want %x", i, m, err, want)
		}
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		peer.Write(msg(msgLock, sshString([]byte("x"))))
	}()
	if m, err := nextWithin(t, rd); err != nil || len(m) == 0 || m[0] != msgLock {
		t.Fatalf("last message: %x %v", m, err)
	}
	rd.close()
	if n := unsentOf(t, peer); n != 0 {
		t.Errorf("%d bytes left in the socket", n)
	}
}

// Taking the answered bytes from the socket costs a few reads however
// little room the buffer has left: a client that sends all of a large
// message but its last byte leaves the reader one free byte, with the
// whole message held in the socket, and taking it a byte a read would
// cost the daemon a system call for each byte the client wrote.
func TestPeekTakeFewReadsWithLittleRoom(t *testing.T) {
	for _, size := range []int{len(make([]byte, 16<<10)) - 4, 200 << 10} {
		peer, rd := peekPair(t)
		req := frame(make([]byte, size))
		go func() {
			peer.Write(req[:len(req)-1])
			time.Sleep(50 * time.Millisecond)
			peer.Write(req[len(req)-1:])
		}()
		m, err := nextWithin(t, rd)
		if err != nil || len(m) != size {
			t.Fatalf("%d bytes: got %d, %v", size, len(m), err)
		}
		if rd.takes > 64 {
			t.Errorf("a message of %d bytes taken from the socket in %d reads", size, rd.takes)
		}
		rd.close()
	}
}
