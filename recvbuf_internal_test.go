package keywarden

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"

	"github.com/keywarden/keywarden/internal/stream"
)

// TestReplyBufferKeepsNoSecret: the buffer a client receives replies
// into keeps no copy of a reply once it is decoded, so that the caller's
// wiping of a decryption's plaintext or of a stream's data key leaves none
// behind in the client's memory.
func TestReplyBufferKeepsNoSecret(t *testing.T) {
	ctx := context.Background()
	c, err := Dial(ctx, "") // the daemon of TestMain (example_test.go)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	k, err := c.Generate(ctx, KeySpec{Type: AES256GCM, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}

	secret := make([]byte, 48)
	rand.Read(secret)
	ct, err := k.Encrypt(ctx, secret, nil)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := k.Decrypt(ctx, ct, nil)
	if err != nil || !bytes.Equal(pt, secret) {
		t.Fatalf("decrypt: %v", err)
	}
	clear(pt)
	if bytes.Contains(c.recvBuf, secret) {
		t.Fatal("the reply buffer still holds a decryption's plaintext after the caller wiped it")
	}

	// An envelope stream's data key: the writer wipes the copy it was
	// given; no other may stay behind.
	var out bytes.Buffer
	w, err := k.EncryptWriter(ctx, &out, nil, &StreamOptions{DataKey: true})
	if err != nil {
		t.Fatal(err)
	}
	held := bytes.Clone(c.recvBuf)
	if _, err := w.Write([]byte("data")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	s := out.Bytes()
	hdr, err := stream.ParseHeader(s)
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := stream.ReadWrappedKey(bytes.NewReader(s[stream.HeaderSize:]))
	if err != nil {
		t.Fatal(err)
	}
	dk, err := k.Decrypt(ctx, wrapped, stream.DataKeyAAD(nil, hdr, nil))
	if err != nil || len(dk) != stream.DataKeySize {
		t.Fatalf("opening the data key: %v", err)
	}
	if bytes.Contains(held, dk) {
		t.Fatal("the reply buffer held the stream's data key after the writer wiped it")
	}
	clear(dk)
}
