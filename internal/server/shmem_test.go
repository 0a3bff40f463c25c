package server

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

// memfd makes a memfd of size bytes with the given seals, and maps it.
func memfd(t testing.TB, size int, seals int) (int, []byte) {
	t.Helper()
	fd, err := unix.MemfdCreate("shm-test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Skipf("memfd_create: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		t.Fatal(err)
	}
	if seals != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
			t.Fatal(err)
		}
	}
	if seals&(unix.F_SEAL_WRITE|unix.F_SEAL_FUTURE_WRITE) != 0 {
		return fd, nil
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	return fd, mem
}

func shmRegister() *wire.Op {
	return &wire.Op{Op: &wire.Op_ShmRegister{ShmRegister: &wire.ShmRegister{}}}
}

// register sends an shm_register with fd (none if fd < 0) and returns its
// result.
func register(t testing.TB, c *seqpacket.Conn, id uint64, fd int) *wire.Result {
	t.Helper()
	b, err := (&wire.Request{Version: 1, Id: id, Ops: []*wire.Op{shmRegister()}}).MarshalVT()
	if err != nil {
		t.Fatal(err)
	}
	if fd >= 0 {
		err = c.SendFDs(b, []int{fd})
	} else {
		err = c.Send(b)
	}
	if err != nil {
		t.Fatal(err)
	}
	rep := recv(t, c)
	if rep.Status != wire.Status_STATUS_OK {
		t.Fatalf("register: whole request %v %s", rep.Status, rep.Message)
	}
	return rep.Results[0]
}

func region(off, n uint64) *wire.Region { return &wire.Region{Offset: off, Length: n} }

// shmDo sends ops as one request and returns its results.
func shmDo(t testing.TB, c *seqpacket.Conn, id uint64, ops ...*wire.Op) []*wire.Result {
	t.Helper()
	send(t, c, id, ops...)
	rep := recv(t, c)
	if rep.Status != wire.Status_STATUS_OK {
		t.Fatalf("request %d: %v %s", id, rep.Status, rep.Message)
	}
	return rep.Results
}

// aesKey generates an exportable AES key and returns its handle and bytes.
func aesKey(t testing.TB, c *seqpacket.Conn) (uint32, cipher.AEAD) {
	t.Helper()
	res := shmDo(t, c, 100, &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
		Type: wire.KeyType_KEY_TYPE_AES256_GCM, Ephemeral: true, Exportable: true}}}})
	h := res[0].GetKey().GetHandle()
	res = shmDo(t, c, 101, &wire.Op{Op: &wire.Op_Export{Export: &wire.Export{Handle: h, Format: wire.KeyFormat_KEY_FORMAT_RAW}}})
	if res[0].Status != wire.Status_STATUS_OK {
		t.Fatalf("export: %v", res[0].Message)
	}
	b, err := aes.NewCipher(res[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		t.Fatal(err)
	}
	return h, g
}

func encOp(h uint32, in, out *wire.Region) *wire.Op {
	return &wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: h, Input: in, Output: out}}}
}

func decOp(h uint32, in, out *wire.Region) *wire.Op {
	return &wire.Op{Op: &wire.Op_Decrypt{Decrypt: &wire.Decrypt{Handle: h, Input: in, Output: out}}}
}

