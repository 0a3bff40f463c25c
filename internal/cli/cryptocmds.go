package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	_ "crypto/sha256" // the hashes a file is signed with
	_ "crypto/sha3"
	_ "crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden"
)

// readInput reads stdin up to limit bytes; big reports that there was
// more (the first limit bytes are returned, the rest unread in r).
func readInput(r io.Reader, limit int) (data []byte, big bool, err error) {
	data, err = io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, false, fmt.Errorf("read input: %w", err)
	}
	if len(data) > limit {
		return data, true, nil
	}
	return data, false, nil
}

func writeOutput(e *env, f *flags, field string, b []byte) error {
	if f.json {
		return printJSON(e, map[string]string{field: base64.StdEncoding.EncodeToString(b)})
	}
	if field == "plaintext" {
		_, err := e.stdout.Write(b) // the caller's own data, as it was
		return err
	}
	return writeBinary(e, f, b)
}

// writeBinary prints a binary result by the one rule: as --encoding says,
// else raw bytes to a pipe or a file (for the next program) and hex, on a
// line of its own, to a terminal (for a person).
func writeBinary(e *env, f *flags, b []byte) error {
	enc := f.encoding
	if enc == "" {
		enc = "raw"
		if isTerminal(e.stdout) {
			enc = "hex"
		}
	}
	var err error
	switch enc {
	case "hex":
		_, err = fmt.Fprintln(e.stdout, hex.EncodeToString(b))
	case "base64":
		_, err = fmt.Fprintln(e.stdout, base64.StdEncoding.EncodeToString(b))
	default:
		_, err = e.stdout.Write(b)
	}
	return err
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func optHash(s string) (crypto.Hash, error) {
	if s == "" {
		return 0, nil
	}
	h, err := keywarden.ParseHash(s)
	if err != nil {
		return 0, usagef("%v", err)
	}
	return h, nil
}

func runEncrypt(e *env, args []string) error { return runCipher(e, args, true) }
func runDecrypt(e *env, args []string) error { return runCipher(e, args, false) }

func runCipher(e *env, args []string, encrypt bool) error {
	name := "decrypt"
	if encrypt {
		name = "encrypt"
	}
	f := newFlags(name, e)
	ref := f.String("key", "", "the key `name`")
	aad := f.String("aad", "", "additional authenticated `data` (AES-GCM), or the OAEP label (RSA)")
	hashName := f.String("hash", "", "RSA-OAEP `hash` (default sha256)")
	var format string
	chunk := 0
	if encrypt {
		f.StringVar(&format, "format", "auto", "AES-GCM output `format`: auto (one message if the input fits in one, else an envelope stream), oneshot, envelope (a stream under a data key the daemon makes for it), or stream (every chunk sealed by the daemon)")
		f.IntVar(&chunk, "chunk-size", 0, "stream chunk size in `bytes`, a power of two from 1024 to 524288 that fits in the daemon's messages (default 65536)")
	}
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, "data on stdin"); err != nil {
		return err
	}
	if *ref == "" {
		return usagef("--key is required")
	}
	switch format {
	case "", "auto", "oneshot", "stream", "envelope":
	default:
		return usagef("unknown --format %q (want auto, oneshot, envelope or stream)", format)
	}
	h, err := optHash(*hashName)
	if err != nil {
		return err
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	k, err := c.OpenRef(ctx, *ref)
	if err != nil {
		return err
	}
	aes := k.Type() == keywarden.AES256GCM
	notStream := fmt.Sprintf("%s keys do not encrypt files: streams need an AES-256-GCM key", k.Type())
	if strings.HasPrefix(string(k.Type()), "rsa") {
		notStream = "RSA-OAEP encrypts one short message (a data key: see keywarden datakey); streams need an AES-256-GCM key"
	}
	if !aes && (format == "stream" || format == "envelope" || chunk != 0) {
		return fmt.Errorf("%s: %s", name, notStream)
	}
	in, big, err := readInput(e.stdin, c.MaxData())
	if err != nil {
		return err
	}
	defer clear(in)
	streamed := aes && (format == "stream" || format == "envelope" || (encrypt && big && format != "oneshot") || (!encrypt && keywarden.IsStreamCiphertext(in)))
	if streamed {
		if f.json {
			return usagef("--json holds one message; a stream is written as it is")
		}
		return cipherStream(e, f, k, encrypt, *aad, &keywarden.StreamOptions{ChunkSize: chunk, DataKey: format != "stream"}, in)
	}
	if big {
		if encrypt && !aes {
			return fmt.Errorf("input larger than %d bytes: %s", c.MaxData(), notStream)
		}
		if encrypt {
			return fmt.Errorf("input larger than %d bytes: one-shot %s is limited to one message; use --format envelope or stream (or auto)", c.MaxData(), name)
		}
		return fmt.Errorf("input larger than %d bytes and not a stream ciphertext: a one-shot ciphertext fits in one message", c.MaxData())
	}
	var out []byte
	switch {
	case encrypt && h == 0:
		out, err = k.Encrypt(ctx, in, []byte(*aad))
	case encrypt:
		return usagef("--hash applies to RSA keys only; the daemon encrypts RSA with OAEP SHA-256")
	case h == 0:
		out, err = k.Decrypt(ctx, in, []byte(*aad))
	default:
		var dec *keywarden.Decrypter
		if dec, err = k.Decrypter(); err == nil {
			out, err = dec.DecryptContext(ctx, in, &rsa.OAEPOptions{Hash: h, Label: []byte(*aad)})
		}
	}
	if err != nil {
		return err
	}
	defer clear(out)
	field := "plaintext"
	if encrypt {
		field = "ciphertext"
	}
	return writeOutput(e, f, field, out)
}

// cipherStream encrypts or decrypts stdin as a stream, head being what
// was read of it already. A stream has no overall deadline unless
// --timeout was given. If decryption fails and stdout is a regular file,
// what was written to it is cut off again, so that a failed stream leaves
// no plaintext behind; elsewhere (a pipe) the consumer must heed the exit
// status.
func cipherStream(e *env, f *flags, k *keywarden.Key, encrypt bool, aad string, opts *keywarden.StreamOptions, head []byte) error {
	ctx := context.Background()
	if f.timeoutSet() {
		ctx = f.context
	}
	// The stream reads stdin straight into its chunks and writes each
	// chunk's output straight to stdout, a chunk per write.
	in := io.MultiReader(bytes.NewReader(head), e.stdin)
	if encrypt {
		w, err := k.EncryptWriter(ctx, e.stdout, []byte(aad), opts)
		if err != nil {
			return err
		}
		if _, err := w.ReadFrom(in); err != nil {
			w.Abort()
			return err
		}
		return w.Close()
	}
	undo := truncateOnFailure(e.stdout)
	r, err := k.DecryptReader(ctx, in, []byte(aad), nil)
	if err == nil {
		defer r.Close()
		_, err = r.WriteTo(e.stdout)
	}
	if err != nil {
		undo()
		return err
	}
	return nil
}

// truncateOnFailure returns a function that cuts w back to its present
// size if w is a regular file, and does nothing otherwise.
func truncateOnFailure(w io.Writer) func() {
	file, ok := w.(*os.File)
	if !ok {
		return func() {}
	}
	st, err := file.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return func() {}
	}
	off, err := file.Seek(0, io.SeekCurrent)
	if err != nil {
		return func() {}
	}
	return func() { file.Truncate(off) }
}

