package e2e_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/keywarden/keywarden"
)

var signerTypes = []keywarden.KeyType{keywarden.Ed25519, keywarden.ECDSAP256, keywarden.ECDSAP384, keywarden.RSA2048}

// TestX509Certificates has the daemon sign certificates: a *Key is a
// crypto.MessageSigner, so crypto/x509 hands it the certificate to sign
// whole (crypto.SignMessage) and the daemon hashes it.
func TestX509Certificates(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	for _, typ := range signerTypes {
		t.Run(string(typ), func(t *testing.T) {
			k := generate(t, c, keywarden.KeySpec{Type: typ})
			if _, ok := any(k).(crypto.MessageSigner); !ok {
				t.Fatal("*keywarden.Key is not a crypto.MessageSigner")
			}
			var opts crypto.SignerOpts = crypto.Hash(0)
			switch typ {
			case keywarden.ECDSAP256, keywarden.RSA2048:
				opts = crypto.SHA256
			case keywarden.ECDSAP384:
				opts = crypto.SHA384
			}
			msg := []byte("signed through crypto.SignMessage")
			sig, err := crypto.SignMessage(k, rand.Reader, msg, opts)
			if err != nil {
				t.Fatal(err)
			}
			vo := &keywarden.SignOptions{Hash: opts.HashFunc()}
			if typ == keywarden.RSA2048 {
				vo.Padding = keywarden.PaddingPKCS1v15 // the padding of an RSA signature with crypto.Hash options
			}
			if err := k.Verify(context.Background(), msg, sig, vo); err != nil {
				t.Fatalf("crypto.SignMessage made a signature the daemon rejects: %v", err)
			}
			tmpl := &x509.Certificate{
				SerialNumber:          big.NewInt(1),
				Subject:               pkix.Name{CommonName: "keywarden test"},
				NotBefore:             time.Now().Add(-time.Hour),
				NotAfter:              time.Now().Add(time.Hour),
				IsCA:                  true,
				BasicConstraintsValid: true,
				KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
			}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
			if err != nil {
				t.Fatal(err)
			}
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			if err := cert.CheckSignatureFrom(cert); err != nil {
				t.Fatalf("self-signed certificate does not verify: %v", err)
			}
		})
	}
}

// TestTLSServerKey serves TLS 1.3 and 1.2 with the private key in the
// daemon.
func TestTLSServerKey(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	for _, typ := range signerTypes {
		for _, version := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
			name := string(typ) + map[uint16]string{tls.VersionTLS13: "/tls1.3", tls.VersionTLS12: "/tls1.2"}[version]
			t.Run(name, func(t *testing.T) {
				k := generate(t, c, keywarden.KeySpec{Type: typ})
				tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
					DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
					KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
				der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
				if err != nil {
					t.Fatal(err)
				}
				leaf, _ := x509.ParseCertificate(der)
				pool := x509.NewCertPool()
				pool.AddCert(leaf)
				srvConf := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: k, Leaf: leaf}},
					MinVersion: version, MaxVersion: version}
				cliConf := &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: version, MaxVersion: version}
				a, b := net.Pipe()
				errc := make(chan error, 1)
				go func() {
					s := tls.Server(a, srvConf)
					err := s.Handshake()
					if err != nil {
						t.Logf("server: %v", err)
					}
					if err == nil {
						_, err = s.Write([]byte("hello over tls"))
					}
					s.Close()
					errc <- err
				}()
				cl := tls.Client(b, cliConf)
				got, err := io.ReadAll(cl)
				if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("client: %v", err)
				}
				if err := <-errc; err != nil {
					t.Fatalf("server handshake: %v", err)
				}
				if string(got) != "hello over tls" {
					t.Fatalf("got %q", got)
				}
			})
		}
	}
}

