#!/usr/bin/env bash
# Installs the programs the integration tests drive through a real mount: mount/umount
# (util-linux), fuse3 (mount.fuse3, fusermount3), rng-tools5 (rngtest, rngd), openssl, a JDK,
# python3, systemd (systemd-analyze checks the unit file), strace (shows what rngd feeds the
# kernel), and for the packaging tests (scripts/test-deb.sh, scripts/test-systemd.sh):
# systemd-container (systemd-nspawn boots a real systemd), lintian, and cargo-deb (from
# crates.io, pinned; about 5 minutes to build on 2 cores). Needs root (apt-get); skips what is
# already there.
set -euo pipefail
need=()
command -v mount.fuse3 >/dev/null || need+=(fuse3)
command -v rngtest >/dev/null || need+=(rng-tools5)
command -v openssl >/dev/null || need+=(openssl)
command -v java >/dev/null || need+=(default-jdk-headless)
command -v python3 >/dev/null || need+=(python3)
command -v umount >/dev/null || need+=(mount)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v strace >/dev/null || need+=(strace)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v lintian >/dev/null || need+=(lintian)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if ! cargo deb --version 2>/dev/null | grep -qx 'cargo-deb 3\.8\.0'; then
  cargo install cargo-deb --locked --version 3.8.0
fi
[ -c /dev/fuse ] || { modprobe fuse 2>/dev/null || true; }
[ -c /dev/fuse ] || { echo "no /dev/fuse: FUSE tests cannot run" >&2; exit 1; }
