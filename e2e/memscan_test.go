package e2e_test

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	be "encoding/binary"
	"encoding/hex"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/secmem"
)

// TestResidualCopies is the measurable form of the memory guarantees: it
// reads the daemon's memory through /proc/PID/mem and searches it for
// known keys in every form a library may keep them (raw, byte-swapped
// 32-bit words, reversed for little-endian big-number limbs, AES round
// keys, HMAC pads, the Ed25519 seed and both halves of SHA-512(seed),
// hex, base64):
//
//   - after the keys have been idle past the expanded-state cache period,
//     copies are allowed only inside the locked arena (with memfd_secret,
//     the arena cannot be read at all);
//   - after the keys are destroyed and the daemon has collected garbage,
//     there are none.
//
// The daemon under test is built with GOEXPERIMENT=runtimesecret, as the
// official build is. The same scenario runs against a build without it,
// and the test output shows how many copies that one leaves.
func TestResidualCopies(t *testing.T) {
	requireRoot(t)
	if testing.Short() {
		t.Skip("builds the daemon twice")
	}
	dir := t.TempDir()
	secretBin, plainBin := binary(t), binary(t)
	if !secmem.RuntimeSecret {
		secretBin = buildDaemon(t, dir, "keywarden-secret", "runtimesecret")
	} else {
		plainBin = buildDaemon(t, dir, "keywarden-plain", "")
	}

	for _, backing := range []string{"memfd_secret", "mlock"} {
		if backing == "memfd_secret" && !secmem.SecretAvailable() {
			t.Log("memfd_secret not available on this kernel: mlock backing only")
			continue
		}
		t.Run(backing, func(t *testing.T) {
			idle, destroyed, inArena := scanScenario(t, secretBin, backing)
			switch backing {
			case "mlock":
				// The scan sees the arena, and the keys in it.
				if inArena == 0 {
					t.Error("no key found in the arena: the scan is not reading it")
				}
			case "memfd_secret":
				if inArena != 0 {
					t.Errorf("%d copies read from a memfd_secret arena", inArena)
				}
			}
			if len(idle) > 0 {
				t.Errorf("idle keys: copies outside the arena:\n%s", strings.Join(idle, "\n"))
			}
			if len(destroyed) > 0 {
				t.Errorf("destroyed keys: copies left:\n%s", strings.Join(destroyed, "\n"))
			}
		})
	}
	t.Run("without runtime/secret", func(t *testing.T) {
		idle, destroyed, _ := scanScenario(t, plainBin, "")
		t.Logf("for comparison, a build without GOEXPERIMENT=runtimesecret leaves %d copies outside the arena of idle keys and %d copies of destroyed keys:",
			len(idle), len(destroyed))
		for _, h := range append(idle, destroyed...) {
			t.Log("  " + h)
		}
	})
}

// buildDaemon builds the keywarden command with the given GOEXPERIMENT.
func buildDaemon(t *testing.T, dir, name, experiment string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, "../cmd/keywarden")
	cmd.Env = append(os.Environ(), "GOEXPERIMENT="+experiment)
	start := time.Now()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build (GOEXPERIMENT=%s): %v\n%s", experiment, err, b)
	}
	t.Logf("built %s (GOEXPERIMENT=%q) in %v", name, experiment, time.Since(start).Round(time.Second))
	return out
}