// TestSSHSigner uses daemon keys as SSH keys through
// ssh.NewSignerFromSigner.
func TestSSHSigner(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	for _, typ := range signerTypes {
		t.Run(string(typ), func(t *testing.T) {
			k := generate(t, c, keywarden.KeySpec{Type: typ})
			s, err := ssh.NewSignerFromSigner(k)
			if err != nil {
				t.Fatal(err)
			}
			data := []byte("ssh session data")
			sig, err := s.Sign(rand.Reader, data)
			if typ == keywarden.RSA2048 {
				// Plain Sign means ssh-rsa, RSA with SHA-1, which the
				// daemon refuses: SHA-1 signatures are forgeable.
				if err == nil {
					t.Fatal("ssh-rsa (SHA-1) signature made")
				}
			} else if err != nil {
				t.Fatal(err)
			} else if err := s.PublicKey().Verify(data, sig); err != nil {
				t.Fatalf("ssh signature does not verify: %v", err)
			}
			if as, ok := s.(ssh.AlgorithmSigner); ok && typ == keywarden.RSA2048 {
				for _, alg := range []string{ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSASHA512} {
					sig, err := as.SignWithAlgorithm(rand.Reader, data, alg)
					if err != nil {
						t.Fatal(err)
					}
					if err := s.PublicKey().Verify(data, sig); err != nil {
						t.Fatalf("%s: %v", alg, err)
					}
				}
			}
		})
	}
}

// TestSignerOptions checks crypto.Signer's options map to the right
// schemes, and that bad ones are refused.
func TestSignerOptions(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	rk := generate(t, c, keywarden.KeySpec{Type: keywarden.RSA2048})
	pub := rk.Public().(*rsa.PublicKey)
	dg := sha512.Sum512([]byte("x"))
	sig, err := rk.Sign(nil, dg[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA512})
	if err != nil {
		t.Fatal(err)
	}
	if err := rsa.VerifyPSS(pub, crypto.SHA512, dg[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}); err != nil {
		t.Fatal(err)
	}
	sig, err = rk.Sign(nil, dg[:], crypto.SHA512)
	if err != nil {
		t.Fatal(err)
	}
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA512, dg[:], sig); err != nil {
		t.Fatal(err)
	}
	if _, err := rk.Sign(nil, dg[:], &rsa.PSSOptions{SaltLength: 7, Hash: crypto.SHA512}); err == nil {
		t.Fatal("odd PSS salt length accepted")
	}
	if _, err := rk.Sign(nil, dg[:32], crypto.SHA512); err == nil {
		t.Fatal("digest of the wrong length accepted")
	}

	ek := generate(t, c, keywarden.KeySpec{Type: keywarden.Ed25519})
	if _, err := ek.Sign(nil, []byte("m"), &ed25519.Options{Context: "ctx"}); err == nil {
		t.Fatal("Ed25519ctx accepted")
	}
	sig, err = ek.Sign(nil, dg[:], &ed25519.Options{Hash: crypto.SHA512})
	if err != nil {
		t.Fatal(err)
	}
	if err := ed25519.VerifyWithOptions(ek.Public().(ed25519.PublicKey), dg[:], sig, &ed25519.Options{Hash: crypto.SHA512}); err != nil {
		t.Fatal(err)
	}
}

// TestDecrypter uses an RSA key as crypto.Decrypter.
func TestDecrypter(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	k := generate(t, c, keywarden.KeySpec{Type: keywarden.RSA2048})
	dec, err := k.Decrypter()
	if err != nil {
		t.Fatal(err)
	}
	pub := dec.Public().(*rsa.PublicKey)
	msg := []byte("session key material")
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA512} {
		ct, _ := rsa.EncryptOAEP(h.New(), rand.Reader, pub, msg, []byte("lbl"))
		pt, err := dec.Decrypt(nil, ct, &rsa.OAEPOptions{Hash: h, Label: []byte("lbl")})
		if err != nil || !bytes.Equal(pt, msg) {
			t.Fatalf("%v: %q, %v", h, pt, err)
		}
	}
	ct, _ := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, msg, nil)
	if pt, err := dec.Decrypt(nil, ct, nil); err != nil || !bytes.Equal(pt, msg) {
		t.Fatalf("nil options: %q, %v", pt, err)
	}
	v15, _ := rsa.EncryptPKCS1v15(rand.Reader, pub, msg)
	if _, err := dec.Decrypt(nil, v15, &rsa.PKCS1v15DecryptOptions{}); err == nil {
		t.Fatal("PKCS #1 v1.5 decryption accepted")
	}
	if _, err := generate(t, c, keywarden.KeySpec{Type: keywarden.ECDSAP256}).Decrypter(); err == nil {
		t.Fatal("an ECDSA key became a Decrypter")
	}
	var _ crypto.Decrypter = dec
}

