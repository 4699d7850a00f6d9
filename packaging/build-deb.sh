#!/usr/bin/env bash
# Builds the mas4h Debian package with dpkg-deb from a staged tree:
#   packaging/build-deb.sh VERSION OUTDIR
# Contents: /usr/bin/mas4h, the static /usr/bin/mas4h-authkeys (the lean sshd hook) (+ the static /usr/bin/mas4h-agent when
# cmd/mas4h-agent exists), the units in /lib/systemd/system, /etc/mas4h
# defaults (conffiles), man pages, shell completions, the maintainer scripts
# of packaging/debian. Prints the path of the .deb.
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
version=${1:?usage: build-deb.sh VERSION OUTDIR}
out=${2:?usage: build-deb.sh VERSION OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
go=${GO:-go}
arch=$(dpkg --print-architecture)
case "$version" in
[0-9]*) ;;
*) echo "build-deb: version $version must start with a digit" >&2; exit 2 ;;
esac

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"
cd "$top"

# Binaries: mas4h links SQLite (cgo); the agent is static for any device.
install -d -m 0755 "$stage/usr/bin"
"$go" build -trimpath -buildmode=pie -ldflags "-s -w -X main.version=$version" -o "$stage/usr/bin/mas4h" ./cmd/mas4h
# The hook is static too: no dynamic loader to run twice per authentication.
CGO_ENABLED=0 "$go" build -trimpath -ldflags "-s -w" -o "$stage/usr/bin/mas4h-authkeys" ./cmd/mas4h-authkeys
if [ -d cmd/mas4h-agent ]; then
	CGO_ENABLED=0 "$go" build -trimpath -ldflags "-s -w -X main.version=$version" -o "$stage/usr/bin/mas4h-agent" ./cmd/mas4h-agent
fi
mas4h="$stage/usr/bin/mas4h"

install -d -m 0755 "$stage/lib/systemd/system"
install -m 0644 systemd/*.service "$stage/lib/systemd/system/"

install -d -m 0755 "$stage/etc/mas4h"
install -m 0644 packaging/etc/mas4h/*.conf "$stage/etc/mas4h/"

man=$(mktemp -d)
"$mas4h" man "$man" >/dev/null
install -d -m 0755 "$stage/usr/share/man/man1"
for f in "$man"/*.1; do
	page=$(basename "$f")
	gzip -9n <"$f" >"$stage/usr/share/man/man1/$page.gz"
done
rm -rf "$man"

install -d -m 0755 "$stage/usr/share/bash-completion/completions" \
	"$stage/usr/share/zsh/vendor-completions" "$stage/usr/share/fish/vendor_completions.d"
"$mas4h" completion bash >"$stage/usr/share/bash-completion/completions/mas4h"
"$mas4h" completion zsh >"$stage/usr/share/zsh/vendor-completions/_mas4h"
"$mas4h" completion fish >"$stage/usr/share/fish/vendor_completions.d/mas4h.fish"

doc="$stage/usr/share/doc/mas4h"
install -d -m 0755 "$doc/examples"
install -m 0644 packaging/debian/copyright "$doc/copyright"
install -m 0644 packaging/slave.conf.example "$doc/examples/slave.conf.example"
install -m 0644 packaging/slave-vip.conf "$doc/examples/slave-vip.conf"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
{
	echo "mas4h ($version) unstable; urgency=medium"
	echo
	echo "  * Built from git $commit."
	echo
	echo " -- mas4h maintainers <maintainers@users.noreply.h-seed-fe2c569d.example>  $(LC_ALL=C date -R -u -d "@$epoch")"
} | gzip -9n >"$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"
install -d -m 0755 "$stage/usr/share/lintian/overrides"
install -m 0644 packaging/debian/lintian-overrides "$stage/usr/share/lintian/overrides/mas4h"

# DEBIAN/: control, conffiles, maintainer scripts, md5sums.
install -d -m 0755 "$stage/DEBIAN"
glibc=$(objdump -T "$mas4h" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1 || true)
depends="libc6"
if [ -n "$glibc" ]; then
	depends="libc6 (>= $glibc)"
fi
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s/@DEPENDS@/$depends/" \
	packaging/debian/control.in >"$stage/DEBIAN/control"
(cd "$stage" && find etc -type f | sed 's|^|/|' | sort) >"$stage/DEBIAN/conffiles"
for s in postinst prerm postrm; do
	install -m 0755 "packaging/debian/$s" "$stage/DEBIAN/$s"
done
(cd "$stage" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -print | sed 's|^\./||' | sort | xargs md5sum) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/mas4h_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
