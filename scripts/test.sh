#!/bin/sh
# Runs every keywarden test: vet, formatting, unit, integration, CLI
# script, race and short fuzz runs, and the check that the generated
# protocol code matches keywarden.proto.
#
# On a fresh Debian machine with Go it first installs what the tests
# need: openssl and argon2 (interoperability tests) and protoc with its
# Go plugins (generated code check). Run it as root, or as a user with
# sudo, or with those installed already.
set -eu
cd "$(dirname "$0")/.."

# The official build: operations on key bytes run inside runtime/secret.Do,
# which exists only with this experiment (see internal/secmem).
export GOEXPERIMENT=runtimesecret

log() { printf '== %s\n' "$*" >&2; }

missing=""
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v protoc >/dev/null 2>&1 || missing="$missing protobuf-compiler"
command -v argon2 >/dev/null 2>&1 || missing="$missing argon2"
if [ -n "$missing" ]; then
	log "installing$missing"
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

log "go modules and protoc plugins"
go mod download
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
GOBIN="$tools" go install tool # the protoc plugins, at the versions go.mod pins
PATH="$tools:$PATH"
export PATH

log "vet and formatting"
go vet ./...
unformatted="$(gofmt -l . | grep -v '^internal/perftmp/' || true)"
if [ -n "$unformatted" ]; then
	echo "not gofmt-formatted:" >&2
	echo "$unformatted" >&2
	exit 1
fi

log "tests"
go test -count=1 ./...

log "race detector"
go test -count=1 -race . ./internal/server ./internal/keystore ./internal/seqpacket ./internal/policy ./internal/mech ./internal/secmem

log "fuzzing, briefly"
fuzz() { go test -run=NONE -fuzz="^$2\$" -fuzztime="${FUZZTIME:-10s}" "$1" >/dev/null; }
fuzz ./internal/server FuzzRequest
fuzz ./internal/mech FuzzImport
fuzz ./internal/mech FuzzDerivePeer
fuzz ./internal/mech FuzzDecrypt
fuzz ./internal/mech FuzzVerify
fuzz ./internal/kdf FuzzParsePHC
fuzz ./internal/kdf FuzzWorkerStream

log "all tests passed"
