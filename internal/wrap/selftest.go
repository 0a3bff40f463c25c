package wrap

import (
	"bytes"
	"encoding/hex"
	"errors"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// SelfTest runs known-answer tests of KW and KWP from RFC 3394 §4.6 and
// RFC 5649 §6, wrapping and unwrapping, and a KWW3 seal-and-open with a
// tampered copy, through the functions the daemon uses. The daemon runs it
// at start; the error names the failed test. It takes microseconds.
func SelfTest() error {
	for _, t := range []struct {
		name string
		run  func() error
	}{
		{"KW (RFC 3394 §4.6)", func() error {
			return kat(WrapKW, UnwrapKW, selfKEK256, selfData256, selfKW256)
		}},
		{"KWP (RFC 5649 §6, 20 octets)", func() error {
			return kat(WrapKWP, UnwrapKWP, selfKEK192, selfKWPData20, selfKWP20)
		}},
		{"KWP (RFC 5649 §6, 7 octets)", func() error {
			return kat(WrapKWP, UnwrapKWP, selfKEK192, selfKWPData7, selfKWP7)
		}},
		{"KWW3", selfTestKeyword},
	} {
		if err := t.run(); err != nil {
			return errors.New("wrap self-test failed: " + t.name + ": " + err.Error())
		}
	}
	return nil
}

func kat(wrap, unwrap func(kek, in []byte) ([]byte, error), kek, pt, ct string) error {
	k, p, c := mustHex(kek), mustHex(pt), mustHex(ct)
	got, err := wrap(k, p)
	if err != nil || !bytes.Equal(got, c) {
		return errors.New("wrong ciphertext")
	}
	got, err = unwrap(k, c)
	if err != nil || !bytes.Equal(got, p) {
		return errors.New("wrong plaintext")
	}
	c[len(c)-1] ^= 1
	if _, err := unwrap(k, c); err != ErrUnwrap {
		return errors.New("tampered ciphertext unwrapped")
	}
	return nil
}

func selfTestKeyword() error {
	kek, material := mustHex(selfKEK256), mustHex(selfData256)
	a := Attributes{
		Type:  wire.KeyType_KEY_TYPE_AES256_GCM,
		Class: key.Secret,
		Usage: key.Encrypt | key.Decrypt,
		Name:  "self-test",
	}
	blob, err := SealKeyword(kek, material, a)
	if err != nil {
		return err
	}
	got, ga, err := OpenKeyword(kek, blob)
	if err != nil || !bytes.Equal(got, material) || ga != a {
		return errors.New("round trip failed")
	}
	blob[kwwHeaderLen+1] ^= 1 // the type
	if _, _, err := OpenKeyword(kek, blob); err != ErrUnwrap {
		return errors.New("tampered attributes opened")
	}
	return nil
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// Vectors of RFC 3394 §4.6 and RFC 5649 §6.
const (
	selfKEK256    = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	selfData256   = "00112233445566778899aabbccddeeff000102030405060708090a0b0c0d0e0f"
	selfKW256     = "28c9f404c4b810f4cbccb35cfb87f8263f5786e2d80ed326cbc7f0e71a99f43bfb988b9b7a02dd21"
	selfKEK192    = "5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8"
	selfKWPData20 = "c37b7e6492584340bed12207808941155068f738"
	selfKWP20     = "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"
	selfKWPData7  = "466f7250617369"
	selfKWP7      = "afbeb0f07dfbf5419200f2ccb50bb24f"
)
