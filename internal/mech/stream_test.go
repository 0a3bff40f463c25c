package mech

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"testing"

	"github.com/keywarden/keywarden/internal/wire"
)

// feed writes data to s in chunks of the given size (0: all at once).
func feed(s Stream, data []byte, chunk int) {
	if chunk <= 0 {
		s.Write(data)
		return
	}
	for len(data) > 0 {
		n := min(chunk, len(data))
		s.Write(data[:n])
		data = data[n:]
	}
}

var chunkings = []int{0, 1, 7, 64, 1000}

func streamData() []byte {
	data := make([]byte, 3000)
	rand.Read(data)
	return data
}

func TestHashStream(t *testing.T) {
	data := streamData()
	for _, alg := range allHashes {
		want, _ := Hash(alg, data, nil)
		for _, c := range chunkings {
			s, err := NewHashStream(alg)
			wantOK(t, err)
			feed(s, data, c)
			got, err := s.Final(nil)
			wantOK(t, err)
			if !bytes.Equal(got, want) {
				t.Fatalf("%v chunk %d: stream differs from one-shot", alg, c)
			}
			spent(t, s)
		}
		s, _ := NewHashStream(alg)
		_, err := s.Final([]byte("sig"))
		wantErr(t, err, stInvalid, "")
		s, _ = NewHashStream(alg)
		s.Write(data)
		s.Destroy()
		spent(t, s)
	}
}

// spent checks that a finished or destroyed stream refuses Final and
// ignores Write and Destroy.
func spent(t testing.TB, s Stream) {
	t.Helper()
	s.Write([]byte("more"))
	_, err := s.Final(nil)
	wantErr(t, err, stInvalid, "stream already finished")
	s.Destroy()
	s.Destroy()
}

func TestMACStream(t *testing.T) {
	data := streamData()
	for _, typ := range []wire.KeyType{tHMAC256, tHMAC384, tHMAC512} {
		k := testKey(t, typ)
		want, _ := k.MAC(data, nil)
		for _, c := range chunkings {
			s, err := k.NewMACStream(false)
			wantOK(t, err)
			feed(s, data, c)
			got, err := s.Final(nil)
			wantOK(t, err)
			if !bytes.Equal(got, want) {
				t.Fatalf("%v chunk %d: stream differs from one-shot", typ, c)
			}
			spent(t, s)

			v, err := k.NewMACStream(true)
			wantOK(t, err)
			feed(v, data, c)
			got, err = v.Final(want)
			if err != nil || got != nil {
				t.Fatalf("verify stream: %v, %x", err, got)
			}
			spent(t, v)
		}
		bad := bytes.Clone(want)
		bad[0] ^= 1
		v, _ := k.NewMACStream(true)
		v.Write(data)
		_, err := v.Final(bad)
		wantErr(t, err, stVerify, "MAC does not verify")
		s, _ := k.NewMACStream(false)
		_, err = s.Final(want)
		wantErr(t, err, stInvalid, "")
		// A stream destroyed midway gives its state back reset: the next
		// MAC is still right.
		s, _ = k.NewMACStream(false)
		s.Write([]byte("partial"))
		s.Destroy()
		if got, _ := k.MAC(data, nil); !bytes.Equal(got, want) {
			t.Fatal("MAC wrong after a destroyed stream")
		}
		k.Destroy()
	}
}

func TestSignStream(t *testing.T) {
	data := streamData()
	for _, tc := range []struct {
		typ wire.KeyType
		p   SignParams
	}{
		{tP256, SignParams{}}, {tP256, SignParams{Hash: hSHA3512}},
		{tP384, SignParams{}}, {tP384, SignParams{Hash: hSHA256}},
		{tRSA2048, SignParams{}}, {tRSA2048, SignParams{Hash: hSHA512}},
		{tRSA2048, SignParams{Padding: wire.Padding_PADDING_PKCS1V15}},
		{tRSA2048, SignParams{Hash: hSHA3256, Padding: wire.Padding_PADDING_PKCS1V15}},
		{tEd, SignParams{}}, {tEd, SignParams{Hash: hSHA512}},
	} {
		k := testKey(t, tc.typ)
		pk := publicOf(t, k)
		for _, c := range chunkings {
			s, err := k.NewSignStream(tc.p, false)
			wantOK(t, err)
			feed(s, data, c)
			sig, err := s.Final(nil)
			wantOK(t, err)
			spent(t, s)

			// The one-shot Verify accepts it (Ed25519: as Ed25519ph).
			p := tc.p
			if tc.typ == tEd {
				p = SignParams{Hash: hSHA512}
			}
			wantOK(t, pk.Verify(p, data, sig))
			// And so does the standard library.
			switch pub := stdPublic(t, k).(type) {
			case ed25519.PublicKey:
				d := sha512.Sum512(data)
				wantOK(t, ed25519.VerifyWithOptions(pub, d[:], sig, &ed25519.Options{Hash: crypto.SHA512}))
				// Ed25519 is deterministic: equal to the one-shot signature.
				if one := mustSign(t, k, SignParams{Hash: hSHA512, Prehashed: true}, d[:]); !bytes.Equal(one, sig) {
					t.Fatal("Ed25519 stream differs from one-shot Ed25519ph")
				}
			case *ecdsa.PublicKey:
				sc, _ := k.scheme(tc.p, true)
				if !ecdsa.VerifyASN1(pub, digest(sc.hash, data), sig) {
					t.Fatal("stdlib does not verify ECDSA stream signature")
				}
			case *rsa.PublicKey:
				if tc.p.Padding == wire.Padding_PADDING_PKCS1V15 {
					if one := mustSign(t, k, tc.p, data); !bytes.Equal(one, sig) {
						t.Fatal("RSA PKCS #1 v1.5 stream differs from one-shot")
					}
				}
			}

			// A verify stream (public key) accepts the one-shot signature.
			one := mustSign(t, k, p, data)
			v, err := pk.NewSignStream(tc.p, true)
			wantOK(t, err)
			feed(v, data, c)
			got, err := v.Final(one)
			if err != nil || got != nil {
				t.Fatalf("%v chunk %d: verify stream: %v", tc.typ, c, err)
			}
			spent(t, v)
			v, _ = pk.NewSignStream(tc.p, true)
			feed(v, data[1:], c)
			_, err = v.Final(one)
			wantErr(t, err, stVerify, "signature does not verify")
		}
		_, err := pk.NewSignStream(tc.p, false)
		wantErr(t, err, stInvalid, "operation requires a private key")
		_, err = k.NewSignStream(SignParams{Hash: tc.p.Hash, Prehashed: true}, false)
		wantErr(t, err, stInvalid, "")
		s, _ := k.NewSignStream(tc.p, false)
		_, err = s.Final([]byte("unexpected"))
		wantErr(t, err, stInvalid, "")
		k.Destroy()
		pk.Destroy()
	}
	k := testKey(t, tEd)
	defer k.Destroy()
	_, err := k.NewSignStream(SignParams{Hash: hSHA256}, false)
	wantErr(t, err, stInvalid, "")
}
