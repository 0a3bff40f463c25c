package audit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The public-key file: the daemon publishes its checkpoint key(s) there,
// and `keywarden audit verify --public-key FILE` reads it. One key per
// line in hex (64 digits); blank lines and lines starting with # are
// ignored. PEM "PUBLIC KEY" blocks (PKIX, as openssl writes them) are
// read too. The file lists the keys of the log's chain, oldest first.
//
// A verifier trusts the first key of the file (TrustedPublicKey), never
// the others for being listed: whoever can write the file beside the log
// can add a key to it. A later key is trusted only once a rekey
// checkpoint signed with a trusted key names it, as Verify does.

// ParsePublicKeys reads a public-key file.
func ParsePublicKeys(data []byte) ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("audit: public-key file: unexpected PEM block %q", block.Type)
		}
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("audit: public-key file: %v", err)
		}
		pub, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, errors.New("audit: public-key file: not an Ed25519 key")
		}
		keys = append(keys, pub)
	}
	if len(keys) > 0 {
		return keys, nil
	}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		b, err := hex.DecodeString(line)
		if err != nil || len(b) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("audit: public-key file, line %d: want %d hex digits", i+1, 2*ed25519.PublicKeySize)
		}
		keys = append(keys, ed25519.PublicKey(b))
	}
	if len(keys) == 0 {
		return nil, errors.New("audit: public-key file holds no key")
	}
	return keys, nil
}

// TrustedPublicKey returns the key a public-key file makes a verifier
// trust: its first, the oldest key of the log's chain. The keys after it
// are trusted only when the log's rekey checkpoints, signed with a
// trusted key, name them (Verify).
func TrustedPublicKey(data []byte) (ed25519.PublicKey, error) {
	keys, err := ParsePublicKeys(data)
	if err != nil {
		return nil, err
	}
	return keys[0], nil
}

