package wrap

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The tests here compare with OpenSSL's command line (3.0 or later):
//
//	KW:  openssl enc -id-aesN-wrap     -K <hex> -iv A6A6A6A6A6A6A6A6 -nopad
//	KWP: openssl enc -id-aesN-wrap-pad -K <hex> -iv A65959A6
//
// (-d to unwrap). enc feeds the cipher in chunks of its buffer size, and a
// wrap cipher must see its input in one piece, so inputs stay below 4 KiB.

// openssl runs the openssl command with stdin and returns its output, or
// skips the test if there is no openssl.
func openssl(t *testing.T, stdin []byte, args ...string) ([]byte, error) {
	t.Helper()
	path, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("no openssl command")
	}
	cmd := exec.Command(path, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("openssl %s: %v: %s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return out, nil
}

func sslKW(t *testing.T, decrypt bool, kek, in []byte) ([]byte, error) {
	args := []string{"enc", fmt.Sprintf("-id-aes%d-wrap", 8*len(kek)), "-K", hex.EncodeToString(kek), "-iv", "A6A6A6A6A6A6A6A6", "-nopad"}
	if decrypt {
		args = append(args, "-d")
	}
	return openssl(t, in, args...)
}

func sslKWP(t *testing.T, decrypt bool, kek, in []byte) ([]byte, error) {
	args := []string{"enc", fmt.Sprintf("-id-aes%d-wrap-pad", 8*len(kek)), "-K", hex.EncodeToString(kek), "-iv", "A65959A6"}
	if decrypt {
		args = append(args, "-d")
	}
	return openssl(t, in, args...)
}

func TestKWOpenSSL(t *testing.T) {
	for _, ks := range kekSizes {
		for _, n := range []int{16, 24, 32, 40, 64, 520, 2048} {
			kek, pt := randBytes(ks), randBytes(n)
			ours, err := WrapKW(kek, pt)
			if err != nil {
				t.Fatal(err)
			}
			theirs, err := sslKW(t, false, kek, pt)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(ours, theirs) {
				t.Fatalf("kek %d, %d bytes: WrapKW = %x, openssl %x", ks, n, ours, theirs)
			}
			// OpenSSL unwraps ours; we unwrap OpenSSL's.
			back, err := sslKW(t, true, kek, ours)
			if err != nil || !bytes.Equal(back, pt) {
				t.Fatalf("kek %d, %d bytes: openssl unwrap = %x, %v", ks, n, back, err)
			}
			back, err = UnwrapKW(kek, theirs)
			if err != nil || !bytes.Equal(back, pt) {
				t.Fatalf("kek %d, %d bytes: UnwrapKW(openssl) = %x, %v", ks, n, back, err)
			}
		}
	}
}

func TestKWPOpenSSL(t *testing.T) {
	for _, ks := range kekSizes {
		for _, n := range []int{1, 7, 8, 9, 16, 20, 31, 32, 33, 48, 121, 1217, 2400, 4000} {
			kek, pt := randBytes(ks), randBytes(n)
			ours, err := WrapKWP(kek, pt)
			if err != nil {
				t.Fatal(err)
			}
			theirs, err := sslKWP(t, false, kek, pt)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(ours, theirs) {
				t.Fatalf("kek %d, %d bytes: WrapKWP = %x, openssl %x", ks, n, ours, theirs)
			}
			back, err := sslKWP(t, true, kek, ours)
			if err != nil || !bytes.Equal(back, pt) {
				t.Fatalf("kek %d, %d bytes: openssl unwrap = %x, %v", ks, n, back, err)
			}
			back, err = UnwrapKWP(kek, theirs)
			if err != nil || !bytes.Equal(back, pt) {
				t.Fatalf("kek %d, %d bytes: UnwrapKWP(openssl) = %x, %v", ks, n, back, err)
			}
		}
	}
}

var sslHashNames = map[crypto.Hash]string{
	crypto.SHA1: "sha1", crypto.SHA256: "sha256", crypto.SHA384: "sha384", crypto.SHA512: "sha512",
}

// sslOAEP runs openssl pkeyutl with RSA-OAEP (hash h for OAEP and MGF1)
// and the key in testdata/rsaBITS.pem.
func sslOAEP(t *testing.T, decrypt bool, bits int, h crypto.Hash, in []byte) ([]byte, error) {
	op := "-encrypt"
	if decrypt {
		op = "-decrypt"
	}
	md := sslHashNames[h]
	return openssl(t, in, "pkeyutl", op, "-inkey", filepath.Join("testdata", fmt.Sprintf("rsa%d.pem", bits)),
		"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:"+md, "-pkeyopt", "rsa_mgf1_md:"+md)
}

// TestRSAKWPFromOpenSSL builds blobs with OpenSSL, as a PKCS #11 token or
// a KMS would (RSA-OAEP of an AES key, then KWP under it), and unwraps them;
// those made with SHA-1 are refused.
func TestRSAKWPFromOpenSSL(t *testing.T) {
	for _, bits := range rsaSizes {
		priv := testRSAKey(t, bits)
		for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256, crypto.SHA384, crypto.SHA512} {
			for _, aesLen := range []int{16, 24, 32} {
				name := fmt.Sprintf("RSA-%d/%v/AES-%d", bits, h, 8*aesLen)
				material := randBytes(1 + len(name)*7)
				ek := randBytes(aesLen)
				c1, err := sslOAEP(t, false, bits, h, ek)
				if err != nil {
					t.Fatal(err)
				}
				c2, err := sslKWP(t, false, ek, material)
				if err != nil {
					t.Fatal(err)
				}
				got, err := UnwrapRSAKWP(priv, h, append(c1, c2...))
				if h == crypto.SHA1 {
					// Well formed, and refused: SHA-1 is not taken.
					if err == nil || err == ErrUnwrap || got != nil {
						t.Fatalf("%s: UnwrapRSAKWP = %x, %v; want SHA-1 refused", name, got, err)
					}
					continue
				}
				if err != nil || !bytes.Equal(got, material) {
					t.Fatalf("%s: UnwrapRSAKWP = %x, %v", name, got, err)
				}
			}
		}
	}
}

// TestRSAKWPToOpenSSL takes our blobs apart with OpenSSL.
func TestRSAKWPToOpenSSL(t *testing.T) {
	for _, bits := range rsaSizes {
		priv := testRSAKey(t, bits)
		for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
			material := randBytes(1217)
			blob, err := WrapRSAKWP(&priv.PublicKey, h, material)
			if err != nil {
				t.Fatal(err)
			}
			ek, err := sslOAEP(t, true, bits, h, blob[:priv.Size()])
			if err != nil {
				t.Fatal(err)
			}
			if len(ek) != 32 {
				t.Fatalf("ephemeral key is %d bytes", len(ek))
			}
			got, err := sslKWP(t, true, ek, blob[priv.Size():])
			if err != nil || !bytes.Equal(got, material) {
				t.Fatalf("RSA-%d/%v: openssl unwrap = %x, %v", bits, h, got, err)
			}
		}
	}
}
