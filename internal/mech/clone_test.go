package mech

import (
	"bytes"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/wire"
)

// useSource makes s the default source for the rest of the test.
func useSource(t *testing.T, s *random.Source) {
	t.Helper()
	old := random.SetDefault(s)
	t.Cleanup(func() { random.SetDefault(old) })
}

// cloneSource is one of two VMs restored from one snapshot: the daemon's
// key and the kernel's generator the same as the other's, no CPU random
// instruction.
func cloneSource() *random.Source {
	return random.New(random.Config{Kernel: random.StaleKernel(7), Hardware: func([]byte) bool { return false },
		Wait: 10 * time.Millisecond})
}

func canonical(t *testing.T, k *Key) []byte {
	t.Helper()
	var out []byte
	if err := k.Canonical(func(b []byte) error { out = bytes.Clone(b); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestGenerateUsesTheSource: every key type but RSA is made from package
// random's bytes, so what the source guarantees after a clone holds for
// keys: two clones in one state make the same key (the model), and after
// a change with an input unique to each, different ones.
func TestGenerateUsesTheSource(t *testing.T) {
	for _, typ := range []wire.KeyType{tAES, tHMAC256, tEd, tP256, tP384, tX25519, tDH256, tDH384} {
		s := key.Lookup(typ)
		var keys [2][]byte
		for i := range keys {
			useSource(t, cloneSource())
			k, err := Generate(s)
			if err != nil {
				t.Fatalf("%s: %v", s.Name, err)
			}
			keys[i] = canonical(t, k)
			k.Destroy()
		}
		if !bytes.Equal(keys[0], keys[1]) {
			t.Fatalf("%s: two sources in one state made different keys: the key does not come from package random", s.Name)
		}
		for i := range keys {
			src := cloneSource()
			src.Change(random.Unique, "test", []byte{byte(i)})
			useSource(t, src)
			k, err := Generate(s)
			if err != nil {
				t.Fatalf("%s: %v", s.Name, err)
			}
			keys[i] = canonical(t, k)
			k.Destroy()
		}
		if bytes.Equal(keys[0], keys[1]) {
			t.Fatalf("%s: clones told apart made the same key", s.Name)
		}
	}
}

// TestUnconfirmedRefuses: after a generation change that nothing
// confirmed, everything that needs fresh random bytes is refused with
// UNAVAILABLE, and what does not (decryption, signatures, MACs) goes on.
func TestUnconfirmedRefuses(t *testing.T) {
	gen := func(typ wire.KeyType) *Key {
		k, err := Generate(key.Lookup(typ))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { k.Destroy() })
		return k
	}
	aes, hm, ec, ed, rs := gen(tAES), gen(tHMAC256), gen(tP256), gen(tEd), gen(tRSA2048)
	ct, err := aes.Encrypt([]byte("before"), nil, hNone, nil)
	if err != nil {
		t.Fatal(err)
	}

	src := cloneSource()
	useSource(t, src)
	st := src.Change(random.Unconfirmed, "", []byte("generation 1"))

	unavailable := func(what string, err error) {
		t.Helper()
		if wire.StatusOf(err) != wire.Status_STATUS_UNAVAILABLE {
			t.Errorf("%s after an unconfirmed change: %v, want UNAVAILABLE", what, err)
		}
	}
	for _, typ := range []wire.KeyType{tAES, tHMAC256, tEd, tP256, tX25519, tRSA2048} {
		_, err := Generate(key.Lookup(typ))
		unavailable("generate "+key.Lookup(typ).Name, err)
	}
	_, err = aes.Encrypt([]byte("after"), nil, hNone, nil)
	unavailable("AES-GCM encrypt", err)
	err = aes.EncryptEach(2, hNone, func(int) (pt, aad, dst []byte) { return []byte("x"), nil, nil },
		func(i int, out []byte, err error) { unavailable("AES-GCM encrypt (batch)", err) })
	if err != nil {
		t.Fatal(err)
	}
	_, err = rs.Encrypt([]byte("after"), nil, hNone, nil)
	unavailable("RSA-OAEP encrypt", err)

	if pt, err := aes.Decrypt(ct, nil, hNone, nil); err != nil || string(pt) != "before" {
		t.Errorf("decrypt: %q, %v", pt, err)
	}
	for _, k := range []*Key{ec, ed, rs} {
		if _, err := k.Sign(SignParams{}, []byte("msg")); err != nil {
			t.Errorf("%s sign: %v", k.Spec().Name, err)
		}
	}
	if _, err := rs.Sign(SignParams{Padding: wire.Padding_PADDING_PSS}, []byte("msg")); err != nil {
		t.Errorf("RSA-PSS sign: %v", err)
	}
	if _, err := hm.MAC([]byte("msg"), nil); err != nil {
		t.Errorf("MAC: %v", err)
	}

	// Unique is enough for everything but RSA keys, which Go draws from
	// the kernel.
	src.Confirm(st.Epoch, random.Unique, "test")
	if _, err := aes.Encrypt([]byte("after"), nil, hNone, nil); err != nil {
		t.Errorf("encrypt once confirmed: %v", err)
	}
	_, err = Generate(key.Lookup(tRSA2048))
	unavailable("generate RSA before the kernel re-seeded", err)
	src.Confirm(st.Epoch, random.Kernel, "test")
	if k, err := Generate(key.Lookup(tRSA2048)); err != nil {
		t.Errorf("generate RSA once the kernel re-seeded: %v", err)
	} else {
		k.Destroy()
	}
}

// TestEncryptEachDrawsNoncesTogether: a run of AES-GCM encryptions reads
// the source once per group of nonces rather than once per message, and
// every message still gets a nonce of its own that opens as Encrypt's do.
func TestEncryptEachDrawsNoncesTogether(t *testing.T) {
	k, err := Generate(key.Lookup(tAES))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Destroy()
	reads := 0
	stale := random.StaleKernel(3)
	useSource(t, random.New(random.Config{Kernel: func(b []byte) { reads++; stale(b) },
		Hardware: func([]byte) bool { return false }}))
	reads = 0
	const n = 100
	cts := make([][]byte, n)
	err = k.EncryptEach(n, hNone, func(i int) (pt, aad, dst []byte) {
		return []byte{byte(i)}, []byte("aad"), []byte("hdr")
	}, func(i int, out []byte, err error) {
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		cts[i] = out
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := (n + 31) / 32; reads != want {
		t.Errorf("%d reads of the kernel's generator for %d nonces, want %d", reads, n, want)
	}
	seen := map[string]bool{}
	for i, ct := range cts {
		if string(ct[:3]) != "hdr" {
			t.Fatalf("message %d: destination not kept: %x", i, ct)
		}
		if nonce := string(ct[3 : 3+gcmNonceSize]); seen[nonce] {
			t.Fatalf("message %d: nonce %x repeated", i, nonce)
		} else {
			seen[nonce] = true
		}
		pt, err := k.Decrypt(ct[3:], []byte("aad"), hNone, nil)
		if err != nil || !bytes.Equal(pt, []byte{byte(i)}) {
			t.Fatalf("message %d: %x, %v", i, pt, err)
		}
	}
}
