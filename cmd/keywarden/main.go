package main

import (
	"os"

	"github.com/keywarden/keywarden/internal/cli"
	"github.com/keywarden/keywarden/internal/kdf"
)

func main() {
	// The daemon starts this same binary as its Argon2id worker.
	if kdf.IsWorker(os.Args) {
		os.Exit(kdf.WorkerMain())
	}
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
