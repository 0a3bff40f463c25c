package sshagent

import (
	"encoding/binary"
	"math/big"

	"golang.org/x/crypto/cryptobyte"
)

// Message numbers (draft-miller-ssh-agent, section 5.1).
const (
	msgFailure             = 5
	msgSuccess             = 6
	msgRemoveAllV1         = 9 // SSH_AGENTC_REMOVE_ALL_RSA_IDENTITIES
	msgRequestIdentities   = 11
	msgIdentitiesAnswer    = 12
	msgSignRequest         = 13
	msgSignResponse        = 14
	msgAddIdentity         = 17
	msgRemoveIdentity      = 18
	msgRemoveAllIdentities = 19
	msgLock                = 22
	msgUnlock              = 23
	msgAddIDConstrained    = 25
	msgExtension           = 27
)

// Key constraints (section 5.3) and signature flags (section 5.4).
const (
	constrainLifetime  = 1
	constrainConfirm   = 2
	constrainMaxSign   = 3
	constrainExtension = 255

	flagRSASHA256 = 2
	flagRSASHA512 = 4
)

// MaxMessage is the largest message the agent takes or sends, as
// OpenSSH's agent (AGENT_MAX_LEN): a connection that announces a longer
// one is closed.
const MaxMessage = 256 << 10

var (
	replyFailure = []byte{msgFailure}
	replySuccess = []byte{msgSuccess}
)

// frame prepends msg's length.
func frame(msg []byte) []byte {
	b := make([]byte, 4+len(msg))
	binary.BigEndian.PutUint32(b, uint32(len(msg)))
	copy(b[4:], msg)
	return b
}

// readString reads an SSH string.
func readString(s *cryptobyte.String, out *[]byte) bool {
	var n uint32
	if !s.ReadUint32(&n) || int64(n) > int64(len(*s)) {
		return false
	}
	return s.ReadBytes(out, int(n))
}

// readMPInt reads a non-negative SSH mpint.
func readMPInt(s *cryptobyte.String, out **big.Int) bool {
	var b []byte
	if !readString(s, &b) || len(b) > 0 && b[0]&0x80 != 0 {
		return false
	}
	*out = new(big.Int).SetBytes(b)
	return true
}

func addString(b *cryptobyte.Builder, v []byte) {
	b.AddUint32LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(v) })
}
