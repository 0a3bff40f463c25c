package secmem

import (
	"fmt"
	"testing"
)

// BenchmarkDo is the cost runtime/secret.Do adds to an operation (it is
// compiled in only with GOEXPERIMENT=runtimesecret).
func BenchmarkDo(b *testing.B) {
	var sink int
	for b.Loop() {
		Do(func() { sink++ })
	}
	_ = sink
}

// allocSink keeps the benchmark's allocations on the heap.
var allocSink []byte

// BenchmarkDoAlloc is what a heap allocation costs inside Do ("inside")
// and outside it, by size. Inside, the runtime records each allocation in
// a list per memory span sorted by address, walked from its start: the
// more objects of a size a span holds, the longer the walk (1,024 objects
// of 8 bytes, 8 of 1 KiB).
func BenchmarkDoAlloc(b *testing.B) {
	for _, n := range []int{8, 64, 1024} {
		b.Run(fmt.Sprintf("%dB/outside", n), func(b *testing.B) {
			for b.Loop() {
				allocSink = make([]byte, n)
			}
		})
		b.Run(fmt.Sprintf("%dB/inside", n), func(b *testing.B) {
			for b.Loop() {
				Do(func() { allocSink = make([]byte, n) })
			}
		})
	}
}
