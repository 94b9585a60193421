#!/usr/bin/env bash
# Cost of many waiting readers. WAITERS readers (default 1000) block on
# /random while the emulator answers 503; the daemon's CPU time (utime+stime of all its threads,
# /proc/PID/stat) is sampled over SAMPLE_SECONDS (default 10); then SIGINT (Ctrl-C) is sent to
# LATENCY_SAMPLES readers (default 20), one at a time, and each one's time to exit is measured.
#
# Readers: `head` (coreutils head -c 32: no signal handlers, so the watchdog's cheap path),
# `dd` (coreutils dd: handlers for SIGINT and SIGUSR1, so the queued-signal probe decides) and
# `userns` (the same dd run by an unprivileged uid, each in a user namespace of its own made
# by `unshare --user`: a group of its own per reader, on an allow_other mount).
#
# Usage: scripts/bench-waiters.sh [head|dd|userns]...      (no argument: all three)
# Environment: WAITERS, SAMPLE_SECONDS, LATENCY_SAMPLES, QRYPT_FS (binary to measure; default
# target/release/qrypt-fs, built here), BENCH_OUT (default target/bench), BENCH_UID (the
# unprivileged uid of `userns` readers, default 4242; 65534 is the overflow uid, which the
# watch groups with no one). The cap on one user's waiters is lifted (0) where the binary has it.
# Goals: CPU <= 2% of a core with up to 1000 waiters; every Ctrl-C frees its reader within 0.5 s
# with up to 256 waiters (one uid's default cap), within 2.5 s (the watch's longest period,
# 2 s, plus a pass) with more: past its CPU budget the watch looks less often.
# Exit status: 0 when every goal passed, 1 when one failed, 2 on an error. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

kinds=("$@")
[ ${#kinds[@]} -eq 0 ] && kinds=(head dd userns)
for k in "${kinds[@]}"; do
  case $k in head | dd | userns) ;; *) echo "usage: $0 [head|dd|userns]..." >&2; exit 2 ;; esac
done
BENCH_UID=${BENCH_UID:-4242}
WAITERS=${WAITERS:-1000}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-10}
LATENCY_SAMPLES=${LATENCY_SAMPLES:-20}
out=${BENCH_OUT:-$root/target/bench}
mkdir -p "$out"

if [ -z "${QRYPT_FS:-}" ]; then
  echo "building (release)..." >&2
  cargo build --release --quiet --locked --workspace --bins
  QRYPT_FS=$root/target/release/qrypt-fs
fi
emulator_bin=$root/target/release/qrypt-emulator
[ -x "$emulator_bin" ] || cargo build --release --quiet --locked -p qrypt-emulator --bins

