#!/usr/bin/env bash
# Installs the programs the integration tests drive through a real mount: mount/umount/losetup
# (util-linux), fuse3 (mount.fuse3, fusermount3), rng-tools5 (rngtest, rngd), openssl, a JDK,
# python3, systemd (systemd-analyze checks the unit file), strace (shows what rngd feeds the
# kernel), prometheus (with promtool) and prometheus-node-exporter (the monitoring tests scrape
# a mount); and to build at all, a C compiler and make (ring's assembly, and jemalloc, the
# daemon's allocator, are built from source). Needs root (apt-get); skips what is already there.
#
# --packaging: also what only the packaging tests use (scripts/test-deb.sh and
# scripts/test-systemd.sh run this themselves): systemd-container (systemd-nspawn boots a real
# systemd) and lintian. scripts/test-deb.sh installs cargo-deb itself (from crates.io, pinned;
# about 5 minutes to build on 2 cores).
#
# It installs only what is missing and never upgrades anything already installed: a package
# whose installation would upgrade another (a newer systemd for systemd-container, say) is
# left out, with the packages it would upgrade named, and the script exits 1 at the end.
#
# --check: install nothing; list the missing Debian packages on stdout and exit 1 if any is
# missing (scripts/test.sh asks this before any test runs).
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
  cc:gcc make:make
  prometheus:prometheus promtool:prometheus prometheus-node-exporter:prometheus-node-exporter
)
packaging=(systemd-nspawn:systemd-container lintian:lintian)
mode=install
case ${1:-} in
--check) mode=check ;;
--packaging) programs+=("${packaging[@]}") ;;
'') ;;
*) echo "usage: $0 [--check | --packaging]" >&2; exit 2 ;;
esac
need=()
for entry in "${programs[@]}"; do
  program=${entry%%:*} package=${entry#*:}
  if ! command -v "$program" >/dev/null && [[ " ${need[*]} " != *" $package "* ]]; then
    need+=("$package")
  fi
done
if [ "$mode" = check ]; then
  [ ${#need[@]} -eq 0 ] || { echo "${need[*]}"; exit 1; }
  [ -c /dev/fuse ] || { echo "no /dev/fuse (modprobe fuse)" >&2; exit 1; }
  exit 0
fi
held=()
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  fits=()
  for package in "${need[@]}"; do
    # A simulated install: "Inst NAME [OLD] (NEW ...)" is an upgrade of an installed NAME.
    upgrades=$(apt-get install -s -qq --no-install-recommends --no-upgrade "$package" |
      sed -nE 's/^Inst ([^ ]+) \[.*/\1/p' | tr '\n' ' ')
    if [ -n "$upgrades" ]; then
      held+=("$package (would upgrade: ${upgrades% })")
    else
      fits+=("$package")
    fi
  done
  if [ ${#fits[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends --no-upgrade "${fits[@]}"
  fi
  # The tests start their own Prometheus and node_exporter on loopback: none system-wide.
  for service in prometheus prometheus-node-exporter; do
    if [[ " ${fits[*]} " == *" $service "* ]]; then
      systemctl disable --now "$service" 2>/dev/null || true
    fi
  done
fi
[ -c /dev/fuse ] || { modprobe fuse 2>/dev/null || true; }
[ -c /dev/fuse ] || { echo "no /dev/fuse: FUSE tests cannot run" >&2; exit 1; }
if [ ${#held[@]} -gt 0 ]; then
  echo "install-test-deps: not installed, since that would upgrade installed packages:" >&2
  printf '  %s\n' "${held[@]}" >&2
  echo "install-test-deps: upgrade them yourself (apt-get install PACKAGE) if you want those tests" >&2
  exit 1
fi