// PublishPublicKeys writes the public-key file at path whole, listing
// keys, oldest first, and replacing the file atomically; it does nothing
// if the file lists exactly those keys already. A file at path that is
// not this uid's (or root's), or is reached through a link, is refused.
func PublishPublicKeys(path string, keys ...ed25519.PublicKey) error {
	if len(keys) == 0 {
		return errors.New("audit: no public key to publish")
	}
	if data, err := readOwn(path); err == nil {
		if old, err := ParsePublicKeys(data); err == nil && slices.EqualFunc(old, keys, func(a, b ed25519.PublicKey) bool { return a.Equal(b) }) {
			return nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var b bytes.Buffer
	b.WriteString("# keywarden audit log: checkpoint public keys, oldest first\n")
	for _, k := range keys {
		b.WriteString(hex.EncodeToString(k))
		b.WriteByte('\n')
	}
	// The new file is written beside the old one and renamed over it. A
	// PATH.tmp already there (left by a crash, or put there by someone
	// else) is removed, never followed, and the new one is created
	// exclusively.
	tmp := path + ".tmp"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	fd, err := openOwn(tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), tmp)
	_, err = f.Write(b.Bytes())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

// PublishPublicKeys writes the public-key file at path whole from the
// keys the log's chain has had: the keys this run has used, oldest first,
// after those the file lists before the first of them, unless the chain
// began in this run (a new log, or a new chain after a log that could not
// be verified was set aside), when it lists this run's keys alone. Keys
// the file lists after this run's first key, which no run of the log
// wrote there, are dropped.
func (l *Log) PublishPublicKeys(path string) error {
	l.mu.Lock()
	ours, fresh := slices.Clone(l.chainKeys), l.freshChain
	l.mu.Unlock()
	if len(ours) == 0 {
		return ErrNoKeys
	}
	var keys []ed25519.PublicKey
	if data, err := readOwn(path); err == nil {
		if old, err := ParsePublicKeys(data); err == nil && !fresh {
			if i := slices.IndexFunc(old, func(k ed25519.PublicKey) bool { return k.Equal(ours[0]) }); i >= 0 {
				keys = old[:i]
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return PublishPublicKeys(path, append(keys, ours...)...)
}

// readOwn reads the file at path if it is a regular file of this
// process's uid or root, reached without a symbolic link (see openOwn).
func readOwn(path string) ([]byte, error) {
	fd, err := openOwn(path, unix.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	return io.ReadAll(f)
}

// Text formats r on one line for people (`keywarden audit tail`):
//
//	2026-03-01T12:00:00.123Z #42 request encrypt aes256-gcm key=9f0c…(v1) OK uid=1000 gid=1000 pid=4242 exe=/usr/bin/app conn=7 req=3
func (r *Record) Text() string {
	var b strings.Builder
	b.WriteString(r.Time.UTC().Format("2006-01-02T15:04:05.000Z"))
	fmt.Fprintf(&b, " #%d %s", r.Seq, r.Kind)
	word := func(s string) {
		if s != "" {
			b.WriteByte(' ')
			b.WriteString(s)
		}
	}
	kv := func(k, v string) {
		if v != "" {
			b.WriteByte(' ')
			b.WriteString(k)
			b.WriteByte('=')
			b.WriteString(strconv.Quote(v)[1 : len(strconv.Quote(v))-1])
		}
	}
	key := func(id KeyID, v uint32) string {
		if id.IsZero() {
			return ""
		}
		s := id.String()
		if v > 0 {
			s += "(v" + strconv.FormatUint(uint64(v), 10) + ")"
		}
		return s
	}
	switch r.Kind {
	case KindSegment:
		kv("reason", r.Segment.Reason)
		kv("host", r.Segment.Host)
		kv("pid", strconv.Itoa(r.Segment.PID))
		kv("software", r.Segment.Software)
		if r.Segment.PublicKey != nil {
			kv("pub", hex.EncodeToString(r.Segment.PublicKey))
		}
	case KindCheckpoint:
		c := r.Checkpoint
		kv("reason", c.Reason)
		kv("upto", strconv.FormatUint(c.Upto, 10))
		kv("pub", hex.EncodeToString(c.PublicKey))
		if c.NextPublicKey != nil {
			kv("next_pub", hex.EncodeToString(c.NextPublicKey))
		}
		if c.KeysOff {
			word("keys-off")
		}
		if c.Final {
			word("final")
		}
	default:
		word(r.Op)
		word(r.Alg)
		kv("key", key(r.Key, r.KeyVersion))
		word(r.Status)
		if r.Kind == KindRequest {
			c := &r.Caller
			fmt.Fprintf(&b, " uid=%d gid=%d pid=%d", c.UID, c.GID, c.PID)
			kv("exe", c.Exe)
			kv("exe_error", c.ExeError)
			kv("cgroup", c.Cgroup)
			if c.Exited {
				word("exited")
			}
			if c.Unverified {
				word("unverified")
			}
			if c.Claimed {
				word("claimed")
			}
			if c.OtherUserNS {
				word("other-userns")
			}
			if c.OtherPIDNS {
				word("other-pidns")
			}
			kv("ssh_dest", c.SSHDest)
			kv("principal", c.Principal)
			if p := &c.Peer; !p.IsZero() {
				fmt.Fprintf(&b, " peer.pid=%d peer.uid=%d peer.gid=%d", p.PID, p.UID, p.GID)
				kv("peer.exe", p.Exe)
			}
		}
		if r.Conn != 0 {
			kv("conn", strconv.FormatUint(r.Conn, 10))
		}
		kv("front", r.Front)
		if r.Session != 0 {
			kv("session", strconv.FormatUint(r.Session, 10))
		}
		if r.Request != 0 {
			kv("req", strconv.FormatUint(r.Request, 10))
		}
		for _, e := range r.Ops {
			b.WriteString(" [")
			b.WriteString(e.Op)
			if e.Alg != "" {
				b.WriteByte(' ')
				b.WriteString(e.Alg)
			}
			if k := key(e.Key, e.KeyVersion); k != "" {
				b.WriteString(" key=" + k)
			}
			b.WriteString(" " + e.Status)
			if e.Count > 1 {
				fmt.Fprintf(&b, " ×%d", e.Count)
			}
			b.WriteByte(']')
		}
		for _, c := range r.SSHCerts {
			fmt.Fprintf(&b, " [ssh-cert %s serial=%d", c.Type, c.Serial)
			kv("key_id", c.KeyID)
			kv("principals", strings.Join(c.Principals, ","))
			fmt.Fprintf(&b, " valid=%s", c.Validity())
			kv("key", c.Key)
			b.WriteByte(']')
		}
		kv("msg", r.Msg)
	}
	return b.String()
}

// WriteText writes what a verification found, for `keywarden audit
// verify`: first the verdict (and the problem), then what was checked,
// then the warnings.
func (rep *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	if rep.Intact {
		b.WriteString("intact")
	} else {
		b.WriteString("NOT INTACT: ")
		b.WriteString(rep.Problem.Error())
	}
	b.WriteByte('\n')
	if rep.Records > 0 {
		fmt.Fprintf(&b, "%s in %s, seq %d to %d; last hash %d:%s\n", plural(rep.Records, "record", "records"),
			plural(uint64(len(rep.Files)), "file", "files"), rep.FirstSeq, rep.LastSeq, rep.LastSeq, hex.EncodeToString(rep.LastHash[:]))
		fmt.Fprintf(&b, "%s", plural(uint64(rep.Checkpoints), "checkpoint", "checkpoints"))
		if rep.Pinned {
			if rep.TrustedThrough > 0 {
				fmt.Fprintf(&b, "; signed with a trusted key through seq %d", rep.TrustedThrough)
				if rep.TrustedThrough < rep.LastSeq {
					// Vouched for is a prefix: say where it ends.
					fmt.Fprintf(&b, "; seq %d to %d are not signed by any", rep.TrustedThrough+1, rep.LastSeq)
				}
			} else {
				b.WriteString("; none signed with a trusted key")
			}
		}
		b.WriteByte('\n')
		if rep.MACsChecked > 0 {
			fmt.Fprintf(&b, "%s checked\n", plural(rep.MACsChecked, "MAC", "MACs"))
		}
	}
	for _, warn := range rep.Warnings {
		b.WriteString("warning: ")
		b.WriteString(warn)
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}