// signFlags are shared by sign and verify.
type signFlags struct {
	ref     string
	hash    string
	padding string
	ph      bool
}

func (s *signFlags) register(f *flags) {
	f.StringVar(&s.ref, "key", "", "the key `name`")
	f.StringVar(&s.hash, "hash", "", "message `hash`: sha256, sha384, sha512, sha3-256, sha3-512 (default: sha256, sha384 for P-384)")
	f.StringVar(&s.padding, "padding", "pss", "RSA `padding`: pss or pkcs1v15")
	f.BoolVar(&s.ph, "ed25519ph", false, "Ed25519: sign or verify as Ed25519ph (SHA-512 prehash), for input of any size")
}

func (s *signFlags) options() (*keywarden.SignOptions, error) {
	if s.ref == "" {
		return nil, usagef("--key is required")
	}
	h, err := optHash(s.hash)
	if err != nil {
		return nil, err
	}
	o := &keywarden.SignOptions{Hash: h}
	switch s.padding {
	case "pss", "":
	case "pkcs1v15", "pkcs1":
		o.Padding = keywarden.PaddingPKCS1v15
	default:
		return nil, usagef("unknown padding %q (want pss or pkcs1v15)", s.padding)
	}
	if s.ph {
		if h != 0 && h != crypto.SHA512 {
			return nil, usagef("Ed25519ph uses sha512")
		}
		o.Hash = crypto.SHA512
	}
	return o, nil
}

