package keywarden

import (
	"context"
	"crypto"
	"errors"

	"github.com/keywarden/keywarden/internal/wire"
)

// Stream is a streaming computation in the daemon (init, update, final)
// over data of any size: a hash, a MAC or a signature, made or checked.
// Write sends the data in messages as large as the daemon allows; Sum or
// Verify finishes. A Stream is not safe for concurrent use. Every step uses
// the context given when the Stream was made.
//
// Ed25519 signature streams produce and check Ed25519ph (RFC 8032)
// signatures: pure Ed25519 needs the whole message at once.
type Stream struct {
	c      *Client
	ctx    context.Context
	op     string
	id     uint32
	verify bool
	buf    []byte
	err    error
	done   bool
}

func (c *Client) openStream(ctx context.Context, op string, so *wire.SessionOpen, verify bool) (*Stream, error) {
	res, err := c.do(ctx, op, &wire.Op{Op: &wire.Op_SessionOpen{SessionOpen: so}})
	if err != nil {
		return nil, err
	}
	return &Stream{c: c, ctx: ctx, op: op, id: res.GetSession().GetSession(), verify: verify}, nil
}

// NewHash starts a streaming hash.
func (c *Client) NewHash(ctx context.Context, h crypto.Hash) (*Stream, error) {
	alg, err := hashToWire(h)
	if err != nil {
		return nil, err
	}
	if alg == wire.HashAlg_HASH_ALG_UNSPECIFIED {
		return nil, argError("hash", "a hash must be named")
	}
	return c.openStream(ctx, "hash", &wire.SessionOpen{Kind: wire.SessionKind_SESSION_KIND_HASH, Hash: alg}, false)
}

// NewMAC starts a streaming HMAC; Sum returns the tag.
func (k *Key) NewMAC(ctx context.Context) (*Stream, error) {
	return k.c.openStream(ctx, "mac", &wire.SessionOpen{Kind: wire.SessionKind_SESSION_KIND_MAC, Handle: k.handle}, false)
}

// NewMACVerifier starts a streaming HMAC check; Verify checks the tag.
func (k *Key) NewMACVerifier(ctx context.Context) (*Stream, error) {
	return k.c.openStream(ctx, "mac-verify", &wire.SessionOpen{Kind: wire.SessionKind_SESSION_KIND_MAC_VERIFY, Handle: k.handle}, true)
}

func (k *Key) signSession(ctx context.Context, op string, kind wire.SessionKind, opts *SignOptions, verify bool) (*Stream, error) {
	s, err := k.signOp(nil, false, opts)
	if err != nil {
		return nil, err
	}
	return k.c.openStream(ctx, op, &wire.SessionOpen{Kind: kind, Handle: k.handle, Hash: s.Hash, Padding: s.Padding}, verify)
}

// NewSigner starts a streaming signature; Sum returns the signature, the
// same as SignMessageContext over all the data would (Ed25519: Ed25519ph).
func (k *Key) NewSigner(ctx context.Context, opts *SignOptions) (*Stream, error) {
	return k.signSession(ctx, "sign", wire.SessionKind_SESSION_KIND_SIGN, opts, false)
}

// NewVerifier starts a streaming signature check; Verify checks it.
func (k *Key) NewVerifier(ctx context.Context, opts *SignOptions) (*Stream, error) {
	return k.signSession(ctx, "verify", wire.SessionKind_SESSION_KIND_VERIFY, opts, true)
}

func (s *Stream) chunk() int { return s.c.MaxData() }

// Write adds p to the computation. It implements io.Writer.
func (s *Stream) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.done {
		return 0, errors.New("keywarden: write to a finished stream")
	}
	n := len(p)
	chunk := s.chunk()
	for len(p) > 0 {
		if len(s.buf) == 0 && len(p) >= chunk {
			if err := s.update(p[:chunk]); err != nil {
				return n - len(p), err
			}
			p = p[chunk:]
			continue
		}
		take := min(chunk-len(s.buf), len(p))
		s.buf = append(s.buf, p[:take]...)
		p = p[take:]
		if len(s.buf) == chunk {
			if err := s.update(s.buf); err != nil {
				return n - len(p), err
			}
			s.buf = s.buf[:0]
		}
	}
	return n, nil
}

func (s *Stream) update(data []byte) error {
	_, err := s.c.do(s.ctx, s.op, &wire.Op{Op: &wire.Op_SessionUpdate{SessionUpdate: &wire.SessionUpdate{Session: s.id, Data: data}}})
	if err != nil {
		s.err = err
		s.done = true
	}
	return err
}

func (s *Stream) final(sig []byte) ([]byte, error) {
	if s.err != nil {
		return nil, s.err
	}
	if s.done {
		return nil, errors.New("keywarden: stream already finished")
	}
	if len(s.buf) > 0 {
		if err := s.update(s.buf); err != nil {
			return nil, err
		}
		s.buf = s.buf[:0]
	}
	s.done = true
	return s.c.doData(s.ctx, s.op, &wire.Op{Op: &wire.Op_SessionFinal{SessionFinal: &wire.SessionFinal{Session: s.id, Signature: sig}}})
}

// Sum finishes a hash, MAC or signing stream and returns the digest, tag
// or signature.
func (s *Stream) Sum() ([]byte, error) {
	if s.verify {
		return nil, errors.New("keywarden: Sum on a verifying stream; use Verify")
	}
	return s.final(nil)
}

// Verify finishes a verifying stream: nil if sig (a signature or tag)
// matches, an error matching ErrVerification if not.
func (s *Stream) Verify(sig []byte) error {
	if !s.verify {
		return errors.New("keywarden: Verify on a stream that computes; use Sum")
	}
	_, err := s.final(sig)
	return err
}

// Close abandons an unfinished stream. It is safe to call after Sum or
// Verify.
func (s *Stream) Close() error {
	if s.done {
		return nil
	}
	s.done = true
	_, err := s.c.do(s.ctx, s.op, &wire.Op{Op: &wire.Op_SessionAbort{SessionAbort: &wire.SessionAbort{Session: s.id}}})
	return err
}
