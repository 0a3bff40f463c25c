module github.com/keywarden/keywarden

go 1.26.0

require (
	github.com/planetscale/vtprotobuf v0.6.0
	go.etcd.io/bbolt v1.4.3
	golang.org/x/crypto v0.58.0
	golang.org/x/sys v0.49.0
	google.golang.org/protobuf v1.36.12
)

// Only tests use this one: go-internal's testscript runs the CLI's script
// tests (e2e). The comparison with memguard is a module of its own
// (bench/), so that memguard is none of keywarden's dependencies.
require github.com/rogpeppe/go-internal v1.16.0

require golang.org/x/tools v0.26.0 // indirect

tool (
	github.com/planetscale/vtprotobuf/cmd/protoc-gen-go-vtproto
	google.golang.org/protobuf/cmd/protoc-gen-go
)
