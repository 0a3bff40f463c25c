package e2e_test

import (
	"net"
	"path/filepath"
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

// turnCounter is a proxy between the module and the daemon that counts
// turns: the times the module writes after the daemon has written. A
// module that waits for each reply before it sends the next request
// makes a turn per request; one that sends a deferred C_SignInit with
// C_Sign makes one per signature.
type turnCounter struct {
	mu         sync.Mutex
	fromClient bool
	turns      int // client writes after a daemon write
	writes     int // daemon writes read by the proxy
}

func (tc *turnCounter) saw(fromClient bool) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if fromClient && !tc.fromClient {
		tc.turns++
	}
	if !fromClient {
		tc.writes++
	}
	tc.fromClient = fromClient
}

func (tc *turnCounter) counts() (int, int) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.turns, tc.writes
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
		for {
			n, err := src.Read(buf)
			if n > 0 {
				tc.saw(fromClient)
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
