// Package mech implements keywarden's cryptographic mechanisms on key
// material: generation, import and export, AES-256-GCM, HMAC, hashing,
// Ed25519, ECDSA, RSA (PSS, PKCS #1 v1.5, OAEP), X25519/ECDH agreement and
// HKDF, and streaming (init/update/final) hashing, MACs and signatures.
// Everything is built on the standard library (golang.org/x/crypto is
// allowed where the standard library lacks something; nothing here needs
// it yet). SelfTest runs the known-answer tests the daemon needs at start.
//
// mech owns key bytes while a key object exists and wipes them on Destroy
// (see Key for what that reaches). It never decides who may do what
// (package policy does) and never logs: its errors are *wire.Error values
// whose public text names no secret and, for decryption, does not say why
// it failed.
package mech
