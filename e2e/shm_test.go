package e2e_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/wire"
)

// A megabyte goes through the connection's shared memory: the client
// registers it on the first large call, and encryption, decryption,
// hashing and MAC give what the standard library gives, each with its
// audit record.
func TestSharedMemoryRoundTrip(t *testing.T) {
	ctx := context.Background()
	d := startDaemon(t)
	c := d.client(t)
	if c.Limits().SharedMemory <= 0 {
		t.Fatal("the daemon does not say it takes shared memory")
	}
	al := newAuditReader(t, d.sock+".audit.log")
	k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true, Exportable: true})
	must(t, "generate", err)
	hk, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.HMACSHA256, Ephemeral: true, Exportable: true})
	must(t, "generate", err)
	raw, err := k.Export(ctx, keywarden.FormatRaw)
	must(t, "export", err)
	hraw, err := hk.Export(ctx, keywarden.FormatRaw)
	must(t, "export", err)
	al.read()

	msg := make([]byte, 1<<20)
	rand.Read(msg)
	if len(msg) <= c.MaxData() {
		t.Fatalf("a megabyte fits in a request (%d): the test proves nothing", c.MaxData())
	}
	ct, err := k.Encrypt(ctx, msg, []byte("aad"))
	must(t, "encrypt", err)
	b, _ := aes.NewCipher(raw)
	g, _ := cipher.NewGCM(b)
	if pt, err := g.Open(nil, ct[7:19], ct[19:], []byte("aad")); err != nil || !bytes.Equal(pt, msg) {
		t.Fatalf("the ciphertext does not open with the standard library: %v", err)
	}
	pt, err := k.Decrypt(ctx, ct, []byte("aad"))
	must(t, "decrypt", err)
	if !bytes.Equal(pt, msg) {
		t.Fatal("decryption differs")
	}
	ct[100] ^= 1
	if _, err := k.Decrypt(ctx, ct, []byte("aad")); err == nil {
		t.Fatal("a tampered ciphertext decrypted")
	}
	sum, err := c.Hash(ctx, crypto.SHA256, msg)
	must(t, "hash", err)
	if want := sha256.Sum256(msg); !bytes.Equal(sum, want[:]) {
		t.Fatal("hash differs")
	}
	tag, err := hk.MAC(ctx, msg)
	must(t, "mac", err)
	m := hmac.New(sha256.New, hraw)
	m.Write(msg)
	if !bytes.Equal(tag, m.Sum(nil)) {
		t.Fatal("MAC differs")
	}

	var ops []string
	for _, r := range requests(al.read()) {
		for _, o := range r.Ops {
			ops = append(ops, o.Op+":"+o.Status)
		}
		if len(r.Ops) == 0 {
			ops = append(ops, r.Op+":"+r.Status)
		}
	}
	want := []string{"shm-register:OK", "encrypt:OK", "decrypt:OK", "decrypt:INVALID_ARGUMENT", "hash:OK", "mac:OK"}
	if len(ops) != len(want) {
		t.Fatalf("audit records %v, want %v", ops, want)
	}
	for i := range want {
		if ops[i] != want[i] {
			t.Fatalf("audit records %v, want %v", ops, want)
		}
	}
}