// scanScenario starts bin, puts known keys through every mechanism, and
// returns the copies found outside the arena once the keys are idle, and
// anywhere once they are destroyed, and the number of copies found inside
// the arena while idle.
func scanScenario(t *testing.T, bin, backing string) (idle, destroyed []string, inArena int) {
	sock := filepath.Join(openDir(t), "kw.sock")
	args := []string{"serve", "--dev", "--socket", sock, "--key-cache-idle", "200ms"}
	if backing != "" {
		args = append(args, "--memory-backing", backing)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	log := &syncBuffer{}
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	var c *keywarden.Client
	var err error
	for i := 0; i < 500; i++ {
		if c, err = keywarden.Dial(ctx, sock); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("daemon: %v\n%s", err, log)
	}

	// The daemon's own keys (the master key and what it derives) stay.
	base, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fixtures := useKeys(t, c)
	var patterns []pattern
	for _, f := range fixtures {
		patterns = append(patterns, f.patterns...)
	}

	// Idle: wait until no key has expanded state cached, and the daemon
	// has collected the dropped state.
	waitFor(t, "expanded state dropped", func() bool {
		st, err := c.Status(ctx)
		return err == nil && st.Memory.CachedKeys == 0
	})
	// Copies made inside runtime/secret are erased when the garbage
	// collector frees them; on a loaded machine that may take a few of the
	// daemon's collections. Scan until none is left, or for 10 s (once,
	// for the build without runtime/secret, which is only compared).
	for deadline := time.Now().Add(10 * time.Second); ; {
		time.Sleep(500 * time.Millisecond)
		idle, inArena = nil, 0
		for _, h := range scanMemory(t, cmd.Process.Pid, patterns) {
			if h.arena {
				inArena++
			} else {
				idle = append(idle, h.String())
			}
		}
		if len(idle) == 0 || backing == "" || time.Now().After(deadline) {
			break
		}
	}

	// Destroyed: every key goes, the connection too, and the daemon
	// collects.
	for _, f := range fixtures {
		if err := f.key.Destroy(ctx); err != nil {
			t.Fatalf("destroy %s: %v", f.name, err)
		}
	}
	c.Close()
	c2, err := keywarden.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	waitFor(t, "keys freed", func() bool {
		st, err := c2.Status(ctx)
		return err == nil && st.Memory.InUseBytes == base.Memory.InUseBytes && st.Memory.CachedKeys == 0
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		time.Sleep(time.Second) // the janitor's garbage collection
		destroyed = nil
		for _, h := range scanMemory(t, cmd.Process.Pid, patterns) {
			destroyed = append(destroyed, h.String())
		}
		if len(destroyed) == 0 || backing == "" || time.Now().After(deadline) {
			break
		}
	}
	return idle, destroyed, inArena
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pattern is one form of one key.
type pattern struct {
	name string
	b    []byte
}

// fixture is a key imported into the daemon, with the forms to look for.
type fixture struct {
	name     string
	key      *keywarden.Key
	patterns []pattern
}

// forms returns b as stored raw, with its 32-bit words byte-swapped,
// reversed (little-endian limbs of a big number), and as hex and base64.
func forms(name string, b []byte) []pattern {
	swapped := make([]byte, len(b)/4*4)
	for i := 0; i+4 <= len(b); i += 4 {
		be.LittleEndian.PutUint32(swapped[i:], be.BigEndian.Uint32(b[i:]))
	}
	rev := make([]byte, len(b))
	for i := range b {
		rev[len(b)-1-i] = b[i]
	}
	return []pattern{
		{name + " raw", b},
		{name + " word-swapped", swapped},
		{name + " reversed", rev},
		{name + " hex", []byte(hex.EncodeToString(b))},
		{name + " HEX", []byte(strings.ToUpper(hex.EncodeToString(b)))},
		{name + " base64", []byte(base64.StdEncoding.EncodeToString(b))},
	}
}

// useKeys imports a known key of every mechanism and uses it every way.
func useKeys(t *testing.T, c *keywarden.Client) []fixture {
	t.Helper()
	var fs []fixture
	imp := func(name string, typ keywarden.KeyType, f keywarden.KeyFormat, data []byte, pats []pattern) *keywarden.Key {
		k, err := c.Import(ctx, keywarden.KeySpec{Name: "scan-" + name, Type: typ, Exportable: true}, f, data)
		if err != nil {
			t.Fatalf("import %s: %v", name, err)
		}
		fs = append(fs, fixture{name, k, pats})
		return k
	}
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	msg := []byte("a message for the scan")

	aesKey := random(32)
	var aesPats []pattern
	aesPats = append(aesPats, forms("aes256 key", aesKey)...)
	for i, rk := range aesRoundKeys(aesKey)[2:] {
		aesPats = append(aesPats, forms(fmt.Sprintf("aes256 round key %d", i+2), rk)[:2]...)
	}
	k := imp("aes", keywarden.AES256GCM, keywarden.FormatRaw, aesKey, aesPats)
	ct, err := k.Encrypt(ctx, msg, nil)
	must(ct, err)
	must(k.Decrypt(ctx, ct, nil))
	must(k.Export(ctx, keywarden.FormatRaw))

	macKey := random(32)
	macPats := forms("hmac key", macKey)
	macPats = append(macPats, pattern{"hmac ipad", xorBytes(macKey, 0x36)}, pattern{"hmac opad", xorBytes(macKey, 0x5c)})
	k = imp("hmac", keywarden.HMACSHA256, keywarden.FormatRaw, macKey, macPats)
	tag, err := k.MAC(ctx, msg)
	must(tag, err)
	must(nil, k.VerifyMAC(ctx, msg, tag))
	s, err := k.NewMAC(ctx)
	must(s, err)
	s.Write(msg)
	must(s.Sum())

	seed := random(32)
	h := sha512.Sum512(seed)
	clamped := append([]byte(nil), h[:32]...)
	clamped[0] &= 248
	clamped[31] &= 127
	clamped[31] |= 64
	edPats := forms("ed25519 seed", seed)
	edPats = append(edPats, forms("ed25519 SHA-512(seed)[:32]", h[:32])[:3]...)
	edPats = append(edPats, forms("ed25519 scalar", clamped)[:3]...)
	edPats = append(edPats, forms("ed25519 SHA-512(seed)[32:]", h[32:])[:3]...)
	der, _ := x509.MarshalPKCS8PrivateKey(ed25519.NewKeyFromSeed(seed))
	k = imp("ed25519", keywarden.Ed25519, keywarden.FormatPKCS8DER, der, edPats)
	must(k.SignMessageContext(ctx, msg, nil))
	ss, err := k.NewSigner(ctx, nil)
	must(ss, err)
	ss.Write(msg)
	must(ss.Sum())

	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecRaw, _ := ec.Bytes()
	der, _ = x509.MarshalPKCS8PrivateKey(ec)
	k = imp("ecdsa", keywarden.ECDSAP256, keywarden.FormatPKCS8DER, der, forms("ecdsa-p256 scalar", ecRaw))
	must(k.SignMessageContext(ctx, msg, nil))
	must(k.Export(ctx, keywarden.FormatPKCS8PEM))

	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	var rsaPats []pattern
	for name, n := range map[string]*big.Int{"rsa p": rk.Primes[0], "rsa q": rk.Primes[1], "rsa d": rk.D} {
		b := n.FillBytes(make([]byte, (n.BitLen()+7)/8))
		rsaPats = append(rsaPats, forms(name+" (high bytes)", b[:32])[:3]...)
		rsaPats = append(rsaPats, forms(name+" (low bytes)", b[len(b)-32:])[:3]...)
	}
	der, _ = x509.MarshalPKCS8PrivateKey(rk)
	k = imp("rsa", keywarden.RSA2048, keywarden.FormatPKCS8DER, der, rsaPats)
	must(k.SignMessageContext(ctx, msg, nil))
	rct, _ := rsa.EncryptOAEP(sha512.New(), rand.Reader, &rk.PublicKey, msg, nil)
	dec, err := k.Decrypter()
	must(dec, err)
	must(dec.Decrypt(nil, rct, &rsa.OAEPOptions{Hash: 7 /* SHA-512 */}))

	peer, _ := ecdh.X25519().GenerateKey(rand.Reader)
	x, _ := ecdh.X25519().GenerateKey(rand.Reader)
	der, _ = x509.MarshalPKCS8PrivateKey(x)
	k = imp("x25519", keywarden.X25519, keywarden.FormatPKCS8DER, der, forms("x25519 scalar", x.Bytes()))
	child, err := k.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true}, keywarden.DeriveParams{Peer: peer.PublicKey().Bytes()})
	must(child, err)
	must(child.Encrypt(ctx, msg, nil))
	shared, _ := x.ECDH(peer.PublicKey())
	fs[len(fs)-1].patterns = append(fs[len(fs)-1].patterns, forms("x25519 shared secret", shared)[:3]...)
	must(nil, child.Close(ctx))

	dh, _ := ecdh.P256().GenerateKey(rand.Reader)
	der, _ = x509.MarshalPKCS8PrivateKey(dh)
	k = imp("ecdh", keywarden.ECDHP256, keywarden.FormatPKCS8DER, der, forms("ecdh-p256 scalar", dh.Bytes()))
	peer256, _ := ecdh.P256().GenerateKey(rand.Reader)
	child, err = k.Derive(ctx, keywarden.KeySpec{Type: keywarden.HMACSHA256, Ephemeral: true}, keywarden.DeriveParams{Peer: peer256.PublicKey().Bytes()})
	must(child, err)
	must(nil, child.Close(ctx))
	return fs
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func xorBytes(b []byte, x byte) []byte {
	out := make([]byte, len(b))
	for i := range b {
		out[i] = b[i] ^ x
	}
	return out
}

// hit is one pattern found in the daemon's memory.
type hit struct {
	pattern string
	mapping string
	addr    uint64
	arena   bool
}

func (h hit) String() string {
	where := h.mapping
	if h.arena {
		where += " (arena)"
	}
	return fmt.Sprintf("%s at %#x in %s", h.pattern, h.addr, where)
}

// scanMemory reads every readable mapping of pid and returns where the
// patterns occur. Mappings the kernel will not read (memfd_secret) are
// skipped: nobody can read them.
func scanMemory(t *testing.T, pid int, patterns []pattern) []hit {
	t.Helper()
	smaps, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps")
	if err != nil {
		t.Fatal(err)
	}
	mem, err := os.Open("/proc/" + strconv.Itoa(pid) + "/mem")
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	type vma struct {
		lo, hi uint64
		perms  string
		name   string
		flags  string
	}
	var vmas []vma
	for _, line := range strings.Split(string(smaps), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && strings.Count(f[0], "-") == 1 && !strings.HasSuffix(f[0], ":") {
			lo, hi, ok := strings.Cut(f[0], "-")
			if !ok {
				continue
			}
			l, err1 := strconv.ParseUint(lo, 16, 64)
			h, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 != nil || err2 != nil {
				continue
			}
			v := vma{lo: l, hi: h, perms: f[1]}
			if len(f) >= 6 {
				v.name = f[5]
			}
			vmas = append(vmas, v)
		} else if strings.HasPrefix(line, "VmFlags:") && len(vmas) > 0 {
			vmas[len(vmas)-1].flags = " " + strings.TrimPrefix(line, "VmFlags:") + " "
		}
	}
	var hits []hit
	var mu sync.Mutex
	for _, v := range vmas {
		if !strings.HasPrefix(v.perms, "r") || v.name == "[vvar]" || v.name == "[vsyscall]" || v.name == "[vvar_vclock]" {
			continue
		}
		buf := make([]byte, v.hi-v.lo)
		n, err := mem.ReadAt(buf, int64(v.lo))
		if n == 0 && err != nil {
			continue // unreadable: memfd_secret, or gone
		}
		buf = buf[:n]
		// The arena's mlock backing: locked, undumpable, wiped on fork.
		arena := strings.Contains(v.flags, " dd ") && strings.Contains(v.flags, " wf ")
		name := v.name
		if name == "" {
			name = "[anonymous " + v.perms + "]"
		}
		for _, p := range patterns {
			for off := 0; ; {
				i := bytes.Index(buf[off:], p.b)
				if i < 0 {
					break
				}
				mu.Lock()
				hits = append(hits, hit{p.name, name, v.lo + uint64(off+i), arena})
				mu.Unlock()
				off += i + 1
			}
		}
	}
	sort.Slice(hits, func(i, j int) bool { return hits[i].addr < hits[j].addr })
	return hits
}

// aesRoundKeys returns the 15 round keys of AES-256 (FIPS 197 key
// expansion), 16 bytes each.
func aesRoundKeys(key []byte) [][]byte {
	sbox := aesSbox()
	w := make([]uint32, 60)
	for i := range 8 {
		w[i] = be.BigEndian.Uint32(key[4*i:])
	}
	rcon := uint32(1)
	sub := func(x uint32) uint32 {
		return uint32(sbox[x>>24])<<24 | uint32(sbox[x>>16&0xff])<<16 | uint32(sbox[x>>8&0xff])<<8 | uint32(sbox[x&0xff])
	}
	for i := 8; i < 60; i++ {
		t := w[i-1]
		switch i % 8 {
		case 0:
			t = sub(t<<8|t>>24) ^ rcon<<24
			rcon <<= 1
			if rcon&0x100 != 0 {
				rcon ^= 0x11b
			}
		case 4:
			t = sub(t)
		}
		w[i] = w[i-8] ^ t
	}
	var rks [][]byte
	for r := range 15 {
		rk := make([]byte, 16)
		for j := range 4 {
			be.BigEndian.PutUint32(rk[4*j:], w[4*r+j])
		}
		rks = append(rks, rk)
	}
	return rks
}

// aesSbox computes the AES S-box (multiplicative inverse in GF(2^8) and
// the affine map), so the test needs no table.
func aesSbox() [256]byte {
	var s [256]byte
	var p, q byte = 1, 1
	for {
		// p *= 3
		p = p ^ p<<1 ^ map[bool]byte{true: 0x1b, false: 0}[p&0x80 != 0]
		// q /= 3
		q ^= q << 1
		q ^= q << 2
		q ^= q << 4
		if q&0x80 != 0 {
			q ^= 0x09
		}
		x := q ^ (q<<1 | q>>7) ^ (q<<2 | q>>6) ^ (q<<3 | q>>5) ^ (q<<4 | q>>4)
		s[p] = x ^ 0x63
		if p == 1 {
			break
		}
	}
	s[0] = 0x63
	return s
}

// The scan's own AES key expansion matches FIPS 197, appendix A.3.
func TestAESRoundKeysKAT(t *testing.T) {
	key, _ := hex.DecodeString("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
	rks := aesRoundKeys(key)
	if got := hex.EncodeToString(rks[2][:4]); got != "9ba35411" {
		t.Fatalf("w[8] = %s, want 9ba35411", got)
	}
	if got := hex.EncodeToString(rks[14][12:]); got != "706c631e" {
		t.Fatalf("w[59] = %s, want 706c631e", got)
	}
	s := aesSbox()
	if s[0] != 0x63 || s[1] != 0x7c || s[0x53] != 0xed {
		t.Fatal("S-box")
	}
}
