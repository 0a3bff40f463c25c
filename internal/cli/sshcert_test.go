package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
)

func TestParseValidity(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	for in, want := range map[string][2]time.Time{
		"+1d":                 {now, now.Add(day)},
		"-5m:+52w":            {now.Add(-5 * time.Minute), now.Add(52 * 7 * day)},
		"-1h:+1d":             {now.Add(-time.Hour), now.Add(day)},
		"+1h30m":              {now, now.Add(90 * time.Minute)},
		"always:+90":          {{}, now.Add(90 * time.Second)},
		"20260101Z:20270101Z": {time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
		"202601011230Z:+1w":   {time.Date(2026, 1, 1, 12, 30, 0, 0, time.UTC), now.Add(7 * day)},
		"20260101123005Z:+1W": {time.Date(2026, 1, 1, 12, 30, 5, 0, time.UTC), now.Add(7 * day)},
		"always:forever":      {{}, {}},
		"-1d:forever":         {now.Add(-day), {}},
	} {
		var r keywarden.SSHCertRequest
		if err := parseValidity(in, now, &r); err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		if !r.ValidAfter.Equal(want[0]) || !r.ValidBefore.Equal(want[1]) || r.NoExpiry != want[1].IsZero() {
			t.Errorf("%s: %v to %v (forever %v), want %v to %v", in, r.ValidAfter, r.ValidBefore, r.NoExpiry, want[0], want[1])
		}
	}
	for _, in := range []string{"", "1d", "+", "+1y", "+1d:-1d", "forever:+1d", "always:always", "2026:2027", "+99999999999d", "+1d:"} {
		var r keywarden.SSHCertRequest
		if err := parseValidity(in, now, &r); err == nil {
			t.Errorf("%q accepted: %v to %v", in, r.ValidAfter, r.ValidBefore)
		}
	}
}

func TestCertOptions(t *testing.T) {
	names := func(o []keywarden.SSHOption) string {
		var s []string
		for _, x := range o {
			s = append(s, x.Name+"="+x.Value)
		}
		return strings.Join(s, ",")
	}
	r := keywarden.SSHCertRequest{Type: keywarden.SSHUserCert, Extensions: keywarden.SSHDefaultExtensions}
	if err := applyCertOptions([]string{"no-pty", "no-x11-forwarding", "force-command=/bin/date", "extension:login@example.org=alice"}, &r); err != nil {
		t.Fatal(err)
	}
	if got := names(r.Extensions); got != "permit-agent-forwarding=,permit-port-forwarding=,permit-user-rc=,login@example.org=alice" {
		t.Errorf("extensions %s", got)
	}
	if got := names(r.CriticalOptions); got != "force-command=/bin/date" {
		t.Errorf("critical options %s", got)
	}
	if names(keywarden.SSHDefaultExtensions) != "permit-X11-forwarding=,permit-agent-forwarding=,permit-port-forwarding=,permit-pty=,permit-user-rc=" {
		t.Error("the defaults changed")
	}
	r = keywarden.SSHCertRequest{Type: keywarden.SSHUserCert, Extensions: keywarden.SSHDefaultExtensions}
	if err := applyCertOptions([]string{"clear", "permit-pty"}, &r); err != nil || names(r.Extensions) != "permit-pty=" {
		t.Errorf("clear: %v %s", err, names(r.Extensions))
	}
	if err := applyCertOptions([]string{"bogus"}, &r); err == nil {
		t.Error("an unknown option accepted")
	}
	h := keywarden.SSHCertRequest{Type: keywarden.SSHHostCert}
	if err := applyCertOptions([]string{"no-pty"}, &h); err == nil {
		t.Error("options on a host certificate accepted")
	}
}
