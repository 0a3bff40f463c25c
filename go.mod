module github.com/keywarden/keywarden

go 1.26.0

require (
	github.com/pelletier/go-toml/v2 v2.4.3
	github.com/planetscale/vtprotobuf v0.6.1-0.20240319094008-0393e58bdf10
	github.com/prometheus/client_golang v1.25.0
	go.etcd.io/bbolt v1.4.3
	golang.org/x/crypto v0.58.0
	golang.org/x/sys v0.49.0
	google.golang.org/grpc v1.82.1
	google.golang.org/protobuf v1.36.12
	k8s.io/kms v0.37.2
)

// Only tests use this one: go-internal's testscript runs the CLI's script
// tests (e2e). The comparison with memguard is a module of its own
// (bench/), so that memguard is none of keywarden's dependencies.
require github.com/rogpeppe/go-internal v1.16.0

require (
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/prometheus/client_model v0.6.3 // indirect
	github.com/prometheus/common v0.72.0 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	golang.org/x/tools v0.51.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260526163538-3dc84a4a5aaa // indirect
)

tool (
	github.com/planetscale/vtprotobuf/cmd/protoc-gen-go-vtproto
	google.golang.org/protobuf/cmd/protoc-gen-go
)

// grpc (through k8s.io/kms, the KMS v2 front) asks for a newer
// vtprotobuf than the one whose generator made internal/wire's and
// internal/persist's code; grpc's own code does not import it. Keep the
// generator, and the runtime its code was made for, where they are:
// regenerating with the newer one changes how empty oneof members are
// encoded.
replace github.com/planetscale/vtprotobuf => github.com/planetscale/vtprotobuf v0.6.0