// TestStreams checks streaming sessions over data larger than a message
// against the standard library and the one-shot operations.
func TestStreams(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	data := make([]byte, 3*c.MaxData()+12345)
	rand.Read(data)
	write := func(t *testing.T, s *keywarden.Stream) {
		t.Helper()
		// Odd chunk sizes exercise the buffering.
		for rest := data; len(rest) > 0; {
			n := min(len(rest), 77777)
			if _, err := s.Write(rest[:n]); err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
		}
	}

	t.Run("hash", func(t *testing.T) {
		s, err := c.NewHash(ctx, crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		write(t, s)
		got, err := s.Sum()
		want := sha256.Sum256(data)
		if err != nil || !bytes.Equal(got, want[:]) {
			t.Fatalf("%x, %v", got, err)
		}
	})
	t.Run("mac", func(t *testing.T) {
		k := generate(t, c, keywarden.KeySpec{Type: keywarden.HMACSHA512})
		s, _ := k.NewMAC(ctx)
		write(t, s)
		tag, err := s.Sum()
		if err != nil {
			t.Fatal(err)
		}
		v, _ := k.NewMACVerifier(ctx)
		write(t, v)
		if err := v.Verify(tag); err != nil {
			t.Fatal(err)
		}
		v, _ = k.NewMACVerifier(ctx)
		v.Write(data[:100])
		if err := v.Verify(tag); !errors.Is(err, keywarden.ErrVerification) {
			t.Fatalf("wrong data: %v", err)
		}
	})
	for _, typ := range []keywarden.KeyType{keywarden.ECDSAP256, keywarden.RSA2048, keywarden.Ed25519} {
		t.Run(string(typ), func(t *testing.T) {
			k := generate(t, c, keywarden.KeySpec{Type: typ})
			var opts *keywarden.SignOptions
			s, err := k.NewSigner(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			write(t, s)
			sig, err := s.Sum()
			if err != nil {
				t.Fatal(err)
			}
			switch typ {
			case keywarden.Ed25519:
				dg := sha512.Sum512(data)
				if err := ed25519.VerifyWithOptions(k.Public().(ed25519.PublicKey), dg[:], sig, &ed25519.Options{Hash: crypto.SHA512}); err != nil {
					t.Fatalf("stream signature is not Ed25519ph: %v", err)
				}
			default:
				dg := sha256.Sum256(data)
				if err := k.VerifyDigest(ctx, dg[:], sig, &keywarden.SignOptions{Hash: crypto.SHA256}); err != nil {
					t.Fatalf("stream signature does not verify as a digest signature: %v", err)
				}
			}
			v, _ := k.NewVerifier(ctx, opts)
			write(t, v)
			if err := v.Verify(sig); err != nil {
				t.Fatal(err)
			}
			v, _ = k.NewVerifier(ctx, opts)
			v.Write([]byte("other"))
			if err := v.Verify(sig); !errors.Is(err, keywarden.ErrVerification) {
				t.Fatalf("wrong data: %v", err)
			}
		})
	}
	t.Run("destroyed key ends its sessions", func(t *testing.T) {
		k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.HMACSHA256, Name: "doomed"})
		if err != nil {
			t.Fatal(err)
		}
		s, _ := k.NewMAC(ctx)
		s.Write([]byte("before"))
		if err := k.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Sum(); !errors.Is(err, keywarden.ErrNotFound) {
			t.Fatalf("session on a destroyed key: %v, want ErrNotFound", err)
		}
	})
}
