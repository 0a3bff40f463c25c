package bench

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"

	"github.com/keywarden/keywarden"
)

// operation is one thing Run measures, both ways.
type operation struct {
	name string
	// size is the payload of one operation in bytes; 0 for ping.
	size int
	// local prepares the operation done in-process with the standard
	// library and returns one call of it; nil when there is no in-process
	// equivalent.
	local func() (func() error, error)
	// remote prepares the operation through the daemon on c: it makes the
	// key and checks once that the daemon's answer is right.
	remote func(ctx context.Context, c *keywarden.Client) (*remoteOp, error)
	// floor: the machine's floor for a round trip (ModeFloor) is measured
	// with this operation, ping.
	floor bool
}

// remoteOp is an operation prepared on a Client.
type remoteOp struct {
	one   func(ctx context.Context) error                 // one operation, one request
	queue func(b *keywarden.Batch) *keywarden.BatchResult // queues one operation
	close func(ctx context.Context)                       // releases the key
}

// Sizes, in bytes unless named otherwise.
const (
	aeadSize = 256     // AES-GCM and HMAC messages
	signSize = 64      // messages signed
	hashSize = 4 << 10 // messages hashed
	bulkSize = 1 << 20 // large messages, encrypted or hashed
	aeadKey  = 32      // AES-256 and HMAC-SHA256 key bytes
	rsaBits  = 2048    // RSA modulus
	gcmOver  = 12 + 16 // nonce and tag
)

var operations = []operation{
	{name: "ping", remote: remotePing, floor: true},
	{name: "aes256-gcm-seal-256", size: aeadSize, local: localSeal, remote: remoteSeal},
	{name: "aes256-gcm-open-256", size: aeadSize, local: localOpen, remote: remoteOpen},
	{name: "hmac-sha256-256", size: aeadSize, local: localMAC, remote: remoteMAC},
	{name: "ed25519-sign", size: signSize, local: localEd25519, remote: remoteSign(keywarden.Ed25519, verifyEd25519)},
	{name: "ecdsa-p256-sign", size: signSize, local: localECDSA, remote: remoteSign(keywarden.ECDSAP256, verifyECDSA)},
	{name: "rsa2048-pss-sign", size: signSize, local: localRSA, remote: remoteSign(keywarden.RSA2048, verifyRSA)},
	{name: "sha256-4k", size: hashSize, local: localSHA256, remote: remoteSHA256},
	{name: "aes256-gcm-seal-1m", size: bulkSize, local: localSeal1M, remote: remoteSeal1M},
	{name: "sha256-1m", size: bulkSize, local: localSHA2561M, remote: remoteSHA2561M},
}

// message returns n random bytes.
func message(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// sink keeps the compiler from dropping work whose result is unused.
var sink byte

func newGCM() (cipher.AEAD, error) {
	block, err := aes.NewCipher(message(aeadKey))
	if err != nil {
		return nil, err
	}
	return cipher.NewGCMWithRandomNonce(block)
}

func localSeal() (func() error, error) {
	aead, err := newGCM()
	if err != nil {
		return nil, err
	}
	pt := message(aeadSize)
	dst := make([]byte, 0, aeadSize+gcmOver)
	return func() error {
		dst = aead.Seal(dst[:0], nil, pt, nil)
		return nil
	}, nil
}

func localOpen() (func() error, error) {
	aead, err := newGCM()
	if err != nil {
		return nil, err
	}
	ct := aead.Seal(nil, nil, message(aeadSize), nil)
	dst := make([]byte, 0, aeadSize)
	return func() error {
		var err error
		dst, err = aead.Open(dst[:0], nil, ct, nil)
		return err
	}, nil
}

func localMAC() (func() error, error) {
	h := hmac.New(sha256.New, message(aeadKey))
	data := message(aeadSize)
	sum := make([]byte, 0, sha256.Size)
	return func() error {
		h.Reset()
		h.Write(data)
		sum = h.Sum(sum[:0])
		return nil
	}, nil
}

func localEd25519() (func() error, error) {
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		return nil, err
	}
	msg := message(signSize)
	return func() error {
		sink ^= ed25519.Sign(priv, msg)[0]
		return nil
	}, nil
}

func localECDSA() (func() error, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	msg := message(signSize)
	return func() error {
		d := sha256.Sum256(msg)
		_, err := ecdsa.SignASN1(rand.Reader, priv, d[:])
		return err
	}, nil
}

var pssOptions = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}

