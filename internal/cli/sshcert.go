package cli

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/keywarden/keywarden"
)

// ssh certify: an OpenSSH certificate for a public key file, issued by
// the daemon with a key that never leaves it (docs/ssh.md, "A
// certificate authority").

func runSSHCertify(e *env, args []string) error {
	f := newFlags("ssh certify", e)
	var ca, principals, validity, keyID, serial string
	var host bool
	var options []string
	f.StringVar(&ca, "ca", "", "the certificate authority's key `name`")
	f.StringVar(&principals, "principals", "", "comma-separated `names`: users (user certificates) or hosts (--host)")
	f.StringVar(&validity, "validity", "", "validity `interval`, as ssh-keygen -V: +1d, -5m:+52w, 20260101:20270101, always:forever, ...")
	f.BoolVar(&host, "host", false, "issue a host certificate (default: a user certificate)")
	f.StringVar(&serial, "serial", "", "serial `number` (default: random)")
	f.StringVar(&keyID, "key-id", "", "the certificate's key `id`, which sshd logs (default: the key file's name)")
	f.Func("option", "a certificate `option`, as ssh-keygen -O: clear, no-pty, force-command=CMD, source-address=LIST, extension:NAME[=V], critical:NAME[=V], ... (repeatable)", func(v string) error {
		options = append(options, v)
		return nil
	})
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 1, "a public key file"); err != nil {
		return err
	}
	if ca == "" || principals == "" || validity == "" {
		return usagef("--ca, --principals and --validity are required")
	}
	req := keywarden.SSHCertRequest{Type: keywarden.SSHUserCert, Principals: strings.Split(principals, ","), KeyID: keyID}
	if host {
		req.Type = keywarden.SSHHostCert
	} else {
		req.Extensions = keywarden.SSHDefaultExtensions
	}
	if err := parseValidity(validity, time.Now(), &req); err != nil {
		return usagef("--validity: %v", err)
	}
	if serial != "" {
		n, err := strconv.ParseUint(serial, 0, 64)
		if err != nil {
			return usagef("--serial: want a number from 0 to 2^64-1")
		}
		req.Serial = &n
	}
	if err := applyCertOptions(options, &req); err != nil {
		return usagef("--option: %v", err)
	}
	path := pos[0]
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	pub, comment, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		return fmt.Errorf("%s: not an OpenSSH public key: %v", path, err)
	}
	if _, ok := pub.(*ssh.Certificate); ok {
		return fmt.Errorf("%s is a certificate: certify the public key it names", path)
	}
	if req.KeyID == "" {
		req.KeyID = path
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	k, err := c.OpenRef(ctx, ca)
	if err != nil {
		return err
	}
	raw, err := k.SSHCertify(ctx, pub.Marshal(), req)
	if err != nil {
		return err
	}
	parsed, err := ssh.ParsePublicKey(raw)
	if err != nil {
		return fmt.Errorf("the daemon's certificate does not parse: %v", err)
	}
	cert, ok := parsed.(*ssh.Certificate)
	if !ok || !bytes.Equal(cert.Key.Marshal(), pub.Marshal()) {
		return fmt.Errorf("the daemon's certificate is not one for %s", path)
	}
	out := certPath(path)
	line := bytes.TrimSuffix(ssh.MarshalAuthorizedKey(cert), []byte("\n"))
	if comment != "" {
		line = append(append(line, ' '), comment...)
	}
	if err := os.WriteFile(out, append(line, '\n'), 0o644); err != nil {
		return err
	}
	kind := "user"
	if cert.CertType == ssh.HostCert {
		kind = "host"
	}
	if f.json {
		return printJSON(e, map[string]any{"certificate": out, "type": kind, "serial": cert.Serial, "key_id": cert.KeyId,
			"principals": cert.ValidPrincipals, "valid_after": cert.ValidAfter, "valid_before": cert.ValidBefore})
	}
	fmt.Fprintf(e.stdout, "Signed %s key %s: id %q serial %d for %s valid %s\n", kind, out, cert.KeyId, cert.Serial,
		strings.Join(cert.ValidPrincipals, ","), validityText(cert.ValidAfter, cert.ValidBefore))
	return nil
}

// certPath is where ssh-keygen -s writes the certificate of a public key
// file: id_ed25519.pub gives id_ed25519-cert.pub.
func certPath(pub string) string {
	return strings.TrimSuffix(pub, ".pub") + "-cert.pub"
}

func validityText(after, before uint64) string {
	t := func(s uint64) string { return time.Unix(int64(s), 0).Format("2006-01-02T15:04:05") }
	switch {
	case after == 0 && before == ssh.CertTimeInfinity:
		return "forever"
	case after == 0:
		return "before " + t(before)
	case before == ssh.CertTimeInfinity:
		return "after " + t(after)
	}
	return "from " + t(after) + " to " + t(before)
}

