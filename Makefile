# The usual entry points. Everything also works with plain go commands.

GO      ?= go
# The official build: operations on key bytes run inside runtime/secret.Do
# (Go 1.26 experiment; without it the daemon works but does not erase the
# copies the cryptographic libraries make).
export GOEXPERIMENT := runtimesecret
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/keywarden/keywarden/internal/cli.Version=$(VERSION)

.PHONY: build test proto fuzz bench clean

# bin/keywarden: the daemon and the command line in one binary.
build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/keywarden ./cmd/keywarden

# Every test, installing what the tests need on a fresh Debian machine.
test:
	./scripts/test.sh

# Regenerate internal/wire and internal/persist from their .proto files
# (needs protoc).
proto:
	GOBIN=$(CURDIR)/bin/tools $(GO) install tool
	cd internal/wire && PATH=$(CURDIR)/bin/tools:$$PATH $(GO) generate
	cd internal/persist && PATH=$(CURDIR)/bin/tools:$$PATH $(GO) generate

# Fuzz each target for FUZZTIME (default 1m).
FUZZTIME ?= 1m
fuzz:
	$(GO) test -run=NONE -fuzz='^FuzzRequest$$' -fuzztime=$(FUZZTIME) ./internal/server
	for f in FuzzImport FuzzDerivePeer FuzzDecrypt FuzzVerify; do \
		$(GO) test -run=NONE -fuzz="^$$f\$$" -fuzztime=$(FUZZTIME) ./internal/mech || exit 1; \
	done
	$(GO) test -run=NONE -fuzz='^FuzzHandle$$' -fuzztime=$(FUZZTIME) ./internal/p11front
	for f in FuzzParseKmsg FuzzParseUevent FuzzVMClockPage FuzzFindVMGenIDAddress; do \
		$(GO) test -run=NONE -fuzz="^$$f\$$" -fuzztime=$(FUZZTIME) ./internal/genid || exit 1; \
	done

# The figures of docs/performance.md.
bench: build
	./bin/keywarden bench

clean:
	rm -rf bin

# bin/libkeywarden-pkcs11.so: the PKCS #11 module, p11-kit's client
# module pointed at the daemon's PKCS #11 socket (docs/pkcs11.md). Needs a
# C compiler; p11-kit-client.so (Debian's p11-kit-modules) at run time.
.PHONY: pkcs11 install-pkcs11
MULTIARCH ?= $(shell $(CC) -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
PKCS11DIR ?= /usr/lib/$(MULTIARCH)/pkcs11
P11KITCLIENT ?= $(PKCS11DIR)/p11-kit-client.so
P11KITMODULEDIR ?= /usr/share/p11-kit/modules
pkcs11:
	mkdir -p bin
	$(CC) -O2 -Wall -Wextra -fPIC -shared -fvisibility=hidden \
		-DP11_KIT_CLIENT='"$(P11KITCLIENT)"' -o bin/libkeywarden-pkcs11.so pkcs11/keywarden-pkcs11.c -ldl -lpthread

# The module in the multiarch PKCS #11 directory, and its p11-kit module
# file (p11-kit list-modules then shows it).
install-pkcs11: pkcs11
	install -D -m 0644 bin/libkeywarden-pkcs11.so $(DESTDIR)$(PKCS11DIR)/libkeywarden-pkcs11.so
	install -D -m 0644 pkcs11/keywarden.module $(DESTDIR)$(P11KITMODULEDIR)/keywarden.module
