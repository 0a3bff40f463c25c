# The usual entry points. Everything also works with plain go commands.

GO      ?= go
# The official build: operations on key bytes run inside runtime/secret.Do
# (Go 1.26 experiment; without it the daemon works but does not erase the
# copies the cryptographic libraries make).
export GOEXPERIMENT := runtimesecret
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X github.com/keywarden/keywarden/internal/cli.Version=$(VERSION) \
	-X github.com/keywarden/keywarden/internal/cli.Commit=$(COMMIT)

# Where "make install" puts things (under DESTDIR, for packaging).
PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
MANDIR      ?= $(PREFIX)/share/man
SYSCONFDIR  ?= /etc
UNITDIR     ?= $(PREFIX)/lib/systemd/system
USERUNITDIR ?= $(PREFIX)/lib/systemd/user
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR  ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d

.PHONY: build test proto fuzz bench clean gen install deb

# bin/keywarden: the daemon and the command line in one binary.
build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/keywarden ./cmd/keywarden

# bin/gen: the manual pages and shell completion scripts, made by the
# binary from its own command table.
gen: build
	rm -rf bin/gen
	mkdir -p bin/gen/man bin/gen/completion
	bin/keywarden man bin/gen/man >/dev/null
	for sh in bash zsh fish; do bin/keywarden completion $$sh >bin/gen/completion/$$sh || exit 1; done