work=$(mktemp -d /tmp/qrypt-waiters.XXXXXX)
emu_pid='' fs_pid='' readers=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ ${#readers[@]} -gt 0 ]; then
    kill -KILL "${readers[@]}" 2>/dev/null || true
    wait "${readers[@]}" 2>/dev/null || true
  fi
  [ -n "$fs_pid" ] && kill -TERM "$fs_pid" 2>/dev/null && wait "$fs_pid" 2>/dev/null || true
  [ -n "$emu_pid" ] && kill -TERM "$emu_pid" 2>/dev/null && wait "$emu_pid" 2>/dev/null || true
  mountpoint -q "$work/mnt" 2>/dev/null && umount -l "$work/mnt" || true
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 2' INT TERM

hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
now_ns() { date +%s%N; }
status_field() { sed -n "s/^$1: //p" "$work/mnt/status"; }

# Made before the launch: the job opens its redirection only once it runs (set -e).
: >"$work/emu.out"
"$emulator_bin" --listen 127.0.0.1:0 >"$work/emu.out" 2>"$work/emu.log" &
emu_pid=$!
for _ in $(seq 100); do grep -q '^listening on ' "$work/emu.out" && break; sleep 0.05; done
url=$(sed -n 's/^listening on //p' "$work/emu.out")
curl -fsS -X POST "$url/_emulator/fault" -d '{"fault": "status", "status": 503}' >/dev/null

extra=(--allow-other)
"$QRYPT_FS" --help | grep -q -- --max-waiters-per-user && extra+=(--max-waiters-per-user 0)
# The mount point's parent must be searchable by the userns readers' uid.
chmod 755 "$work"

fail=0
for kind in "${kinds[@]}"; do
  mkdir -p "$work/mnt"
  QRYPT_TOKEN=emulator-token "$QRYPT_FS" -f --rate-limit off --max-backoff 1 "${extra[@]}" \
    --endpoint "$url" "$work/mnt" 2>"$work/fs-$kind.log" &
  fs_pid=$!
  for _ in $(seq 200); do [ -e "$work/mnt/status" ] && break; sleep 0.05; done
  readers=()
  for _ in $(seq "$WAITERS"); do
    # Background jobs of a script start with SIGINT ignored: give Ctrl-C back its default.
    case $kind in
      head) env --default-signal=INT head -c 32 "$work/mnt/random" >/dev/null 2>&1 & ;;
      dd) env --default-signal=INT dd if="$work/mnt/random" of=/dev/null bs=32 count=1 status=none 2>/dev/null & ;;
      # setpriv and unshare exec: the pid is dd's.
      userns) env --default-signal=INT setpriv --reuid="$BENCH_UID" --regid="$BENCH_UID" --clear-groups \
        unshare --user dd if="$work/mnt/random" of=/dev/null bs=32 count=1 status=none 2>/dev/null & ;;
    esac
    readers+=($!)
  done
  for _ in $(seq 600); do
    [ "$(status_field waiting_readers)" = "$WAITERS" ] && break
    sleep 0.1
  done
  waiting=$(status_field waiting_readers)
  [ "$waiting" = "$WAITERS" ] || { echo "only $waiting of $WAITERS readers waiting" >&2; exit 2; }
  sleep 3 # let the first full check of every reader pass
  t0=$(now_ns) c0=$(cpu_ticks "$fs_pid")
  sleep "$SAMPLE_SECONDS"
  t1=$(now_ns) c1=$(cpu_ticks "$fs_pid")
  cpu=$(awk -v c=$((c1 - c0)) -v hz="$hz" -v ns=$((t1 - t0)) \
    'BEGIN { printf "%.2f", 100 * c / hz / (ns / 1e9) }')

  # Ctrl-C: one reader at a time, the others still waiting.
  lat=()
  for i in $(seq 0 $((LATENCY_SAMPLES - 1))); do
    pid=${readers[i * (WAITERS / LATENCY_SAMPLES)]}
    s=$(now_ns)
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    lat+=($((($(now_ns) - s) / 1000000)))
    sleep 0.13 # de-phase from the watchdog's tick
  done
  max=$(printf '%s\n' "${lat[@]}" | sort -n | tail -1)
  med=$(printf '%s\n' "${lat[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')

  kill -KILL "${readers[@]}" 2>/dev/null || true
  wait "${readers[@]}" 2>/dev/null || true
  readers=()
  kill -TERM "$fs_pid"
  wait "$fs_pid" || true
  fs_pid=''

  verdict=ok
  # Past ~1500 of the dearest waiters the watch's 2 s ceiling costs more (see wait_limits.rs).
  [ "$WAITERS" -gt 1000 ] || awk -v c="$cpu" 'BEGIN { exit !(c <= 2.0) }' || verdict=FAIL
  limit_ms=500
  [ "$WAITERS" -le 256 ] || limit_ms=2500
  [ "$max" -le "$limit_ms" ] || verdict=FAIL
  [ $verdict = ok ] || fail=1
  line="waiters=$WAITERS reader=$kind cpu_percent=$cpu over ${SAMPLE_SECONDS}s ctrl_c_ms median=$med max=$max (n=$LATENCY_SAMPLES) $verdict"
  echo "$line"
  echo "$line" >>"$out/waiters.txt"
done
exit $fail
