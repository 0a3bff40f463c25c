// Package wire defines keywarden's wire protocol: the protobuf messages in
// keywarden.proto (generated code committed in keywarden.pb.go), the
// protocol version, the default limits, and the error type that carries a
// Status across the daemon's layers.
//
// Both the client library and the daemon import this package, so it must
// stay free of daemon internals: no key material, no policy, no I/O.
package wire
