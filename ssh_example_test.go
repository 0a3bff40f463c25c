package keywarden_test

import (
	"context"
	"fmt"
	"log"
	"net"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/keywarden/keywarden"
)

// A keywarden key is a crypto.Signer, so golang.org/x/crypto/ssh makes an
// ssh.Signer of it (for ssh.ClientConfig's PublicKeys, or to sign
// certificates), and the daemon's ssh-agent socket gives the
// agent.ExtendedAgent view of every key marked for SSH that the caller
// may sign with (serve --ssh-agent PATH; docs/ssh.md).
func Example_sshSigner() {
	ctx := context.Background()
	client, err := keywarden.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	key, err := client.Generate(ctx, keywarden.KeySpec{Name: "example-login", Type: keywarden.Ed25519})
	if err != nil {
		log.Fatal(err)
	}
	yes := true
	if _, err := key.SetLifecycle(ctx, keywarden.LifecycleChange{SSH: &yes}); err != nil {
		log.Fatal(err)
	}

	// In process: an ssh.Signer whose private half stays in the daemon.
	signer, err := ssh.NewSignerFromSigner(key)
	if err != nil {
		log.Fatal(err)
	}
	sig, err := signer.Sign(nil, []byte("session id"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(signer.PublicKey().Type(), signer.PublicKey().Verify([]byte("session id"), sig) == nil)

	// Through the agent socket: what ssh and git see.
	st, err := client.Status(ctx)
	if err != nil {
		log.Fatal(err)
	}
	conn, err := net.Dial("unix", st.SSHAgentSockets[0])
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	var ag agent.ExtendedAgent = agent.NewClient(conn)
	keys, err := ag.List()
	if err != nil {
		log.Fatal(err)
	}
	for _, k := range keys {
		if k.Comment != "example-login" {
			continue
		}
		sig, err := ag.Sign(k, []byte("data"))
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(k.Comment, k.Type(), k.Verify([]byte("data"), sig) == nil)
	}
	// Output:
	// ssh-ed25519 true
	// example-login ssh-ed25519 true
}