// Only a memfd sealed against shrinking, growing and further seals, open
// for writing and within the limit, is taken; anything else gets a typed
// refusal and the connection goes on.
func TestShmRegisterRefusals(t *testing.T) {
	_, c := pair(t, Config{Limits: Limits{ShmMaxBytes: 1 << 20}})
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	f, err := os.CreateTemp(t.TempDir(), "regular")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(4096)
	unsealed, _ := memfd(t, 4096, 0)
	noSealSeal, _ := memfd(t, 4096, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW)
	writeSealed, _ := memfd(t, 4096, shmSeals|unix.F_SEAL_FUTURE_WRITE)
	large, _ := memfd(t, 2<<20, shmSeals)
	good, _ := memfd(t, 4096, shmSeals)
	ro, err := unix.Open("/proc/self/fd/"+strconv.Itoa(good), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ro)
	for _, tc := range []struct {
		name string
		fd   int
		want wire.Status
	}{
		{"no descriptor", -1, wire.Status_STATUS_INVALID_ARGUMENT},
		{"pipe", p[1], wire.Status_STATUS_INVALID_ARGUMENT},
		{"regular file", int(f.Fd()), wire.Status_STATUS_INVALID_ARGUMENT},
		{"unsealed memfd", unsealed, wire.Status_STATUS_INVALID_ARGUMENT},
		{"memfd without F_SEAL_SEAL", noSealSeal, wire.Status_STATUS_INVALID_ARGUMENT},
		{"memfd sealed against writing", writeSealed, wire.Status_STATUS_INVALID_ARGUMENT},
		{"read-only memfd", ro, wire.Status_STATUS_INVALID_ARGUMENT},
		{"memfd over the limit", large, wire.Status_STATUS_RESOURCE_EXHAUSTED},
		{"good", good, wire.Status_STATUS_OK},
		{"a second", good, wire.Status_STATUS_ALREADY_EXISTS},
	} {
		if r := register(t, c, 1, tc.fd); r.Status != tc.want {
			t.Errorf("%s: %v %q, want %v", tc.name, r.Status, r.Message, tc.want)
		}
	}
	// A descriptor passed with any other request is closed, not kept.
	b, _ := (&wire.Request{Version: 1, Id: 2, Ops: []*wire.Op{ping("x")}}).MarshalVT()
	if err := c.SendFDs(b, []int{good}); err != nil {
		t.Fatal(err)
	}
	if rep := recv(t, c); string(rep.Results[0].Data) != "x" {
		t.Fatalf("ping with a descriptor: %+v", rep)
	}
}

// A megabyte encrypted, decrypted, hashed and MACed through regions gives
// what the standard library gives.
func TestShmRoundTrip(t *testing.T) {
	_, c := pair(t, Config{})
	const size = 4 << 20
	fd, mem := memfd(t, size, shmSeals)
	if r := register(t, c, 1, fd); r.Status != wire.Status_STATUS_OK {
		t.Fatalf("register: %v %s", r.Status, r.Message)
	}
	h, g := aesKey(t, c)
	const n = 1 << 20
	msg := mem[:n]
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	want := bytes.Clone(msg)
	res := shmDo(t, c, 2, encOp(h, region(0, n), region(n, n+64)))[0]
	if res.Status != wire.Status_STATUS_OK || len(res.Data) != 0 || res.OutputLength != n+35 {
		t.Fatalf("encrypt: %v %q data %d output %d", res.Status, res.Message, len(res.Data), res.OutputLength)
	}
	ct := mem[n : n+res.OutputLength]
	pt, err := g.Open(nil, ct[7:19], ct[19:], nil)
	if err != nil || !bytes.Equal(pt, want) {
		t.Fatalf("the ciphertext does not open: %v", err)
	}
	res = shmDo(t, c, 3, decOp(h, region(n, n+35), region(2*n+4096, n)))[0]
	if res.Status != wire.Status_STATUS_OK || res.OutputLength != n || !bytes.Equal(mem[2*n+4096:3*n+4096], want) {
		t.Fatalf("decrypt: %v %q %d", res.Status, res.Message, res.OutputLength)
	}
	res = shmDo(t, c, 4, &wire.Op{Op: &wire.Op_Hash{Hash: &wire.Hash{Alg: wire.HashAlg_HASH_ALG_SHA256, Input: region(0, n)}}})[0]
	if d := sha256.Sum256(want); res.Status != wire.Status_STATUS_OK || !bytes.Equal(res.Data, d[:]) {
		t.Fatalf("hash: %v %q", res.Status, res.Message)
	}
	// The daemon's copy is what the reply matched: the region is the
	// client's again.
	inline := shmDo(t, c, 5, &wire.Op{Op: &wire.Op_Hash{Hash: &wire.Hash{Alg: wire.HashAlg_HASH_ALG_SHA256, Data: want[:1000]}}})[0]
	shared := shmDo(t, c, 6, &wire.Op{Op: &wire.Op_Hash{Hash: &wire.Hash{Alg: wire.HashAlg_HASH_ALG_SHA256, Input: region(0, 1000)}}})[0]
	if !bytes.Equal(inline.Data, shared.Data) {
		t.Fatal("a hash of a region differs from the hash of the same bytes inline")
	}
}

