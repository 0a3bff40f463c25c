#!/bin/sh
# Builds the Debian package of keywarden with dpkg-deb, offline: the
# layout of "make install" under /usr, the package's maintainer scripts
# (packaging/deb), and a control file. It writes bin/keywarden_VERSION_ARCH.deb
# and prints its path. Run it through "make deb".
#
# The binary is linked statically (CGO_ENABLED=0: keywarden uses no C).
# The PKCS #11 module (libkeywarden-pkcs11.so, in the multiarch PKCS #11
# directory, with its p11-kit module file) is C and needs libc: the
# package depends on the libc6 that offers every symbol version it uses.
# Building it needs a C compiler and libp11-kit-dev. The package enables
# and starts nothing.
set -eu
cd "$(dirname "$0")/.."

make=${MAKE:-make}
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
# A Debian version starts with a digit and has no hyphen (no Debian
# revision): v1.2.0-3-gabc1234 becomes 1.2.0+3+gabc1234, and a commit
# with no release tag before it, abc1234, becomes 0~gitabc1234.
debversion=$(printf '%s' "$version" | sed 's/^v//; s/-/+/g; s/[^A-Za-z0-9.+~]/+/g')
case "$debversion" in
[0-9]*.*) ;;
*) debversion="0~git$debversion" ;;
esac
arch=$(dpkg --print-architecture)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/root"

CGO_ENABLED=0 $make --no-print-directory install PKCS11=yes DESTDIR="$root" PREFIX=/usr SYSCONFDIR=/etc \
	UNITDIR=/usr/lib/systemd/system USERUNITDIR=/usr/lib/systemd/user \
	ZSHCOMPDIR=/usr/share/zsh/vendor-completions VERSION="$version" >&2
# Debian's layout: compressed manual pages.
find "$root/usr/share/man" -type f -exec gzip -9n {} +

mkdir -p "$root/DEBIAN"
for s in postinst prerm postrm; do
	install -m 0755 "packaging/deb/$s" "$root/DEBIAN/$s"
done
# Every file under /etc is a configuration file: an upgrade keeps the
# administrator's changes.
(cd "$root" && find etc -type f 2>/dev/null | sed 's|^|/|') >"$root/DEBIAN/conffiles"
[ -s "$root/DEBIAN/conffiles" ] || rm "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
# The newest glibc symbol version the module needs.
module=$(find "$root/usr/lib" -name libkeywarden-pkcs11.so | head -n 1)
[ -n "$module" ] || { echo "deb.sh: the PKCS #11 module was not installed" >&2; exit 1; }
glibc=$(objdump -T "$module" | sed -n 's/.*GLIBC_\([0-9.]*\).*/\1/p' | sort -V | tail -n 1)
[ -n "$glibc" ] || { echo "deb.sh: cannot tell which glibc $module needs" >&2; exit 1; }
cat >"$root/DEBIAN/control" <<CONTROL
Package: keywarden
Version: $debversion
Architecture: $arch
Maintainer: ${DEB_MAINTAINER:-keywarden developers}
Installed-Size: $size
Depends: passwd, libc6 (>= $glibc)
Section: admin
Priority: optional
Description: local key service: applications use keys, the daemon holds them
 keywarden holds cryptographic keys in locked memory, outside the programs
 that use them, and performs the operations each key allows for the callers
 the kernel identifies, recording every request in a tamper-evident audit
 log. One binary is the daemon ("keywarden serve") and its command line.
 .
 The package also carries the PKCS #11 module, libkeywarden-pkcs11.so,
 registered with p11-kit, through which OpenSSL, OpenSSH, GnuTLS and other
 C programs use the daemon's keys.
 .
 The package creates the keywarden system account and its directories
 (/var/lib/keywarden, /run/keywarden); it enables and starts nothing.
CONTROL

out="bin/keywarden_${debversion}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >&2
echo "$out"