// signature computes or checks a signature over stdin: one message when
// the input fits, a streaming session when it does not.
func runSignature(e *env, name string, args []string, sigFile *string, extra func(*flags)) error {
	f := newFlags(name, e)
	var s signFlags
	s.register(f)
	var so sshsigOptions
	so.register(f)
	if extra != nil {
		extra(f)
	}
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, "data on stdin"); err != nil {
		return err
	}
	opts, err := s.options()
	if err != nil {
		return err
	}
	sshsig, err := so.check(&s)
	if err != nil {
		return err
	}
	if sigFile != nil && *sigFile == "" {
		return usagef("--signature is required")
	}
	var sig []byte
	if sigFile != nil && !sshsig {
		if sig, err = os.ReadFile(*sigFile); err != nil {
			return err
		}
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	k, err := c.OpenRef(ctx, s.ref)
	if err != nil {
		return err
	}
	if sshsig && sigFile == nil {
		return sshsigSign(e, f, k, so.namespace)
	}
	if sshsig {
		return sshsigVerify(e, f, k, so.namespace, *sigFile)
	}
	ed := k.Type() == keywarden.Ed25519
	if ed && !s.ph && opts.Hash != 0 {
		return usagef("pure Ed25519 takes no --hash; use --ed25519ph for a SHA-512 prehash")
	}
	in, big, err := readInput(e.stdin, c.MaxData())
	if err != nil {
		return err
	}
	// Small input: one message, which the daemon signs (and hashes).
	if !big && !(ed && s.ph) {
		if sig == nil {
			out, err := k.SignMessageContext(ctx, in, opts)
			if err != nil {
				return err
			}
			return writeOutput(e, f, "signature", out)
		}
		return verified(e, f, k.Verify(ctx, in, sig, opts))
	}
	if ed && !s.ph {
		return fmt.Errorf("input larger than %d bytes: pure Ed25519 signs the whole message at once, so at most one message; "+
			"to sign a file of any size use --format sshsig --namespace NS (an SSH signature, which ssh-keygen -Y verify checks), "+
			"or an ECDSA P-256 key (keywarden key generate --type ecdsa-p256), whose signature "+
			"openssl dgst -sha256 -verify PUB.pem -signature SIG FILE checks, or --ed25519ph (which OpenSSL 3.0 cannot verify)", c.MaxData())
	}
	// Anything else is signed as a digest, hashed here: the data does not
	// travel to the daemon, and the signature is the one SignMessageContext would
	// make over the whole input.
	h := opts.Hash
	if h == 0 {
		h = defaultHash(k.Type())
	}
	if !h.Available() {
		return usagef("hash %v is not available", h)
	}
	hw := h.New()
	hw.Write(in)
	if _, err := io.Copy(hw, bufio.NewReaderSize(e.stdin, 1<<20)); err != nil {
		return fmt.Errorf("read input: %w", err)
	}
	digest := hw.Sum(nil)
	o := *opts
	o.Hash = h
	// Hashing a large file may take longer than --timeout's default: that
	// bounds the daemon's part, from here, unless it was given.
	if !f.timeoutSet() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.Background(), f.timeout)
		defer cancel()
	}
	if sig == nil {
		out, err := k.SignDigest(ctx, digest, &o)
		if err != nil {
			return err
		}
		return writeOutput(e, f, "signature", out)
	}
	return verified(e, f, k.VerifyDigest(ctx, digest, sig, &o))
}

// defaultHash is the hash a key signs with when none is named: SHA-384
// for ECDSA P-384, SHA-512 for Ed25519ph, SHA-256 otherwise.
func defaultHash(t keywarden.KeyType) crypto.Hash {
	switch t {
	case keywarden.ECDSAP384:
		return crypto.SHA384
	case keywarden.Ed25519:
		return crypto.SHA512
	}
	return crypto.SHA256
}

// stream writes head and then the rest of r to st.
func stream(st *keywarden.Stream, head []byte, r io.Reader) error {
	if _, err := st.Write(head); err != nil {
		return err
	}
	if _, err := io.Copy(st, bufio.NewReaderSize(r, 1<<20)); err != nil {
		return err
	}
	return nil
}

// verified reports a verification outcome: "verified" and exit 0, or the
// refusal and exit 3.
func verified(e *env, f *flags, err error) error {
	if errors.Is(err, keywarden.ErrVerification) {
		if f.json {
			printJSON(e, map[string]bool{"verified": false})
		}
		return err
	}
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(e, map[string]bool{"verified": true})
	}
	fmt.Fprintln(e.stdout, "verified")
	return nil
}

func runSign(e *env, args []string) error { return runSignature(e, "sign", args, nil, nil) }

func runVerify(e *env, args []string) error {
	var sigFile string
	return runSignature(e, "verify", args, &sigFile, func(f *flags) {
		f.StringVar(&sigFile, "signature", "", "`file` holding the signature")
	})
}