// rawMemfd makes a memfd of size bytes with seals, mapped if it is
// writable.
func rawMemfd(t *testing.T, size, seals int) (int, []byte) {
	t.Helper()
	fd, err := unix.MemfdCreate("e2e", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Skipf("memfd_create: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	must(t, "ftruncate", unix.Ftruncate(fd, int64(size)))
	if seals != 0 {
		_, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals)
		must(t, "seal", err)
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	must(t, "mmap", err)
	t.Cleanup(func() { unix.Munmap(mem) })
	return fd, mem
}

// registerRaw sends shm_register with fd (none if < 0) on r.
func registerRaw(t *testing.T, r *rawConn, fd int) *wire.Result {
	t.Helper()
	r.next++
	b, err := (&wire.Request{Version: wire.ProtocolVersion, Id: r.next, Ops: []*wire.Op{
		{Op: &wire.Op_ShmRegister{ShmRegister: &wire.ShmRegister{}}}}}).MarshalVT()
	must(t, "marshal", err)
	if fd >= 0 {
		must(t, "send", r.c.SendFDs(b, []int{fd}))
	} else {
		r.send(b)
	}
	rep := r.recv()
	if rep.Status != wire.Status_STATUS_OK {
		t.Fatalf("register refused whole: %v %q", rep.Status, rep.Message)
	}
	return rep.Results[0]
}

const sealed = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// The real daemon refuses, with a typed error, every descriptor that is
// not a sealed memfd, and regions out of bounds, overflowing or
// overlapping; a registered memfd cannot be truncated under it; the
// daemon stays healthy throughout.
func TestSharedMemoryRefusals(t *testing.T) {
	d := startDaemon(t)
	r := dialRaw(t, d.sock)
	var p [2]int
	must(t, "pipe", unix.Pipe2(p[:], unix.O_CLOEXEC))
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	f, err := os.CreateTemp(t.TempDir(), "regular")
	must(t, "temp", err)
	defer f.Close()
	f.Truncate(1 << 20)
	unsealed, _ := rawMemfd(t, 1<<20, 0)
	for name, fd := range map[string]int{"none": -1, "pipe": p[0], "regular file": int(f.Fd()), "unsealed memfd": unsealed} {
		if res := registerRaw(t, r, fd); res.Status != wire.Status_STATUS_INVALID_ARGUMENT {
			t.Errorf("%s: %v %q", name, res.Status, res.Message)
		}
	}
	r.ping()

	const size = 1 << 20
	fd, mem := rawMemfd(t, size, sealed)
	if res := registerRaw(t, r, fd); res.Status != wire.Status_STATUS_OK {
		t.Fatalf("register: %v %q", res.Status, res.Message)
	}
	// The seals hold against the client too: no truncation, no growth.
	if err := unix.Ftruncate(fd, 4096); err == nil {
		t.Fatal("a registered memfd was truncated")
	}
	if err := unix.Ftruncate(fd, 2*size); err == nil {
		t.Fatal("a registered memfd grew")
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE); err == nil {
		t.Fatal("a registered memfd took another seal")
	}
	res := r.one(genOp(wire.KeyType_KEY_TYPE_AES256_GCM, "", 0))
	h := res.GetKey().GetHandle()
	enc := func(in, out *wire.Region) *wire.Op {
		return &wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: h, Input: in, Output: out}}}
	}
	rg := func(off, n uint64) *wire.Region { return &wire.Region{Offset: off, Length: n} }
	for i := range mem {
		mem[i] = 0x5a
	}
	for name, op := range map[string]*wire.Op{
		"input out of bounds":  enc(rg(size-10, 11), rg(0, 100)),
		"input overflowing":    enc(rg(2, ^uint64(0)), rg(0, 100)),
		"output out of bounds": enc(rg(0, 10), rg(size, 64)),
		"output overflowing":   enc(rg(0, 10), rg(^uint64(0)-5, 64)),
		"overlapping":          enc(rg(0, 4096), rg(4000, 8192)),
		"no output":            enc(rg(0, 4096), nil),
		"output too small":     enc(rg(0, 4096), rg(8192, 4096)),
	} {
		if res := r.one(op); res.Status != wire.Status_STATUS_INVALID_ARGUMENT {
			t.Errorf("%s: %v %q", name, res.Status, res.Message)
		}
	}
	for i, b := range mem {
		if b != 0x5a {
			t.Fatalf("byte %d written by a refused operation", i)
		}
	}
	if res := r.one(enc(rg(0, 4096), rg(8192, 4096+35))); res.Status != wire.Status_STATUS_OK || res.OutputLength != 4096+35 {
		t.Fatalf("a good region: %v %q", res.Status, res.Message)
	}
	r.ping()
	d.healthy(t)
}

