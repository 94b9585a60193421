#!/usr/bin/env bash
# Try qrypt-fs with no Qrypt token: builds, starts the local emulator on loopback, mounts
# qrypt-fs on MOUNTPOINT (default /tmp/qrypt) against it, shows a sample and /status, and keeps
# serving until Ctrl-C (then unmounts and stops both).
#
# THE BYTES SERVED HERE ARE NOT QUANTUM ENTROPY: the emulator makes them with the OS CSPRNG.
# With a real token:  QRYPT_TOKEN=... qrypt-fs /mnt/qrypt
set -euo pipefail
cd "$(dirname "$0")/.."
mnt=${1:-/tmp/qrypt}
cargo build --release --locked --workspace --bins
mkdir -p "$mnt"
work=$(mktemp -d)
cleanup() {
  [ -n "${fs_pid:-}" ] && kill -TERM "$fs_pid" 2>/dev/null && wait "$fs_pid" 2>/dev/null || true
  [ -n "${emu_pid:-}" ] && kill -TERM "$emu_pid" 2>/dev/null && wait "$emu_pid" 2>/dev/null || true
  mountpoint -q "$mnt" 2>/dev/null && umount -l "$mnt" || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

target/release/qrypt-emulator --listen 127.0.0.1:0 >"$work/emu.out" 2>"$work/emu.log" &
emu_pid=$!
for _ in $(seq 100); do grep -q '^listening on ' "$work/emu.out" && break; sleep 0.05; done
url=$(sed -n 's/^listening on //p' "$work/emu.out")
echo "emulator (NOT quantum entropy) at $url"

QRYPT_TOKEN=emulator-token target/release/qrypt-fs -f --endpoint "$url" "$mnt" 2>"$work/fs.log" &
fs_pid=$!
for _ in $(seq 200); do [ -e "$mnt/status" ] && break; sleep 0.05; done
echo "mounted on $mnt"
echo "--- head -c 32 $mnt/random | od -An -tx1"
head -c 32 "$mnt/random" | od -An -tx1
echo "--- cat $mnt/status"
cat "$mnt/status"
echo "--- serving on $mnt until Ctrl-C (log: $work/fs.log)"
wait "$fs_pid"
