// Package metrics exposes the daemon's Prometheus metrics on an endpoint
// of their own (a Unix socket or a loopback TCP address), never on a key
// socket.
//
// The request path pays one atomic add per operation and one histogram
// observation per request: the counters are plain arrays indexed by
// operation and status, turned into samples only when scraped. Labels
// carry operation and status names only, never key names or ids (their
// number is unbounded, and names can be secret). Everything else (keys,
// memory, seal state, audit log, KDF queue, generation, store size) is
// read from the daemon's own state at scrape time.
package metrics
