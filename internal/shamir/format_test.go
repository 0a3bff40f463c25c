package shamir

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"strings"
	"testing"
)

// fixed is a share with known fields, and golden its share line.
var fixed = Share{
	SplitID:   SplitID{0x5f, 0x1c, 0x0a, 0x9e, 0x7b, 0x2d, 0x4c, 0x68},
	Threshold: 3,
	X:         2,
	Y:         []byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff},
}

// golden is the share line of fixed. Its checksum was computed apart from
// this package, by a bit-at-a-time CRC-32C (reflected polynomial 82f63b78)
// over the text before the last ':'.
const golden = "keywarden-share-v1:5f1c0a9e7b2d4c68:3:2:00112233445566778899aabbccddeeff:b21d30f8"

func equalShare(a, b Share) bool {
	return a.SplitID == b.SplitID && a.Threshold == b.Threshold && a.X == b.X && bytes.Equal(a.Y, b.Y)
}

func TestCRC32C(t *testing.T) {
	// The published check value of CRC-32C: its value over "123456789".
	if got := crc32.Checksum([]byte("123456789"), castagnoli); got != 0xe3069283 {
		t.Fatalf("CRC-32C(123456789) = %08x", got)
	}
}

func TestEncodeGolden(t *testing.T) {
	out, err := Encode(fixed)
	if err != nil {
		t.Fatal(err)
	}
	want := "# keywarden key share 2 of split 5f1c0a9e7b2d4c68: any 3 shares of this split reconstruct the key.\n" +
		golden + "\n"
	if string(out) != want {
		t.Fatalf("Encode:\n%s\nwant:\n%s", out, want)
	}
}

func TestParseAccepts(t *testing.T) {
	line := golden
	upper := strings.ToUpper(line[len(prefix):])
	for _, tc := range []struct{ name, in string }{
		{"line", line},
		{"line and newline", line + "\n"},
		{"Encode's output", "# keywarden key share 2 of split 5f1c0a9e7b2d4c68: any 3 shares\n" + line + "\n"},
		{"CRLF and comments", "# a\r\n\r\n  # b\r\n" + line + "\r\n# after\r\n"},
		{"surrounding space", "\t  " + line + "  \n\n"},
		{"uppercase hex", prefix + upper},
	} {
		s, err := Parse([]byte(tc.in))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !equalShare(s, fixed) {
			t.Errorf("%s: parsed %+v", tc.name, s)
		}
	}
}

func TestEncodeParseRoundTrip(t *testing.T) {
	secret := make([]byte, 32)
	rand.Read(secret)
	shares, err := Split(secret, 3, 5, nil)
	if err != nil {
		t.Fatal(err)
	}
	var back []Share
	for _, s := range shares {
		file, err := Encode(s)
		if err != nil {
			t.Fatal(err)
		}
		p, err := Parse(file)
		if err != nil {
			t.Fatalf("share %d: %v\n%s", s.X, err, file)
		}
		if !equalShare(p, s) {
			t.Fatalf("share %d: round trip changed it", s.X)
		}
		back = append(back, p)
	}
	got, err := Combine(back[2:])
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("combine parsed shares: %v", err)
	}

	// Extremes.
	for _, s := range []Share{
		{Threshold: 255, X: 255, Y: bytes.Repeat([]byte{0xff}, MaxSecretLen)},
		{Threshold: 2, X: 1, Y: []byte{0}},
	} {
		file, err := Encode(s)
		if err != nil {
			t.Fatal(err)
		}
		if p, err := Parse(file); err != nil || !equalShare(p, s) {
			t.Fatalf("k=%d x=%d: %v", s.Threshold, s.X, err)
		}
	}
}

// TestEveryTypoDetected changes every character of a share line to every
// other character an operator might type, and swaps every pair of
// neighbours: Parse must refuse each, never return a different share.
func TestEveryTypoDetected(t *testing.T) {
	line := golden
	alphabet := "0123456789abcdefABCDEFgloOIS:-# "
	check := func(what, typed string) {
		t.Helper()
		s, err := Parse([]byte(typed))
		if err == nil {
			if equalShare(s, fixed) {
				return // an uppercase digit of the same value
			}
			t.Fatalf("%s: %q parsed as a different share", what, typed)
		}
		if !errors.Is(err, ErrTypo) && !errors.Is(err, ErrFormat) {
			t.Fatalf("%s: error %v is neither ErrTypo nor ErrFormat", what, err)
		}
	}
	for i := range line {
		for _, c := range []byte(alphabet) {
			if c == line[i] {
				continue
			}
			typed := line[:i] + string(c) + line[i+1:]
			check(fmt.Sprintf("position %d to %q", i, c), typed)
		}
		if i+1 < len(line) && line[i] != line[i+1] {
			swapped := []byte(line)
			swapped[i], swapped[i+1] = swapped[i+1], swapped[i]
			check(fmt.Sprintf("swap at %d", i), string(swapped))
		}
		check(fmt.Sprintf("delete %d", i), line[:i]+line[i+1:])
	}
}

