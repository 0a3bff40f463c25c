package e2e_test

import (
	be "encoding/binary"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// An operation's state through the module, with its C_*Init sent at once
// (a first use) and deferred to the operation's next call (a key and
// mechanism the daemon accepted before): CKR_OPERATION_ACTIVE, a length
// query and a buffer too small keep the operation, an error or a result
// ends it, a deferred C_SignInit whose key was destroyed meanwhile fails
// at C_Sign with CKR_KEY_HANDLE_INVALID and leaves no operation.
func TestPKCS11OperationState(t *testing.T) {
	e := p11Daemon(t, "ecdsa-p256 ec1")
	e.clientRun(t, "opstate")
}

// Two threads calling C_SignInit on one session at once, one with a key
// the daemon never accepted on the connection (sent at once), the other
// with one it accepted just before (which could be deferred): exactly one
// gets CKR_OK, and C_Sign signs with that one's key, never with the
// other's.
func TestPKCS11ConcurrentInitOnOneSession(t *testing.T) {
	e := p11Daemon(t, "ed25519 edA", "ed25519 edB")
	out := e.clientRun(t, "initrace", "1000")
	for l := range strings.Lines(out) {
		if strings.Contains(l, " rounds: ") {
			t.Log(strings.TrimSpace(l))
		}
	}
}

// turnCounter is a proxy between the module and the daemon that counts
// turns: the times the module writes after the daemon has written. A
// module that waits for each reply before it sends the next request
// makes a turn per request; one that sends a deferred C_SignInit with
// C_Sign makes one per signature.
//
// It also counts the frames each way (a version byte, then frames of a
// 12-byte header and a body) to tell how many requests were ever waiting
// for their replies at once.
type turnCounter struct {
	mu         sync.Mutex
	fromClient bool
	turns      int // client writes after a daemon write
	writes     int // daemon writes read by the proxy
	// Frames parsed, each way, and the most requests ever unanswered.
	requests, replies, maxInFlight int
}

func (tc *turnCounter) saw(fromClient bool, frames int) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if fromClient && !tc.fromClient {
		tc.turns++
	}
	if fromClient {
		tc.requests += frames
	} else {
		tc.writes++
		tc.replies += frames
	}
	tc.maxInFlight = max(tc.maxInFlight, tc.requests-tc.replies)
	tc.fromClient = fromClient
}

// frameCounter counts the frames of one direction of a connection.
type frameCounter struct {
	versioned bool
	pending   []byte // a header not yet whole
	skip      int    // body bytes still to pass
}

func (fc *frameCounter) count(b []byte) int {
	n := 0
	if !fc.versioned && len(b) > 0 {
		fc.versioned, b = true, b[1:]
	}
	for len(b) > 0 {
		if fc.skip > 0 {
			k := min(fc.skip, len(b))
			fc.skip, b = fc.skip-k, b[k:]
			continue
		}
		k := min(12-len(fc.pending), len(b))
		fc.pending, b = append(fc.pending, b[:k]...), b[k:]
		if len(fc.pending) == 12 {
			fc.skip = int(be.BigEndian.Uint32(fc.pending[4:8])) + int(be.BigEndian.Uint32(fc.pending[8:12]))
			fc.pending = fc.pending[:0]
			n++
		}
	}
	return n
}

func (tc *turnCounter) counts() (int, int) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.turns, tc.writes
}

func (tc *turnCounter) inFlight() (requests, most int) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.requests, tc.maxInFlight
}

// proxy serves path, forwarding every connection to daemon.
func (tc *turnCounter) proxy(t *testing.T, path, daemon string) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	copyCounted := func(dst, src net.Conn, fromClient bool) {
		buf := make([]byte, 1<<20)
		var fc frameCounter
		for {
			n, err := src.Read(buf)
			if n > 0 {
				tc.saw(fromClient, fc.count(buf[:n]))
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		dst.Close()
		src.Close()
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			d, err := net.Dial("unix", daemon)
			if err != nil {
				c.Close()
				continue
			}
			go copyCounted(d, c, true)
			go copyCounted(c, d, false)
		}
	}()
}

