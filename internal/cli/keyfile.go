package cli

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"golang.org/x/crypto/ssh"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/secmem"
)

// keyFile is a key file read for import: the type its contents name, and
// the bytes to send the daemon in their format. When wipe is set, data is
// a copy made here (an OpenSSH private key converted to PKCS #8) that the
// caller clears once sent.
type keyFile struct {
	typ    keywarden.KeyType
	format keywarden.KeyFormat
	data   []byte
	wipe   bool
}

// PEM block types of OpenSSH's own key files.
const pemOpenSSH = "OPENSSH PRIVATE KEY"

// errNoType says that a key file does not name a type keywarden has.
var errNoType = errors.New("cannot tell the key's type from the file: give --type")

// readKeyFile looks at a key file: an OpenSSH private key (unencrypted or
// encrypted with bcrypt-pbkdf; passphrase is called only for an encrypted
// one), an OpenSSH public key (an authorized_keys line), or PKCS #8, SEC 1,
// PKCS #1 or SPKI in PEM or DER. It returns the key's type and what the
// daemon should import: OpenSSH keys converted to PKCS #8 DER or SPKI
// DER, anything else unchanged for the daemon to parse (and check) again.
//
// Parsing makes copies of a private key: it runs inside secmem.Do, so in
// the official build they are erased once collected.
func readKeyFile(data []byte, passphrase func() ([]byte, error)) (*keyFile, error) {
	trimmed := bytes.TrimSpace(data)
	switch {
	case bytes.HasPrefix(trimmed, []byte("-----BEGIN "+pemOpenSSH+"-----")):
		return readOpenSSHPrivate(data, passphrase)
	case bytes.HasPrefix(trimmed, []byte("-----BEGIN")):
		return readPEMKey(data)
	case bytes.HasPrefix(trimmed, []byte("ssh-")) || bytes.HasPrefix(trimmed, []byte("ecdsa-")):
		return readOpenSSHPublic(trimmed)
	}
	var kf *keyFile
	var err error
	secmem.Do(func() {
		if priv, perr := x509.ParsePKCS8PrivateKey(data); perr == nil {
			kf, err = privateKeyFile(priv, keywarden.FormatAuto, data)
			return
		}
		if pub, perr := x509.ParsePKIXPublicKey(data); perr == nil {
			kf, err = publicKeyFile(pub, keywarden.FormatAuto, data)
			return
		}
		err = errNoType
	})
	return kf, err
}

// readPEMKey finds the type of one PEM key block of a kind the daemon
// imports; the daemon gets the file as it is.
func readPEMKey(data []byte) (kf *keyFile, err error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("malformed PEM key file")
	}
	defer clear(block.Bytes)
	if len(block.Headers) != 0 {
		return nil, errors.New("encrypted PEM keys are not supported: decrypt it first (openssl pkey)")
	}
	var perr error // a parse error, as opposed to a type keywarden lacks
	secmem.Do(func() {
		var priv any
		switch block.Type {
		case "PRIVATE KEY":
			priv, perr = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			priv, perr = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			priv, perr = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "PUBLIC KEY":
			var pub any
			if pub, perr = x509.ParsePKIXPublicKey(block.Bytes); perr == nil {
				kf, err = publicKeyFile(pub, keywarden.FormatAuto, data)
			}
			return
		default:
			err = fmt.Errorf("unsupported PEM block %q", block.Type)
			return
		}
		if perr == nil {
			kf, err = privateKeyFile(priv, keywarden.FormatAuto, data)
		}
	})
	if perr != nil {
		return nil, fmt.Errorf("cannot read the %s: %v", block.Type, perr)
	}
	return kf, err
}

// readOpenSSHPrivate parses an OpenSSH private key, asking for its
// passphrase if it is encrypted, and converts it to PKCS #8 DER.
func readOpenSSHPrivate(data []byte, passphrase func() ([]byte, error)) (kf *keyFile, err error) {
	block, rest := pem.Decode(data)
	if block == nil || block.Type != pemOpenSSH {
		return nil, errors.New("malformed OpenSSH private key")
	}
	clear(block.Bytes)
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("trailing data after the OpenSSH private key")
	}
	var pw []byte
	secmem.Do(func() {
		var priv any
		priv, err = ssh.ParseRawPrivateKey(data)
		var missing *ssh.PassphraseMissingError
		if errors.As(err, &missing) {
			return
		}
		if err == nil {
			kf, err = openSSHPrivateKeyFile(priv)
		}
	})
	var missing *ssh.PassphraseMissingError
	if !errors.As(err, &missing) {
		return kf, err
	}
	// The passphrase is asked outside secmem.Do: reading a terminal
	// starts a goroutine, which Do does not cover.
	if pw, err = passphrase(); err != nil {
		return nil, err
	}
	defer clear(pw)
	secmem.Do(func() {
		var priv any
		if priv, err = ssh.ParseRawPrivateKeyWithPassphrase(data, pw); err == nil {
			kf, err = openSSHPrivateKeyFile(priv)
		}
	})
	if errors.Is(err, x509.IncorrectPasswordError) {
		return nil, errors.New("incorrect passphrase for the OpenSSH private key")
	}
	return kf, err
}