func TestParseErrors(t *testing.T) {
	line := golden
	fields := strings.Split(line, ":")
	with := func(i int, v string) string {
		f := slices.Clone(fields)
		f[i] = v
		return strings.Join(f, ":")
	}
	// A typo in the data, with the checksum left as it was.
	dataTypo := with(4, "00112233445566778899aabbccddeefe")
	for _, tc := range []struct {
		name, in string
		is       error
		msg      string
	}{
		{"empty", "", ErrFormat, "share file: no share line"},
		{"comments only", "# nothing\n\n", ErrFormat, "no share line"},
		{"too large", strings.Repeat("#", maxFile+1), ErrFormat, "too large"},
		{"not a share", "hello\n", ErrFormat, "line 1: not a share line"},
		{"other version", with(0, "keywarden-share-v2"), ErrFormat, "unknown format version"},
		{"two shares", line + "\n" + line + "\n", ErrFormat, "line 2: a second share line (the first is line 1)"},
		{"five fields", strings.Join(fields[:5], ":"), ErrFormat, "this one has 5"},
		{"seven fields", line + ":00", ErrFormat, "this one has 7"},
		{"short id", with(1, "5f1c0a9e7b2d4c6"), ErrFormat, "split id must be 16 hex digits"},
		{"id not hex", with(1, "5f1c0a9e7b2d4cgg"), ErrFormat, "split id is not hexadecimal"},
		{"k=1", with(2, "1"), ErrFormat, "threshold must be"},
		{"k=256", with(2, "256"), ErrFormat, "threshold must be"},
		{"k leading zero", with(2, "03"), ErrFormat, "threshold must be"},
		{"k sign", with(2, "+3"), ErrFormat, "threshold must be"},
		{"x=0", with(3, "0"), ErrFormat, "share number must be"},
		{"x=256", with(3, "256"), ErrFormat, "share number must be"},
		{"data typo", dataTypo, ErrTypo, "line 1: share 2 of split 5f1c0a9e7b2d4c68 has a typo: its checksum does not match"},
		{"data odd", with(4, "0011223"), ErrTypo, "share 2 of split 5f1c0a9e7b2d4c68 has a typo: its data has an odd number"},
		{"data not hex", with(4, "0011223g"), ErrTypo, "its data is not hexadecimal"},
		{"data empty", with(4, ""), ErrTypo, "its data must be"},
		{"data too long", with(4, strings.Repeat("00", MaxSecretLen+1)), ErrTypo, "its data must be"},
		{"check short", with(5, "91f3e2a"), ErrTypo, "its checksum must be 8 hex digits"},
		{"check not hex", with(5, "91f3e2ag"), ErrTypo, "its checksum is not hexadecimal"},
		{"check wrong", with(5, "91f3e2ab"), ErrTypo, "its checksum does not match"},
	} {
		_, err := Parse([]byte(tc.in))
		var pe *ParseError
		if !errors.As(err, &pe) || !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: got %v, want %v mentioning %q", tc.name, err, tc.is, tc.msg)
			continue
		}
		if strings.Contains(err.Error(), "00112233") {
			t.Errorf("%s: error %q contains share bytes", tc.name, err)
		}
	}
}

func TestEncodeRejects(t *testing.T) {
	for _, s := range []Share{
		{Threshold: 1, X: 1, Y: []byte{1}},
		{Threshold: 256, X: 1, Y: []byte{1}},
		{Threshold: 2, X: 0, Y: []byte{1}},
		{Threshold: 2, X: 1},
		{Threshold: 2, X: 1, Y: make([]byte, MaxSecretLen+1)},
	} {
		if _, err := Encode(s); !errors.Is(err, ErrInvalid) {
			t.Errorf("Encode(k=%d x=%d, %d bytes): %v", s.Threshold, s.X, len(s.Y), err)
		}
	}
}