func runMAC(e *env, args []string) error {
	f := newFlags("mac", e)
	ref := f.String("key", "", "the HMAC key `name`")
	tagFile := f.String("verify", "", "check the tag in `file` instead of printing one")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, "data on stdin"); err != nil {
		return err
	}
	if *ref == "" {
		return usagef("--key is required")
	}
	var tag []byte
	if *tagFile != "" {
		if tag, err = os.ReadFile(*tagFile); err != nil {
			return err
		}
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	k, err := c.OpenRef(ctx, *ref)
	if err != nil {
		return err
	}
	in, big, err := readInput(e.stdin, c.MaxData())
	if err != nil {
		return err
	}
	if !big {
		if tag == nil {
			out, err := k.MAC(ctx, in)
			if err != nil {
				return err
			}
			return writeOutput(e, f, "tag", out)
		}
		return verified(e, f, k.VerifyMAC(ctx, in, tag))
	}
	var st *keywarden.Stream
	if tag == nil {
		st, err = k.NewMAC(ctx)
	} else {
		st, err = k.NewMACVerifier(ctx)
	}
	if err != nil {
		return err
	}
	defer st.Close()
	if err := stream(st, in, e.stdin); err != nil {
		return err
	}
	if tag == nil {
		out, err := st.Sum()
		if err != nil {
			return err
		}
		return writeOutput(e, f, "tag", out)
	}
	return verified(e, f, st.Verify(tag))
}

func runHash(e *env, args []string) error {
	f := newFlags("hash", e)
	alg := f.String("alg", "", "`hash`: sha256, sha384, sha512, sha3-256, sha3-512")
	raw := f.Bool("raw", false, "the same as --encoding raw")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, "data on stdin"); err != nil {
		return err
	}
	if *alg == "" {
		return usagef("--alg is required")
	}
	h, err := optHash(*alg)
	if err != nil {
		return err
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	in, big, err := readInput(e.stdin, c.MaxData())
	if err != nil {
		return err
	}
	var sum []byte
	if !big {
		sum, err = c.Hash(ctx, h, in)
	} else {
		var st *keywarden.Stream
		if st, err = c.NewHash(ctx, h); err == nil {
			defer st.Close()
			if err = stream(st, in, e.stdin); err == nil {
				sum, err = st.Sum()
			}
		}
	}
	if err != nil {
		return err
	}
	switch {
	case f.json:
		return printJSON(e, map[string]string{"alg": *alg, "digest": hex.EncodeToString(sum)})
	case *raw:
		f.encoding = "raw"
	}
	return writeBinary(e, f, sum)
}

func runDerive(e *env, args []string) error {
	f := newFlags("derive", e)
	ref := f.String("key", "", "the parent key `name` (X25519, ECDH or HMAC with derive usage)")
	peer := f.String("peer", "", "`file` with the peer's public key (SPKI PEM or DER, or raw); not for HMAC parents")
	hashName := f.String("hash", "", "HKDF or X9.63 `hash` (HKDF's default sha256, or the HMAC key's own)")
	salt := f.String("salt", "", "HKDF `salt`")
	info := f.String("info", "", "HKDF `info`, or X9.63's shared info")
	kdf := f.String("kdf", "hkdf", "key derivation `function`: hkdf; none (the raw ECDH shared secret, its last bytes if the type is shorter) or x963 (ANSI X9.63 under --hash), for X25519 and ECDH keys")
	var s specFlags
	s.register(f, false)
	f.StringVar(&s.typ, "type", string(keywarden.AES256GCM), "the new key's `type`: aes256-gcm or hmac-sha256/384/512")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	if *ref == "" {
		return usagef("--key is required")
	}
	spec, err := s.spec()
	if err != nil {
		return err
	}
	h, err := optHash(*hashName)
	if err != nil {
		return err
	}
	switch keywarden.DeriveKDF(*kdf) {
	case keywarden.KDFHKDF, keywarden.KDFNone, keywarden.KDFX963:
	default:
		return usagef("--kdf is hkdf, none or x963")
	}
	params := keywarden.DeriveParams{Hash: h, Salt: []byte(*salt), Info: []byte(*info), KDF: keywarden.DeriveKDF(*kdf)}
	if *peer != "" {
		if params.Peer, err = os.ReadFile(*peer); err != nil {
			return err
		}
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	k, err := c.OpenRef(ctx, *ref)
	if err != nil {
		return err
	}
	nk, err := k.Derive(ctx, spec, params)
	if err != nil {
		return err
	}
	return printKey(e, f.json, nk.Info())
}