// Regions that are not inside the mapping, overflow, overlap, or are
// missing or too small are refused for the operation, with nothing
// written; the connection goes on.
func TestShmRegionRefusals(t *testing.T) {
	_, c := pair(t, Config{})
	h, _ := aesKey(t, c)
	// Before any registration.
	if r := shmDo(t, c, 1, encOp(h, region(0, 10), region(10, 100)))[0]; r.Status != wire.Status_STATUS_INVALID_ARGUMENT {
		t.Fatalf("no shared memory: %v %q", r.Status, r.Message)
	}
	const size = 1 << 16
	fd, mem := memfd(t, size, shmSeals)
	if r := register(t, c, 2, fd); r.Status != wire.Status_STATUS_OK {
		t.Fatal(r.Message)
	}
	for i := range mem {
		mem[i] = 0xaa
	}
	hashIn := func(in *wire.Region) *wire.Op {
		return &wire.Op{Op: &wire.Op_Hash{Hash: &wire.Hash{Alg: wire.HashAlg_HASH_ALG_SHA256, Input: in}}}
	}
	for _, tc := range []struct {
		name string
		op   *wire.Op
	}{
		{"input past the end", encOp(h, region(size-10, 11), region(0, 100))},
		{"input offset past the end", encOp(h, region(size+1, 0), region(0, 100))},
		{"input overflowing", encOp(h, region(1, math.MaxUint64), region(0, 100))},
		{"input wrapping to zero", encOp(h, region(1<<63, 1<<63), region(0, 100))},
		{"output overflowing", encOp(h, region(0, 10), region(math.MaxUint64, 2))},
		{"output past the end", encOp(h, region(0, 10), region(size-20, 21))},
		{"overlapping", encOp(h, region(0, 100), region(99, 200))},
		{"output inside input", decOp(h, region(0, 1000), region(10, 10))},
		{"input without output", encOp(h, region(0, 10), nil)},
		{"input and data", &wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: h, Plaintext: []byte("x"), Input: region(0, 1), Output: region(100, 100)}}}},
		{"output too small", encOp(h, region(0, 100), region(1000, 100+34))},
		{"hash past the end", hashIn(region(size, 1))},
		{"hash with an output", &wire.Op{Op: &wire.Op_Hash{Hash: &wire.Hash{Alg: wire.HashAlg_HASH_ALG_SHA256, Input: region(0, 1)}}}},
	} {
		if tc.name == "hash with an output" {
			continue // Hash has no output field: nothing to send
		}
		r := shmDo(t, c, 3, tc.op)[0]
		if r.Status != wire.Status_STATUS_INVALID_ARGUMENT {
			t.Errorf("%s: %v %q", tc.name, r.Status, r.Message)
		}
	}
	for i, b := range mem {
		if b != 0xaa {
			t.Fatalf("byte %d written by a refused operation", i)
		}
	}
	if rep := shmDo(t, c, 4, ping("still"))[0]; string(rep.Data) != "still" {
		t.Fatal("the connection stopped serving")
	}
}

