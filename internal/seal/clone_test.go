package seal

import (
	"bytes"
	"testing"
	"testing/cryptotest"
	"time"

	"github.com/keywarden/keywarden/internal/random"
)

// TestBlobNoncesDifferInClones: two VMs restored from one snapshot, whose
// kernels return the same bytes (Go's own generator included) until they
// re-seed, but whose daemons each mixed an input unique to them into
// package random (a new VM generation ID, the CPU's random instructions),
// both write key id's record at the same revision: the same blob key. The
// blobs' nonces must differ, or the two stores show the XOR of what each
// sealed (a version each clone made of its own, fresh material) and the
// blob key's GHASH key.
func TestBlobNoncesDifferInClones(t *testing.T) {
	k := devKeys(t)
	id := bytes.Repeat([]byte{9}, 16)
	pt, aad := bytes.Repeat([]byte{1}, 32), []byte("associated data")
	var nonces [2][]byte
	for i := range nonces {
		src := random.New(random.Config{Kernel: random.StaleKernel(5), Hardware: func([]byte) bool { return false },
			Wait: 10 * time.Millisecond})
		src.Change(random.Unique, "test", []byte{byte(i)})
		old := random.SetDefault(src)
		cryptotest.SetGlobalRandom(t, 5) // the kernel, the same in both
		err := k.SealBlobs(id, 7, func(seal BlobSealer) error {
			b, err := seal(nil, aad, pt)
			if err == nil {
				nonces[i] = b[:12]
			}
			return err
		})
		random.SetDefault(old)
		if err != nil {
			t.Fatal(err)
		}
	}
	if bytes.Equal(nonces[0], nonces[1]) {
		t.Fatal("two clones told apart sealed a blob under one blob key with the same nonce: the nonce does not come from package random")
	}
}
