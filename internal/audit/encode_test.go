package audit

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func sampleRecords() []*Record {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 5, time.UTC)
	full := &Record{Seq: 7, Time: t0, Mono: 123456789, Kind: KindRequest, Op: OpBatch, Alg: "ed25519",
		KeyVersion: 3, Status: "OK", Conn: 1, Session: 2, Request: 3, Msg: "tab\there, quote \" and \\ and \x01",
		Caller: Caller{PID: 99, UID: 0, GID: 0, Exe: "/usr/bin/é", Cgroup: "/system.slice/x.service",
			ExeError: "permission denied", Exited: true, Unverified: true}}
	full.Key[3] = 1
	full.AddOp(OpEntry{Op: "sign", Key: full.Key, Status: "OK"})
	full.AddOp(OpEntry{Op: "sign", Key: full.Key, Status: "OK", Count: 4})
	full.AddOp(OpEntry{Op: "verify", Alg: "ed25519", KeyVersion: 2, Status: "VERIFICATION_FAILED"})
	full.Hash[0], full.MAC[31], full.HasMAC = 1, 2, true
	k, _ := DeriveKeys(bytes.Repeat([]byte{0x42}, 32))
	seg := &Record{Seq: 1, Time: t0, Kind: KindSegment, Segment: &Segment{Reason: "new log", Boot: "b", Host: "h",
		PID: 1, Software: "keywarden test", PublicKey: k.PublicKey(), MACKeyID: k.MACKeyID()}}
	seg.Segment.Nonce[0] = 9
	cp := &Record{Seq: 9, Time: t0, Kind: KindCheckpoint, HasMAC: true, Checkpoint: &CheckpointInfo{Reason: "rekey",
		Upto: 8, PublicKey: k.PublicKey(), NextPublicKey: k.PublicKey(), KeysOff: true, Final: true,
		Signature: make([]byte, 64)}}
	ev := &Record{Seq: 10, Time: t0, Kind: KindEvent, Op: OpStart}
	bare := &Record{Seq: 11, Time: t0, Kind: KindRequest}
	cert := &Record{Seq: 12, Time: t0, Kind: KindRequest, Op: "ssh-certify", Alg: "ed25519", KeyVersion: 1, Status: "OK",
		SSHCerts: []SSHCert{
			{Type: "user", Serial: 0x8000000000000001, KeyID: "alice@\"laptop\"", Principals: []string{"alice", "root"},
				ValidAfter: 1772366400, ValidBefore: 1772452800, Key: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"},
			{Type: "host", Principals: []string{"db1.example.org"}, ValidBefore: 1<<64 - 1, Key: "SHA256:x"},
		}}
	cert.Key[0] = 7
	return []*Record{full, seg, cp, ev, bare, cert}
}