// A client rewriting its input region while the daemon works gets results
// that each correspond to one input. Pure Ed25519 reads its message twice
// (the nonce's hash, then the challenge's): from a region read in place, a
// signature would be over two messages at once, verify for neither, and
// two such would give the key away. Every signature here verifies for one
// of the two messages, every encryption opens, a decryption either fails
// or gives one plaintext whole, and the daemon stays healthy.
func TestShmInputRewritten(t *testing.T) {
	_, c := pair(t, Config{})
	const n = 64 << 10
	fd, mem := memfd(t, 6*n, shmSeals)
	if r := register(t, c, 1, fd); r.Status != wire.Status_STATUS_OK {
		t.Fatal(r.Message)
	}
	h, g := aesKey(t, c)
	res := shmDo(t, c, 102, &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
		Type: wire.KeyType_KEY_TYPE_ED25519, Ephemeral: true}}}})
	signer := res[0].GetKey().GetHandle()
	res = shmDo(t, c, 103, &wire.Op{Op: &wire.Op_PublicKey{PublicKey: &wire.PublicKey{Handle: signer}}})
	pk, err := x509.ParsePKIXPublicKey(res[0].Data)
	if err != nil {
		t.Fatalf("public key: %v %q: %v", res[0].Status, res[0].Message, err)
	}
	pub := pk.(ed25519.PublicKey)
	ptA := bytes.Repeat([]byte{'A'}, n)
	ptB := bytes.Clone(ptA)
	ptB[n/2] = 'B'
	var cts [2][]byte
	for i, pt := range [][]byte{ptA, ptB} {
		copy(mem, pt)
		r := shmDo(t, c, 2, encOp(h, region(0, n), region(n, n+64)))[0]
		cts[i] = bytes.Clone(mem[n : n+r.OutputLength])
	}
	ctLen := uint64(len(cts[0]))
	var stop atomic.Bool
	var wg sync.WaitGroup
	defer func() { // before the cleanups unmap the memory
		stop.Store(true)
		wg.Wait()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Flip the ciphertext between the two, a page at a time, and the
		// plaintext by its one byte that differs, so that whatever one
		// read of it sees is one of the two messages.
		for i := 0; !stop.Load(); i++ {
			src := cts[i%2]
			for off := 0; off < len(src); off += 4096 {
				copy(mem[3*n+off:], src[off:min(off+4096, len(src))])
				for range 63 { // odd: each page leaves the other message
					mem[n/2] ^= 'A' ^ 'B'
				}
			}
			runtime.Gosched()
		}
	}()
	for i := range 300 {
		switch i % 3 {
		case 0:
			r := shmDo(t, c, 3, &wire.Op{Op: &wire.Op_Sign{Sign: &wire.Sign{Handle: signer, Input: region(0, n)}}})[0]
			if r.Status != wire.Status_STATUS_OK {
				t.Fatalf("signature %d: %v %q", i, r.Status, r.Message)
			}
			if !ed25519.Verify(pub, ptA, r.Data) && !ed25519.Verify(pub, ptB, r.Data) {
				t.Fatalf("signature %d verifies for neither message", i)
			}
		case 1:
			r := shmDo(t, c, 4, decOp(h, region(3*n, ctLen), region(5*n, n)))[0]
			if r.Status == wire.Status_STATUS_OK {
				if out := mem[5*n : 6*n]; !bytes.Equal(out, ptA) && !bytes.Equal(out, ptB) {
					t.Fatalf("decryption %d gave a plaintext that is neither input", i)
				}
			} else if r.Status != wire.Status_STATUS_INVALID_ARGUMENT {
				t.Fatalf("decryption %d: %v %q", i, r.Status, r.Message)
			}
		case 2:
			r := shmDo(t, c, 5, encOp(h, region(0, n), region(n, n+64)))[0]
			if r.Status != wire.Status_STATUS_OK {
				t.Fatalf("encryption %d: %v %q", i, r.Status, r.Message)
			}
			ct := bytes.Clone(mem[n : n+r.OutputLength])
			if _, err := g.Open(nil, ct[7:19], ct[19:], nil); err != nil {
				t.Fatalf("encryption %d does not open: %v", i, err)
			}
		}
	}
	if rep := shmDo(t, c, 6, ping("healthy"))[0]; string(rep.Data) != "healthy" {
		t.Fatal("the connection stopped serving")
	}
}

