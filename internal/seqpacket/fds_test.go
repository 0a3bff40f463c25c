package seqpacket

import (
	"testing"

	"golang.org/x/sys/unix"
)

// A descriptor sent with a message arrives with RecvFDs and refers to the
// same open file.
func TestSendRecvFDs(t *testing.T) {
	a, b, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if err := a.SendFDs([]byte("with a pipe"), []int{p[1]}); err != nil {
		t.Fatal(err)
	}
	buf, oob := make([]byte, 64), make([]byte, OOBSize)
	n, fds, err := b.RecvFDs(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) != "with a pipe" || len(fds) != 1 {
		t.Fatalf("got %q with %d descriptors", buf[:n], len(fds))
	}
	if _, err := unix.Write(fds[0], []byte("x")); err != nil {
		t.Fatal(err)
	}
	unix.Close(fds[0])
	one := make([]byte, 1)
	if n, err := unix.Read(p[0], one); n != 1 || one[0] != 'x' {
		t.Fatalf("read %d %q %v through the passed descriptor", n, one, err)
	}
	// A message without descriptors: none.
	a.Send([]byte("plain"))
	if n, fds, err := b.RecvFDs(buf, oob); err != nil || string(buf[:n]) != "plain" || len(fds) != 0 {
		t.Fatalf("plain message: %q %v %v", buf[:n], fds, err)
	}
}

// Recv, which passes no control buffer, leaves no passed descriptor open
// in the receiver: the kernel discards them.
func TestRecvDropsFDs(t *testing.T) {
	a, b, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	before := openFDs(t)
	for range 10 {
		if err := a.SendFDs([]byte("m"), []int{fd, fd}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Recv(make([]byte, 8)); err != nil {
			t.Fatal(err)
		}
	}
	if after := openFDs(t); after != before {
		t.Fatalf("%d descriptors open before, %d after", before, after)
	}
}

// RecvMsg keeps the first descriptor passed with a message, for the
// receiver to own, and closes the others; a message without one has FD -1.
func TestRecvMsgKeepsFirstFD(t *testing.T) {
	a, b, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	before := openFDs(t)
	buf, oob := make([]byte, 64), make([]byte, OOBSize)
	for range 5 {
		if err := a.SendFDs([]byte("m"), []int{p[1], p[0], p[0]}); err != nil {
			t.Fatal(err)
		}
		m, err := b.RecvMsg(buf, oob)
		if err != nil {
			t.Fatal(err)
		}
		if m.FD < 0 {
			t.Fatal("no descriptor kept")
		}
		if _, err := unix.Write(m.FD, []byte("x")); err != nil {
			t.Fatalf("the kept descriptor is not the first passed: %v", err)
		}
		unix.Close(m.FD)
	}
	if after := openFDs(t); after != before {
		t.Fatalf("%d descriptors open before, %d after", before, after)
	}
	a.Send([]byte("plain"))
	if m, err := b.TryRecvMsg(buf, oob); err != nil || m.FD != -1 {
		t.Fatalf("plain message: FD %d, %v", m.FD, err)
	}
}
