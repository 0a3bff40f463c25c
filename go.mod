module github.com/keywarden/keywarden

go 1.26.0

require (
	github.com/pelletier/go-toml/v2 v2.4.3
	github.com/planetscale/vtprotobuf v0.6.1-0.20240319094008-0393e58bdf10
	github.com/prometheus/client_golang v1.25.0
	go.etcd.io/bbolt v1.4.3
	go.etcd.io/etcd/api/v3 v3.6.16
	go.etcd.io/etcd/client/pkg/v3 v3.6.16
	go.etcd.io/etcd/client/v3 v3.6.16
	go.uber.org/zap v1.27.0
	golang.org/x/crypto v0.58.0
	golang.org/x/sys v0.49.0
	google.golang.org/grpc v1.83.2
	google.golang.org/protobuf v1.36.12
	k8s.io/kms v0.37.2
)

// Only tests use this one: go-internal's testscript runs the CLI's script
// tests (e2e). The comparison with memguard is a module of its own
// (bench/), so that memguard is none of keywarden's dependencies.
require github.com/rogpeppe/go-internal v1.16.0

// Only tests use this one too: porcupine checks that the lifecycle
// operations of daemons sharing an etcd store are linearizable.
require github.com/anishathalye/porcupine v1.3.1

require (
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/coreos/go-semver v0.3.1 // indirect
	github.com/coreos/go-systemd/v22 v22.5.0 // indirect
	github.com/gogo/protobuf v1.3.2 // indirect
	github.com/golang/protobuf v1.5.4 // indirect
	github.com/grpc-ecosystem/grpc-gateway/v2 v2.29.0 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/prometheus/client_model v0.6.3 // indirect
	github.com/prometheus/common v0.72.0 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	go.uber.org/multierr v1.11.0 // indirect
	golang.org/x/net v0.61.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	golang.org/x/tools v0.51.0 // indirect
	google.golang.org/genproto/googleapis/api v0.0.0-20260803160001-6ac0973c030d // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260803160001-6ac0973c030d // indirect
)

tool (
	github.com/planetscale/vtprotobuf/cmd/protoc-gen-go-vtproto
	google.golang.org/protobuf/cmd/protoc-gen-go
)

// grpc (through k8s.io/kms, the KMS v2 front, and the etcd client, the
// etcd store) asks for a newer
// vtprotobuf than the one whose generator made internal/wire's and
// internal/persist's code; grpc's own code does not import it. Keep the
// generator, and the runtime its code was made for, where they are:
// regenerating with the newer one changes how empty oneof members are
// encoded.
replace github.com/planetscale/vtprotobuf => github.com/planetscale/vtprotobuf v0.6.0
