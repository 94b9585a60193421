#!/usr/bin/env bash
# Installs the programs the integration tests drive through a real mount: mount/umount/losetup
# (util-linux), fuse3 (mount.fuse3, fusermount3), rng-tools5 (rngtest, rngd), openssl, a JDK,
# python3, systemd (systemd-analyze checks the unit file), strace (shows what rngd feeds the
# kernel), and for the packaging tests (scripts/test-deb.sh, scripts/test-systemd.sh):
# systemd-container (systemd-nspawn boots a real systemd), lintian, prometheus (with promtool)
# and prometheus-node-exporter (the monitoring tests scrape a mount), and cargo-deb (from
# crates.io, pinned; about 5 minutes to build on 2 cores); kubernetes-validate (from PyPI,
# pinned, in a virtual environment of its own under target/, so nothing system-wide changes),
# which checks contrib/kubernetes/ against Kubernetes' schema offline; and to build at all, a C
# compiler and make (ring's assembly, and jemalloc, the daemon's allocator, are built from
# source). Needs root (apt-get); skips what is already there.
#
# --check: install nothing; list what is missing (Debian packages, and kubernetes-validate) on
# stdout and exit 1 if any is missing (scripts/test.sh asks this before any test runs;
# cargo-deb is the packaging tests' own business and not checked).
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
# python3 -m venv needs ensurepip, which Debian ships apart from python3.
if command -v python3 >/dev/null && ! python3 -c 'import ensurepip' 2>/dev/null; then
  need+=(python3-venv)
fi
k8s_validate_ok() {
  [ "$("$k8s_venv/bin/kubernetes-validate" --version 2>/dev/null)" = "$k8s_validate_version" ]
}
if [ "${1:-}" = --check ]; then
  missing=("${need[@]}")
  k8s_validate_ok || missing+=(kubernetes-validate)
  [ ${#missing[@]} -eq 0 ] || { echo "${missing[*]}"; exit 1; }
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
if ! k8s_validate_ok; then
  rm -rf "$k8s_venv"
  python3 -m venv "$k8s_venv"
  "$k8s_venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$k8s_validate_version"
  k8s_validate_ok || { echo "kubernetes-validate $k8s_validate_version did not install" >&2; exit 1; }
fi
if ! cargo deb --version 2>/dev/null | grep -qx 'cargo-deb 3\.8\.0'; then
  cargo install cargo-deb --locked --version 3.8.0
fi
[ -c /dev/fuse ] || { modprobe fuse 2>/dev/null || true; }
[ -c /dev/fuse ] || { echo "no /dev/fuse: FUSE tests cannot run" >&2; exit 1; }
