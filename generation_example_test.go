package keywarden_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/keywarden/keywarden"
)

// A component that caches values derived from randomness rebuilds them
// after every VM restore or clone, then acknowledges, so that an
// orchestrator waiting for watchers can let traffic in.
func ExampleClient_Watch() {
	ctx := context.Background()
	client, err := keywarden.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	err = client.Watch(ctx, "", func(gen uint64) error {
		fmt.Println("the machine is in generation", gen, "now: rebuilding caches")
		return nil
	})
	log.Fatal(err)
}

// An orchestrator restored a VM in a way the guest cannot see: it bumps
// the generation and holds traffic until every watcher has adjusted.
func ExampleClient_WaitWatchers() {
	ctx := context.Background()
	client, err := keywarden.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	if _, err := client.Admin().BumpGeneration(ctx, nil); err != nil { // root or a --generation-admin uid
		log.Fatal(err)
	}
	g, err := client.WaitWatchers(ctx, 5*time.Second)
	if errors.Is(err, keywarden.ErrOutdatedWatchers) {
		log.Printf("%d watchers did not adjust to generation %d in time", g.OutdatedWatchers, g.Generation)
	}
}

// The transactional flow: read the generation from the mapped page (no
// round trip), pin the request to it, and start over if the machine was
// restored or cloned meanwhile.
func ExampleWithGeneration() {
	ctx := context.Background()
	client, err := keywarden.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	key, err := client.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	if err != nil {
		log.Fatal(err)
	}
	page, err := client.MapGeneration(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer page.Close()
	for {
		gen := page.Generation()
		ct, err := key.Encrypt(keywarden.WithGeneration(ctx, gen), []byte("a record"), nil)
		if errors.Is(err, keywarden.ErrGenerationChanged) || err == nil && page.Generation() != gen {
			continue // made across a restore: do it again
		}
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(len(ct) > 0)
		return
	}
}
