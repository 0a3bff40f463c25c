package shamir

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

// Published vectors for plain Shamir sharing over the AES field: the
// recovery vectors of Botan's implementation of Threshold Secret Sharing
// (draft-mcgrew-tss-03, "RTSS"), from Botan's src/tests/data/tss/recovery.vec.
//
// RTSS shares each byte exactly as this package does: GF(2^8) modulo
// x^8+x^4+x^3+x+1, the share index as the x coordinate, Lagrange
// interpolation at 0. Each share is a 20-byte header (16-byte identifier,
// hash id, threshold M, 2-byte share length) followed by the index byte and
// the share bytes. The shared value is the secret followed by its SHA-256
// when the hash id is 2, and the secret alone when it is 0. The check
// below parses just that layout and recovers the value with this package's
// interpolation, so the vectors test the field and the interpolation, not
// a copy of RTSS.
var tssVectors = []struct {
	name      string
	m         int
	shares    []string
	recovered string
	valid     bool
}{
	{
		name: "M=2 N=2 SHA-256",
		m:    2,
		shares: []string{
			"000102030405060708090a0b0c0d0e0f0202002901dae7fc9ea17b6d120af753e85a28e224109e12ae3bfd885a6209d142b4a0c26dac6f148be9ad11d8",
			"000102030405060708090a0b0c0d0e0f0202002902acd3e62b56fcd33cbe62b1be8b825a7b6474585918908afa9eac22a746e014a947262b63a4fd933d",
		},
		recovered: "0102030405060708",
		valid:     true,
	},
	{
		name: "M=3 N=5 no hash",
		m:    3,
		shares: []string{
			"4d15a4f79c02af474cf0a85d39ddc85300030019010773d64642dc18a85158f91d69546202854bc9ed910e9173",
			"4d15a4f79c02af474cf0a85d39ddc853000300190274ac6503a0a6f54dfe9bd135cc759a06b214625d8da2f5ec",
			"4d15a4f79c02af474cf0a85d39ddc853000300190334b5d5731bca274635b37b85707afc86198f16f57fa57ce4",
			"4d15a4f79c02af474cf0a85d39ddc8530003001904db009b259b8982a9db67552714c770db64cac422e0e66464",
			"4d15a4f79c02af474cf0a85d39ddc85300030019059b192b5520e550a2104fff97a8c8165bcf51b08a12e1ed6c",
		},
		recovered: "476a6636f9b0caa39a7053add55b04822ed0bd456309187b",
		valid:     true,
	},
	{
		// Shares whose length field is wrong (Botan before 2.9 wrote
		// them so); the share bytes are right.
		name: "M=2 N=4 SHA-256, old length field",
		m:    2,
		shares: []string{
			"000102030405060708090A0B0C0D0E0F02020005019DFEAFAC164A35EA4545E0916DD5818C3DDCADE00DF828EBB9B14F84CC4623BE3E6A90476E",
			"000102030405060708090A0B0C0D0E0F0202000502BD48D0DF2CDDA89651C96B8283BB353B44B7F1A0D4F7B7BD0343D640DE9AC0005E662DBDB6",
			"000102030405060708090A0B0C0D0E0F020200050354D30C073A592A4B5D44127AD96859569A67C5696AF2C28F9CE4A1F5D027686A7E6246EBFE",
			"000102030405060708090A0B0C0D0E0F0202000504FD3F2E3958E8896E79CA66A44467464EB66149207DE992116CBCFFD3FA391D679E7E4C521D",
		},
		recovered: "7465737400",
		valid:     true,
	},
	{
		// The first vector with the last byte of the second share changed:
		// the interpolated hash no longer matches.
		name: "M=2 N=2 SHA-256, damaged",
		m:    2,
		shares: []string{
			"000102030405060708090a0b0c0d0e0f0202002901dae7fc9ea17b6d120af753e85a28e224109e12ae3bfd885a6209d142b4a0c26dac6f148be9ad11d8",
			"000102030405060708090a0b0c0d0e0f0202002902acd3e62b56fcd33cbe62b1be8b825a7b6474585918908afa9eac22a746e014a947262b63a4fd933e",
		},
		recovered: "0102030405060708",
		valid:     false,
	},
}

func TestTSSVectors(t *testing.T) {
	for _, v := range tssVectors {
		t.Run(v.name, func(t *testing.T) {
			secret, _ := hex.DecodeString(v.recovered)
			var points []Share
			for _, h := range v.shares {
				b, err := hex.DecodeString(h)
				if err != nil || len(b) < 22 {
					t.Fatalf("bad vector share %q", h)
				}
				hashID, m := b[16], int(b[17])
				if m != v.m {
					t.Fatalf("share header threshold %d, vector says %d", m, v.m)
				}
				switch hashID {
				case 0:
					if len(b)-21 != len(secret) {
						t.Fatalf("share of %d bytes for a %d-byte secret", len(b)-21, len(secret))
					}
				case 2:
					if len(b)-21 != len(secret)+sha256.Size {
						t.Fatalf("share of %d bytes for a %d-byte secret and SHA-256", len(b)-21, len(secret))
					}
				default:
					t.Fatalf("hash id %d", hashID)
				}
				points = append(points, Share{Threshold: m, X: b[20], Y: b[21:]})
			}

			// Every subset of M shares, through Combine, in the order given.
			n := len(points)
			for mask := range 1 << n {
				var subset []Share
				for i := range n {
					if mask>>i&1 == 1 {
						subset = append(subset, points[i])
					}
				}
				if len(subset) != v.m {
					continue
				}
				got, err := Combine(subset)
				if err != nil {
					t.Fatalf("shares %b: %v", mask, err)
				}
				value, digest := got[:len(secret)], got[len(secret):]
				ok := bytes.Equal(value, secret)
				if len(digest) > 0 {
					sum := sha256.Sum256(value)
					ok = ok && bytes.Equal(digest, sum[:])
				}
				if ok != v.valid {
					t.Errorf("shares %b: recovered %x, valid %v, want valid %v", mask, got, ok, v.valid)
				}
			}

			// All the shares at once: consistent for the valid vectors.
			if len(points) > v.m {
				if _, err := Combine(points); err != nil {
					t.Errorf("all %d shares: %v", len(points), err)
				}
			}
		})
	}
}
