package mech

import (
	"bytes"
	"crypto/hkdf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/wire"
)

// These tests cross-check mech against the openssl command, when present.

type osslDir struct {
	t   *testing.T
	dir string
}

func newOpenSSL(t *testing.T) *osslDir {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not in PATH")
	}
	return &osslDir{t, t.TempDir()}
}

// file writes b to name in the temporary directory and returns its path.
func (o *osslDir) file(name string, b []byte) string {
	o.t.Helper()
	p := filepath.Join(o.dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		o.t.Fatal(err)
	}
	return p
}

func (o *osslDir) path(name string) string { return filepath.Join(o.dir, name) }

func (o *osslDir) read(name string) []byte {
	o.t.Helper()
	b, err := os.ReadFile(o.path(name))
	if err != nil {
		o.t.Fatal(err)
	}
	return b
}

// run runs openssl with args and fails the test if it fails.
func (o *osslDir) run(args ...string) string {
	o.t.Helper()
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		o.t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func publicPEM(t *testing.T, k *Key) []byte {
	t.Helper()
	b, err := k.Public(fSPKIPEM)
	wantOK(t, err)
	return b
}

var osslDigest = map[wire.HashAlg]string{
	hSHA256: "-sha256", hSHA384: "-sha384", hSHA512: "-sha512", hSHA3256: "-sha3-256", hSHA3512: "-sha3-512",
}

func TestOpenSSLVerifiesOurSignatures(t *testing.T) {
	o := newOpenSSL(t)
	msg := o.file("msg", []byte("keywarden cross-check\n"))

	t.Run("ECDSA", func(t *testing.T) {
		for _, tc := range []struct {
			typ wire.KeyType
			h   wire.HashAlg
			dgs string
		}{
			{tP256, hNone, "-sha256"}, {tP384, hNone, "-sha384"},
			{tP256, hSHA512, "-sha512"}, {tP384, hSHA3256, "-sha3-256"},
		} {
			k := testKey(t, tc.typ)
			sig := mustSign(t, k, SignParams{Hash: tc.h}, o.read("msg"))
			out := o.run("dgst", tc.dgs, "-verify", o.file("pub.pem", publicPEM(t, k)),
				"-signature", o.file("sig", sig), msg)
			if !strings.Contains(out, "Verified OK") {
				t.Fatalf("%v: %s", tc.typ, out)
			}
			k.Destroy()
		}
	})
	t.Run("Ed25519", func(t *testing.T) {
		k := testKey(t, tEd)
		defer k.Destroy()
		sig := mustSign(t, k, SignParams{}, o.read("msg"))
		out := o.run("pkeyutl", "-verify", "-pubin", "-inkey", o.file("pub.pem", publicPEM(t, k)),
			"-rawin", "-in", msg, "-sigfile", o.file("sig", sig))
		if !strings.Contains(out, "Signature Verified Successfully") {
			t.Fatal(out)
		}
	})
	t.Run("RSA", func(t *testing.T) {
		k := testKey(t, tRSA2048)
		defer k.Destroy()
		pub := o.file("pub.pem", publicPEM(t, k))
		for _, h := range allHashes {
			// PSS: openssl checks that the salt is exactly the digest length.
			sig := mustSign(t, k, SignParams{Hash: h}, o.read("msg"))
			out := o.run("dgst", osslDigest[h], "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest",
				"-verify", pub, "-signature", o.file("sig", sig), msg)
			if !strings.Contains(out, "Verified OK") {
				t.Fatalf("PSS %v: %s", h, out)
			}
			sig = mustSign(t, k, SignParams{Hash: h, Padding: wire.Padding_PADDING_PKCS1V15}, o.read("msg"))
			out = o.run("dgst", osslDigest[h], "-verify", pub, "-signature", o.file("sig", sig), msg)
			if !strings.Contains(out, "Verified OK") {
				t.Fatalf("PKCS1 %v: %s", h, out)
			}
		}
	})
}

func TestOpenSSLKeysAndCiphertexts(t *testing.T) {
	o := newOpenSSL(t)
	msg := []byte("keywarden cross-check\n")
	msgPath := o.file("msg", msg)

	gen := map[wire.KeyType][]string{
		tEd:      {"-algorithm", "ED25519"},
		tX25519:  {"-algorithm", "X25519"},
		tP256:    {"-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"},
		tP384:    {"-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"},
		tDH256:   {"-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"},
		tRSA2048: {"-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"},
	}
	for typ, args := range gen {
		s := spec(typ)
		t.Run(s.Name, func(t *testing.T) {
			keyPath := o.path(s.Name + ".pem")
			o.run(append(append([]string{"genpkey"}, args...), "-out", keyPath)...)
			pubDER := o.path(s.Name + ".pub.der")
			o.run("pkey", "-in", keyPath, "-pubout", "-outform", "DER", "-out", pubDER)
			forms := map[string][]byte{"PKCS8 PEM": o.read(s.Name + ".pem")}
			switch s.Name {
			case "ecdsa-p256", "ecdsa-p384":
				o.run("ec", "-in", keyPath, "-out", o.path("sec1.pem"))
				forms["SEC1 PEM"] = o.read("sec1.pem")
			case "rsa-2048":
				o.run("rsa", "-in", keyPath, "-traditional", "-out", o.path("pkcs1.pem"))
				forms["PKCS1 PEM"] = o.read("pkcs1.pem")
			}
			// (openssl pkey -outform DER writes SEC1 for EC keys.)
			o.run("pkcs8", "-topk8", "-nocrypt", "-in", keyPath, "-outform", "DER", "-out", o.path("p8.der"))
			forms["PKCS8 DER"] = o.read("p8.der")
			for name, b := range forms {
				k, err := Import(s, fUnspec, b)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if !bytes.Equal(k.PublicDER(), o.read(s.Name+".pub.der")) {
					t.Fatalf("%s: public key differs from openssl's", name)
				}
				k.Destroy()
			}
			k, err := Import(s, fUnspec, forms["PKCS8 PEM"])
			wantOK(t, err)
			defer k.Destroy()
			pk, err := Import(s, fSPKIDER, o.read(s.Name+".pub.der"))
			wantOK(t, err)
			defer pk.Destroy()

			switch typ {
			case tP256, tP384:
				o.run("dgst", "-sha256", "-sign", keyPath, "-out", o.path("sig"), msgPath)
				wantOK(t, pk.Verify(SignParams{Hash: hSHA256}, msg, o.read("sig")))
			case tEd:
				o.run("pkeyutl", "-sign", "-inkey", keyPath, "-rawin", "-in", msgPath, "-out", o.path("sig"))
				wantOK(t, pk.Verify(SignParams{}, msg, o.read("sig")))
			case tRSA2048:
				o.run("dgst", "-sha384", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:max",
					"-sign", keyPath, "-out", o.path("sig"), msgPath)
				wantOK(t, pk.Verify(SignParams{Hash: hSHA384}, msg, o.read("sig")))
				// OAEP-SHA-256 with a label, made by openssl, opened by mech.
				o.run("pkeyutl", "-encrypt", "-pubin", "-inkey", o.path(s.Name+".pub.der"), "-keyform", "DER",
					"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256",
					"-pkeyopt", "rsa_mgf1_md:sha256", "-pkeyopt", "rsa_oaep_label:6c6162656c",
					"-in", msgPath, "-out", o.path("ct"))
				pt, err := k.Decrypt(o.read("ct"), []byte("label"), hNone, nil)
				if err != nil || !bytes.Equal(pt, msg) {
					t.Fatalf("OAEP: %v", err)
				}
				// And the reverse.
				ct, err := pk.Encrypt(msg, []byte("label"), hNone, nil)
				wantOK(t, err)
				o.run("pkeyutl", "-decrypt", "-inkey", keyPath,
					"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256",
					"-pkeyopt", "rsa_mgf1_md:sha256", "-pkeyopt", "rsa_oaep_label:6c6162656c",
					"-in", o.file("ct2", ct), "-out", o.path("pt2"))
				if !bytes.Equal(o.read("pt2"), msg) {
					t.Fatal("openssl OAEP decrypt differs")
				}
			case tX25519, tDH256:
				// openssl derives the raw shared secret; HKDF over it must
				// give the key mech derives.
				peer := testKey(t, typ)
				defer peer.Destroy()
				peerPEM := o.file("peer.pem", publicPEM(t, peer))
				o.run("pkeyutl", "-derive", "-inkey", keyPath, "-peerkey", peerPEM, "-out", o.path("shared"))
				want, err := hkdf.Key(hashFunc(hSHA256), o.read("shared"), []byte("salt"), "info", 32)
				wantOK(t, err)
				d, err := k.Derive(publicPEM(t, peer), hNone, []byte("salt"), []byte("info"), spec(tAES))
				wantOK(t, err)
				got, _ := d.Export(fRaw)
				if !bytes.Equal(got, want) {
					t.Fatal("derived key differs from HKDF over openssl's shared secret")
				}
				d.Destroy()
			}
		})
	}
}

// TestOpenSSLReadsOurExports checks that openssl reads every private key
// mech exports (PKCS #8 DER and PEM) and finds the same public key.
func TestOpenSSLReadsOurExports(t *testing.T) {
	o := newOpenSSL(t)
	for _, typ := range asymmetricTypes() {
		k := testKey(t, typ)
		for _, f := range []wire.KeyFormat{fPKCS8DER, fPKCS8PEM} {
			b, err := k.Export(f)
			wantOK(t, err)
			form := "PEM"
			if f == fPKCS8DER {
				form = "DER"
			}
			o.run("pkey", "-inform", form, "-in", o.file("key", b), "-pubout", "-outform", "DER", "-out", o.path("pub.der"))
			if !bytes.Equal(o.read("pub.der"), k.PublicDER()) {
				t.Fatalf("%s %v: openssl finds another public key", k.Spec().Name, f)
			}
		}
		k.Destroy()
	}
}