# The binary, the manual pages, the completion scripts, the systemd units
# (packaging/systemd/*.service and *.socket; user units in
# packaging/systemd/user/), the configuration examples
# (packaging/NAME.conf.example, as SYSCONFDIR/keywarden/NAME.conf: the
# units read keywarden.conf), and the
# sysusers.d and tmpfiles.d entries of the keywarden account and its
# directories, and the PKCS #11 module with its p11-kit module file
# (install-pkcs11, below) when a C compiler and p11-kit's headers are
# there: without them the rest is installed and a line says how to get the
# module (PKCS11=no skips it quietly; PKCS11=yes makes its absence an
# error). Units name the binary as /usr/bin/keywarden; it becomes BINDIR's.
# Nothing is enabled or started.
PKCS11 ?= auto
install: gen
	@if [ "$(PKCS11)" = no ]; then :; \
	elif command -v $(CC) >/dev/null 2>&1 && [ -f $(P11KITINCLUDE)/p11-kit/pkcs11.h ]; then \
		$(MAKE) --no-print-directory install-pkcs11 DESTDIR="$(DESTDIR)" || exit 1; \
	elif [ "$(PKCS11)" = yes ]; then \
		echo "install: the PKCS #11 module needs a C compiler ($(CC)) and $(P11KITINCLUDE)/p11-kit/pkcs11.h (apt install gcc libp11-kit-dev)" >&2; exit 1; \
	else \
		echo "install: not installing the PKCS #11 module: it needs a C compiler ($(CC)) and p11-kit's headers (apt install gcc libp11-kit-dev), or PKCS11=no" >&2; \
	fi
	install -D -m 0755 bin/keywarden $(DESTDIR)$(BINDIR)/keywarden
	install -D -m 0644 bin/gen/man/keywarden.1 $(DESTDIR)$(MANDIR)/man1/keywarden.1
	install -D -m 0644 bin/gen/man/keywarden-serve.8 $(DESTDIR)$(MANDIR)/man8/keywarden-serve.8
	install -D -m 0644 bin/gen/man/keywarden.conf.5 $(DESTDIR)$(MANDIR)/man5/keywarden.conf.5
	install -D -m 0644 bin/gen/completion/bash $(DESTDIR)$(BASHCOMPDIR)/keywarden
	install -D -m 0644 bin/gen/completion/zsh $(DESTDIR)$(ZSHCOMPDIR)/_keywarden
	install -D -m 0644 bin/gen/completion/fish $(DESTDIR)$(FISHCOMPDIR)/keywarden.fish
	install -D -m 0644 packaging/sysusers.d/keywarden.conf $(DESTDIR)$(SYSUSERSDIR)/keywarden.conf
	install -D -m 0644 packaging/tmpfiles.d/keywarden.conf $(DESTDIR)$(TMPFILESDIR)/keywarden.conf
	for f in packaging/systemd/*.service packaging/systemd/*.socket; do \
		[ -f "$$f" ] || continue; \
		mkdir -p $(DESTDIR)$(UNITDIR) && \
		sed 's|/usr/bin/keywarden|$(BINDIR)/keywarden|g' "$$f" >$(DESTDIR)$(UNITDIR)/$$(basename "$$f") || exit 1; \
	done
	for f in packaging/systemd/user/*.service packaging/systemd/user/*.socket; do \
		[ -f "$$f" ] || continue; \
		mkdir -p $(DESTDIR)$(USERUNITDIR) && \
		sed 's|/usr/bin/keywarden|$(BINDIR)/keywarden|g' "$$f" >$(DESTDIR)$(USERUNITDIR)/$$(basename "$$f") || exit 1; \
	done
	for f in packaging/*.conf.example; do \
		[ -f "$$f" ] || continue; \
		install -D -m 0644 "$$f" $(DESTDIR)$(SYSCONFDIR)/keywarden/$$(basename "$$f" .example) || exit 1; \
	done

# bin/keywarden_VERSION_ARCH.deb: the Debian package (dpkg-deb; offline).
deb:
	@MAKE="$(MAKE)" VERSION="$(VERSION)" ./scripts/deb.sh

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
	$(GO) test -run=NONE -fuzz='^FuzzSharedRequest$$' -fuzztime=$(FUZZTIME) ./internal/server
	$(GO) test -run=NONE -fuzz='^FuzzSpan$$' -fuzztime=$(FUZZTIME) ./internal/shm
	for f in FuzzImport FuzzDerivePeer FuzzDecrypt FuzzVerify; do \
		$(GO) test -run=NONE -fuzz="^$$f\$$" -fuzztime=$(FUZZTIME) ./internal/mech || exit 1; \
	done
	$(GO) test -run=NONE -fuzz='^FuzzHandle$$' -fuzztime=$(FUZZTIME) ./internal/p11front
	$(GO) test -run=NONE -fuzz='^FuzzECDHParams$$' -fuzztime=$(FUZZTIME) ./internal/p11front
	for f in FuzzParseKmsg FuzzParseUevent FuzzVMClockPage FuzzFindVMGenIDAddress; do \
		$(GO) test -run=NONE -fuzz="^$$f\$$" -fuzztime=$(FUZZTIME) ./internal/genid || exit 1; \
	done

# The figures of docs/performance.md.
bench: build
	./bin/keywarden bench

clean:
	rm -rf bin

# bin/libkeywarden-pkcs11.so: the PKCS #11 module, a client of the
# daemon's PKCS #11 socket written in C (docs/pkcs11.md); and
# bin/keywarden-p11bench, the C host keywarden bench --pkcs11 runs. Needs a C
# compiler and p11-kit's pkcs11.h (libp11-kit-dev) to build; nothing but
# libc at run time.
.PHONY: pkcs11 install-pkcs11
MULTIARCH ?= $(shell $(CC) -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
PKCS11DIR ?= /usr/lib/$(MULTIARCH)/pkcs11
P11KITMODULEDIR ?= /usr/share/p11-kit/modules
P11KITINCLUDE ?= /usr/include/p11-kit-1
pkcs11:
	mkdir -p bin
	$(CC) -O2 -Wall -Wextra -fPIC -shared -fvisibility=hidden -I$(P11KITINCLUDE) \
		-o bin/libkeywarden-pkcs11.so pkcs11/keywarden-pkcs11.c -lpthread
	$(CC) -O2 -Wall -Wextra -I$(P11KITINCLUDE) -o bin/keywarden-p11bench pkcs11/keywarden-p11bench.c -ldl -lpthread

# The module in the multiarch PKCS #11 directory, and its p11-kit module
# file (p11-kit list-modules then shows it).
install-pkcs11: pkcs11
	install -D -m 0644 bin/libkeywarden-pkcs11.so $(DESTDIR)$(PKCS11DIR)/libkeywarden-pkcs11.so
	install -D -m 0644 pkcs11/keywarden.module $(DESTDIR)$(P11KITMODULEDIR)/keywarden.module
