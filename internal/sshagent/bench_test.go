package sshagent

import (
	"os"
	"testing"

	"golang.org/x/crypto/cryptobyte"

	"github.com/keywarden/keywarden/internal/wire"
)

// BenchmarkAgentSign is one Ed25519 signature of 64 bytes through the
// agent socket, one request per round trip, with the audit log on: what
// the front and the core cost per signature (keywarden bench --ssh-agent
// compares the whole with OpenSSH's agent).
func BenchmarkAgentSign(b *testing.B) {
	ta := newTestAgent(b, Config{})
	ta.generate(b, selfID(uint32(os.Getuid())), "bench", wire.KeyType_KEY_TYPE_ED25519, 0, true)
	c := ta.dial(b)
	// The listing, as ssh asks for it first.
	list, err := roundTrip(c, msg(msgRequestIdentities))
	s := cryptobyte.String(list)
	var typ uint8
	var n uint32
	var blob []byte
	if err != nil || !s.ReadUint8(&typ) || typ != msgIdentitiesAnswer || !s.ReadUint32(&n) || n != 1 || !readString(&s, &blob) {
		b.Fatalf("listing %v, %v", list, err)
	}
	req := msg(msgSignRequest, sshString(blob), sshString(make([]byte, 64)), u32(0))
	for b.Loop() {
		reply, err := roundTrip(c, req)
		if err != nil || reply[0] != msgSignResponse {
			b.Fatalf("reply %v, %v", reply, err)
		}
	}
}