// The daemon maps a connection's memfd until the connection ends, then
// lets it go: connections that register and leave leave nothing mapped.
func TestSharedMemoryUnmappedAtClose(t *testing.T) {
	d := startDaemon(t)
	maps := func() int {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/maps")
		must(t, "maps", err)
		return bytes.Count(b, []byte("memfd:e2e"))
	}
	r := dialRaw(t, d.sock)
	fd, _ := rawMemfd(t, 1<<20, sealed)
	if res := registerRaw(t, r, fd); res.Status != wire.Status_STATUS_OK {
		t.Fatalf("register: %v %q", res.Status, res.Message)
	}
	if n := maps(); n != 1 {
		t.Fatalf("%d mappings of the memfd while the connection is open", n)
	}
	r.c.Close()
	for range 100 {
		if maps() == 0 {
			d.healthy(t)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("the memfd is still mapped after the connection closed")
}

// Concurrent large calls on one client each get their own regions: every
// result is the one for its own input, and calls beyond the shared
// memory's room fall back to the request.
func TestSharedMemoryConcurrent(t *testing.T) {
	ctx := context.Background()
	d := startDaemon(t)
	c := d.client(t)
	k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	must(t, "generate", err)
	errs := make(chan error, 16)
	for g := range 16 {
		go func() {
			msg := bytes.Repeat([]byte{byte(g)}, 200<<10+g)
			for range 10 {
				ct, err := k.Encrypt(ctx, msg, nil)
				if err != nil {
					errs <- err
					return
				}
				pt, err := k.Decrypt(ctx, ct, nil)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(pt, msg) {
					errs <- errors.New("a result for another call's input")
					return
				}
				sum, err := c.Hash(ctx, crypto.SHA256, msg)
				if want := sha256.Sum256(msg); err != nil || !bytes.Equal(sum, want[:]) {
					errs <- fmt.Errorf("hash: %v", err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 16 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	d.healthy(t)
}

// --shm-max-bytes bounds what a connection registers, and the client
// sizes its memfd to it.
func TestSharedMemoryFlag(t *testing.T) {
	ctx := context.Background()
	d := startDaemon(t, "--shm-max-bytes", "512K")
	c := d.client(t)
	if got := c.Limits().SharedMemory; got != 512<<10 {
		t.Fatalf("the daemon says %d bytes of shared memory, want 512K", got)
	}
	k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	must(t, "generate", err)
	for _, n := range []int{100 << 10, 240 << 10} {
		msg := bytes.Repeat([]byte{7}, n)
		ct, err := k.Encrypt(ctx, msg, nil)
		must(t, "encrypt", err)
		pt, err := k.Decrypt(ctx, ct, nil)
		if err != nil || !bytes.Equal(pt, msg) {
			t.Fatalf("%d bytes: %v", n, err)
		}
	}
	r := dialRaw(t, d.sock)
	fd, _ := rawMemfd(t, 1<<20, sealed)
	if res := registerRaw(t, r, fd); res.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("a memfd over the limit: %v %q", res.Status, res.Message)
	}
}

// AppendEncrypt and AppendDecrypt append to the caller's buffer, as
// cipher.AEAD does, through shared memory and, when a message does not
// fit in the region, through the socket; with room in the buffer, a
// megabyte through shared memory allocates no megabyte in the client.
func TestSharedMemoryAppend(t *testing.T) {
	ctx := context.Background()
	d := startDaemon(t, "--shm-max-bytes", "256K")
	c := d.client(t)
	k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	must(t, "generate", err)
	aad := []byte("aad")
	// 100 KiB and its ciphertext fit in the 256 KiB region; 200 KiB and
	// its ciphertext do not, and go in the request.
	for _, n := range []int{100 << 10, 200 << 10} {
		msg := make([]byte, n)
		rand.Read(msg)
		buf := append(make([]byte, 0, 3+n+35), "pre"...)
		ct, err := k.AppendEncrypt(ctx, buf, msg, aad)
		must(t, "encrypt", err)
		if len(ct) != 3+n+35 || string(ct[:3]) != "pre" || &ct[0] != &buf[0] {
			t.Fatalf("%d bytes: the ciphertext was not appended to the buffer (length %d)", n, len(ct))
		}
		pt, err := k.Decrypt(ctx, ct[3:], aad)
		if err != nil || !bytes.Equal(pt, msg) {
			t.Fatalf("%d bytes: decrypt: %v", n, err)
		}
		// In place: the plaintext over its own ciphertext.
		in := bytes.Clone(ct[3:])
		pt, err = k.AppendDecrypt(ctx, in[:0], in, aad)
		if err != nil || !bytes.Equal(pt, msg) || &pt[0] != &in[0] {
			t.Fatalf("%d bytes: decrypt in place: %v", n, err)
		}
		in[len(in)-1] ^= 1
		if pt, err := k.AppendDecrypt(ctx, nil, in, aad); err == nil || pt != nil {
			t.Fatalf("%d bytes: a tampered ciphertext gave %d bytes, %v", n, len(pt), err)
		}
	}

	// A megabyte, with a daemon of the default limits.
	d = startDaemon(t)
	c = d.client(t)
	k, err = c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	must(t, "generate", err)
	msg := make([]byte, 1<<20)
	rand.Read(msg)
	buf := make([]byte, 0, len(msg)+35)
	buf, err = k.AppendEncrypt(ctx, buf, msg, nil)
	must(t, "encrypt", err)
	const calls = 8
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range calls {
		if buf, err = k.AppendEncrypt(ctx, buf[:0], msg, nil); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / calls; per >= 64<<10 {
		t.Fatalf("%d bytes allocated per encryption of a megabyte into a buffer with room", per)
	}
	if pt, err := k.Decrypt(ctx, buf, nil); err != nil || !bytes.Equal(pt, msg) {
		t.Fatalf("decrypt: %v", err)
	}
}
