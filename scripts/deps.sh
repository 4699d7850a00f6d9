#!/usr/bin/env bash
# Installs the system parts mas4h drives (OpenSSH, dropbear, iptables, nftables, kmod,
# iproute2, sqlite3, busybox, curl (the shell client); chromium for the dashboard test; systemd-analyze,
# dpkg-dev, lintian and man-db for the unit and .deb tests; systemd-container
# (systemd-nspawn) for make test-systemd; ssh-audit for the
# sshd's audit, mmdebstrap for the Debian 13 root of the OpenSSH 10 tests;
# file and python3 (plistlib) for the macOS agent's and launchd tests;
# rsync and ansible-core for the operator tools' tests; postgresql, whose
# initdb and pg_ctl the tests use to start their own clusters on loopback)
# and checks the Go toolchain. Runs apt-get only
# for what is missing, so repeated `make test` needs no network (but for the
# Debian 13 root, built from Debian's mirror on first use and then weekly).
set -euo pipefail
pkgs=(openssh-server openssh-client dropbear-bin iptables nftables kmod iproute2 file python3 sqlite3 busybox curl shellcheck gcc libc6-dev make ca-certificates chromium fonts-dejavu-core systemd systemd-container dpkg-dev lintian man-db ssh-audit mmdebstrap rsync ansible-core postgresql)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing packages: ${missing[*]}; run as root (sudo make ...) or install them" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
export PATH="$PATH:/usr/local/go/bin"
if ! command -v go >/dev/null; then
  echo "deps: Go 1.26 or newer is needed to build mas4h (Debian 12's golang package is too old): install it under /usr/local/go" >&2
  exit 1
fi
echo "deps: ok ($(go version | cut -d' ' -f3), $(/usr/sbin/sshd -V 2>&1 | cut -d, -f1))"
