package sshagent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/sockpoll"
	"github.com/keywarden/keywarden/internal/wire"
)

// signSetup makes an Ed25519 key marked for SSH, dials, lists, and
// returns the connection, the key and a framed sign request of data.
func signSetup(t *testing.T, ta *testAgent, data []byte) (net.Conn, ssh.PublicKey, []byte) {
	t.Helper()
	ta.generate(t, selfID(uint32(os.Getuid())), "k", wire.KeyType_KEY_TYPE_ED25519, 0, true)
	c := ta.dial(t)
	list, err := roundTrip(c, msg(msgRequestIdentities))
	s := cryptobyte.String(list)
	var typ uint8
	var n uint32
	var blob []byte
	if err != nil || !s.ReadUint8(&typ) || typ != msgIdentitiesAnswer || !s.ReadUint32(&n) || n != 1 || !readString(&s, &blob) {
		t.Fatalf("listing %x, %v", list, err)
	}
	pub, err := ssh.ParsePublicKey(blob)
	if err != nil {
		t.Fatal(err)
	}
	return c, pub, msg(msgSignRequest, sshString(blob), sshString(data), u32(0))
}

// checkSignReply checks that reply is a good signature of data by pub.
func checkSignReply(t *testing.T, reply []byte, pub ssh.PublicKey, data []byte) {
	t.Helper()
	var resp struct {
		Type byte
		Sig  []byte
	}
	var sig ssh.Signature
	if ssh.Unmarshal(reply, &resp) != nil || resp.Type != msgSignResponse || ssh.Unmarshal(resp.Sig, &sig) != nil {
		t.Fatalf("not a sign response: %x", reply)
	}
	if err := pub.Verify(data, &sig); err != nil {
		t.Fatalf("bad signature: %v", err)
	}
}

// A message that arrives in pieces, its length itself split, is answered
// once whole; so is one whose end comes with the next message's start.
func TestMessageSplitAcrossReads(t *testing.T) {
	ta := newTestAgent(t, Config{})
	data := []byte("split across reads")
	c, pub, req := signSetup(t, ta, data)
	for _, cuts := range [][]int{{2}, {4}, {1, 3, 9, 30}, {len(req) - 1}} {
		prev := 0
		for _, cut := range append(cuts, len(req)) {
			if _, err := c.Write(req[prev:cut]); err != nil {
				t.Fatal(err)
			}
			prev = cut
			time.Sleep(5 * time.Millisecond) // each piece its own read
		}
		reply, err := readReply(c)
		if err != nil {
			t.Fatalf("cuts %v: %v", cuts, err)
		}
		checkSignReply(t, reply, pub, data)
	}
	// A message and the first bytes of the next in one write, the rest
	// later: both answered, in order.
	two := append(bytes.Clone(req), req[:7]...)
	c.Write(two)
	reply, err := readReply(c)
	if err != nil {
		t.Fatal(err)
	}
	checkSignReply(t, reply, pub, data)
	time.Sleep(5 * time.Millisecond)
	c.Write(req[7:])
	if reply, err = readReply(c); err != nil {
		t.Fatal(err)
	}
	checkSignReply(t, reply, pub, data)
}

// Many requests written at once, more than a read takes and more replies
// than the socket holds while the client reads none: every one is
// answered, in order, once the client reads. The agent waits for room
// to write rather than dropping the connection.
func TestPipelinedRequestsAllAnswered(t *testing.T) {
	ta := newTestAgent(t, Config{})
	data := []byte("pipelined")
	c, pub, req := signSetup(t, ta, data)
	c.(*net.UnixConn).SetReadBuffer(4 << 10)
	const n = 2000 // ~250 KiB of requests, ~200 KiB of replies
	all := bytes.Repeat(req, n)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(all)
		werr <- err
	}()
	time.Sleep(200 * time.Millisecond) // the agent fills the socket and waits
	for i := range n {
		reply, err := readReply(c)
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if i == 0 || i == n-1 {
			checkSignReply(t, reply, pub, data)
		} else if reply[0] != msgSignResponse {
			t.Fatalf("reply %d: %x", i, reply)
		}
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
}