// A connection's shared memory counts against its uid until the
// connection ends.
func TestShmPerUIDLimit(t *testing.T) {
	a := &account{uid: 1000}
	if !a.holdShm(3<<20, 4<<20) || a.holdShm(2<<20, 4<<20) || !a.holdShm(1<<20, 4<<20) {
		t.Fatal("holdShm does not count to the limit")
	}
	a.unholdShm(3 << 20)
	if !a.holdShm(2<<20, 4<<20) {
		t.Fatal("unholdShm did not give back")
	}
}

// FuzzSharedRequest sends arbitrary requests on a connection with shared
// memory registered and keys to name, so that the regions of every data
// operation are decoded and checked against the mapping: every message
// gets a well-formed reply, no operation fails internally, and the
// connection keeps serving. The seed corpus in
// testdata/fuzz/FuzzSharedRequest names regions in, at and past the
// mapping's bounds.
func FuzzSharedRequest(f *testing.F) {
	for _, seed := range seedSharedRequests() {
		b, err := seed.MarshalVT()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	_, c := pair(f, Config{Limits: Limits{MaxMessageBytes: 64 << 10, MaxHandles: 64, MaxKeysPerUser: 256}})
	fd, mem := memfd(f, 1<<16, shmSeals)
	for i := range mem {
		mem[i] = byte(i)
	}
	if r := register(f, c, 1, fd); r.Status != wire.Status_STATUS_OK {
		f.Fatal(r.Message)
	}
	// Handles 1-3: keys the requests can name.
	for i, typ := range []wire.KeyType{wire.KeyType_KEY_TYPE_AES256_GCM, wire.KeyType_KEY_TYPE_HMAC_SHA256, wire.KeyType_KEY_TYPE_ED25519} {
		res := shmDo(f, c, uint64(i+2), &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{Type: typ, Ephemeral: true}}}})
		if res[0].Status != wire.Status_STATUS_OK {
			f.Fatal(res[0].Message)
		}
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		if err := c.Send(msg); err != nil {
			t.Skip("message too large for the socket")
		}
		rep := recv(t, c)
		for _, r := range rep.Results {
			if r.Status == wire.Status_STATUS_INTERNAL {
				t.Fatalf("internal error: %s", r.Message)
			}
			if r.OutputLength > 1<<16 {
				t.Fatalf("output of %d bytes in a mapping of 64 KiB", r.OutputLength)
			}
		}
		send(t, c, 1<<62, ping("ok"))
		for {
			if rep := recv(t, c); rep.Id == 1<<62 {
				break
			}
		}
	})
}

func seedSharedRequests() []*wire.Request {
	const size = 1 << 16
	rg := func(off, n uint64) *wire.Region { return &wire.Region{Offset: off, Length: n} }
	ops := []*wire.Op{
		encOp(1, rg(0, 1000), rg(4096, 2000)),
		encOp(1, rg(size-1, 1), rg(0, 64)),
		encOp(1, rg(1, ^uint64(0)), rg(0, 64)),
		encOp(1, rg(0, 100), rg(50, 200)),
		decOp(1, rg(4096, 1035), rg(0, 1000)),
		decOp(1, rg(size, 0), rg(0, 0)),
		{Op: &wire.Op_Hash{Hash: &wire.Hash{Alg: wire.HashAlg_HASH_ALG_SHA256, Input: rg(0, size)}}},
		{Op: &wire.Op_Mac{Mac: &wire.Mac{Handle: 2, Input: rg(100, 200)}}},
		{Op: &wire.Op_MacVerify{MacVerify: &wire.MacVerify{Handle: 2, Input: rg(100, 200), Tag: make([]byte, 32)}}},
		{Op: &wire.Op_Sign{Sign: &wire.Sign{Handle: 3, Input: rg(0, 4096)}}},
		{Op: &wire.Op_Verify{Verify: &wire.Verify{Handle: 3, Input: rg(0, 4096), Signature: make([]byte, 64)}}},
		shmRegister(),
	}
	var reqs []*wire.Request
	for i, op := range ops {
		reqs = append(reqs, &wire.Request{Version: 1, Id: uint64(i + 10), Ops: []*wire.Op{op}})
	}
	return append(reqs, &wire.Request{Version: 1, Id: 99, Ops: ops})
}

