package wire

// Regenerate keywarden.pb.go after editing keywarden.proto (needs protoc and
// protoc-gen-go at the version pinned in go.mod):
//
//go:generate protoc --go_out=. --go_opt=paths=source_relative keywarden.proto