// A client that never reads its replies loses its connection once one
// has waited writeTimeout for room, and the agent goes on serving.
func TestReplyNotTakenCloses(t *testing.T) {
	// Restored once the agent is closed (cleanups run last first).
	old := writeTimeout
	t.Cleanup(func() { writeTimeout = old })
	writeTimeout = 300 * time.Millisecond
	ta := newTestAgent(t, Config{})
	c, _, req := signSetup(t, ta, []byte("never read"))
	c.(*net.UnixConn).SetReadBuffer(4 << 10)
	// Far more replies than the sockets hold: the agent stops reading
	// when it cannot write.
	all := bytes.Repeat(req, 40000)
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Write(all)
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the agent kept reading from a client that takes no reply: %v", err)
	}
	if r, err := roundTrip(ta.dial(t), msg(msgRequestIdentities)); err != nil || r[0] != msgIdentitiesAnswer {
		t.Fatalf("list after a stalled client: %x %v", r, err)
	}
}

// The sign response is the signature as ssh.Marshal encodes an
// ssh.Signature, as a string.
func TestAppendSignResponse(t *testing.T) {
	for _, tc := range []struct {
		format string
		blob   []byte
	}{{ssh.KeyAlgoED25519, bytes.Repeat([]byte{7}, 64)}, {ssh.KeyAlgoRSASHA512, bytes.Repeat([]byte{1}, 256)}, {"", nil}} {
		var b cryptobyte.Builder
		b.AddUint8(msgSignResponse)
		addString(&b, ssh.Marshal(ssh.Signature{Format: tc.format, Blob: tc.blob}))
		want := b.BytesOrPanic()
		if got := appendSignResponse([]byte{9}, tc.format, tc.blob); !bytes.Equal(got[1:], want) || got[0] != 9 {
			t.Errorf("%s: %x, want %x", tc.format, got, want)
		}
	}
}

// Reading a message, polls included, and writing its reply allocate
// nothing.
func TestReadWriteAllocateNothing(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(fds[0]), "peer")
	defer peer.Close()
	f := os.NewFile(uintptr(fds[1]), "agent")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	uc := fc.(*net.UnixConn)
	rd, err := newReader(uc, int32(os.Getpid()), nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := newWriter(uc)
	if err != nil {
		t.Fatal(err)
	}
	m := msg(msgRequestIdentities)
	in := make([]byte, 64)
	allocs := testing.AllocsPerRun(200, func() {
		peer.Write(m)
		got, _, err := rd.next()
		if err != nil || len(got) != 1 {
			t.Fatalf("next: %x %v", got, err)
		}
		if err := w.send(append(w.start(), msgSuccess)); err != nil {
			t.Fatal(err)
		}
		if n, err := peer.Read(in); err != nil || n != 5 || binary.BigEndian.Uint32(in) != 1 || in[4] != msgSuccess {
			t.Fatalf("reply %x %v", in[:n], err)
		}
	})
	if allocs > 0 {
		t.Errorf("%v allocations a message", allocs)
	}
}

// A read polls its socket before it sleeps only while no other connection
// of the front is handling a message: with one busy, it sleeps at once
// (one read that finds the socket empty) and wakes when the message comes.
func TestReadDoesNotPollWhileOthersBusy(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(fds[0]), "peer")
	defer peer.Close()
	f := os.NewFile(uintptr(fds[1]), "agent")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	var busy atomic.Int32
	busy.Store(1)
	rd, err := newReader(fc.(*net.UnixConn), int32(os.Getpid()), &busy)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		msg []byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		m, _, err := rd.next()
		got <- result{m, err}
	}()
	time.Sleep(5 * sockpoll.DefaultSpin)
	peer.Write(msg(msgRequestIdentities))
	r := <-got
	if r.err != nil || len(r.msg) != 1 || r.msg[0] != msgRequestIdentities {
		t.Fatalf("next: %x %v", r.msg, r.err)
	}
	// One empty read before it sleeps; a second if the runtime woke it
	// before the message was whole.
	if rd.empty > 2 {
		t.Errorf("%d empty reads while another connection was busy: it polled", rd.empty)
	}
}

// agentSocket returns the client's end of a socket pair and a reader on
// the other, as the agent's listener makes it (SO_PASSCRED).
func agentSocket(t *testing.T, busy *atomic.Int32) (*os.File, *reader) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(fds[0]), "peer")
	t.Cleanup(func() { peer.Close() })
	f := os.NewFile(uintptr(fds[1]), "agent")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fc.Close() })
	rd, err := newReader(fc.(*net.UnixConn), int32(os.Getpid()), busy)
	if err != nil {
		t.Fatal(err)
	}
	return peer, rd
}

