package e2e_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/audit"
)

// The audit log is fail-closed (docs/audit.md, "When the log cannot be
// written"): while it cannot take records, requests are refused with
// UNAVAILABLE and nothing is done; once it can, the daemon serves again by
// itself and records that it resumed.

// tinyTmpfs mounts a tmpfs of size bytes on a new directory, unmounted
// when the test ends (after the daemons it holds have stopped: cleanups
// run last first). It skips the test where that is not possible.
func tinyTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	if err := unix.Mount("kw-audit-test", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size="+size+",mode=0700"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	return dir
}

// fill writes a file in dir until the file system is full, and returns
// its path.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("filling %s: %v", dir, err)
			}
			return path
		}
	}
}

// waitServing polls with pings until the daemon serves c again, and
// returns how many it refused.
func waitServing(t *testing.T, c *keywarden.Client) (refusals int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for ; ; refusals++ {
		err := c.Ping(ctx, []byte("up?"))
		if err == nil {
			return refusals
		}
		if !errors.Is(err, keywarden.ErrUnavailable) {
			t.Fatalf("ping while waiting for the audit log: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not resume within 30s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// outage checks that every kind of request is refused with UNAVAILABLE
// and does nothing, and that none of them is recorded.
func outage(t *testing.T, d *daemon, c *keywarden.Client, k *keywarden.Key, al *auditReader) (refusals int) {
	t.Helper()
	al.read()
	if err := c.Ping(ctx, []byte("ping")); !errors.Is(err, keywarden.ErrUnavailable) || !strings.Contains(err.Error(), "audit log") {
		t.Errorf("ping while the audit log cannot be written: %v", err)
	}
	if g, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "during-outage"}); !errors.Is(err, keywarden.ErrUnavailable) || g != nil {
		t.Errorf("generate while the audit log cannot be written: %v", err)
	}
	if ct, err := k.Encrypt(ctx, []byte("secret"), nil); !errors.Is(err, keywarden.ErrUnavailable) || ct != nil {
		t.Errorf("encrypt while the audit log cannot be written: %v, %d bytes", err, len(ct))
	}
	if _, err := keywarden.Dial(ctx, d.sock); !errors.Is(err, keywarden.ErrUnavailable) {
		t.Errorf("dial while the audit log cannot be written: %v", err)
	}
	if got := requests(al.read()); len(got) != 0 {
		t.Errorf("%d requests recorded while the log could not be written", len(got))
	}
	return 4
}

// hasKey reports whether the caller has a key called name.
func hasKey(t *testing.T, c *keywarden.Client, name string) bool {
	t.Helper()
	keys, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.Name == name {
			return true
		}
	}
	return false
}

// refusedRE finds the count of refusals in an audit-resumed event.
var refusedRE = regexp.MustCompile(`and (\d+) requests were refused meanwhile`)

// resumed checks that recs hold one audit-resumed event that says why the
// log could not be written and counts at least the refusals made.
func resumed(t *testing.T, recs []*audit.Record, why string, refusals int) {
	t.Helper()
	ev := events(recs, audit.OpAuditResumed)
	if len(ev) != 1 {
		t.Errorf("%d audit-resumed events after the log could not take records (%s), want 1", len(ev), why)
		return
	}
	t.Logf("audit-resumed: %s", ev[0].Msg)
	if !strings.Contains(ev[0].Msg, why) {
		t.Errorf("audit-resumed does not say why the log could not be written (%s): %q", why, ev[0].Msg)
	}
	m := refusedRE.FindStringSubmatch(ev[0].Msg)
	if m == nil {
		t.Errorf("audit-resumed does not count the requests refused: %q", ev[0].Msg)
		return
	}
	// The event counts the refusals up to when it was written: one request
	// refused while it was being written is not in it.
	if n, _ := strconv.Atoi(m[1]); n < refusals-1 {
		t.Errorf("audit-resumed counts %d requests refused, but %d were", n, refusals)
	}
}

// A full disk: the log cannot keep its reserve, so the daemon refuses
// everything at once, and serves again when there is room.
func TestAuditFailClosedDiskFull(t *testing.T) {
	dir := tinyTmpfs(t, "2m")
	logPath := filepath.Join(dir, "audit.log")
	d := startDaemon(t, "--audit-log", logPath)
	c := d.client(t)
	k := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "before"})
	al := newAuditReader(t, logPath)
	al.read()

	filler := fill(t, dir)
	// The log writes into its reserve until less than half of it is left
	// and it cannot allocate more: from then on it refuses.
	served := 0
	for ; ; served++ {
		err := c.Ping(ctx, []byte("filling the reserve"))
		if errors.Is(err, keywarden.ErrUnavailable) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if served > 1e5 {
			t.Fatal("the daemon still serves after 100000 requests on a full disk")
		}
	}
	if n := len(requests(al.read())); n != served {
		t.Errorf("%d pings served on a full disk, %d recorded", served, n)
	}
	t.Logf("%d pings served from the reserve", served)
	refusals := 1 + outage(t, d, c, k, al)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	refusals += waitServing(t, c)
	if hasKey(t, c, "during-outage") {
		t.Error("a key was made while the audit log could not take records")
	}
	if ct, err := k.Encrypt(ctx, []byte("secret"), nil); err != nil || len(ct) == 0 {
		t.Fatalf("encrypt after the disk has room again: %v", err)
	}
	resumed(t, al.read(), "no space left on device", refusals)
	d.stop()
	if r := auditVerify(t, d, "--public-key", strings.TrimSuffix(logPath, ".log")+".pub", "--closed", logPath); r.code != 0 {
		t.Fatalf("verify after a full disk: %s", r)
	}
}

