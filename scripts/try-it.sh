#!/usr/bin/env bash
# Try qrypt-fs with no Qrypt token: builds, starts the local emulator on loopback, mounts
# qrypt-fs on MOUNTPOINT (default /tmp/qrypt) against it, shows a sample and /status, and keeps
# serving until Ctrl-C or SIGTERM (then stops both and exits 0).
#
# THE BYTES SERVED HERE ARE NOT QUANTUM ENTROPY: the emulator makes them with the OS CSPRNG.
# With a real token:  QRYPT_TOKEN=... qrypt-fs /mnt/qrypt
#
# The emulator is not rate-limited, so qrypt-fs runs with `--rate-limit off` (its default
# pacing is Qrypt's 30 requests per 10 s, which would hold a local emulator to ~1.5 MiB/s).
# If MOUNTPOINT is already mounted or is a stale mount, qrypt-fs's own message is shown and
# nothing there is touched: on exit this script removes only the mount and processes it made.
#
# It builds the debug profile without jemalloc (`--no-default-features`): minutes, not a
# quarter of an hour, on 2 cores (docs/testing.md has the figures), and what the tests build
# next reuses it. The packaged and `cargo build --release` daemon has jemalloc, for long runs.
# TRY_IT_BIN_DIR=DIR uses the qrypt-fs and qrypt-emulator already built in DIR instead.
set -euo pipefail
cd "$(dirname "$0")/.."
mnt=${1:-/tmp/qrypt}
if [ -n "${TRY_IT_BIN_DIR:-}" ]; then
  bin=$TRY_IT_BIN_DIR
else
  cargo build --locked --workspace --bins --no-default-features
  bin=${CARGO_TARGET_DIR:-target}/debug
fi
# A stale mount point fails even `mkdir -p`; qrypt-fs says what is wrong with it below.
mkdir -p "$mnt" 2>/dev/null || true
work=$(mktemp -d)
# The replay history and budget of an emulator session are worth nothing after it: they go
# to a directory of the session's own, not to the state directory of real mounts (each
# emulator listens on a new port, so each session would leave a history of its own there).
# Apart from $work, which only root may enter: qrypt-fs hands it to its unprivileged user.
state=$(mktemp -d)
fs_pid='' emu_pid='' mount_id=''

# The mount's id in /proc/self/mountinfo, if MOUNTPOINT's topmost mount is a qrypt-fs one.
top_mount_id() {
  local path
  path=$(realpath -e "$mnt" 2>/dev/null) || path=$mnt
  awk -v p="$path" '{ gsub(/\\040/, " ", $5) } $5 == p { id = $1; ty = "" }
    $5 == p { for (i = 7; i <= NF; i++) if ($i == "-") { ty = $(i + 1); break } }
    END { if (ty == "fuse.qrypt-fs") print id }' /proc/self/mountinfo
}

cleanup_processes() {
  if [ -n "$fs_pid" ]; then
    # qrypt-fs unmounts and wipes its buffer on SIGTERM.
    kill -TERM "$fs_pid" 2>/dev/null || true
    wait "$fs_pid" 2>/dev/null || true
  fi
  if [ -n "$emu_pid" ]; then
    kill -TERM "$emu_pid" 2>/dev/null || true
    wait "$emu_pid" 2>/dev/null || true
  fi
  # Only if our own mount outlived our daemon (it was killed hard): never someone else's.
  if [ -n "$mount_id" ] && [ "$(top_mount_id)" = "$mount_id" ]; then
    umount -l "$mnt" || true
  fi
  fs_pid='' emu_pid='' mount_id=''
}
cleanup() {
  trap - EXIT INT TERM
  cleanup_processes
  rm -rf "$work" "$state"
}
stop() {
  echo "stopping"
  local logs=("$work/emu.log" "$work/fs.log")
  cleanup_processes
  # The logs go with the temporary directory: show what went wrong, if anything.
  if grep -q -E ' (WARN|ERROR) ' "${logs[@]}" 2>/dev/null; then
    echo "--- warnings and errors logged:"
    grep -h -E ' (WARN|ERROR) ' "${logs[@]}"
  else
    echo "--- no warning or error logged"
  fi
  cleanup
  exit 0
}
trap cleanup EXIT
trap stop INT TERM

# Made before the launch: a background job opens its redirections only once it runs, and a
# read of a file not yet there would end this `set -e` script.
: >"$work/emu.out"
: >"$work/fs.log"
"$bin/qrypt-emulator" --listen 127.0.0.1:0 >"$work/emu.out" 2>"$work/emu.log" &
emu_pid=$!
url=''
for _ in $(seq 200); do
  url=$(sed -n 's/^listening on //p' "$work/emu.out")
  [ -n "$url" ] && break
  kill -0 "$emu_pid" 2>/dev/null || break
  sleep 0.05
done
if [ -z "$url" ]; then
  echo "try-it: the emulator did not start:" >&2
  cat "$work/emu.log" >&2
  exit 1
fi
echo "emulator (NOT quantum entropy) at $url"

QRYPT_TOKEN=emulator-token "$bin/qrypt-fs" -f --rate-limit off --endpoint "$url" \
  --state-dir "$state" "$mnt" 2>"$work/fs.log" &
fs_pid=$!
# Ready once qrypt-fs itself says it mounted; a mount already there is not ours.
while ! grep -q ' mounted on ' "$work/fs.log"; do
  if ! kill -0 "$fs_pid" 2>/dev/null; then
    status=0
    wait "$fs_pid" || status=$?
    fs_pid=''
    echo "try-it: qrypt-fs did not mount (exit status $status):" >&2
    cat "$work/fs.log" >&2
    exit 1
  fi
  sleep 0.05
done
mount_id=$(top_mount_id)
echo "mounted on $mnt"
echo "--- head -c 32 $mnt/random | od -An -tx1"
head -c 32 "$mnt/random" | od -An -tx1
echo "--- cat $mnt/status"
cat "$mnt/status"
echo "--- serving on $mnt until Ctrl-C (log: $work/fs.log)"
status=0
wait "$fs_pid" || status=$?
fs_pid=''
echo "qrypt-fs exited (status $status):"
cat "$work/fs.log"
exit "$status"
