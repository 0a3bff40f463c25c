package wrap

import (
	"bytes"
	"crypto/aes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// kwVectors are every test vector of RFC 3394 §4 (4.1 to 4.6).
var kwVectors = []struct{ name, kek, pt, ct string }{
	{"4.1 128-bit data, 128-bit KEK",
		"000102030405060708090A0B0C0D0E0F",
		"00112233445566778899AABBCCDDEEFF",
		"1FA68B0A8112B447 AEF34BD8FB5A7B82 9D3E862371D2CFE5"},
	{"4.2 128-bit data, 192-bit KEK",
		"000102030405060708090A0B0C0D0E0F1011121314151617",
		"00112233445566778899AABBCCDDEEFF",
		"96778B25AE6CA435 F92B5B97C050AED2 468AB8A17AD84E5D"},
	{"4.3 128-bit data, 256-bit KEK",
		"000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
		"00112233445566778899AABBCCDDEEFF",
		"64E8C3F9CE0F5BA2 63E9777905818A2A 93C8191E7D6E8AE7"},
	{"4.4 192-bit data, 192-bit KEK",
		"000102030405060708090A0B0C0D0E0F1011121314151617",
		"00112233445566778899AABBCCDDEEFF0001020304050607",
		"031D33264E15D332 68F24EC260743EDC E1C6C7DDEE725A93 6BA814915C6762D2"},
	{"4.5 192-bit data, 256-bit KEK",
		"000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
		"00112233445566778899AABBCCDDEEFF0001020304050607",
		"A8F9BC1612C68B3F F6E6F4FBE30E71E4 769C8B80A32CB895 8CD5D17D6B254DA1"},
	{"4.6 256-bit data, 256-bit KEK",
		"000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
		"00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F",
		"28C9F404C4B810F4 CBCCB35CFB87F826 3F5786E2D80ED326 CBC7F0E71A99F43B FB988B9B7A02DD21"},
}

// kwpVectors are every test vector of RFC 5649 §6.
var kwpVectors = []struct{ name, kek, pt, ct string }{
	{"20 octets, 192-bit KEK",
		"5840df6e29b02af1 ab493b705bf16ea1 ae8338f4dcc176a8",
		"c37b7e6492584340 bed1220780894115 5068f738",
		"138bdeaa9b8fa7fc 61f97742e72248ee 5ae6ae5360d1ae6a 5f54f373fa543b6a"},
	{"7 octets, 192-bit KEK",
		"5840df6e29b02af1 ab493b705bf16ea1 ae8338f4dcc176a8",
		"466f7250617369",
		"afbeb0f07dfbf541 9200f2ccb50bb24f"},
}

func TestKWVectors(t *testing.T) {
	for _, v := range kwVectors {
		t.Run(v.name, func(t *testing.T) {
			kek, pt, ct := unhex(t, v.kek), unhex(t, v.pt), unhex(t, v.ct)
			got, err := WrapKW(kek, pt)
			if err != nil || !bytes.Equal(got, ct) {
				t.Fatalf("WrapKW = %x, %v; want %x", got, err, ct)
			}
			back, err := UnwrapKW(kek, ct)
			if err != nil || !bytes.Equal(back, pt) {
				t.Fatalf("UnwrapKW = %x, %v; want %x", back, err, pt)
			}
		})
	}
}

func TestKWPVectors(t *testing.T) {
	for _, v := range kwpVectors {
		t.Run(v.name, func(t *testing.T) {
			kek, pt, ct := unhex(t, v.kek), unhex(t, v.pt), unhex(t, v.ct)
			got, err := WrapKWP(kek, pt)
			if err != nil || !bytes.Equal(got, ct) {
				t.Fatalf("WrapKWP = %x, %v; want %x", got, err, ct)
			}
			back, err := UnwrapKWP(kek, ct)
			if err != nil || !bytes.Equal(back, pt) {
				t.Fatalf("UnwrapKWP = %x, %v; want %x", back, err, pt)
			}
		})
	}
}

// TestKWAndKWPDoNotMix: KWP of a multiple of 8 bytes differs from
// KW only by its initial value, so the two never open each other's blobs.
func TestKWAndKWPDoNotMix(t *testing.T) {
	kek := randBytes(32)
	pt := randBytes(32)
	kw, _ := WrapKW(kek, pt)
	kwp, _ := WrapKWP(kek, pt)
	if len(kw) != len(kwp) || bytes.Equal(kw, kwp) {
		t.Fatalf("KW %x and KWP %x of the same input", kw, kwp)
	}
	if _, err := UnwrapKWP(kek, kw); err != ErrUnwrap {
		t.Errorf("UnwrapKWP(KW blob) = %v", err)
	}
	if _, err := UnwrapKW(kek, kwp); err != ErrUnwrap {
		t.Errorf("UnwrapKW(KWP blob) = %v", err)
	}
}

var kekSizes = []int{16, 24, 32}

func TestKWRoundTrip(t *testing.T) {
	for _, ks := range kekSizes {
		kek := randBytes(ks)
		for n := 16; n <= 520; n += 8 {
			pt := randBytes(n)
			ct, err := WrapKW(kek, pt)
			if err != nil || len(ct) != n+8 {
				t.Fatalf("kek %d, %d bytes: WrapKW = %d bytes, %v", ks, n, len(ct), err)
			}
			back, err := UnwrapKW(kek, ct)
			if err != nil || !bytes.Equal(back, pt) {
				t.Fatalf("kek %d, %d bytes: round trip failed: %v", ks, n, err)
			}
		}
	}
}

func TestKWPRoundTrip(t *testing.T) {
	for _, ks := range kekSizes {
		kek := randBytes(ks)
		for n := 1; n <= 300; n++ {
			pt := randBytes(n)
			ct, err := WrapKWP(kek, pt)
			if want := (n+7)/8*8 + 8; err != nil || len(ct) != want {
				t.Fatalf("kek %d, %d bytes: WrapKWP = %d bytes, %v; want %d", ks, n, len(ct), err, want)
			}
			back, err := UnwrapKWP(kek, ct)
			if err != nil || !bytes.Equal(back, pt) {
				t.Fatalf("kek %d, %d bytes: round trip failed: %v", ks, n, err)
			}
			if cap(back) != len(back) {
				t.Fatalf("UnwrapKWP result has spare capacity %d", cap(back)-len(back))
			}
		}
	}
}

func TestWrapInvalidInput(t *testing.T) {
	kek := randBytes(32)
	for _, n := range []int{0, 1, 8, 15, 17, 23, 31} {
		if _, err := WrapKW(kek, make([]byte, n)); err == nil {
			t.Errorf("WrapKW of %d bytes succeeded", n)
		}
	}
	if _, err := WrapKWP(kek, nil); err == nil {
		t.Error("WrapKWP of nothing succeeded")
	}
	for _, ks := range []int{0, 8, 15, 17, 31, 33, 64} {
		var kse aes.KeySizeError
		if _, err := WrapKW(make([]byte, ks), make([]byte, 16)); !errors.As(err, &kse) {
			t.Errorf("WrapKW with %d-byte kek: %v", ks, err)
		}
		if _, err := WrapKWP(make([]byte, ks), make([]byte, 16)); !errors.As(err, &kse) {
			t.Errorf("WrapKWP with %d-byte kek: %v", ks, err)
		}
		if _, err := UnwrapKW(make([]byte, ks), make([]byte, 24)); !errors.As(err, &kse) {
			t.Errorf("UnwrapKW with %d-byte kek: %v", ks, err)
		}
		if _, err := UnwrapKWP(make([]byte, ks), make([]byte, 24)); !errors.As(err, &kse) {
			t.Errorf("UnwrapKWP with %d-byte kek: %v", ks, err)
		}
	}
}

type unwrapFunc func(kek, ct []byte) ([]byte, error)

// checkTamper checks that flipping any bit of any byte, truncating, extending,
// and using another key all fail with ErrUnwrap.
func checkTamper(t *testing.T, unwrap unwrapFunc, kek, ct []byte) {
	t.Helper()
	for i := range ct {
		for _, bit := range []byte{0x01, 0x80} {
			bad := bytes.Clone(ct)
			bad[i] ^= bit
			if p, err := unwrap(kek, bad); err != ErrUnwrap || p != nil {
				t.Fatalf("flipped bit %#x of byte %d: %x, %v", bit, i, p, err)
			}
		}
	}
	for n := range len(ct) {
		if p, err := unwrap(kek, ct[:n]); err != ErrUnwrap || p != nil {
			t.Fatalf("truncated to %d bytes: %x, %v", n, p, err)
		}
	}
	for _, extra := range []int{1, 7, 8, 16} {
		if p, err := unwrap(kek, append(bytes.Clone(ct), make([]byte, extra)...)); err != ErrUnwrap || p != nil {
			t.Fatalf("extended by %d bytes: %x, %v", extra, p, err)
		}
	}
	other := bytes.Clone(kek)
	other[len(other)-1] ^= 1
	if p, err := unwrap(other, ct); err != ErrUnwrap || p != nil {
		t.Fatalf("other key: %x, %v", p, err)
	}
	if p, err := unwrap(randBytes(len(kek)), ct); err != ErrUnwrap || p != nil {
		t.Fatalf("random key: %x, %v", p, err)
	}
}

func TestKWTamper(t *testing.T) {
	for _, ks := range kekSizes {
		kek := randBytes(ks)
		for _, n := range []int{16, 24, 32, 64} {
			ct, _ := WrapKW(kek, randBytes(n))
			checkTamper(t, UnwrapKW, kek, ct)
		}
	}
}

func TestKWPTamper(t *testing.T) {
	for _, ks := range kekSizes {
		kek := randBytes(ks)
		for _, n := range []int{1, 7, 8, 9, 20, 32, 33, 1217} {
			ct, _ := WrapKWP(kek, randBytes(n))
			checkTamper(t, UnwrapKWP, kek, ct)
		}
	}
}

// wrapAIV builds a KWP-style blob with an arbitrary initial value a over
// padded (a multiple of 8 bytes), to reach each check of UnwrapKWP.
func wrapAIV(t *testing.T, kek []byte, a [8]byte, padded []byte) []byte {
	b, err := aes.NewCipher(kek)
	if err != nil {
		t.Fatal(err)
	}
	if len(padded) == 8 {
		out := append(a[:], padded...)
		b.Encrypt(out, out)
		return out
	}
	return wrapCore(b, a, padded)
}

func TestKWPChecks(t *testing.T) {
	kek := randBytes(32)
	aiv := func(icv [4]byte, mli uint32) (a [8]byte) {
		copy(a[:], icv[:])
		a[4], a[5], a[6], a[7] = byte(mli>>24), byte(mli>>16), byte(mli>>8), byte(mli)
		return a
	}
	zero := make([]byte, 24)
	nonzeroPad := append(bytes.Repeat([]byte{7}, 20), 0, 0, 1, 0)
	for _, c := range []struct {
		name   string
		a      [8]byte
		padded []byte
		ok     bool
	}{
		{"good 20 of 24", aiv(kwpICV, 20), zero, true},
		{"good 17 of 24", aiv(kwpICV, 17), zero, true},
		{"good 24 of 24", aiv(kwpICV, 24), zero, true},
		{"good 1 of 8", aiv(kwpICV, 1), zero[:8], true},
		{"good 8 of 8", aiv(kwpICV, 8), zero[:8], true},
		{"MLI 0 of 8", aiv(kwpICV, 0), zero[:8], false},
		{"MLI 9 of 8", aiv(kwpICV, 9), zero[:8], false},
		{"MLI 16 of 24", aiv(kwpICV, 16), zero, false},
		{"MLI 25 of 24", aiv(kwpICV, 25), zero, false},
		{"MLI 2^32-1", aiv(kwpICV, 1<<32-1), zero, false},
		{"MLI 2^31", aiv(kwpICV, 1<<31), zero, false},
		{"bad ICV", aiv([4]byte{0xA6, 0x59, 0x59, 0xA7}, 20), zero, false},
		{"KW IV", kwIV, zero, false},
		{"nonzero padding", aiv(kwpICV, 20), nonzeroPad, false},
		{"nonzero byte at MLI", aiv(kwpICV, 22), nonzeroPad, false},
		{"padding byte covered by MLI", aiv(kwpICV, 23), nonzeroPad, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			ct := wrapAIV(t, kek, c.a, c.padded)
			p, err := UnwrapKWP(kek, ct)
			if c.ok {
				mli := int(c.a[4])<<24 | int(c.a[5])<<16 | int(c.a[6])<<8 | int(c.a[7])
				if err != nil || !bytes.Equal(p, c.padded[:mli]) {
					t.Fatalf("UnwrapKWP = %x, %v; want %x", p, err, c.padded[:mli])
				}
			} else if err != ErrUnwrap || p != nil {
				t.Fatalf("UnwrapKWP = %x, %v; want ErrUnwrap", p, err)
			}
		})
	}
}

func TestLessOrEq(t *testing.T) {
	vals := []uint64{0, 1, 2, 7, 8, 1<<31 - 1, 1 << 31, 1<<32 - 1, 1 << 32, 1<<63 - 1, 1 << 63, 1<<64 - 1}
	for _, x := range vals {
		for _, y := range vals {
			want := 0
			if x <= y {
				want = 1
			}
			if got := lessOrEq(x, y); got != want {
				t.Errorf("lessOrEq(%d, %d) = %d", x, y, got)
			}
		}
	}
}

func TestUnwrapDoesNotModifyInput(t *testing.T) {
	kek := randBytes(32)
	ct, _ := WrapKWP(kek, randBytes(40))
	orig := bytes.Clone(ct)
	if _, err := UnwrapKWP(kek, ct); err != nil {
		t.Fatal(err)
	}
	ct2, _ := WrapKW(kek, randBytes(40))
	orig2 := bytes.Clone(ct2)
	if _, err := UnwrapKW(kek, ct2); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ct, orig) || !bytes.Equal(ct2, orig2) {
		t.Fatal("unwrap modified its input")
	}
}

func TestSelfTest(t *testing.T) {
	if err := SelfTest(); err != nil {
		t.Fatal(err)
	}
}