// nextAfter sends m on peer after d and returns the message rd reads.
func nextAfter(t *testing.T, peer *os.File, rd *reader, d time.Duration, m []byte) []byte {
	t.Helper()
	type result struct {
		msg []byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		m, _, err := rd.next()
		got <- result{m, err}
	}()
	time.Sleep(d)
	peer.Write(m)
	r := <-got
	if r.err != nil {
		t.Fatalf("next: %v", r.err)
	}
	return r.msg
}

// A wait that slept long, for a reason other than a vain poll (here:
// another connection was busy), does not stop the next from polling: once
// a sleep and its wake-up made one wait long, judging the client by it
// would make every later wait sleep, and wake, too.
func TestReadPollsAfterLongWait(t *testing.T) {
	var busy atomic.Int32
	busy.Store(1)
	peer, rd := agentSocket(t, &busy)
	rd.poll.Spin, rd.poll.Gap = 10*time.Millisecond, time.Minute
	if m := nextAfter(t, peer, rd, 100*time.Millisecond, msg(msgRequestIdentities)); len(m) != 1 {
		t.Fatalf("next: %x", m)
	}
	busy.Store(0)
	rd.empty = 0
	if m := nextAfter(t, peer, rd, 30*time.Millisecond, msg(msgRequestIdentities)); len(m) != 1 {
		t.Fatalf("next: %x", m)
	}
	if rd.empty <= 2 {
		t.Errorf("%d empty reads after a long wait: it did not poll", rd.empty)
	}
}

// A poll that loses its processor between two reads of the socket (a gap
// longer than Gap) ends as one in vain: on a machine busy with other work
// polling delays that work, so the next reads sleep at once.
func TestReadBacksOffAfterGap(t *testing.T) {
	peer, rd := agentSocket(t, nil)
	rd.poll.Spin, rd.poll.Gap = time.Minute, 0 // every gap is too long
	if m := nextAfter(t, peer, rd, 20*time.Millisecond, msg(msgRequestIdentities)); len(m) != 1 {
		t.Fatalf("next: %x", m)
	}
	if rd.poll.Skipping() == 0 {
		t.Errorf("after a poll with a gap (%d empty reads), no read is to skip polling", rd.empty)
	}
	if rd.empty > 3 {
		t.Errorf("%d empty reads: it went on polling after a gap", rd.empty)
	}
}

// A message stays in the socket until it is answered and a read finds the
// socket empty: the reader takes it for good then, before it waits for
// the next. (Taking bytes from a Unix stream socket wakes every thread
// sleeping on the sender's socket, such as a client blocked reading its
// reply, which it is while its next request waits in the socket.)
func TestRequestTakenFromSocketOnceAnswered(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(fds[0]), "peer")
	defer peer.Close()
	f := os.NewFile(uintptr(fds[1]), "agent")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	rd, err := newReader(fc.(*net.UnixConn), int32(os.Getpid()), nil)
	if err != nil {
		t.Fatal(err)
	}
	// unsent is what the peer's writes that the reader has not taken hold
	// of the peer's buffer (more than their bytes).
	unsent := func() int {
		n, err := unix.IoctlGetInt(int(peer.Fd()), unix.SIOCOUTQ)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	peer.Write(msg(msgRequestIdentities))
	if m, _, err := rd.next(); err != nil || len(m) != 1 || m[0] != msgRequestIdentities {
		t.Fatalf("next: %x %v", m, err)
	}
	one := unsent()
	if one == 0 {
		t.Fatal("the message was taken from the socket before it was answered")
	}
	// The next request, already there when the reader goes on: the
	// answered one stays too.
	peer.Write(msg(msgRemoveAllIdentities))
	if m, _, err := rd.next(); err != nil || len(m) != 1 || m[0] != msgRemoveAllIdentities {
		t.Fatalf("next: %x %v", m, err)
	}
	if n := unsent(); n <= one {
		t.Fatalf("%d bytes of the peer's buffer held, %d with one message: the answered one was taken while the next waited", n, one)
	}
	got := make(chan error, 1)
	go func() {
		_, _, err := rd.next() // takes the answered message, then waits
		got <- err
	}()
	for deadline := time.Now().Add(5 * time.Second); unsent() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the answered message was not taken from the socket")
		}
	}
	peer.Write(msg(msgLock, sshString([]byte("x"))))
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	rd.close()
	if n := unsent(); n != 0 {
		t.Errorf("%d bytes left in the socket at close", n)
	}
}
