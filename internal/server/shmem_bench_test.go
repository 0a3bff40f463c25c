package server

import (
	"testing"

	"github.com/keywarden/keywarden/internal/wire"
)

// BenchmarkShmEncrypt1M encrypts a megabyte through regions of the
// connection's shared memory, one request at a time.
func BenchmarkShmEncrypt1M(b *testing.B) { benchShmEncrypt(b, 1<<20) }

func BenchmarkShmEncrypt64K(b *testing.B) { benchShmEncrypt(b, 64<<10) }

func benchShmEncrypt(b *testing.B, n int) {
	_, c := pair(b, Config{})
	fd, _ := memfd(b, 4*n, shmSeals)
	if r := register(b, c, 1, fd); r.Status != wire.Status_STATUS_OK {
		b.Fatal(r.Message)
	}
	h, _ := aesKey(b, c)
	b.SetBytes(int64(n))
	req, err := (&wire.Request{Version: 1, Id: 2, Ops: []*wire.Op{encOp(h, region(0, uint64(n)), region(uint64(n), uint64(n+64)))}}).MarshalVT()
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	rep := new(wire.Reply)
	for b.Loop() {
		if err := c.Send(req); err != nil {
			b.Fatal(err)
		}
		k, err := c.Recv(buf)
		if err != nil {
			b.Fatal(err)
		}
		if err := rep.UnmarshalVT(buf[:k]); err != nil || rep.Results[0].Status != wire.Status_STATUS_OK {
			b.Fatalf("%v %v", err, rep)
		}
	}
}

// BenchmarkShmDecrypt1M decrypts a megabyte through regions of the
// connection's shared memory, one request at a time: the daemon copies
// the ciphertext in, decrypts it into its scratch, copies the plaintext
// out and wipes it.
func BenchmarkShmDecrypt1M(b *testing.B) {
	const n = 1 << 20
	_, c := pair(b, Config{})
	fd, _ := memfd(b, 4*n, shmSeals)
	if r := register(b, c, 1, fd); r.Status != wire.Status_STATUS_OK {
		b.Fatal(r.Message)
	}
	h, _ := aesKey(b, c)
	res := shmDo(b, c, 2, encOp(h, region(0, n), region(n, n+64)))[0]
	if res.Status != wire.Status_STATUS_OK {
		b.Fatal(res.Message)
	}
	b.SetBytes(n)
	req, err := (&wire.Request{Version: 1, Id: 3, Ops: []*wire.Op{decOp(h, region(n, res.OutputLength), region(2*n+4096, n))}}).MarshalVT()
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	rep := new(wire.Reply)
	for b.Loop() {
		if err := c.Send(req); err != nil {
			b.Fatal(err)
		}
		k, err := c.Recv(buf)
		if err != nil {
			b.Fatal(err)
		}
		if err := rep.UnmarshalVT(buf[:k]); err != nil || rep.Results[0].Status != wire.Status_STATUS_OK {
			b.Fatalf("%v %v", err, rep)
		}
	}
}
