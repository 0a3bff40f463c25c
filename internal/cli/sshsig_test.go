package cli

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"errors"
	"testing"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/ssh"
)

// testSSHSig makes an armored SSH signature over msg with a fresh Ed25519
// key, in the layout of PROTOCOL.sshsig.
func testSSHSig(t testing.TB, namespace string, msg []byte) (ssh.PublicKey, []byte) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	h := sha512.Sum512(msg)
	sig, err := signer.Sign(rand.Reader, sshsigSignedData(namespace, "sha512", h[:]))
	if err != nil {
		t.Fatal(err)
	}
	var b cryptobyte.Builder
	b.AddBytes([]byte(sshsigMagic))
	b.AddUint32(sshsigVersion)
	addString(&b, signer.PublicKey().Marshal())
	addString(&b, []byte(namespace))
	addString(&b, nil)
	addString(&b, []byte("sha512"))
	addString(&b, ssh.Marshal(sig))
	return signer.PublicKey(), []byte(armorSSHSig(b.BytesOrPanic()))
}

// parseSSHSig reads back every field, and the signature checks over the
// signed data rebuilt from them.
func TestParseSSHSig(t *testing.T) {
	msg := []byte("a release")
	pub, armored := testSSHSig(t, "file", msg)
	s, err := parseSSHSig(armored)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s.publicKey, pub.Marshal()) || s.namespace != "file" || s.hashName != "sha512" || s.sig.Format != ssh.KeyAlgoED25519 {
		t.Fatalf("parsed %+v", s)
	}
	h := sha512.Sum512(msg)
	if err := pub.Verify(sshsigSignedData(s.namespace, s.hashName, h[:]), &s.sig); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]byte{nil, []byte("garbage"), bytes.Replace(armored, []byte("SSH SIGNATURE"), []byte("PGP SIGNATURE"), 2),
		append(bytes.Clone(armored), "trailing"...)} {
		if _, err := parseSSHSig(bad); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
}

func FuzzParseSSHSig(f *testing.F) {
	_, armored := testSSHSig(f, "file", []byte("x"))
	f.Add(armored)
	f.Fuzz(func(t *testing.T, b []byte) {
		parseSSHSig(b)
	})
}

// readKeyFile never panics and never asks for a passphrase except for an
// encrypted OpenSSH key.
func FuzzReadKeyFile(f *testing.F) {
	f.Add([]byte("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"))
	f.Add([]byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKbR4MM6VYyeoNyT3mP3cH/o c"))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n"))
	errAsked := errors.New("asked")
	f.Fuzz(func(t *testing.T, b []byte) {
		kf, err := readKeyFile(b, func() ([]byte, error) { return nil, errAsked })
		if err == nil && (kf == nil || !kf.typ.Valid()) {
			t.Fatalf("no error and no type: %+v", kf)
		}
	})
}