func TestRoundTrip(t *testing.T) {
	for _, r := range sampleRecords() {
		line := AppendLine(nil, r)
		got, err := ParseRecord(line)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		if again := AppendLine(nil, got); !bytes.Equal(again, line) {
			t.Fatalf("round trip:\n%s%s", line, again)
		}
		// Any JSON reader reads it.
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSSHCertFields: an issued certificate's fields are written in one
// form, and a line that leaves out one of them is not canonical.
func TestSSHCertFields(t *testing.T) {
	recs := sampleRecords()
	line := string(AppendLine(nil, recs[len(recs)-1]))
	for _, want := range []string{
		`"ssh_certs":[{"type":"user","serial":9223372036854775809,"key_id":"alice@\"laptop\"","principals":["alice","root"],"valid_after":1772366400,"valid_before":1772452800,"key":"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"}`,
		`{"type":"host","serial":0,"principals":["db1.example.org"],"valid_after":0,"valid_before":18446744073709551615,"key":"SHA256:x"}]`,
	} {
		if !strings.Contains(line, want) {
			t.Errorf("record\n%s\nlacks %s", line, want)
		}
	}
	for _, drop := range []string{`"serial":0,`, `,"valid_after":0`} {
		bad := strings.Replace(line, drop, "", 1)
		if _, err := ParseRecord([]byte(bad)); err == nil {
			t.Errorf("a certificate without %s parses", drop)
		}
	}
	r, err := ParseRecord([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if got := r.SSHCerts[0].Validity(); got != "from 2026-03-01T12:00:00Z to 2026-03-02T12:00:00Z" {
		t.Errorf("validity %q", got)
	}
	if got := r.SSHCerts[1].Validity(); got != "forever" {
		t.Errorf("validity %q", got)
	}
	if txt := r.Text(); !strings.Contains(txt, `[ssh-cert user serial=9223372036854775809 key_id=alice@\"laptop\" principals=alice,root valid=from`) {
		t.Errorf("text: %s", txt)
	}
}

func TestInvalidUTF8(t *testing.T) {
	r := &Record{Kind: KindRequest, Caller: Caller{Exe: "/bin/a\xffb"}}
	line := AppendLine(nil, r)
	got, err := ParseRecord(line)
	if err != nil {
		t.Fatal(err)
	}
	if got.Caller.Exe != "/bin/a\uFFFDb" {
		t.Fatalf("exe %q", got.Caller.Exe)
	}
}

func TestNonCanonicalRejected(t *testing.T) {
	line := string(bytes.TrimSuffix(AppendLine(nil, sampleRecords()[0]), []byte{'\n'}))
	edits := map[string]func(string) string{
		"space":           func(s string) string { return strings.Replace(s, `"seq":7`, `"seq": 7`, 1) },
		"field order":     func(s string) string { return strings.Replace(s, `"v":1,"seq":7`, `"seq":7,"v":1`, 1) },
		"uppercase hex":   func(s string) string { return strings.Replace(s, `"h":"01`, `"h":"0A`, 1) },
		"escaped slash":   func(s string) string { return strings.Replace(s, `/usr/bin`, `\/usr/bin`, 1) },
		"unicode escape":  func(s string) string { return strings.Replace(s, `é`, `\u00e9`, 1) },
		"field case":      func(s string) string { return strings.Replace(s, `"seq"`, `"SEQ"`, 1) },
		"duplicate field": func(s string) string { return strings.Replace(s, `"seq":7`, `"seq":7,"seq":8`, 1) },
		"unknown field":   func(s string) string { return strings.Replace(s, `"seq":7`, `"seq":7,"x":1`, 1) },
		"version":         func(s string) string { return strings.Replace(s, `"v":1`, `"v":2`, 1) },
		"explicit zero":   func(s string) string { return strings.Replace(s, `"conn":1`, `"conn":0`, 1) },
		"explicit n": func(s string) string {
			return strings.Replace(s, `"status":"VERIFICATION_FAILED"}`, `"status":"VERIFICATION_FAILED","n":1}`, 1)
		},
		"exponent":         func(s string) string { return strings.Replace(s, `"conn":1`, `"conn":1e0`, 1) },
		"trailing garbage": func(s string) string { return s + "x" },
		"local time":       func(s string) string { return strings.Replace(s, `00.000000005Z`, `00.000000005+00:00`, 1) },
		"short fraction":   func(s string) string { return strings.Replace(s, `00.000000005Z`, `00.5Z`, 1) },
	}
	for name, edit := range edits {
		bad := edit(line)
		if bad == line {
			t.Fatalf("%s: edit did nothing", name)
		}
		if _, err := ParseRecord([]byte(bad)); err == nil {
			t.Errorf("%s accepted: %s", name, bad)
		}
	}
}

func TestAddOpCoalesces(t *testing.T) {
	var r Record
	e := OpEntry{Op: "encrypt", Status: "OK"}
	for range 512 {
		r.AddOp(e)
	}
	r.AddOp(OpEntry{Op: "encrypt", Status: "INVALID_ARGUMENT"})
	r.AddOp(e)
	if len(r.Ops) != 3 || r.Ops[0].Count != 512 || r.Ops[1].Count != 1 || r.Ops[2].Count != 1 {
		t.Fatalf("ops %+v", r.Ops)
	}
	r.Reset()
	if len(r.Ops) != 0 || cap(r.Ops) == 0 || r.Op != "" {
		t.Fatalf("reset: %+v", r)
	}
}

func TestCheckpointString(t *testing.T) {
	c := Checkpoint{Seq: 42}
	c.Hash[0] = 0xab
	got, err := ParseCheckpoint(c.String())
	if err != nil || got.Seq != 42 || got.Hash != c.Hash {
		t.Fatalf("%v %+v", err, got)
	}
	for _, bad := range []string{"", "42", "x:00", "0:" + strings.Repeat("0", 64), "1:abc"} {
		if _, err := ParseCheckpoint(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestAppendTime: the cached formatting is timeLayout's, across seconds,
// years and zones.
func TestAppendTime(t *testing.T) {
	zone := time.FixedZone("x", 5*3600+1800)
	base := time.Date(2026, 12, 31, 23, 59, 58, 999999999, time.UTC)
	for i := range 3000 {
		tm := base.Add(time.Duration(i) * 997 * time.Microsecond)
		if i%2 == 1 {
			tm = tm.In(zone)
		}
		if got, want := string(appendTime(nil, tm)), tm.UTC().Format(timeLayout); got != want {
			t.Fatalf("%v: %s, want %s", tm, got, want)
		}
	}
	for _, tm := range []time.Time{time.Unix(0, 0), time.Unix(0, 1), time.Date(2026, 1, 1, 0, 0, 0, 120, time.UTC)} {
		if got, want := string(appendTime(nil, tm)), tm.UTC().Format(timeLayout); got != want {
			t.Fatalf("%v: %s, want %s", tm, got, want)
		}
	}
}