func localRSA() (func() error, error) {
	priv, err := rsa.GenerateKey(rand.Reader, rsaBits)
	if err != nil {
		return nil, err
	}
	msg := message(signSize)
	return func() error {
		d := sha256.Sum256(msg)
		_, err := rsa.SignPSS(rand.Reader, priv, crypto.SHA256, d[:], pssOptions)
		return err
	}, nil
}

func localSHA256() (func() error, error) {
	data := message(hashSize)
	return func() error {
		d := sha256.Sum256(data)
		sink ^= d[0]
		return nil
	}, nil
}

// errWrongAnswer means the daemon's answer to the check before a
// measurement was not what the standard library computes or accepts.
var errWrongAnswer = errors.New("the daemon's answer did not check out")

func remotePing(ctx context.Context, c *keywarden.Client) (*remoteOp, error) {
	return &remoteOp{
		one:   func(ctx context.Context) error { return c.Ping(ctx, nil) },
		queue: func(b *keywarden.Batch) *keywarden.BatchResult { return b.Ping(nil) },
		close: func(context.Context) {},
	}, nil
}

// ephemeral makes a key that dies with the connection.
func ephemeral(ctx context.Context, c *keywarden.Client, t keywarden.KeyType) (*keywarden.Key, error) {
	return c.Generate(ctx, keywarden.KeySpec{Type: t, Ephemeral: true})
}

func closer(k *keywarden.Key) func(context.Context) {
	return func(ctx context.Context) { k.Close(ctx) }
}

func remoteSeal(ctx context.Context, c *keywarden.Client) (*remoteOp, error) {
	k, err := ephemeral(ctx, c, keywarden.AES256GCM)
	if err != nil {
		return nil, err
	}
	pt := message(aeadSize)
	ct, err := k.Encrypt(ctx, pt, nil)
	if err == nil {
		var back []byte
		back, err = k.Decrypt(ctx, ct, nil)
		if err == nil && (len(ct) != 7+aeadSize+gcmOver || !bytes.Equal(back, pt)) { // the version header, then nonce, ciphertext, tag
			err = errWrongAnswer
		}
	}
	if err != nil {
		k.Close(ctx)
		return nil, err
	}
	return &remoteOp{
		one: func(ctx context.Context) error {
			_, err := k.Encrypt(ctx, pt, nil)
			return err
		},
		queue: func(b *keywarden.Batch) *keywarden.BatchResult { return b.Encrypt(k, pt, nil) },
		close: closer(k),
	}, nil
}

func remoteOpen(ctx context.Context, c *keywarden.Client) (*remoteOp, error) {
	k, err := ephemeral(ctx, c, keywarden.AES256GCM)
	if err != nil {
		return nil, err
	}
	pt := message(aeadSize)
	ct, err := k.Encrypt(ctx, pt, nil)
	if err == nil {
		var back []byte
		back, err = k.Decrypt(ctx, ct, nil)
		if err == nil && !bytes.Equal(back, pt) {
			err = errWrongAnswer
		}
	}
	if err != nil {
		k.Close(ctx)
		return nil, err
	}
	return &remoteOp{
		one: func(ctx context.Context) error {
			_, err := k.Decrypt(ctx, ct, nil)
			return err
		},
		queue: func(b *keywarden.Batch) *keywarden.BatchResult { return b.Decrypt(k, ct, nil) },
		close: closer(k),
	}, nil
}

func remoteMAC(ctx context.Context, c *keywarden.Client) (*remoteOp, error) {
	k, err := ephemeral(ctx, c, keywarden.HMACSHA256)
	if err != nil {
		return nil, err
	}
	data := message(aeadSize)
	tag, err := k.MAC(ctx, data)
	if err == nil && len(tag) != sha256.Size {
		err = errWrongAnswer
	}
	if err == nil {
		err = k.VerifyMAC(ctx, data, tag)
	}
	if err != nil {
		k.Close(ctx)
		return nil, err
	}
	return &remoteOp{
		one: func(ctx context.Context) error {
			_, err := k.MAC(ctx, data)
			return err
		},
		queue: func(b *keywarden.Batch) *keywarden.BatchResult { return b.MAC(k, data) },
		close: closer(k),
	}, nil
}

// remoteSign prepares signing a message with the daemon's defaults for
// the key type (SHA-256 and PSS where they apply); verify checks one
// signature with the standard library.
func remoteSign(t keywarden.KeyType, verify func(pub crypto.PublicKey, msg, sig []byte) bool) func(context.Context, *keywarden.Client) (*remoteOp, error) {
	return func(ctx context.Context, c *keywarden.Client) (*remoteOp, error) {
		k, err := ephemeral(ctx, c, t)
		if err != nil {
			return nil, err
		}
		msg := message(signSize)
		sig, err := k.SignMessageContext(ctx, msg, nil)
		if err == nil {
			var pub crypto.PublicKey
			pub, err = k.Info().PublicKey()
			if err == nil && !verify(pub, msg, sig) {
				err = errWrongAnswer
			}
		}
		if err != nil {
			k.Close(ctx)
			return nil, err
		}
		return &remoteOp{
			one: func(ctx context.Context) error {
				_, err := k.SignMessageContext(ctx, msg, nil)
				return err
			},
			queue: func(b *keywarden.Batch) *keywarden.BatchResult { return b.SignMessage(k, msg, nil) },
			close: closer(k),
		}, nil
	}
}

