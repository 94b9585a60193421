#!/usr/bin/env bash
# Soak test (not part of the default test run): one qrypt-fs mount against the emulator on
# loopback for SOAK_DURATION seconds (default 1800 = 30 min), under
#   - mixed readers (python3 threads): small (32 B) and large (1 MiB) reads, blocking and
#     O_NONBLOCK, some keeping a file open, some opening and closing on every read, plus a
#     poller of /status;
#   - emulator faults switched on and off through its admin API every 30 s (503, reset mid
#     body, malformed JSON, slow drip, none);
#   - a SIGHUP every 45 s (the token file is re-read);
# sampling the daemon's RSS, VmLck, thread and fd counts every SOAK_SAMPLE seconds (default 10)
# into $SOAK_OUT/samples.csv, and at the end /proc/PID/smaps_rollup and smaps.
#
# First, one reader takes 1.1 GiB as fast as it can: the replay test's history grows (to
# 98 MiB, by design) until the first GiB has been fetched, and at Qrypt's pace that would take
# the whole run. So the daemon paces itself at SOAK_RATE_LIMIT (default 3000/10: the pacer
# runs, but does not hold the emulator back).
#
# Verdict ("flat once warm"), over the samples taken after SOAK_WARMUP seconds (default 60)
# and after 1.1 GiB has been fetched (the replay history full):
#   - no growth: the highest RSS in the last third of them exceeds the highest in the first
#     third by at most SOAK_RSS_GROWTH_KIB (default 1024 KiB), and so does the lowest decile
#     (the floor between fills, where a slow creep shows first);
#   - bounded swing: RSS max - min <= SOAK_RSS_TOL_KIB (default 8192 KiB). A sample taken
#     while 4 requests are in flight holds their bodies (about 700 KB of JSON and 512 KiB
#     decoded each, ~5 MiB together) that one taken between fills does not;
#   - descriptors: the fewest in the last third no more than the fewest in the first (a
#     leaked descriptor raises the floor for good), and max - min <= SOAK_FD_TOL (default 8:
#     beside its fixed descriptors the daemon has 0 to 2 x --max-in-flight HTTP connections,
#     up to 4 in use and up to 4 idle, which the faults close and the refill reopens), not
#     counting the two /proc files the watchdog keeps open per waiting reader, nor the pidfd
#     the daemon keeps per live reader thread (both follow the readers, not a leak).
# Exit status 0 flat, 1 not flat, 2 error.
#
# Usage: scripts/soak.sh            Environment: SOAK_DURATION, SOAK_SAMPLE, SOAK_WARMUP,
#   SOAK_RSS_TOL_KIB, SOAK_FD_TOL, SOAK_RATE_LIMIT, SOAK_OUT (default target/soak), SOAK_BUFFER (default 4M),
#   SOAK_ENV (extra environment for the daemon, e.g. "MALLOC_ARENA_MAX=2"),
#   SOAK_PROFILE (release or debug, default release; built first), SOAK_BIN (a directory
#   holding qrypt-fs and qrypt-emulator, instead of target/$SOAK_PROFILE).
# Needs root (or /dev/fuse and fusermount3), python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

duration=${SOAK_DURATION:-1800}
sample=${SOAK_SAMPLE:-10}
warmup=${SOAK_WARMUP:-60}
rss_tol=${SOAK_RSS_TOL_KIB:-8192}
rss_growth=${SOAK_RSS_GROWTH_KIB:-1024}
fd_tol=${SOAK_FD_TOL:-8}
rate_limit=${SOAK_RATE_LIMIT:-3000/10}
out=${SOAK_OUT:-$root/target/soak}
buffer=${SOAK_BUFFER:-4M}
profile=${SOAK_PROFILE:-release}
bin=${SOAK_BIN:-$root/target/$profile}

die() { echo "soak.sh: $*" >&2; exit 2; }
command -v python3 >/dev/null || die "python3 is missing"
command -v curl >/dev/null || die "curl is missing"
# Built every time (nothing to do when up to date): a binary left from another commit would
# soak the wrong code. SOAK_BIN names binaries to use as they are.
if [ -z "${SOAK_BIN:-}" ]; then
  if [ "$profile" = release ]; then cargo build --release --quiet --workspace --bins; else cargo build --quiet --workspace --bins; fi
fi

mkdir -p "$out"
work=$(mktemp -d /tmp/qrypt-soak.XXXXXX)
mnt=$work/mnt
mkdir -p "$mnt"
started=()

