package secmem

import "testing"

// BenchmarkDo is the cost runtime/secret.Do adds to an operation (it is
// compiled in only with GOEXPERIMENT=runtimesecret).
func BenchmarkDo(b *testing.B) {
	var sink int
	for b.Loop() {
		Do(func() { sink++ })
	}
	_ = sink
}
