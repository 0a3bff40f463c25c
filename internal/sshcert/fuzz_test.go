package sshcert

import (
	"bytes"
	"crypto/ed25519"
	"testing"

	"golang.org/x/crypto/ssh"
)

// FuzzParseSubject: the key to certify comes from the client. Whatever
// it sends, ParseSubject does not panic; a key it takes is one of the
// certified types, and the certificate issued for it parses back with
// that very key.
func FuzzParseSubject(f *testing.F) {
	// The corpus in testdata/fuzz/FuzzParseSubject holds Ed25519, ECDSA,
	// RSA, security keys and a certificate.
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32))
	sign := func(m []byte) ([]byte, error) { return ed25519.Sign(priv, m), nil }
	req := &Request{Type: ssh.UserCert, Principals: []string{"a"}, ValidBefore: Forever}
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseSubject(b)
		if err != nil {
			return
		}
		switch k.Type() {
		case ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
			ssh.KeyAlgoSKECDSA256, ssh.KeyAlgoSKED25519, ssh.KeyAlgoRSA:
		default:
			t.Fatalf("took a %s key", k.Type())
		}
		cert, err := Issue(k, req, priv.Public(), sign, bytes.NewReader(make([]byte, 32)))
		if err != nil {
			t.Fatal(err)
		}
		back, err := ssh.ParsePublicKey(cert.Marshal())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back.(*ssh.Certificate).Key.Marshal(), k.Marshal()) {
			t.Fatal("the certificate names another key")
		}
	})
}