cleanup() {
  local rc=$? i pid
  trap - EXIT INT TERM
  for ((i = ${#started[@]} - 1; i >= 0; i--)); do
    kill -TERM "${started[i]}" 2>/dev/null || true
  done
  for pid in "${started[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if grep -q " $mnt " /proc/self/mounts; then umount -l "$mnt" 2>/dev/null || true; fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 2' INT TERM

# The emulator, unthrottled; the daemon paces itself with its default 30/10.
# Made before the launch: the job opens its redirection only once it runs (set -e).
: >"$work/emu.url"
"$bin/qrypt-emulator" --listen 127.0.0.1:0 >"$work/emu.url" 2>"$out/emulator.log" &
started+=($!)
url=""
for _ in $(seq 200); do
  url=$(sed -n 's/^listening on //p' "$work/emu.url")
  [ -n "$url" ] && break
  sleep 0.05
done
[ -n "$url" ] || die "emulator did not start"

printf 'emulator-token\n' >"$work/token"
chmod 600 "$work/token"
# shellcheck disable=SC2086 # SOAK_ENV is a list of NAME=VALUE words
env ${SOAK_ENV:-} "$bin/qrypt-fs" -f --endpoint "$url" --token-file "$work/token" \
  --buffer-size "$buffer" --rate-limit "$rate_limit" "$mnt" 2>"$out/qrypt-fs.log" &
fs=$!
started+=("$fs")
for _ in $(seq 500); do
  [ -e "$mnt/random" ] && break
  kill -0 "$fs" 2>/dev/null || die "qrypt-fs exited (see $out/qrypt-fs.log)"
  sleep 0.02
done
[ -e "$mnt/random" ] || die "mount did not appear"

# Readers: one python3 process, a thread per behaviour, each pausing between reads so the
# load stays light on a shared machine. Counts go to readers.json at the end.
python3 - "$mnt" "$duration" "$out/readers.json" <<'EOF' &
import errno, json, os, sys, threading, time
mnt, duration, result = sys.argv[1], float(sys.argv[2]), sys.argv[3]
rnd, status = os.path.join(mnt, "random"), os.path.join(mnt, "status")
end = time.monotonic() + duration
counts = {}
lock = threading.Lock()

def count(name, key, n=1):
    with lock:
        counts.setdefault(name, {}).setdefault(key, 0)
        counts[name][key] += n

def reader(name, size, nonblock, reopen, pause):
    flags = os.O_RDONLY | (os.O_NONBLOCK if nonblock else 0)
    fd = None
    while time.monotonic() < end:
        try:
            if fd is None:
                fd = os.open(rnd, flags)
            data = os.read(fd, size)
            count(name, "bytes", len(data))
            count(name, "reads")
        except OSError as e:
            count(name, errno.errorcode.get(e.errno, str(e.errno)))
            if e.errno not in (errno.EAGAIN, errno.EIO, errno.EINTR):
                time.sleep(1)
        if reopen and fd is not None:
            os.close(fd)
            fd = None
        time.sleep(pause)
    if fd is not None:
        os.close(fd)

def fill(total):
    # Fetches the replay history's worth first (see the top of soak.sh).
    got = 0
    with open(rnd, "rb", buffering=0) as f:
        while got < total and time.monotonic() < end:
            try:
                got += len(f.read(1 << 20))
            except OSError as e:
                count("fill", errno.errorcode.get(e.errno, str(e.errno)))
                time.sleep(0.1)
    count("fill", "bytes", got)

def status_poller():
    while time.monotonic() < end:
        for name in ("status", "status.json", "metrics"):
            with open(os.path.join(mnt, name)) as f:
                f.read()
        count("status", "reads")
        time.sleep(0.5)

specs = [
    ("small-blocking-kept", 32, False, False, 0.01),
    ("small-blocking-reopen", 32, False, True, 0.02),
    ("small-nonblock-kept", 64, True, False, 0.01),
    ("small-nonblock-reopen", 16, True, True, 0.02),
    ("large-blocking-kept", 1 << 20, False, False, 0.5),
    ("large-blocking-reopen", 256 << 10, False, True, 0.3),
    ("large-nonblock-reopen", 1 << 20, True, True, 0.3),
]
threads = [threading.Thread(target=reader, args=s, daemon=True) for s in specs]
threads.append(threading.Thread(target=fill, args=((11 << 30) // 10,), daemon=True))
threads.append(threading.Thread(target=status_poller, daemon=True))
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=max(0.0, end - time.monotonic()) + 30)
with open(result, "w") as f:
    json.dump(counts, f, indent=1, sort_keys=True)
EOF
readers=$!
started+=("$readers")

# Faults on and off, and SIGHUPs, until the end.
(
  faults=('{"fault":"status","status":503}' '{"fault":"none"}' '{"fault":"reset_mid_body"}'
    '{"fault":"none"}' '{"fault":"malformed_json"}' '{"fault":"none"}'
    '{"fault":"slow_drip","bytes_per_sec":65536}' '{"fault":"none"}')
  i=0 t=0
  while [ "$t" -lt "$duration" ]; do
    sleep 15
    t=$((t + 15))
    if [ $((t % 30)) -eq 0 ]; then
      curl -s -o /dev/null -X POST --data "${faults[i % ${#faults[@]}]}" "$url/_emulator/fault" || true
      i=$((i + 1))
    fi
    if [ $((t % 45)) -eq 0 ]; then kill -HUP "$fs" 2>/dev/null || true; fi
  done
  curl -s -o /dev/null -X POST --data '{"fault":"none"}' "$url/_emulator/fault" || true
) &
started+=($!)

# The daemon's own processes (supervisor, spawner, fetcher), all generations.
descendants() {
  local c
  for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do echo "$c"; descendants "$c"; done
}
csv=$out/samples.csv
echo "elapsed_s,rss_kib,rss_anon_kib,rss_file_kib,vmlck_kib,threads,fds,watch_fds,reader_fds,buffered_bytes,served_bytes,fetched_bytes,state,helpers_rss_kib" >"$csv"
t0=$(date +%s)
while :; do
  now=$(date +%s)
  elapsed=$((now - t0))
  kill -0 "$fs" 2>/dev/null || die "qrypt-fs died at ${elapsed}s (see $out/qrypt-fs.log)"
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$fs/status")
  # Anonymous (heap, ring, stacks) apart from file-backed (the binary's pages, faulted in as
  # each code path first runs: a fault kind's first occurrence pages in its code).
  anon=$(awk '/^RssAnon:/ { print $2 }' "/proc/$fs/status")
  file=$(awk '/^RssFile:/ { print $2 }' "/proc/$fs/status")
  lck=$(awk '/^VmLck:/ { print $2 }' "/proc/$fs/status")
  thr=$(awk '/^Threads:/ { print $2 }' "/proc/$fs/status")
  # The watchdog keeps two /proc files open per waiting reader (src/waitwatch.rs), and the
  # daemon a pidfd per live reader thread (src/requester.rs): counted apart, as they follow
  # how many readers wait or live, not a leak.
  read -r fds watch_fds reader_fds < <(find "/proc/$fs/fd" -mindepth 1 -maxdepth 1 -printf '%l\n' |
    awk '/^\/proc\// { w++; next } /pidfd/ { r++; next } { n++ } END { print n + 0, w + 0, r + 0 }')
  st=$(cat "$mnt/status")
  buffered=$(sed -n 's/^buffered_bytes: //p' <<<"$st")
  served=$(sed -n 's/^served_bytes: //p' <<<"$st")
  fetched=$(sed -n 's/^fetched_bytes: //p' <<<"$st")
  state=$(sed -n 's/^state: //p' <<<"$st")
  helpers=$(for p in $(descendants "$fs"); do awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null; done |
    awk '{ s += $1 } END { print s + 0 }')
  echo "$elapsed,$rss,$anon,$file,$lck,$thr,$fds,$watch_fds,$reader_fds,$buffered,$served,$fetched,$state,$helpers" >>"$csv"
  [ "$elapsed" -ge "$duration" ] && break
  sleep "$sample"
done
cp "/proc/$fs/smaps_rollup" "$out/smaps_rollup.txt"
cp "/proc/$fs/smaps" "$out/smaps.txt"
wait "$readers" 2>/dev/null || true

python3 - "$csv" "$warmup" "$rss_tol" "$fd_tol" "$rss_growth" <<'EOF'
import csv, sys
path, warmup, rss_tol, fd_tol, growth_tol = sys.argv[1], *map(int, sys.argv[2:6])
rows = list(csv.DictReader(open(path)))
# The replay test's history grows (by design, up to 98 MiB) until 1 GiB has been fetched.
full = (11 << 30) // 10
warm = [int(r["elapsed_s"]) for r in rows if int(r.get("fetched_bytes") or 0) >= full]
if warm:
    warmup = max(warmup, warm[0])
    print(f"soak: replay history full at {warm[0]} s (1.1 GiB fetched)")
else:
    print("soak: the replay history never filled (1.1 GiB not fetched): its growth counts")
after = [r for r in rows if int(r["elapsed_s"]) >= warmup]
if len(after) < 3:
    print("soak: too few samples after the warm-up"); sys.exit(2)
rss = [int(r["rss_kib"]) for r in after]
fds = [int(r["fds"]) for r in after]
first = rows[0]
print(f"soak: {len(rows)} samples over {rows[-1]['elapsed_s']} s; start RSS {first['rss_kib']} KiB, fds {first['fds']}")
readers_ok = True
if "reader_fds" in after[0]:
    readers = [int(r["reader_fds"]) for r in after]
    # At most one per live reader thread, and never more than the cache holds (256).
    readers_ok = max(readers) <= 256
    print(f"soak: live reader threads' pidfds (judged only against the cache's 256) {min(readers)}..{max(readers)}")
if "watch_fds" in after[0]:
    watch = [int(r["watch_fds"]) for r in after]
    print(f"soak: waiting readers' /proc descriptors (not judged) {min(watch)}..{max(watch)}")
print(f"soak: after {warmup} s: RSS {min(rss)}..{max(rss)} KiB (range {max(rss)-min(rss)} KiB, tolerance {rss_tol}); "
      f"fds {min(fds)}..{max(fds)} (range {max(fds)-min(fds)}, tolerance {fd_tol}); end RSS {rss[-1]} KiB")
if "rss_anon_kib" in after[0]:
    anon = [int(r["rss_anon_kib"]) for r in after]
    files = [int(r["rss_file_kib"]) for r in after]
    print(f"soak: after {warmup} s: anonymous {min(anon)}..{max(anon)} KiB, file-backed {min(files)}..{max(files)} KiB")
third = len(rss) // 3
thirds = [rss[:third], rss[third:-third], rss[-third:]]
growth = max(thirds[2]) - max(thirds[0])
print(f"soak: highest RSS, first third after {warmup} s {max(thirds[0])} KiB, last third "
      f"{max(thirds[2])} KiB (growth {growth} KiB, tolerance {growth_tol})")
# The floor between fills: a slow creep shows here first, where in-flight bodies do not.
def decile(xs):
    return sorted(xs)[len(xs) // 10]
def median(xs):
    return sorted(xs)[len(xs) // 2]
floor_growth = decile(thirds[2]) - decile(thirds[0])
print("soak: RSS by thirds, lowest decile " + " -> ".join(str(decile(t)) for t in thirds)
      + " KiB, median " + " -> ".join(str(median(t)) for t in thirds)
      + f" KiB (floor growth {floor_growth} KiB, tolerance {growth_tol})")
ts = [int(r["elapsed_s"]) / 60 for r in after]
tm, rm = sum(ts) / len(ts), sum(rss) / len(rss)
slope = sum((t - tm) * (r - rm) for t, r in zip(ts, rss)) / sum((t - tm) ** 2 for t in ts)
print(f"soak: least-squares slope {slope:.0f} KiB/min (not judged)")
fd_thirds = [fds[:third], fds[third:-third], fds[-third:]]
fd_floor_growth = min(fd_thirds[2]) - min(fd_thirds[0])
print("soak: descriptors by thirds, fewest " + " -> ".join(str(min(t)) for t in fd_thirds)
      + ", most " + " -> ".join(str(max(t)) for t in fd_thirds))
if "helpers_rss_kib" in after[0]:
    helpers = [int(r["helpers_rss_kib"]) for r in after]
    h3 = [helpers[:third], helpers[third:-third], helpers[-third:]]
    print(f"soak: the daemon's helper processes (supervisor, spawner, fetcher), RSS together, "
          f"not judged: {min(helpers)}..{max(helpers)} KiB, highest by thirds "
          + " -> ".join(str(max(t)) for t in h3))
served = int(rows[-1]["served_bytes"] or 0)
print(f"soak: served {served} bytes")
flat = (growth <= growth_tol and floor_growth <= growth_tol and max(rss) - min(rss) <= rss_tol
        and fd_floor_growth <= 0 and max(fds) - min(fds) <= fd_tol and readers_ok)
print("soak: verdict FLAT" if flat else "soak: verdict NOT FLAT")
sys.exit(0 if flat else 1)
EOF
