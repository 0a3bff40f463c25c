package audit

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"
)

// claimedRecord is a request whose identity the daemon could not take as
// the kernel's word: sent from another user and pid namespace, on a
// connection another process opened.
func claimedRecord() *Record {
	return &Record{Seq: 12, Time: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), Kind: KindRequest, Op: "ping", Status: "OK",
		Caller: Caller{PID: 4243, UID: 65534, GID: 65534, Exe: "/usr/bin/sleep", Cgroup: "/user.slice",
			Claimed: true, OtherUserNS: true, OtherPIDNS: true,
			Peer: Peer{PID: 4242, UID: 65534, GID: 65534, Exe: "/usr/bin/client"}},
		Conn: 3, Request: 1}
}

func TestClaimedIdentityRoundTrip(t *testing.T) {
	r := claimedRecord()
	line := AppendLine(nil, r)
	want := `"caller":{"pid":4243,"uid":65534,"gid":65534,"exe":"/usr/bin/sleep","cgroup":"/user.slice",` +
		`"claimed":true,"other_userns":true,"other_pidns":true,"peer":{"pid":4242,"uid":65534,"gid":65534,"exe":"/usr/bin/client"}}`
	if !bytes.Contains(line, []byte(want)) {
		t.Fatalf("%s\nlacks %s", line, want)
	}
	got, err := ParseRecord(line)
	if err != nil {
		t.Fatal(err)
	}
	if got.Caller != r.Caller {
		t.Fatalf("caller %+v, want %+v", got.Caller, r.Caller)
	}
	// A peer whose executable could not be read has none.
	r.Caller.Peer.Exe = ""
	if got, err := ParseRecord(AppendLine(nil, r)); err != nil || got.Caller.Peer != r.Caller.Peer {
		t.Fatalf("peer without exe: %v %+v", err, got)
	}
	// Non-canonical forms of the new fields are refused.
	s := string(bytes.TrimSuffix(line, []byte{'\n'}))
	for name, bad := range map[string]string{
		"explicit false": strings.Replace(s, `"claimed":true`, `"claimed":false`, 1),
		"peer pid 0":     strings.Replace(s, `"peer":{"pid":4242`, `"peer":{"pid":0`, 1),
		"empty peer exe": strings.Replace(s, `"exe":"/usr/bin/client"`, `"exe":""`, 1),
		"peer field":     strings.Replace(s, `"peer":{"pid":4242`, `"peer":{"x":1,"pid":4242`, 1),
		"order":          strings.Replace(s, `"claimed":true,"other_userns":true`, `"other_userns":true,"claimed":true`, 1),
	} {
		if bad == s {
			t.Fatalf("%s: edit did nothing", name)
		}
		if _, err := ParseRecord([]byte(bad)); err == nil {
			t.Errorf("%s accepted: %s", name, bad)
		}
	}
}

// A record of the ordinary case, the message's sender being the process
// that connected, in the daemon's namespaces, has none of the new fields:
// its line is what the log wrote before they existed.
func TestOrdinaryCallerUnchanged(t *testing.T) {
	r := claimedRecord()
	r.Caller.Claimed, r.Caller.OtherUserNS, r.Caller.OtherPIDNS, r.Caller.Peer = false, false, false, Peer{}
	line := AppendLine(nil, r)
	for _, f := range []string{"claimed", "other_userns", "other_pidns", "peer"} {
		if bytes.Contains(line, []byte(strconv.Quote(f))) {
			t.Errorf("%s has %q", line, f)
		}
	}
	if s := r.Text(); strings.Contains(s, "claimed") || strings.Contains(s, "peer") || strings.Contains(s, "-ns") {
		t.Errorf("text %q", s)
	}
}

func TestClaimedText(t *testing.T) {
	s := claimedRecord().Text()
	for _, want := range []string{"uid=65534 gid=65534 pid=4243 exe=/usr/bin/sleep", " claimed other-userns other-pidns ",
		"peer.pid=4242 peer.uid=65534 peer.gid=65534 peer.exe=/usr/bin/client"} {
		if !strings.Contains(s, want) {
			t.Errorf("%q lacks %q", s, want)
		}
	}
}