// parseValidity reads a validity interval in ssh-keygen's -V forms:
// START:END or END alone (from now), where START is always, +TIME or
// -TIME (from now), or a date; END is forever, +TIME or -TIME, or a date.
// TIME is sshd_config's time format (90, 30m, 1h30m, 1d, 52w: s, m, h,
// d, w); a date is YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS, local time,
// or UTC with a Z suffix.
func parseValidity(s string, now time.Time, r *keywarden.SSHCertRequest) error {
	from, to, two := strings.Cut(s, ":")
	if !two {
		from, to = "", s
	}
	if two && from != "always" {
		t, err := validityTime(from, now)
		if err != nil {
			return err
		}
		r.ValidAfter = t
	} else if !two {
		r.ValidAfter = now
	}
	if to == "forever" {
		r.NoExpiry = true
		return nil
	}
	t, err := validityTime(to, now)
	if err != nil {
		return err
	}
	if !t.After(r.ValidAfter) {
		return fmt.Errorf("the validity ends before it begins")
	}
	r.ValidBefore = t
	return nil
}

func validityTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, fmt.Errorf("empty time")
	}
	if s[0] == '+' || s[0] == '-' {
		d, err := sshDuration(s[1:])
		if err != nil {
			return time.Time{}, err
		}
		if s[0] == '-' {
			d = -d
		}
		return now.Add(d), nil
	}
	loc := time.Local
	if strings.HasSuffix(s, "Z") {
		s, loc = strings.TrimSuffix(s, "Z"), time.UTC
	}
	for _, layout := range []string{"20060102", "200601021504", "20060102150405"} {
		if len(s) == len(layout) {
			if t, err := time.ParseInLocation(layout, s, loc); err == nil {
				return t, nil
			}
		}
	}
	return time.Time{}, fmt.Errorf("%q: want always, forever, +TIME, -TIME or YYYYMMDD[HHMM[SS]][Z]", s)
}

// sshDuration reads sshd_config's time format: a sequence of numbers,
// each followed by s, m, h, d or w (none: seconds).
func sshDuration(s string) (time.Duration, error) {
	if s == "" {
		return 0, fmt.Errorf("empty time interval")
	}
	units := map[byte]time.Duration{'s': time.Second, 'm': time.Minute, 'h': time.Hour, 'd': 24 * time.Hour, 'w': 7 * 24 * time.Hour}
	var total time.Duration
	for s != "" {
		i := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == 0 || i > 9 {
			return 0, fmt.Errorf("bad time interval %q", s)
		}
		n, _ := strconv.Atoi(s[:i])
		unit := time.Second
		s = s[i:]
		if s != "" {
			u, ok := units[s[0]|0x20]
			if !ok {
				return 0, fmt.Errorf("bad time unit %q (want s, m, h, d or w)", s[:1])
			}
			unit, s = u, s[1:]
		}
		total += time.Duration(n) * unit
		if total > 100*365*24*time.Hour {
			return 0, fmt.Errorf("time interval over a hundred years")
		}
	}
	return total, nil
}

// applyCertOptions applies ssh-keygen's -O options to r, in order.
func applyCertOptions(opts []string, r *keywarden.SSHCertRequest) error {
	if len(opts) > 0 && r.Type == keywarden.SSHHostCert {
		return fmt.Errorf("host certificates take no options")
	}
	set := func(list *[]keywarden.SSHOption, name, value string) {
		for i := range *list {
			if (*list)[i].Name == name {
				(*list)[i].Value = value
				return
			}
		}
		*list = append(*list, keywarden.SSHOption{Name: name, Value: value})
	}
	remove := func(list *[]keywarden.SSHOption, name string) {
		var out []keywarden.SSHOption
		for _, o := range *list {
			if o.Name != name {
				out = append(out, o)
			}
		}
		*list = out
	}
	r.Extensions = append([]keywarden.SSHOption(nil), r.Extensions...)
	for _, o := range opts {
		name, value, _ := strings.Cut(o, "=")
		switch lower := strings.ToLower(name); {
		case lower == "clear":
			r.Extensions, r.CriticalOptions = nil, nil
		case lower == "force-command" || lower == "source-address" || lower == "verify-required":
			set(&r.CriticalOptions, lower, value)
		case lower == "no-touch-required":
			set(&r.Extensions, lower, "")
		case strings.HasPrefix(lower, "no-"):
			ext := "permit-" + name[3:]
			if lower == "no-x11-forwarding" {
				ext = "permit-X11-forwarding"
			}
			remove(&r.Extensions, ext)
		case strings.HasPrefix(lower, "permit-"):
			if lower == "permit-x11-forwarding" {
				name = "permit-X11-forwarding"
			}
			set(&r.Extensions, name, "")
		case strings.HasPrefix(name, "extension:"):
			set(&r.Extensions, strings.TrimPrefix(name, "extension:"), value)
		case strings.HasPrefix(name, "critical:"):
			set(&r.CriticalOptions, strings.TrimPrefix(name, "critical:"), value)
		default:
			return fmt.Errorf("unknown option %q", o)
		}
	}
	return nil
}
