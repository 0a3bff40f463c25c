// Package interop runs other projects' clients against the real daemon:
// the Vault Go api package and Python's hvac against the transit front
// (docs/transit.md), and the k8s.io/kms v2 client against the KMS plugin
// (docs/kubernetes.md). It is a module of its own, so that the Vault client
// is none of keywarden's dependencies; its tests build the keywarden binary
// from the module above and start it.
package interop
