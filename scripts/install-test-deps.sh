#!/usr/bin/env bash
# Installs the programs the integration tests drive through a real mount: mount/umount/losetup
# (util-linux), fuse3 (mount.fuse3, fusermount3), rng-tools5 (rngtest, rngd), openssl, a JDK,
# python3, systemd (systemd-analyze checks the unit file), strace (shows what rngd feeds the
# kernel), and for the packaging tests (scripts/test-deb.sh, scripts/test-systemd.sh):
# systemd-container (systemd-nspawn boots a real systemd), lintian, prometheus (with promtool)
# and prometheus-node-exporter (the monitoring tests scrape a mount), and cargo-deb (from
# crates.io, pinned; about 5 minutes to build on 2 cores); and to build at all, a C compiler
# and make (ring's assembly, and jemalloc, the daemon's allocator, are built from source). Needs root (apt-get); skips what is
# already there.
#
# --check: install nothing; list the missing Debian packages on stdout and exit 1 if any is
# missing (scripts/test.sh asks this before any test runs; cargo-deb is the packaging tests'
# own business and not checked).
set -euo pipefail
# program the tests run -> the Debian package that has it
programs=(
  mount.fuse3:fuse3 fusermount3:fuse3
  rngtest:rng-tools5 rngd:rng-tools5
  openssl:openssl
  java:default-jdk-headless
  python3:python3
  mount:mount umount:mount losetup:mount unshare:util-linux
  systemd-analyze:systemd
  strace:strace
  systemd-nspawn:systemd-container
  lintian:lintian
  cc:gcc make:make
  prometheus:prometheus promtool:prometheus prometheus-node-exporter:prometheus-node-exporter
)
need=()
for entry in "${programs[@]}"; do
  program=${entry%%:*} package=${entry#*:}
  if ! command -v "$program" >/dev/null && [[ " ${need[*]} " != *" $package "* ]]; then
    need+=("$package")
  fi
done
if [ "${1:-}" = --check ]; then
  [ ${#need[@]} -eq 0 ] || { echo "${need[*]}"; exit 1; }
  [ -c /dev/fuse ] || { echo "no /dev/fuse (modprobe fuse)" >&2; exit 1; }
  exit 0
fi
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends --no-upgrade "${need[@]}"
  # The tests start their own Prometheus and node_exporter on loopback: none system-wide.
  for service in prometheus prometheus-node-exporter; do
    if [[ " ${need[*]} " == *" $service "* ]]; then
      systemctl disable --now "$service" 2>/dev/null || true
    fi
  done
fi
if ! cargo deb --version 2>/dev/null | grep -qx 'cargo-deb 3\.8\.0'; then
  cargo install cargo-deb --locked --version 3.8.0
fi
[ -c /dev/fuse ] || { modprobe fuse 2>/dev/null || true; }
[ -c /dev/fuse ] || { echo "no /dev/fuse: FUSE tests cannot run" >&2; exit 1; }
