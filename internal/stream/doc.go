// Package stream implements keywarden's chunked encryption format, which
// lets data of any size be encrypted with a key that never leaves the
// daemon, in pieces that each fit in one message, and read back with
// bounded memory.
//
// The construction is STREAM (Hoang, Reyhanitabar, Rogaway and Vizár,
// "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance",
// CRYPTO 2015) on the daemon's AES-256-GCM: the plaintext is cut into
// chunks of a fixed size, and each chunk is one ordinary encryption by
// the daemon (with its own random nonce, counted against the key's nonce
// budget) whose additional data binds the stream's header (and with it a
// random 128-bit stream id), the chunk's index and whether it is the last
// one. A reader that gets the chunks back in the wrong order, a chunk twice,
// a chunk of another stream, or the stream cut at any point fails with an
// error naming the chunk; it never returns plaintext that was not
// authenticated. The format is in docs/formats.md.
//
// stream owns only the format: the header, the framing, the additional
// data of each chunk and the checks a reader makes. It does not encrypt:
// a Cipher does (the client library's sends every chunk to the daemon as
// one operation, many chunks to a request). LocalCipher seals and opens
// chunks with an AES-GCM key in the caller's process, for a key that was
// exported, and for tests and benchmarks. The package must stay free of
// the daemon's internals: the client library imports it.
package stream