func verifyEd25519(pub crypto.PublicKey, msg, sig []byte) bool {
	p, ok := pub.(ed25519.PublicKey)
	return ok && ed25519.Verify(p, msg, sig)
}

func verifyECDSA(pub crypto.PublicKey, msg, sig []byte) bool {
	p, ok := pub.(*ecdsa.PublicKey)
	d := sha256.Sum256(msg)
	return ok && ecdsa.VerifyASN1(p, d[:], sig)
}

func verifyRSA(pub crypto.PublicKey, msg, sig []byte) bool {
	p, ok := pub.(*rsa.PublicKey)
	d := sha256.Sum256(msg)
	return ok && rsa.VerifyPSS(p, crypto.SHA256, d[:], sig, pssOptions) == nil
}

func remoteSHA256(ctx context.Context, c *keywarden.Client) (*remoteOp, error) {
	data := message(hashSize)
	sum, err := c.Hash(ctx, crypto.SHA256, data)
	if err != nil {
		return nil, err
	}
	if want := sha256.Sum256(data); !bytes.Equal(sum, want[:]) {
		return nil, errWrongAnswer
	}
	return &remoteOp{
		one: func(ctx context.Context) error {
			_, err := c.Hash(ctx, crypto.SHA256, data)
			return err
		},
		queue: func(b *keywarden.Batch) *keywarden.BatchResult { return b.Hash(crypto.SHA256, data) },
		close: func(context.Context) {},
	}, nil
}

// Large messages: one AES-GCM seal or SHA-256 of 1 MiB in-process, and
// through the daemon the client's streams (a message larger than the
// daemon's messages is sent in chunks): an encryption stream of 64 KiB
// chunks (docs/formats.md, "Stream ciphertexts") and a hashing session.
// Each is many requests already: they are measured one at a time (no
// pipelined or batched mode).

func localSeal1M() (func() error, error) {
	aead, err := newGCM()
	if err != nil {
		return nil, err
	}
	pt := message(bulkSize)
	dst := make([]byte, 0, bulkSize+gcmOver)
	return func() error {
		dst = aead.Seal(dst[:0], nil, pt, nil)
		return nil
	}, nil
}

func localSHA2561M() (func() error, error) {
	data := message(bulkSize)
	return func() error {
		sum := sha256.Sum256(data)
		sink ^= sum[0]
		return nil
	}, nil
}

func remoteSeal1M(ctx context.Context, c *keywarden.Client) (*remoteOp, error) {
	k, err := ephemeral(ctx, c, keywarden.AES256GCM)
	if err != nil {
		return nil, err
	}
	// One encryption of the whole message: the client sends it through
	// the connection's shared memory (docs/protocol.md, "Shared memory")
	// and appends the ciphertext to a buffer it reuses, as the in-process
	// baseline does.
	pt := message(bulkSize)
	ct, err := k.Encrypt(ctx, pt, nil)
	if err == nil {
		var back []byte
		if back, err = k.Decrypt(ctx, ct, nil); err == nil && !bytes.Equal(back, pt) {
			err = errWrongAnswer
		}
	}
	if err != nil {
		k.Close(ctx)
		return nil, err
	}
	dst := make([]byte, 0, bulkSize+7+gcmOver)
	return &remoteOp{
		one: func(ctx context.Context) error {
			var err error
			dst, err = k.AppendEncrypt(ctx, dst[:0], pt, nil)
			return err
		},
		close: closer(k),
	}, nil
}

func remoteSHA2561M(ctx context.Context, c *keywarden.Client) (*remoteOp, error) {
	data := message(bulkSize)
	sum, err := c.Hash(ctx, crypto.SHA256, data)
	if err != nil {
		return nil, err
	}
	if want := sha256.Sum256(data); !bytes.Equal(sum, want[:]) {
		return nil, errWrongAnswer
	}
	return &remoteOp{
		one: func(ctx context.Context) error {
			_, err := c.Hash(ctx, crypto.SHA256, data)
			return err
		},
		close: func(context.Context) {},
	}, nil
}
