package sshagent

import (
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/ssh/agent"

	"github.com/keywarden/keywarden/internal/wire"
)

// BenchmarkAgentSign is one Ed25519 signature of 64 bytes through the
// agent socket, one request per round trip, with the audit log on: what
// the front and the core cost per signature (keywarden bench --ssh-agent
// compares the whole with OpenSSH's agent).
//
// persistent is a key of the core's marked for SSH; added, one that
// ssh-add gave the agent on another connection.
func BenchmarkAgentSign(b *testing.B) {
	b.Run("persistent", func(b *testing.B) {
		ta := newTestAgent(b, Config{})
		ta.generate(b, selfID(uint32(os.Getuid())), "bench", wire.KeyType_KEY_TYPE_ED25519, 0, true)
		benchSign(b, ta.dial(b))
	})
	b.Run("added", func(b *testing.B) {
		ta := newTestAgent(b, Config{})
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		if err := agent.NewClient(ta.dial(b)).Add(agent.AddedKey{PrivateKey: priv, Comment: "bench"}); err != nil {
			b.Fatal(err)
		}
		benchSign(b, ta.dial(b))
	})
}

// benchSign lists the agent's one key on c, as ssh does first, and
// measures its signatures of 64 bytes, with the processor time of the
// whole process per signature (cpu-ns/op: the agent's and the client's).
func benchSign(b *testing.B, c net.Conn) {
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
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	n, t0 := 0, cpu()
	for b.Loop() {
		reply, err := roundTrip(c, req)
		if err != nil || reply[0] != msgSignResponse {
			b.Fatalf("reply %v, %v", reply, err)
		}
		n++
	}
	b.ReportMetric(float64(cpu()-t0)/float64(n), "cpu-ns/op")
}
