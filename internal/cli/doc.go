// Package cli is the keywarden command line: argument parsing, the
// commands, and their output, on top of the client library (and package
// daemon for "serve"). Scripts depend on its surface: command names,
// flags, stdout formats (including --json) and exit codes (0 success, 1
// refused or failed, 2 bad usage, 3 a signature or MAC that does not
// verify). Errors are one line on stderr. It never prints key bytes except
// where asked to export them.
package cli
