package main

import (
	"os"

	"github.com/keywarden/keywarden/internal/bench"
	"github.com/keywarden/keywarden/internal/cli"
	"github.com/keywarden/keywarden/internal/kdf"
)

func main() {
	// The daemon starts this same binary as its Argon2id worker.
	if kdf.IsWorker(os.Args) {
		os.Exit(kdf.WorkerMain())
	}
	// keywarden bench starts it as the echo process of its floor
	// measurement.
	if bench.IsEcho(os.Args) {
		os.Exit(bench.EchoMain())
	}
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
