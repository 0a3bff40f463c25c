// Package doctor checks what the daemon needs from the machine it runs on
// (keywarden doctor): each check says ok, warn or fail, what it found, and
// how to fix it. It only reads: it changes nothing on the machine, and
// never reads a key, a passphrase or the store's contents.
package doctor
