package shamir

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
)

// The share file format, version 1: comment lines starting with '#',
// blank lines, and exactly one share line
//
//	keywarden-share-v1:<split id>:<k>:<x>:<data>:<check>
//
// with the split id as 16 hex digits, the threshold k (2 to 255) and the
// x coordinate (1 to 255) in decimal without leading zeros, the share's
// bytes in hex, and check, 8 hex digits: the CRC-32C (Castagnoli) of the
// line's text up to, not including, the last ':', with the hex in
// lowercase. Encode writes lowercase; Parse also takes uppercase hex.
const (
	prefix     = "keywarden-share-v1"
	prefixStem = "keywarden-share-"
	// maxFile bounds what Parse reads: a share line of the largest secret
	// and a generous allowance for comments.
	maxFile = 2*MaxSecretLen + 4096
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Errors of Parse. Every error it returns is a *ParseError that wraps one
// of these.
var (
	// ErrFormat: the input is not a share file of a known version.
	ErrFormat = errors.New("not a keywarden share file")
	// ErrTypo: the share line has the right form but a character in it is
	// wrong: its checksum does not match, or a field has a character it
	// cannot have.
	ErrTypo = errors.New("share has a typo")
)

// ParseError describes what Parse found wrong, and where. Its text never
// includes the share's bytes.
type ParseError struct {
	Line int    // 1-based line of the input, 0 for the input as a whole
	Msg  string // what is wrong, for an operator
	Err  error  // ErrFormat or ErrTypo
}

func (e *ParseError) Error() string {
	if e.Line == 0 {
		return "share file: " + e.Msg
	}
	return fmt.Sprintf("share file, line %d: %s", e.Line, e.Msg)
}

func (e *ParseError) Unwrap() error { return e.Err }

// Encode returns the share file of s: a comment line that says what the
// share is, and the share line, each ending in a newline. The result
// contains the share's bytes in hex; the caller should wipe it once
// written.
func Encode(s Share) ([]byte, error) {
	switch {
	case s.Threshold < MinThreshold || s.Threshold > MaxShares:
		return nil, invalidf("threshold %d is not from %d to %d", s.Threshold, MinThreshold, MaxShares)
	case s.X == 0:
		return nil, invalidf("x coordinate 0 is not a share")
	case len(s.Y) == 0 || len(s.Y) > MaxSecretLen:
		return nil, invalidf("share of %d bytes, not 1 to %d", len(s.Y), MaxSecretLen)
	}
	b := fmt.Appendf(nil, "# keywarden key share %d of split %s: any %d shares of this split reconstruct the key.\n",
		s.X, s.SplitID, s.Threshold)
	start := len(b)
	b = appendBody(b, s)
	sum := crc32.Checksum(b[start:], castagnoli)
	b = append(b, ':')
	b = hex.AppendEncode(b, binary.BigEndian.AppendUint32(nil, sum))
	return append(b, '\n'), nil
}

// appendBody appends the checksummed part of a share line, in canonical
// form.
func appendBody(b []byte, s Share) []byte {
	b = append(b, prefix...)
	b = append(b, ':')
	b = hex.AppendEncode(b, s.SplitID[:])
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(s.Threshold), 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(s.X), 10)
	b = append(b, ':')
	return hex.AppendEncode(b, s.Y)
}

