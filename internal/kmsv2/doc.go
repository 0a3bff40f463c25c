// Package kmsv2 is the daemon's Kubernetes KMS v2 front: it serves the
// k8s.io/kms v2 gRPC service (Status, Encrypt, Decrypt) on a Unix socket,
// so that kube-apiserver encrypts Secrets at rest under a keywarden
// AES-256-GCM key (docs/kubernetes.md).
//
// It is an adapter: each gRPC connection is one core session
// (server.NewSession, front "kms-v2"), opened with the identity the kernel
// gave for the connecting process (SO_PEERCRED and a pidfd) during the
// connection's handshake, and Encrypt and Decrypt are the core's encrypt
// and decrypt operations on the key named by Config.Key among that
// process's uid's keys: the key's owner is the API server's uid, as the
// kernel says it, and no other uid reaches it. Status reports healthy only
// when the daemon is unsealed and the key opens and encrypts. The key_id
// names the key and its newest version, so a rotation (keywarden key
// rotate) changes it, and the API server then re-encrypts its data
// encryption keys; ciphertexts name the version that made them, so older
// ones still decrypt until that version is retired.
package kmsv2
