package keywarden_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/sshagent"
)

// TestMain serves a daemon in this process on a temporary socket and
// points $KEYWARDEN_SOCKET at it, so the examples run as written.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keywarden-example-")
	if err != nil {
		log.Fatal(err)
	}
	sock := filepath.Join(dir, "kw.sock")
	l, err := seqpacket.Listen(sock, 0o600)
	if err != nil {
		log.Fatal(err)
	}
	agentSock := filepath.Join(dir, "agent.sock")
	srv, err := server.New(server.Config{DevMode: true, SSHAgentSockets: []string{agentSock}})
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(l)
	al, err := sshagent.Listen(agentSock, 0o600)
	if err != nil {
		log.Fatal(err)
	}
	ag := sshagent.New(sshagent.Config{Server: srv})
	go ag.Serve(al)
	defer ag.Close()
	os.Setenv(keywarden.SocketEnv, sock)
	code := m.Run()
	srv.Shutdown(context.Background())
	os.RemoveAll(dir)
	os.Exit(code)
}

func Example() {
	ctx := context.Background()
	// "" means $KEYWARDEN_SOCKET, else the default socket.
	client, err := keywarden.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	key, err := client.Generate(ctx, keywarden.KeySpec{Name: "example-data", Type: keywarden.AES256GCM})
	if err != nil {
		log.Fatal(err)
	}
	ciphertext, err := key.Encrypt(ctx, []byte("attack at dawn"), []byte("record 42"))
	if err != nil {
		log.Fatal(err)
	}
	plaintext, err := key.Decrypt(ctx, ciphertext, []byte("record 42"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s (%d-byte ciphertext)\n", plaintext, len(ciphertext))

	// The key never leaves the daemon: it was not created exportable.
	_, err = key.Export(ctx, keywarden.FormatRaw)
	fmt.Println(errors.Is(err, keywarden.ErrPolicyViolation))
	// Output:
	// attack at dawn (49-byte ciphertext)
	// true
}

// A daemon key is a crypto.Signer and a crypto.MessageSigner: here
// crypto/x509 has it sign a certificate.
func ExampleKey_Sign() {
	ctx := context.Background()
	client, err := keywarden.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	key, err := client.Generate(ctx, keywarden.KeySpec{Name: "example-ca", Type: keywarden.ECDSAP256})
	if err != nil {
		log.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Example CA"},
		NotBefore:             time.Now(),
		NotAfter:              time.Now().AddDate(1, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		log.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	fmt.Println(cert.Subject.CommonName, cert.CheckSignatureFrom(cert) == nil)
	// Output: Example CA true
}

// A daemon key is a crypto.MessageSigner too: crypto.SignMessage (and
// crypto/x509 and crypto/tls, which call it) hand the daemon the message,
// and the daemon hashes it.
func ExampleKey_SignMessage() {
	ctx := context.Background()
	client, err := keywarden.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	key, err := client.Generate(ctx, keywarden.KeySpec{Type: keywarden.ECDSAP256, Ephemeral: true})
	if err != nil {
		log.Fatal(err)
	}
	msg := []byte("release v1.0")
	sig, err := crypto.SignMessage(key, rand.Reader, msg, crypto.SHA256)
	if err != nil {
		log.Fatal(err)
	}
	digest := sha256.Sum256(msg)
	fmt.Println(ecdsa.VerifyASN1(key.Public().(*ecdsa.PublicKey), digest[:], sig))

	// SignMessageContext takes a context, and the daemon's options.
	sig, err = key.SignMessageContext(ctx, msg, &keywarden.SignOptions{Hash: crypto.SHA384})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(key.Verify(ctx, msg, sig, &keywarden.SignOptions{Hash: crypto.SHA384}) == nil)
	// Output:
	// true
	// true
}

// Envelope encryption: a data key made in the daemon, returned in plain
// for local use and encrypted under a key that never leaves.
func ExampleKey_GenerateDataKey() {
	ctx := context.Background()
	client, err := keywarden.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	kek, err := client.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	if err != nil {
		log.Fatal(err)
	}
	aad := []byte("backup 2026-12")
	dk, err := kek.GenerateDataKey(ctx, aad, &keywarden.DataKeyOptions{Plaintext: true})
	if err != nil {
		log.Fatal(err)
	}
	defer clear(dk.Plaintext)
	// Store dk.Ciphertext beside the data; later, the daemon gives the key back.
	again, err := kek.Decrypt(ctx, dk.Ciphertext, aad)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(dk.Plaintext), bytes.Equal(again, dk.Plaintext))
	// Output: 32 true
}

func ExampleKey_Verify() {
	ctx := context.Background()
	client, err := keywarden.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	key, err := client.Generate(ctx, keywarden.KeySpec{Type: keywarden.Ed25519, Ephemeral: true})
	if err != nil {
		log.Fatal(err)
	}
	msg := []byte("release v1.0")
	sig, err := key.SignMessageContext(ctx, msg, nil)
	if err != nil {
		log.Fatal(err)
	}
	// Anyone can check it with the public key alone...
	fmt.Println(ed25519.Verify(key.Public().(ed25519.PublicKey), msg, sig))
	// ...or ask the daemon. A bad signature is ErrVerification.
	err = key.Verify(ctx, []byte("release v2.0"), sig, nil)
	fmt.Println(errors.Is(err, keywarden.ErrVerification))
	// Output:
	// true
	// true
}

// A Batch sends many small operations in as few messages as possible.
func ExampleBatch() {
	ctx := context.Background()
	client, err := keywarden.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	key, err := client.Generate(ctx, keywarden.KeySpec{Type: keywarden.HMACSHA256, Ephemeral: true})
	if err != nil {
		log.Fatal(err)
	}
	batch := client.NewBatch()
	var results []*keywarden.BatchResult
	for i := range 1000 {
		results = append(results, batch.MAC(key, fmt.Appendf(nil, "record %d", i)))
	}
	if err := batch.Do(ctx); err != nil {
		log.Fatal(err)
	}
	tag, err := results[999].Bytes()
	fmt.Println(len(results), len(tag), err)
	// Output: 1000 32 <nil>
}

// Streams hash, MAC or sign data of any size.
func ExampleKey_NewSigner() {
	ctx := context.Background()
	client, err := keywarden.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	key, err := client.Generate(ctx, keywarden.KeySpec{Type: keywarden.ECDSAP256, Ephemeral: true})
	if err != nil {
		log.Fatal(err)
	}
	signer, err := key.NewSigner(ctx, &keywarden.SignOptions{Hash: crypto.SHA256})
	if err != nil {
		log.Fatal(err)
	}
	defer signer.Close()
	big := make([]byte, 4<<20) // larger than one message
	signer.Write(big)
	sig, err := signer.Sum()
	if err != nil {
		log.Fatal(err)
	}
	digest := sha256.Sum256(big)
	fmt.Println(key.VerifyDigest(ctx, digest[:], sig, &keywarden.SignOptions{Hash: crypto.SHA256}))
	// Output: <nil>
}

// Keys are shared with other users through their ACL.
func ExampleKey_SetACL() {
	ctx := context.Background()
	client, err := keywarden.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	key, err := client.Generate(ctx, keywarden.KeySpec{Name: "example-shared", Type: keywarden.Ed25519})
	if err != nil {
		log.Fatal(err)
	}
	// uid 33 may verify with it; the group 1001 may sign and verify.
	info, err := key.SetACL(ctx, []keywarden.ACLEntry{
		{ID: 33, Usage: keywarden.UsageVerify},
		{Group: true, ID: 1001, Usage: keywarden.UsageSign | keywarden.UsageVerify},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(info.ACL), info.ACL[1].Usage)
	// Output: 2 sign,verify
}

// EncryptWriter and DecryptReader encrypt data of any size with a key
// that stays in the daemon, in memory bounded by a few chunks.
func ExampleKey_EncryptWriter() {
	ctx := context.Background()
	client, err := keywarden.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	key, err := client.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	if err != nil {
		log.Fatal(err)
	}
	var sealed bytes.Buffer // a file, a socket, any io.Writer
	w, err := key.EncryptWriter(ctx, &sealed, []byte("backup 2026-12-06"), nil)
	if err != nil {
		log.Fatal(err)
	}
	big := bytes.Repeat([]byte("data "), 1<<20) // 5 MiB, larger than one message
	if _, err := w.Write(big); err != nil {
		log.Fatal(err)
	}
	if err := w.Close(); err != nil { // seals the final chunk
		log.Fatal(err)
	}

	r, err := key.DecryptReader(ctx, &sealed, []byte("backup 2026-12-06"), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	n, err := io.Copy(io.Discard, r) // io.EOF only after the final chunk authenticated
	fmt.Println(n == int64(len(big)), err)
	// Output: true <nil>
}

// AppendEncrypt and AppendDecrypt append to a buffer, as cipher.AEAD's
// Seal and Open do: a loop over large messages, which go through the
// connection's shared memory, reuses one buffer instead of allocating a
// result for each.
func ExampleKey_AppendEncrypt() {
	ctx := context.Background()
	client, err := keywarden.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	key, err := client.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	if err != nil {
		log.Fatal(err)
	}
	const size = 1 << 20
	buf := make([]byte, 0, size+35) // 7-byte header, 12-byte nonce, 16-byte tag
	var plain []byte
	for i := range 3 {
		msg := bytes.Repeat([]byte{byte(i)}, size)
		if buf, err = key.AppendEncrypt(ctx, buf[:0], msg, nil); err != nil {
			log.Fatal(err)
		}
		// ... write buf out ...
		if plain, err = key.AppendDecrypt(ctx, plain[:0], buf, nil); err != nil {
			log.Fatal(err)
		}
		fmt.Println(len(buf), bytes.Equal(plain, msg))
	}
	// Output:
	// 1048611 true
	// 1048611 true
	// 1048611 true
}
