package keywarden_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/keywarden/keywarden"
)

// A client trusts a daemon run by root or by its own uid; one run by a
// dedicated user is named (here uid 998), unless the socket is in a
// directory root gave that user, such as /run/keywarden under systemd.
func ExampleDialWithOptions() {
	ctx := context.Background()
	client, err := keywarden.DialWithOptions(ctx, "", &keywarden.DialOptions{DaemonUID: 998})
	var untrusted *keywarden.UntrustedSocketError
	if errors.As(err, &untrusted) {
		// Nothing was sent: the error says what was found.
		log.Fatalf("not talking to uid %d: %v", untrusted.UID, err)
	}
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	st, err := client.Status(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("protocol", st.ProtocolVersion)
	// Output: protocol 1
}