// TestWriteSharedCorpus writes the seed corpus of FuzzSharedRequest when
// KEYWARDEN_WRITE_CORPUS is set.
func TestWriteSharedCorpus(t *testing.T) {
	if os.Getenv("KEYWARDEN_WRITE_CORPUS") == "" {
		t.Skip("KEYWARDEN_WRITE_CORPUS not set")
	}
	dir := "testdata/fuzz/FuzzSharedRequest"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, r := range seedSharedRequests() {
		b, err := r.MarshalVT()
		if err != nil {
			t.Fatal(err)
		}
		body := "go test fuzz v1\n[]byte(" + strconv.Quote(string(b)) + ")\n"
		if err := os.WriteFile(dir+"/seed-"+strconv.Itoa(i), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// A hugetlb memfd takes the seals too, but a hole punched in it frees its
// page, which a client can then take so that the daemon's read faults: it
// is refused, as anything but ordinary shared memory is.
func TestShmHugetlbRefused(t *testing.T) {
	_, c := pair(t, Config{Limits: Limits{ShmMaxBytes: 4 << 20}})
	fd, err := unix.MemfdCreate("shm-huge", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_HUGETLB)
	if err != nil {
		t.Skipf("memfd_create(MFD_HUGETLB): %v", err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 2<<20); err != nil {
		t.Skipf("a huge page's size: %v", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, shmSeals); err != nil {
		t.Skipf("sealing a hugetlb memfd: %v", err)
	}
	if r := register(t, c, 1, fd); r.Status != wire.Status_STATUS_INVALID_ARGUMENT {
		t.Fatalf("a hugetlb memfd: %v %q", r.Status, r.Message)
	}
}

// shm_register takes the descriptor of its own message, so it must be the
// only operation of its request: in a request run apart from the
// connection (with a heavy operation) it could take the next message's.
func TestShmRegisterAlone(t *testing.T) {
	_, c := pair(t, Config{Limits: Limits{ShmMaxBytes: 1 << 20}})
	good, _ := memfd(t, 4096, shmSeals)
	b, _ := (&wire.Request{Version: 1, Id: 9, Ops: []*wire.Op{ping("x"),
		{Op: &wire.Op_ShmRegister{ShmRegister: &wire.ShmRegister{}}}}}).MarshalVT()
	if err := c.SendFDs(b, []int{good}); err != nil {
		t.Fatal(err)
	}
	if rep := recv(t, c); rep.Status != wire.Status_STATUS_INVALID_ARGUMENT || !strings.Contains(rep.Message, "only operation") {
		t.Fatalf("shm_register beside a ping: %v %q", rep.Status, rep.Message)
	}
	if r := register(t, c, 10, good); r.Status != wire.Status_STATUS_OK {
		t.Fatalf("shm_register alone: %v %q", r.Status, r.Message)
	}
}

// scratchCap is the capacity of the scratch buffer of s's one
// connection's shared memory.
func scratchCap(t *testing.T, s *Server) int {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for cn := range s.conns {
		cn.mu.Lock()
		m := cn.shm
		cn.mu.Unlock()
		if m != nil {
			m.scratchMu.Lock()
			defer m.scratchMu.Unlock()
			return cap(m.scratch)
		}
	}
	t.Fatal("no connection with shared memory")
	return 0
}

// scratchBytes returns a copy of the whole scratch buffer of s's one
// connection's shared memory, to its capacity.
func scratchBytes(t *testing.T, s *Server) []byte {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for cn := range s.conns {
		cn.mu.Lock()
		m := cn.shm
		cn.mu.Unlock()
		if m != nil {
			m.scratchMu.Lock()
			defer m.scratchMu.Unlock()
			return bytes.Clone(m.scratch[:cap(m.scratch)])
		}
	}
	t.Fatal("no connection with shared memory")
	return nil
}

// TestShmDecryptWipesPlaintext: after a decryption through shared memory
// the daemon's scratch holds no byte of the plaintext, and still holds its
// copy of the ciphertext, which is no secret and is not wiped (a megabyte
// of writes fewer per megabyte decrypted).
func TestShmDecryptWipesPlaintext(t *testing.T) {
	s, c := pair(t, Config{})
	const n = 256 << 10
	fd, mem := memfd(t, 4*n, shmSeals)
	if r := register(t, c, 1, fd); r.Status != wire.Status_STATUS_OK {
		t.Fatal(r.Message)
	}
	h, _ := aesKey(t, c)
	for i := range n {
		mem[i] = byte(i%251) + 1 // no zero byte
	}
	want := bytes.Clone(mem[:n])
	res := shmDo(t, c, 2, encOp(h, region(0, n), region(n, n+64)))[0]
	if res.Status != wire.Status_STATUS_OK {
		t.Fatalf("encrypt: %v %q", res.Status, res.Message)
	}
	ct := bytes.Clone(mem[n : n+res.OutputLength])
	res = shmDo(t, c, 3, decOp(h, region(n, uint64(len(ct))), region(2*n+4096, n)))[0]
	if res.Status != wire.Status_STATUS_OK || !bytes.Equal(mem[2*n+4096:3*n+4096], want) {
		t.Fatalf("decrypt: %v %q", res.Status, res.Message)
	}
	sc := scratchBytes(t, s)
	if len(sc) < len(ct)+n {
		t.Fatalf("scratch of %d bytes after a decryption of %d", len(sc), n)
	}
	if !bytes.Equal(sc[:len(ct)], ct) {
		t.Error("the copy of the ciphertext was wiped")
	}
	if i := bytes.IndexFunc(sc[len(ct):], func(r rune) bool { return r != 0 }); i >= 0 {
		t.Errorf("byte %d after the ciphertext's copy is not wiped", i)
	}
	// A decryption that fails (a flipped byte of the tag) leaves no
	// plaintext either.
	mem[n+len(ct)-1] ^= 1
	res = shmDo(t, c, 4, decOp(h, region(n, uint64(len(ct))), region(2*n+4096, n)))[0]
	if res.Status == wire.Status_STATUS_OK {
		t.Fatal("a corrupted ciphertext decrypted")
	}
	sc = scratchBytes(t, s)
	if i := bytes.IndexFunc(sc[len(ct):], func(r rune) bool { return r != 0 }); i >= 0 {
		t.Errorf("after a failed decryption, byte %d after the ciphertext's copy is not wiped", i)
	}
}

// TestShmEncryptReadsInPlace: an AES-GCM encryption and a hash read their
// input region in place, in their one pass over it, so the daemon's
// scratch holds only the output; a decryption, which reads its input
// twice (the tag, then the plaintext), still works on a copy.
func TestShmEncryptReadsInPlace(t *testing.T) {
	s, c := pair(t, Config{})
	const n = 1 << 20
	fd, mem := memfd(t, 4*n, shmSeals)
	if r := register(t, c, 1, fd); r.Status != wire.Status_STATUS_OK {
		t.Fatal(r.Message)
	}
	h, g := aesKey(t, c)
	for i := range n {
		mem[i] = byte(i * 5)
	}
	want := bytes.Clone(mem[:n])
	res := shmDo(t, c, 2, encOp(h, region(0, n), region(n, n+64)))[0]
	if res.Status != wire.Status_STATUS_OK {
		t.Fatalf("encrypt: %v %q", res.Status, res.Message)
	}
	ct := mem[n : n+res.OutputLength]
	if pt, err := g.Open(nil, ct[7:19], ct[19:], nil); err != nil || !bytes.Equal(pt, want) {
		t.Fatalf("the ciphertext does not open: %v", err)
	}
	res = shmDo(t, c, 3, &wire.Op{Op: &wire.Op_Hash{Hash: &wire.Hash{Alg: wire.HashAlg_HASH_ALG_SHA256, Input: region(0, n)}}})[0]
	if d := sha256.Sum256(want); res.Status != wire.Status_STATUS_OK || !bytes.Equal(res.Data, d[:]) {
		t.Fatalf("hash: %v %q", res.Status, res.Message)
	}
	if got := scratchCap(t, s); got >= 2*n {
		t.Fatalf("scratch of %d bytes after an encryption of %d: the input was copied", got, n)
	}
	res = shmDo(t, c, 4, decOp(h, region(n, uint64(len(ct))), region(2*n+4096, n)))[0]
	if res.Status != wire.Status_STATUS_OK || !bytes.Equal(mem[2*n+4096:3*n+4096], want) {
		t.Fatalf("decrypt: %v %q", res.Status, res.Message)
	}
	if got := scratchCap(t, s); got < 2*n {
		t.Fatalf("scratch of %d bytes after a decryption of %d: the input was not copied", got, n)
	}
}

// TestShmEncryptInPlaceRewritten: a client that rewrites the input region
// while the daemon encrypts it in place (another thread) gets, every
// time, a ciphertext whose tag is over that ciphertext: it opens, to
// bytes each of which it wrote at some point; and a hash of a region
// rewritten meanwhile is the hash of what the daemon read, never an error
// or a crash.
func TestShmEncryptInPlaceRewritten(t *testing.T) {
	_, c := pair(t, Config{})
	const n = 256 << 10
	fd, mem := memfd(t, 2*n+4096, shmSeals)
	if r := register(t, c, 1, fd); r.Status != wire.Status_STATUS_OK {
		t.Fatal(r.Message)
	}
	h, g := aesKey(t, c)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for v := byte(1); ; v ^= 3 { // 1, 2, 1, ...
			select {
			case <-stop:
				return
			default:
			}
			for i := range n {
				mem[i] = v
			}
		}
	}()
	defer func() { close(stop); <-done }()
	for i := range 40 {
		res := shmDo(t, c, uint64(2+2*i), encOp(h, region(0, n), region(n, n+4096)))[0]
		if res.Status != wire.Status_STATUS_OK {
			t.Fatalf("encrypt %d: %v %q", i, res.Status, res.Message)
		}
		ct := bytes.Clone(mem[n : n+res.OutputLength])
		pt, err := g.Open(nil, ct[7:19], ct[19:], nil)
		if err != nil {
			t.Fatalf("encrypt %d: the ciphertext's tag does not match it: %v", i, err)
		}
		for j, b := range pt {
			if b != 1 && b != 2 && b != 0 {
				t.Fatalf("encrypt %d: byte %d of the plaintext is %d, never written", i, j, b)
			}
		}
		res = shmDo(t, c, uint64(3+2*i), &wire.Op{Op: &wire.Op_Hash{Hash: &wire.Hash{Alg: wire.HashAlg_HASH_ALG_SHA256, Input: region(0, n)}}})[0]
		if res.Status != wire.Status_STATUS_OK || len(res.Data) != 32 {
			t.Fatalf("hash %d: %v %q", i, res.Status, res.Message)
		}
	}
}