// Parse reads a share file written by Encode, or typed back from one:
// blank lines and lines starting with '#' are ignored, and exactly one
// share line must remain. Leading and trailing white space on a line is
// ignored. It checks every field and the checksum, so a mistyped character
// is reported, with the share's number and split, rather than producing a
// wrong share. The checksum catches typing and reading mistakes, not
// deliberate changes: anyone who can edit the file can recompute it.
func Parse(input []byte) (Share, error) {
	if len(input) > maxFile {
		return Share{}, &ParseError{Msg: fmt.Sprintf("larger than %d bytes, too large for a share file", maxFile), Err: ErrFormat}
	}
	var (
		share Share
		found int // line of the share line, 0 if none yet
	)
	n := 0
	for rest := input; len(rest) > 0; {
		var cur []byte
		cur, rest, _ = bytes.Cut(rest, []byte{'\n'})
		n++
		cur = bytes.TrimSpace(cur)
		if len(cur) == 0 || cur[0] == '#' {
			continue
		}
		if found != 0 {
			clear(share.Y)
			return Share{}, &ParseError{Line: n, Msg: fmt.Sprintf("a second share line (the first is line %d): a share file holds one share", found), Err: ErrFormat}
		}
		s, err := parseLine(cur)
		if err != nil {
			err.Line = n
			return Share{}, err
		}
		share, found = s, n
	}
	if found == 0 {
		return Share{}, &ParseError{Msg: "no share line (one starting with " + prefix + ":)", Err: ErrFormat}
	}
	return share, nil
}

// parseLine parses one share line, without surrounding white space.
func parseLine(line []byte) (Share, *ParseError) {
	format := func(msg string) (Share, *ParseError) {
		return Share{}, &ParseError{Msg: msg, Err: ErrFormat}
	}
	fields := bytes.Split(line, []byte{':'})
	switch {
	case string(fields[0]) == prefix:
	case bytes.HasPrefix(fields[0], []byte(prefixStem)):
		return format("a share of an unknown format version; this program reads " + prefix)
	default:
		return format("not a share line: it does not start with " + prefix + ":")
	}
	if len(fields) != 6 {
		return format(fmt.Sprintf("a share line has 6 fields separated by ':', this one has %d", len(fields)))
	}
	var s Share
	if len(fields[1]) != 2*len(s.SplitID) {
		return format(fmt.Sprintf("the split id must be %d hex digits, not %d characters", 2*len(s.SplitID), len(fields[1])))
	}
	if _, err := hex.Decode(s.SplitID[:], fields[1]); err != nil {
		return format("the split id is not hexadecimal")
	}
	k, ok := parseSmall(fields[2])
	if !ok || k < MinThreshold {
		return format(fmt.Sprintf("the threshold must be a number from %d to %d", MinThreshold, MaxShares))
	}
	x, ok := parseSmall(fields[3])
	if !ok || x < 1 {
		return format(fmt.Sprintf("the share number must be a number from 1 to %d", MaxShares))
	}
	s.Threshold, s.X = k, byte(x)

	// From here on the share is identified, and what is wrong is a typo
	// in it.
	typo := func(what string) (Share, *ParseError) {
		clear(s.Y)
		return Share{}, &ParseError{
			Msg: fmt.Sprintf("share %d of split %s has a typo: %s", s.X, s.SplitID, what),
			Err: ErrTypo,
		}
	}
	data := fields[4]
	switch {
	case len(data) == 0 || len(data) > 2*MaxSecretLen:
		return typo(fmt.Sprintf("its data must be 2 to %d hex digits, not %d", 2*MaxSecretLen, len(data)))
	case len(data)%2 != 0:
		return typo(fmt.Sprintf("its data has an odd number of hex digits (%d)", len(data)))
	}
	s.Y = make([]byte, len(data)/2)
	if _, err := hex.Decode(s.Y, data); err != nil {
		return typo("its data is not hexadecimal")
	}
	var check [4]byte
	if len(fields[5]) != 2*len(check) {
		return typo(fmt.Sprintf("its checksum must be %d hex digits, not %d characters", 2*len(check), len(fields[5])))
	}
	if _, err := hex.Decode(check[:], fields[5]); err != nil {
		return typo("its checksum is not hexadecimal")
	}
	body := appendBody(make([]byte, 0, len(prefix)+32+len(data)), s)
	sum := crc32.Checksum(body, castagnoli)
	clear(body)
	if sum != binary.BigEndian.Uint32(check[:]) {
		return typo("its checksum does not match")
	}
	return s, nil
}

// parseSmall parses a decimal number from 0 to 255 without sign or leading
// zeros.
func parseSmall(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 3 || (b[0] == '0' && len(b) > 1) {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, n <= MaxShares
}
