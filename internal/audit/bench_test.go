package audit

import (
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// Benchmarks of the log on a real file (in the test's temporary
// directory: run them where the daemon's state directory would be, e.g.
// TMPDIR=/var/lib/keywarden-bench, to measure that disk):
//
//	go test -run '^$' -bench . ./internal/audit
//
// BenchmarkAppend reports records/s and the latency of one Append for 1
// and 16 writers in each sync mode; one iteration is one record.

func BenchmarkAppend(b *testing.B) {
	for _, mode := range []SyncMode{SyncGrouped, SyncAlways} {
		for _, writers := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/writers=%d", mode, writers), func(b *testing.B) {
				benchAppend(b, mode, writers, func(i int) *Record { return request(i) })
			})
		}
	}
}

// BenchmarkAppendBatch: one record for a request of 512 operations, as
// the batched data path makes them: alike (one key, all OK: one entry
// after AddOp) or each on its own key (512 entries).
func BenchmarkAppendBatch(b *testing.B) {
	for _, distinct := range []bool{false, true} {
		name := "alike"
		if distinct {
			name = "distinct"
		}
		b.Run(name, func(b *testing.B) {
			r := request(0)
			r.Op = OpBatch
			for i := range 512 {
				e := OpEntry{Op: "encrypt", Alg: "aes256-gcm", Key: r.Key, KeyVersion: 1, Status: "OK"}
				if distinct {
					e.Key[1], e.Key[2] = byte(i), byte(i>>8)
				}
				r.AddOp(e)
			}
			benchAppend(b, SyncGrouped, 1, func(int) *Record { return r })
			b.ReportMetric(float64(len(AppendLine(nil, r))), "bytes/record")
		})
	}
}

func benchAppend(b *testing.B, mode SyncMode, writers int, rec func(int) *Record) {
	l := openLog(b, Options{Path: filepath.Join(b.TempDir(), "audit.log"), Sync: mode, Keys: testKeys(b)})
	defer l.Close()
	b.ReportAllocs()
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	n := b.N
	b.ResetTimer()
	start := time.Now()
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, n/writers+1)
			for i := w; i < n; i += writers {
				r := rec(i)
				t0 := time.Now()
				if err := l.Append(r); err != nil {
					b.Error(err)
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(n)/el.Seconds(), "records/s")
	if len(lat) > 0 {
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
	}
}

// BenchmarkEncode: building one request record's line, without I/O.
func BenchmarkEncode(b *testing.B) {
	r := request(1)
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = appendBody(buf[:0], r)
	}
}

// BenchmarkVerify verifies a log of 20,000 request records with the
// public key and the MAC key.
func BenchmarkVerify(b *testing.B) {
	path := filepath.Join(b.TempDir(), "audit.log")
	l := openLog(b, Options{Path: path, Keys: testKeys(b)})
	appendN(b, l, 20000)
	l.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	for _, withMAC := range []bool{false, true} {
		name := "public-key"
		o := VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(b)}}
		if withMAC {
			name = "public-and-mac-key"
			o.Keys = []*Keys{testKeys(b)}
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			var rep *Report
			for b.Loop() {
				rep, err = VerifyFiles([]string{path}, o)
				if err != nil || !rep.Intact {
					b.Fatal(err, rep.Problem)
				}
			}
			b.ReportMetric(float64(rep.Records)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// BenchmarkCheckEarlier: what the first keys of a run cost, checking
// what earlier runs wrote (vouch.go), on a full active file (64 MiB, the
// rotation size) left by a crash: the whole file is scanned for the last
// checkpoint signed with the keys, and the records after it (up to 4096)
// are parsed and their MACs checked. One iteration is one check.
func BenchmarkCheckEarlier(b *testing.B) {
	path := filepath.Join(b.TempDir(), "audit.log")
	k := testKeys(b)
	l := openLog(b, Options{Path: path, Keys: testKeys(b), RotateBytes: -1, Reserve: -1})
	for i := 0; l.Status().FileBytes < 64<<20; i++ {
		if err := l.Append(request(i)); err != nil {
			b.Fatal(err)
		}
	}
	l.Close()
	// The file as a crash would leave it: without the final checkpoint.
	lines := readLines(b, path)
	lines = lines[:len(lines)-1]
	writeLines(b, path, lines)
	last, err := ParseRecord(lines[len(lines)-1][:len(lines[len(lines)-1])-1])
	if err != nil {
		b.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	e := &earlier{file: path, end: fi.Size(), seq: last.Seq, h: last.Hash}
	b.SetBytes(e.end)
	b.ResetTimer()
	for b.Loop() {
		c, err := checkEarlier(path, e, k)
		if err != nil || c != nil {
			b.Fatalf("check: %v %+v", err, c)
		}
	}
}
