package mech

import (
	"crypto/hmac"
	"hash"

	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/wire"
)

// Compile-time checks that the streams implement Stream.
var (
	_ Stream = (*hashStream)(nil)
	_ Stream = (*macStream)(nil)
	_ Stream = (*signStream)(nil)
)

func errStreamDone() error { return invalid("stream already finished") }

func errUnexpectedSig() error {
	return invalid("a signature is only given to a verifying stream")
}

// NewHashStream returns a stream computing the digest of everything
// written to it under alg. Its Final takes no signature.
func NewHashStream(alg wire.HashAlg) (Stream, error) {
	f := hashFunc(alg)
	if f == nil {
		return nil, errUnknownHash()
	}
	return &hashStream{h: f()}, nil
}

type hashStream struct {
	h hash.Hash // nil once finished or destroyed
}

func (s *hashStream) Write(p []byte) {
	if s.h != nil {
		s.h.Write(p)
	}
}

func (s *hashStream) Final(sig []byte) ([]byte, error) {
	if s.h == nil {
		return nil, errStreamDone()
	}
	defer s.Destroy()
	if len(sig) != 0 {
		return nil, errUnexpectedSig()
	}
	return s.h.Sum(nil), nil
}

func (s *hashStream) Destroy() {
	if s.h != nil {
		s.h.Reset()
		s.h = nil
	}
}

// NewMACStream returns a stream computing the HMAC of everything written
// to it. With verify set, Final checks the tag it is given (constant time)
// and returns (nil, nil) or STATUS_VERIFICATION_FAILED; otherwise Final
// returns the tag. The stream holds one keyed state from the key's pool;
// Final and Destroy give it back.
//
// The keyed state is made from the key inside secmem.Do, and every step
// runs inside it too: the state is as secret as the key.
func (k *Key) NewMACStream(verify bool) (Stream, error) {
	if err := k.isMAC(); err != nil {
		return nil, err
	}
	st := &macStream{k: k, verify: verify}
	err := k.run(func(e *expanded) error {
		st.e, st.h = e, k.getMAC(e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return st, nil
}

type macStream struct {
	k      *Key
	e      *expanded // the key's expanded state, for returning h
	h      hash.Hash // nil once finished or destroyed
	verify bool
}

func (s *macStream) Write(p []byte) {
	if s.h != nil {
		secmem.Do(func() { s.h.Write(p) })
	}
}

func (s *macStream) Final(sig []byte) (out []byte, err error) {
	if s.h == nil {
		return nil, errStreamDone()
	}
	defer s.Destroy()
	if err := s.k.live(); err != nil {
		return nil, err
	}
	if !s.verify && len(sig) != 0 {
		return nil, errUnexpectedSig()
	}
	secmem.Do(func() {
		if !s.verify {
			out = s.h.Sum(nil)
			return
		}
		var buf [maxTagSize]byte
		sum := s.h.Sum(buf[:0])
		ok := hmac.Equal(sum, sig)
		clear(buf[:])
		if !ok {
			err = errBadMAC()
		}
	})
	return out, err
}

// Destroy resets the keyed state and returns it to the key's pool, or
// drops it if the key has been destroyed.
func (s *macStream) Destroy() {
	if s.h == nil {
		return
	}
	secmem.Do(func() {
		if s.k.live() == nil {
			putMAC(s.e, s.h)
		} else {
			s.h.Reset()
		}
	})
	s.h, s.e, s.k = nil, nil, nil
}

// NewSignStream returns a stream that hashes everything written to it and
// signs (or, with verify, checks a signature over) the digest at Final, as
// Sign and Verify would for the whole message with p. p.Prehashed must be
// false. Ed25519 streams always use Ed25519ph (SHA-512); p.Hash may be
// unspecified or SHA-512. A signing stream needs a private key.
func (k *Key) NewSignStream(p SignParams, verify bool) (Stream, error) {
	if err := k.live(); err != nil {
		return nil, err
	}
	if !k.canSign() {
		return nil, errUnsupported()
	}
	if !verify && !k.hasPrivate() {
		return nil, errNeedPrivate()
	}
	sc, err := k.scheme(p, true)
	if err != nil {
		return nil, err
	}
	f := hashFunc(sc.hash)
	if f == nil {
		return nil, errUnknownHash()
	}
	return &signStream{k: k, sc: sc, h: f(), verify: verify}, nil
}

type signStream struct {
	k      *Key
	sc     scheme
	h      hash.Hash // nil once finished or destroyed
	verify bool
}

func (s *signStream) Write(p []byte) {
	if s.h != nil {
		s.h.Write(p)
	}
}

func (s *signStream) Final(sig []byte) ([]byte, error) {
	if s.h == nil {
		return nil, errStreamDone()
	}
	defer s.Destroy()
	if err := s.k.live(); err != nil {
		return nil, err
	}
	d := s.h.Sum(nil)
	if s.verify {
		return nil, s.k.verifyMessage(s.sc, d, sig)
	}
	if len(sig) != 0 {
		return nil, errUnexpectedSig()
	}
	var out []byte
	err := s.k.run(func(e *expanded) error {
		var err error
		out, err = signMessage(e, s.sc, d)
		return err
	})
	return out, err
}

func (s *signStream) Destroy() {
	if s.h != nil {
		s.h.Reset()
		s.h, s.k = nil, nil
	}
}
