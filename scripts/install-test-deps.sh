#!/usr/bin/env bash
# Installs the programs the integration tests drive through a real mount: mount/umount/losetup
# (util-linux), fuse3 (mount.fuse3, fusermount3), rng-tools5 (rngtest, rngd), openssl, a JDK,
# python3, systemd (systemd-analyze checks the unit file), strace (shows what rngd feeds the
# kernel), prometheus (with promtool) and prometheus-node-exporter (the monitoring tests scrape
# a mount); kubernetes-validate (from PyPI, pinned, in a virtual environment of its own under
# target/, so nothing system-wide changes), which checks contrib/kubernetes/ against Kubernetes'
# schema offline; and to build at all, a C compiler and make (ring's assembly, and jemalloc, the
# daemon's allocator, are built from source). Needs root (apt-get); skips what is already there.
#
# --packaging: also what only the packaging tests use (scripts/test-deb.sh and
# scripts/test-systemd.sh run this themselves): systemd-container (systemd-nspawn boots a real
# systemd) and lintian. scripts/test-deb.sh installs cargo-deb itself (from crates.io, pinned;
# about 5 minutes to build on 2 cores).
#
# It installs only what is missing and never upgrades anything already installed: of a
# package's versions it takes the newest whose installation upgrades nothing (a security
# archive often still has the systemd-container that matches the installed systemd); a package
# with no such version is left out, with the packages it would upgrade named, and the script
# exits 1 at the end. --allow-upgrades lifts that (CI's throwaway machines use it).
#
# --check: install nothing; list what is missing (Debian packages, and kubernetes-validate) on
# stdout and exit 1 if any is missing (scripts/test.sh asks this before any test runs).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# The manifests' validator: the version names the newest Kubernetes schema it carries (1.37),
# and tests/integration/kubernetes.rs finds it here.
k8s_validate_version=1.37.0
k8s_venv=$root/target/kubernetes-validate
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
mode=install allow_upgrades=no
for arg in "$@"; do
  case $arg in
  --check) mode=check ;;
  --packaging) programs+=("${packaging[@]}") ;;
  --allow-upgrades) allow_upgrades=yes ;;
  *) echo "usage: $0 [--check | --packaging] [--allow-upgrades]" >&2; exit 2 ;;
  esac
done
need=()
for entry in "${programs[@]}"; do
  program=${entry%%:*} package=${entry#*:}
  if ! command -v "$program" >/dev/null && [[ " ${need[*]} " != *" $package "* ]]; then
    need+=("$package")
  fi
done
# python3 -m venv needs ensurepip, which Debian ships apart from python3.
if command -v python3 >/dev/null && ! python3 -c 'import ensurepip' 2>/dev/null; then
  need+=(python3-venv)
fi
k8s_validate_ok() {
  [ "$("$k8s_venv/bin/kubernetes-validate" --version 2>/dev/null)" = "$k8s_validate_version" ]
}
if [ "$mode" = check ]; then
  missing=("${need[@]}")
  k8s_validate_ok || missing+=(kubernetes-validate)
  [ ${#missing[@]} -eq 0 ] || { echo "${missing[*]}"; exit 1; }
  [ -c /dev/fuse ] || { echo "no /dev/fuse (modprobe fuse)" >&2; exit 1; }
  exit 0
fi
held=()
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  fits=()
  # What installing $1 would upgrade: "Inst NAME [OLD] (NEW ...)" in a simulated install.
  upgrades_of() {
    apt-get install -s -qq --no-install-recommends --no-upgrade "$1" |
      sed -nE 's/^Inst ([^ ]+) \[.*/\1/p' | tr '\n' ' '
  }
  for package in "${need[@]}"; do
    upgrades=$(upgrades_of "$package")
    if [ -z "$upgrades" ] || [ $allow_upgrades = yes ]; then
      fits+=("$package")
      continue
    fi
    # An older version that upgrades nothing, newest first.
    pick=''
    for version in $(apt-cache madison "$package" | awk -F'|' '{ gsub(/ /, "", $2); print $2 }'); do
      if [ -z "$(upgrades_of "$package=$version")" ]; then pick="$package=$version"; break; fi
    done
    if [ -n "$pick" ]; then
      fits+=("$pick")
    else
      held+=("$package (would upgrade: ${upgrades% })")
    fi
  done
  if [ ${#fits[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends --no-upgrade "${fits[@]}"
  fi
  # The tests start their own Prometheus and node_exporter on loopback: none system-wide.
  for service in prometheus prometheus-node-exporter; do
    if [[ " ${fits[*]} " == *" $service"[=\ ]* ]]; then
      systemctl disable --now "$service" 2>/dev/null || true
    fi
  done
fi
if ! k8s_validate_ok; then
  rm -rf "$k8s_venv"
  python3 -m venv "$k8s_venv"
  "$k8s_venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$k8s_validate_version"
  k8s_validate_ok || { echo "kubernetes-validate $k8s_validate_version did not install" >&2; exit 1; }
fi
[ -c /dev/fuse ] || { modprobe fuse 2>/dev/null || true; }
[ -c /dev/fuse ] || { echo "no /dev/fuse: FUSE tests cannot run" >&2; exit 1; }
if [ ${#held[@]} -gt 0 ]; then
  echo "install-test-deps: not installed, since that would upgrade installed packages:" >&2
  printf '  %s\n' "${held[@]}" >&2
  echo "install-test-deps: upgrade them yourself (apt-get install PACKAGE) if you want those tests" >&2
  exit 1
fi