// openSSHPrivateKeyFile converts a parsed OpenSSH private key to PKCS #8
// DER and wipes the key's bytes that can be wiped.
func openSSHPrivateKeyFile(priv any) (*keyFile, error) {
	if p, ok := priv.(*ed25519.PrivateKey); ok {
		defer clear(*p)
		priv = *p
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("unsupported OpenSSH private key: %T", priv)
	}
	kf, err := privateKeyFile(priv, keywarden.FormatPKCS8DER, der)
	if err != nil {
		clear(der)
		return nil, err
	}
	kf.wipe = true
	return kf, nil
}

// readOpenSSHPublic converts an OpenSSH public key (one authorized_keys
// line, without options) to SPKI DER.
func readOpenSSHPublic(line []byte) (*keyFile, error) {
	pub, _, _, rest, err := ssh.ParseAuthorizedKey(line)
	if err != nil {
		return nil, errors.New("malformed OpenSSH public key")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("more than one OpenSSH public key")
	}
	cp, ok := pub.(ssh.CryptoPublicKey)
	if !ok {
		return nil, fmt.Errorf("unsupported OpenSSH key type %s", pub.Type())
	}
	der, err := x509.MarshalPKIXPublicKey(cp.CryptoPublicKey())
	if err != nil {
		return nil, fmt.Errorf("unsupported OpenSSH key type %s", pub.Type())
	}
	return publicKeyFile(cp.CryptoPublicKey(), keywarden.FormatSPKIDER, der)
}

func privateKeyFile(priv any, f keywarden.KeyFormat, data []byte) (*keyFile, error) {
	var pub any
	switch p := priv.(type) {
	case ed25519.PrivateKey:
		pub = p.Public()
	case *ecdsa.PrivateKey:
		pub = &p.PublicKey
	case *rsa.PrivateKey:
		pub = &p.PublicKey
	case *ecdh.PrivateKey:
		pub = p.PublicKey()
	default:
		return nil, errNoType
	}
	return publicKeyFile(pub, f, data)
}

// publicKeyFile names the type of a key from its public half. An EC key
// on P-256 or P-384 is taken for ECDSA: give --type ecdh-p256 or
// ecdh-p384 for key agreement.
func publicKeyFile(pub any, f keywarden.KeyFormat, data []byte) (*keyFile, error) {
	kf := &keyFile{format: f, data: data}
	switch p := pub.(type) {
	case ed25519.PublicKey:
		kf.typ = keywarden.Ed25519
	case *ecdsa.PublicKey:
		switch p.Curve {
		case elliptic.P256():
			kf.typ = keywarden.ECDSAP256
		case elliptic.P384():
			kf.typ = keywarden.ECDSAP384
		default:
			return nil, fmt.Errorf("unsupported curve %s (P-256 and P-384 are)", p.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		switch p.N.BitLen() {
		case 2048:
			kf.typ = keywarden.RSA2048
		case 3072:
			kf.typ = keywarden.RSA3072
		case 4096:
			kf.typ = keywarden.RSA4096
		default:
			return nil, fmt.Errorf("unsupported RSA key size %d bits (2048, 3072 and 4096 are)", p.N.BitLen())
		}
	case *ecdh.PublicKey:
		if p.Curve() != ecdh.X25519() {
			return nil, errNoType
		}
		kf.typ = keywarden.X25519
	default:
		return nil, errNoType
	}
	return kf, nil
}

// isOpenSSH reports whether data is an OpenSSH private or public key,
// which the daemon does not read: the command converts it.
func isOpenSSH(data []byte) bool {
	t := bytes.TrimSpace(data)
	return bytes.HasPrefix(t, []byte("-----BEGIN "+pemOpenSSH+"-----")) ||
		bytes.HasPrefix(t, []byte("ssh-")) || bytes.HasPrefix(t, []byte("ecdsa-"))
}

// haveTerminal reports whether the command has a terminal to ask on.
func haveTerminal() bool {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	tty.Close()
	return true
}
