package sshcert

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// authority makes an in-process key and its SignFunc, signing as the
// daemon's does.
func authority(t *testing.T, kind string) (crypto.PublicKey, SignFunc) {
	t.Helper()
	switch kind {
	case "ed25519":
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		return priv.Public(), func(m []byte) ([]byte, error) { return ed25519.Sign(priv, m), nil }
	case "p256", "p384":
		c, h := elliptic.P256(), crypto.SHA256
		if kind == "p384" {
			c, h = elliptic.P384(), crypto.SHA384
		}
		priv, _ := ecdsa.GenerateKey(c, rand.Reader)
		return priv.Public(), func(m []byte) ([]byte, error) {
			d := h.New()
			d.Write(m)
			return ecdsa.SignASN1(rand.Reader, priv, d.Sum(nil))
		}
	case "rsa":
		priv, _ := rsa.GenerateKey(rand.Reader, 2048)
		return priv.Public(), func(m []byte) ([]byte, error) {
			d := sha512.Sum512(m)
			return rsa.SignPKCS1v15(rand.Reader, priv, crypto.SHA512, d[:])
		}
	}
	t.Fatalf("kind %s", kind)
	return nil, nil
}

func subject(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestIssue: a certificate from each kind of authority is one that
// x/crypto/ssh's checker accepts for its principal, and refuses for
// another, or once expired.
func TestIssue(t *testing.T) {
	now := time.Now()
	for _, kind := range []string{"ed25519", "p256", "p384", "rsa"} {
		t.Run(kind, func(t *testing.T) {
			caPub, sign := authority(t, kind)
			sub := subject(t)
			req := &Request{Type: ssh.UserCert, Serial: 42, KeyID: "alice@laptop", Principals: []string{"alice", "deploy"},
				ValidAfter: uint64(now.Add(-time.Minute).Unix()), ValidBefore: uint64(now.Add(time.Hour).Unix()),
				Extensions: []Option{{Name: "permit-pty"}}}
			cert, err := Issue(sub, req, caPub, sign, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			ca, _ := ssh.NewPublicKey(caPub)
			want := map[string]string{"ed25519": "ssh-ed25519", "p256": "ecdsa-sha2-nistp256", "p384": "ecdsa-sha2-nistp384", "rsa": "rsa-sha2-512"}[kind]
			if cert.Signature.Format != want {
				t.Errorf("signature format %s, want %s", cert.Signature.Format, want)
			}
			// Round trip through the wire form, as the client gets it.
			parsed, err := ssh.ParsePublicKey(cert.Marshal())
			if err != nil {
				t.Fatal(err)
			}
			cert = parsed.(*ssh.Certificate)
			checker := &ssh.CertChecker{IsUserAuthority: func(k ssh.PublicKey) bool { return bytes.Equal(k.Marshal(), ca.Marshal()) }}
			if err := checker.CheckCert("deploy", cert); err != nil {
				t.Errorf("refused: %v", err)
			}
			if err := checker.CheckCert("root", cert); err == nil {
				t.Error("accepted for a principal it does not name")
			}
			checker.Clock = func() time.Time { return now.Add(2 * time.Hour) }
			if err := checker.CheckCert("deploy", cert); err == nil {
				t.Error("accepted once expired")
			}
			if cert.Serial != 42 || cert.KeyId != "alice@laptop" || cert.Extensions["permit-pty"] != "" || len(cert.Extensions) != 1 {
				t.Errorf("fields: %+v", cert)
			}
		})
	}
}

// TestIssueChecksSignature: a SignFunc that returns a signature of other
// bytes (a confused or broken signer) yields no certificate.
func TestIssueChecksSignature(t *testing.T) {
	caPub, sign := authority(t, "ed25519")
	bad := func(m []byte) ([]byte, error) { return sign(append([]byte("x"), m...)) }
	req := &Request{Type: ssh.HostCert, Principals: []string{"h"}, ValidBefore: Forever}
	if _, err := Issue(subject(t), req, caPub, bad, rand.Reader); err == nil {
		t.Fatal("a certificate with a bad signature was issued")
	}
}

func TestCheck(t *testing.T) {
	ok := func() Request {
		return Request{Type: ssh.UserCert, Principals: []string{"a"}, ValidAfter: 1, ValidBefore: 2}
	}
	for name, mod := range map[string]func(r *Request){
		"no type":             func(r *Request) { r.Type = 0 },
		"no principals":       func(r *Request) { r.Principals = nil },
		"empty principal":     func(r *Request) { r.Principals = []string{""} },
		"duplicate principal": func(r *Request) { r.Principals = []string{"a", "a"} },
		"control character":   func(r *Request) { r.Principals = []string{"a\nb"} },
		"long principal":      func(r *Request) { r.Principals = []string{strings.Repeat("a", 256)} },
		"many principals": func(r *Request) {
			r.Principals = nil
			for i := range 257 {
				r.Principals = append(r.Principals, strings.Repeat("p", i+1))
			}
		},
		"long key id":        func(r *Request) { r.KeyID = strings.Repeat("k", 256) },
		"ends before begins": func(r *Request) { r.ValidBefore = 1 },
		"host with options": func(r *Request) {
			r.Type = ssh.HostCert
			r.Extensions = []Option{{Name: "permit-pty"}}
		},
		"duplicate option": func(r *Request) { r.Extensions = []Option{{Name: "x"}, {Name: "x"}} },
		"unnamed option":   func(r *Request) { r.CriticalOptions = []Option{{Value: "v"}} },
	} {
		r := ok()
		mod(&r)
		if err := r.Check(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	r := ok()
	if err := r.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestParseSubject(t *testing.T) {
	caPub, sign := authority(t, "ed25519")
	cert, err := Issue(subject(t), &Request{Type: ssh.HostCert, Principals: []string{"h"}, ValidBefore: Forever}, caPub, sign, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	smallSSH, _ := ssh.NewPublicKey(small.Public())
	good := subject(t).Marshal()
	for name, b := range map[string][]byte{
		"empty":       nil,
		"certificate": cert.Marshal(),
		"rsa-1024":    smallSSH.Marshal(),
		"trailing":    append(bytes.Clone(good), 0),
		"truncated":   good[:len(good)-1],
		"huge":        make([]byte, MaxSubjectLen+1),
	} {
		if _, err := ParseSubject(b); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := ParseSubject(good); err != nil {
		t.Error(err)
	}
}
