package keywarden_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
)

// verifyStd checks sig over msg with the standard library alone: the
// signature is one that anyone holding the public key accepts.
func verifyStd(t *testing.T, pub crypto.PublicKey, msg, sig []byte, opts crypto.SignerOpts) {
	t.Helper()
	var ok bool
	switch p := pub.(type) {
	case ed25519.PublicKey:
		ok = ed25519.Verify(p, msg, sig)
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(p, digestOf(opts.HashFunc(), msg), sig)
	case *rsa.PublicKey:
		if pss, isPSS := opts.(*rsa.PSSOptions); isPSS {
			ok = rsa.VerifyPSS(p, opts.HashFunc(), digestOf(opts.HashFunc(), msg), sig, pss) == nil
		} else {
			ok = rsa.VerifyPKCS1v15(p, opts.HashFunc(), digestOf(opts.HashFunc(), msg), sig) == nil
		}
	}
	if !ok {
		t.Fatalf("the standard library rejects the signature (%T, %v)", pub, opts.HashFunc())
	}
}

func digestOf(h crypto.Hash, msg []byte) []byte {
	switch h {
	case crypto.SHA256:
		d := sha256.Sum256(msg)
		return d[:]
	case crypto.SHA384:
		d := sha512.Sum384(msg)
		return d[:]
	}
	panic("digestOf: unexpected hash")
}

// A *Key is a crypto.MessageSigner: crypto.SignMessage hands it the
// message, and crypto/x509 signs certificates with it.
func TestKeyIsMessageSigner(t *testing.T) {
	ctx := context.Background()
	c := dial(t)
	cases := []struct {
		typ  keywarden.KeyType
		opts crypto.SignerOpts
		alg  x509.SignatureAlgorithm
	}{
		{keywarden.Ed25519, crypto.Hash(0), x509.PureEd25519},
		{keywarden.ECDSAP256, crypto.SHA256, x509.ECDSAWithSHA256},
		{keywarden.ECDSAP384, crypto.SHA384, x509.ECDSAWithSHA384},
		{keywarden.RSA2048, crypto.SHA256, x509.SHA256WithRSA},
		{keywarden.RSA2048, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}, x509.SHA256WithRSAPSS},
	}
	for _, tc := range cases {
		t.Run(tc.alg.String(), func(t *testing.T) {
			k, err := c.Generate(ctx, keywarden.KeySpec{Type: tc.typ, Ephemeral: true})
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := any(k).(crypto.MessageSigner); !ok {
				t.Fatal("*Key is not a crypto.MessageSigner")
			}
			msg := []byte("a message signed whole")
			sig, err := crypto.SignMessage(k, rand.Reader, msg, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			verifyStd(t, k.Public(), msg, sig, tc.opts)

			tmpl := &x509.Certificate{
				SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "message signer"},
				NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
				IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
				SignatureAlgorithm: tc.alg,
			}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
			if err != nil {
				t.Fatal(err)
			}
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			if cert.SignatureAlgorithm != tc.alg || cert.CheckSignatureFrom(cert) != nil {
				t.Fatalf("certificate signed with %v does not verify", cert.SignatureAlgorithm)
			}
		})
	}
}

// A message larger than one request is signed through a stream; pure
// Ed25519, which a stream cannot do, refuses it rather than sign
// something else.
func TestSignMessageLargerThanARequest(t *testing.T) {
	ctx := context.Background()
	c := dial(t)
	msg := bytes.Repeat([]byte("large "), c.MaxData()/3)
	ec, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.ECDSAP256, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	sig, err := crypto.SignMessage(ec, rand.Reader, msg, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	verifyStd(t, ec.Public(), msg, sig, crypto.SHA256)

	ed, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.Ed25519, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ed.SignMessage(rand.Reader, msg, crypto.Hash(0)); !errors.Is(err, keywarden.ErrInvalidArgument) {
		t.Fatalf("pure Ed25519 over %d bytes: %v", len(msg), err)
	}
	sig, err = ed.SignMessage(rand.Reader, msg, &ed25519.Options{Hash: crypto.SHA512})
	if err != nil {
		t.Fatal(err)
	}
	if err := ed25519.VerifyWithOptions(ed.Public().(ed25519.PublicKey), digest512(msg), sig, &ed25519.Options{Hash: crypto.SHA512}); err != nil {
		t.Fatalf("Ed25519ph: %v", err)
	}
}

func digest512(msg []byte) []byte {
	d := sha512.Sum512(msg)
	return d[:]
}

// SignMessageContext takes the daemon's options as well as the standard
// library's; a context that is done stops it.
func TestSignMessageContext(t *testing.T) {
	ctx := context.Background()
	c := dial(t)
	k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.ECDSAP384, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("with options")
	for _, o := range []crypto.SignerOpts{nil, (*keywarden.SignOptions)(nil), &keywarden.SignOptions{}, crypto.Hash(0)} {
		sig, err := k.SignMessageContext(ctx, msg, o)
		if err != nil {
			t.Fatalf("%#v: %v", o, err)
		}
		verifyStd(t, k.Public(), msg, sig, crypto.SHA384) // the P-384 default
	}
	sig, err := k.SignMessageContext(ctx, msg, &keywarden.SignOptions{Hash: crypto.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	verifyStd(t, k.Public(), msg, sig, crypto.SHA256)
	if _, err := k.SignMessageContext(ctx, msg, crypto.MD5); !errors.Is(err, keywarden.ErrInvalidArgument) {
		t.Fatalf("MD5: %v", err)
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := k.SignMessageContext(done, msg, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled context: %v", err)
	}
}