// chattr runs chattr, skipping the test where it is missing or the file
// system does not support the attribute.
func chattr(t *testing.T, flag, path string) {
	t.Helper()
	out, err := exec.Command("chattr", flag, path).CombinedOutput()
	if err != nil {
		if flag == "-i" {
			t.Errorf("chattr %s %s: %v: %s", flag, path, err, out)
			return
		}
		t.Skipf("chattr %s: %v: %s", flag, err, out)
	}
}

// immutableStopsWrites skips the test unless, in dir, a descriptor open
// for writing can no longer write once its file is made immutable (ext4
// refuses; tmpfs, for one, does not).
func immutableStopsWrites(t *testing.T, dir string) {
	t.Helper()
	path := filepath.Join(dir, "probe")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(path)
	defer f.Close()
	defer exec.Command("chattr", "-i", path).Run()
	chattr(t, "+i", path)
	_, err = f.WriteAt([]byte("x"), 0)
	exec.Command("chattr", "-i", path).Run()
	if err == nil {
		t.Skipf("the file system of %s lets an open descriptor write to an immutable file", dir)
	}
}

// An immutable log file: writing a record fails. The request whose
// record failed gets UNAVAILABLE and no result; the next are refused at
// once; when the file is writable again the daemon records that it
// resumed, and serves.
func TestAuditFailClosedImmutable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a file immutable")
	}
	if _, err := exec.LookPath("chattr"); err != nil {
		t.Skip("no chattr")
	}
	dir := openDir(t)
	immutableStopsWrites(t, dir)
	logPath := filepath.Join(dir, "audit.log")
	d := startDaemon(t, "--audit-log", logPath)
	c := d.client(t)
	k := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "before"})
	al := newAuditReader(t, logPath)
	al.read()

	t.Run("encrypt", func(t *testing.T) {
		t.Cleanup(func() { chattr(t, "-i", logPath) })
		chattr(t, "+i", logPath)
		// Executed, but its record cannot be written: the ciphertext is
		// withheld.
		if ct, err := k.Encrypt(ctx, []byte("secret"), nil); !errors.Is(err, keywarden.ErrUnavailable) || ct != nil || !strings.Contains(err.Error(), "withheld") {
			t.Errorf("encrypt whose record cannot be written: %v, %d bytes", err, len(ct))
		}
		refusals := outage(t, d, c, k, al)
		chattr(t, "-i", logPath)
		refusals += waitServing(t, c)
		if hasKey(t, c, "during-outage") {
			t.Error("a key was made while the audit log could not take records")
		}
		recs := al.read()
		resumed(t, recs, "write: operation not permitted", refusals)
		for _, r := range requests(recs) {
			if r.Op == "encrypt" {
				t.Errorf("the encryption whose results were withheld is in the log: %s", audit.AppendLine(nil, r))
			}
		}
	})
	t.Run("generate", func(t *testing.T) {
		t.Cleanup(func() { chattr(t, "-i", logPath) })
		chattr(t, "+i", logPath)
		// A key made by a request whose record could not be written must
		// not exist: the client was told the request failed.
		if g, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "unrecorded"}); !errors.Is(err, keywarden.ErrUnavailable) || g != nil {
			t.Errorf("generate whose record cannot be written: %v", err)
		}
		chattr(t, "-i", logPath)
		refusals := waitServing(t, c)
		if hasKey(t, c, "unrecorded") {
			t.Errorf("a key was made by a request that got UNAVAILABLE because its record could not be written, " +
				"and the log has no record of it")
		}
		recs := al.read()
		resumed(t, recs, "write: operation not permitted", refusals)
		for _, r := range requests(recs) {
			if r.Op == "generate" {
				t.Errorf("the generation whose results were withheld is in the log: %s", audit.AppendLine(nil, r))
			}
		}
	})
	d.stop()
	if r := auditVerify(t, d, "--public-key", strings.TrimSuffix(logPath, ".log")+".pub", "--closed", logPath); r.code != 0 {
		t.Fatalf("verify after the outages: %s", r)
	}
}