// A signature through the module is one round trip: C_SignInit, once the
// daemon has accepted it for the key and mechanism, goes in the same
// write as C_Sign, and the daemon answers both in one write.
func TestPKCS11InitTravelsWithTheCall(t *testing.T) {
	e := p11Daemon(t, "ecdsa-p256 ec1")
	var tc turnCounter
	proxy := filepath.Join(e.dir, "proxy.sock")
	tc.proxy(t, proxy, e.sock)
	e.extraEnv = append(e.extraEnv, "KEYWARDEN_PKCS11_SOCKET="+proxy)
	// One thread: C_Initialize, a session, a login, a search, then 50
	// times C_SignInit and C_Sign, and C_CloseSession.
	const signatures = 50
	e.clientRun(t, "threads", "1")
	turns, writes := tc.counts()
	// The setup is about a dozen calls; two round trips per signature
	// would be more than 100.
	const setup = 16
	if turns < signatures || turns > signatures+setup {
		t.Errorf("%d signatures took %d round trips, want at most %d", signatures, turns, signatures+setup)
	}
	if writes > turns+2 {
		t.Errorf("the daemon wrote %d times for %d round trips: the replies of requests sent together are not written together", writes, turns)
	}
	t.Logf("%d round trips, %d writes of the daemon", turns, writes)
}

// The threads of a process share the slot's connection without taking
// turns for a whole round trip: a thread sends its request while others
// wait for their replies, so the daemon takes several together (more
// than the two of a C_SignInit sent with its C_Sign).
func TestPKCS11ThreadsShareTheConnection(t *testing.T) {
	e := p11Daemon(t, "ecdsa-p256 ec1")
	var tc turnCounter
	proxy := filepath.Join(e.dir, "proxy.sock")
	tc.proxy(t, proxy, e.sock)
	e.extraEnv = append(e.extraEnv, "KEYWARDEN_PKCS11_SOCKET="+proxy)
	e.clientRun(t, "threads", "4")
	requests, most := tc.inFlight()
	if most <= 2 {
		t.Errorf("at most %d of %d requests were waiting for their replies at once, want more than 2 with 4 threads", most, requests)
	}
	t.Logf("%d requests, at most %d at once", requests, most)
}

// A length query of C_Sign, C_Digest or C_Encrypt whose C_*Init is
// deferred, for a mechanism that says the length itself (CKM_EDDSA, HMAC,
// the digests) or whose length the module learnt from an earlier result
// of the key (ECDSA's signatures, AES-GCM's ciphertexts: the data's
// length and a constant), is answered by the module: a signature, a
// digest or an encryption after one is still one round trip.
func TestPKCS11LengthQueryIsLocal(t *testing.T) {
	e := p11Daemon(t)
	var tc turnCounter
	proxy := filepath.Join(e.dir, "proxy.sock")
	tc.proxy(t, proxy, e.sock)
	e.extraEnv = append(e.extraEnv, "KEYWARDEN_PKCS11_SOCKET="+proxy)
	const n = 30 // Ed25519 and ECDSA signatures, digests, encryptions: as many of each
	e.clientRun(t, "sizeq", "30")
	turns, _ := tc.counts()
	// The setup is a handful of calls; the first signature and digest
	// send their C_*Init and their length query each on its own, and so
	// do the first ECDSA signature and encryption, whose lengths the
	// module learns from the daemon's answers (an encryption's from the
	// second, whose C_*Init goes with it).
	const setup = 20
	if turns > 4*n+setup {
		t.Errorf("%d operations after length queries took %d round trips, want at most %d", 4*n, turns, 4*n+setup)
	}
	t.Logf("%d round trips", turns)
}

// One thread ends a session's signature with a C_SignInit of a NULL_PTR
// mechanism while another starts one, deferred or sent, and signs: every
// C_Sign that succeeds signs with the key, the others find the operation
// ended, and the session signs after.
func TestPKCS11ConcurrentEndOnOneSession(t *testing.T) {
	e := p11Daemon(t, "ed25519 edA")
	out := e.clientRun(t, "endrace", "600")
	for l := range strings.Lines(out) {
		if strings.Contains(l, " rounds: ") {
			t.Log(strings.TrimSpace(l))
		}
	}
}
