#!/usr/bin/env bash
# Benchmarks qrypt-fs against the two ceilings that bound it, as ratios measured in one run
# (see BENCHMARKS.md for what each figure means and what bounds it):
#
#   service  40 MiB through a fresh mount against the emulator enforcing 30 requests / 10 s,
#            vs the ideal schedule (20 s); zero 429 answers; requests per 40 MiB (ideal 80).
#            Buffers 1M, 4M (default) and 16M.
#   fleet    N mounts on one token (FLEET_SIZES, default "2 4 8 16 16 16": 16 three times,
#            their mean beside the model) each with one endless reader, the emulator
#            enforcing one 30/10 limit: delivered vs 30 x 512 KiB / 10 s, share of 429 answers,
#            busiest vs least busy mount, least 20 s share, over 60 s after a 20 s start; the
#            same from 30 s after the last of N joins the others (FLEET_JOINS, default "4 16"); the
#            fleet model's figures for N up to 256 beside them; plot.
#   tenants  one mount, the emulator enforcing 30/10: a small reader's 32-byte reads every 0.5 s
#            beside an endless reader of another uid (median, p99, failures; vs one queue for
#            all, --tenant-by none), and four endless readers' shares of an equal share.
#   local    buffered reads from a full 1 GiB buffer vs /dev/urandom (1 MiB reads) and vs a
#            null FUSE filesystem (32-byte reads); the read-size sweep and its plot.
#   e2e      dd-like 1 MiB reads of 256 MiB through the default buffer, emulator unthrottled,
#            over HTTP and HTTPS, vs /dev/urandom.
#   cost     RSS (1 GiB buffer full, default buffer), idle CPU with a full buffer, time from
#            `qrypt-fs MOUNTPOINT` to the first 32 bytes vs one API round trip + a null mount.
#
# Usage: scripts/bench.sh [service|fleet|tenants|local|e2e|cost]...  (no argument: all six, ~5 min after the build)
# Environment: ROUNDS (interleaved rounds per comparison, default 5), BENCH_OUT (where the
# results, trials and logs go, default target/bench), PLOT (PNG path, default
# BENCHMARKS-read-size.png; the `local` section writes it), FLEET_PLOT (default
# BENCHMARKS-fleet.png; the `fleet` section writes it).
#
# Needs root (or /dev/fuse access and fusermount3), a Rust toolchain, python3 for the plot
# (matplotlib is installed with pip if missing; the plot is skipped if that fails).
# Exit status: 0 when every goal passed, 1 when one failed, 2 on an error.
# shellcheck disable=SC2154 # url_NAME, emu_NAME, fs_NAME are set with printf -v
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(service fleet tenants local e2e cost)
for s in "${sections[@]}"; do
  case $s in
    service | fleet | tenants | local | e2e | cost) ;;
    *) echo "usage: $0 [service|fleet|tenants|local|e2e|cost]..." >&2; exit 2 ;;
  esac
done

ROUNDS=${ROUNDS:-5}
out=${BENCH_OUT:-$root/target/bench}
plot_png=${PLOT:-$root/BENCHMARKS-read-size.png}
fleet_png=${FLEET_PLOT:-$root/BENCHMARKS-fleet.png}
token=emulator-token

echo "building (release)..." >&2
cargo build --release --quiet --locked --workspace --bins --example bench --example null_fs
bin=$root/target/release
B=$bin/examples/bench

mkdir -p "$out"
results=$out/results.tsv
: >"$results"
work=$(mktemp -d /tmp/qrypt-bench.XXXXXX)

# Every process we start, in start order; cleanup stops them newest first.
started=()

cleanup() {
  local rc=$? i pid
  trap - EXIT INT TERM
  for ((i = ${#started[@]} - 1; i >= 0; i--)); do
    pid=${started[i]}
    kill -TERM "$pid" 2>/dev/null || true
  done
  # The startup figure's null filesystem, if bench died while it ran.
  if [ -f "$work/startup-null_fs.pid" ]; then
    kill -TERM "$(cat "$work/startup-null_fs.pid")" 2>/dev/null || true
  fi
  for pid in "${started[@]}"; do
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  # Anything still mounted under our work directory (e.g. the startup figure's daemon): a
  # qrypt-fs daemon exits by itself once its mount is gone.
  awk -v w="$work" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 2' INT TERM

say() { printf '\n== %s\n' "$*" >&2; }
die() { echo "bench.sh: $*" >&2; exit 2; }

# start_emulator NAME [ARGS...]: sets url_NAME and emu_NAME (pid).
start_emulator() {
  local name=$1 url=""
  shift
  # Made before the launch: the job opens its redirection only once it runs (set -e).
  : >"$work/$name.url"
  "$bin/qrypt-emulator" --listen 127.0.0.1:0 "$@" >"$work/$name.url" 2>"$out/$name.emulator.log" &
  started+=($!)
  printf -v "emu_$name" %s "$!"
  for _ in $(seq 200); do
    url=$(sed -n 's/^listening on //p' "$work/$name.url")
    [ -n "$url" ] && break
    kill -0 "$!" 2>/dev/null || die "emulator $name exited (see $out/$name.emulator.log)"
    sleep 0.05
  done
  [ -n "$url" ] || die "emulator $name did not start"
  printf -v "url_$name" %s "$url"
}

# mount_qrypt NAME URL [ARGS...]: qrypt-fs in the foreground on $work/NAME; sets fs_NAME (pid).
mount_qrypt() {
  local name=$1 url=$2 mnt=$work/$1
  shift 2
  mkdir -p "$mnt"
  QRYPT_TOKEN=$token "$bin/qrypt-fs" -f --endpoint "$url" "$@" "$mnt" 2>"$out/$name.qrypt-fs.log" &
  started+=($!)
  printf -v "fs_$name" %s "$!"
  wait_mounted "$mnt" "$!" "$out/$name.qrypt-fs.log"
}

# mount_null NAME: the null FUSE filesystem on $work/NAME; sets fs_NAME (pid).
mount_null() {
  local name=$1 mnt=$work/$1
  mkdir -p "$mnt"
  "$bin/examples/null_fs" "$mnt" 2>"$out/$name.null_fs.log" &
  started+=($!)
  printf -v "fs_$name" %s "$!"
  wait_mounted "$mnt" "$!" "$out/$name.null_fs.log"
}

wait_mounted() {
  for _ in $(seq 500); do
    [ -e "$1/random" ] && return 0
    kill -0 "$2" 2>/dev/null || die "mount on $1 failed (see $3)"
    sleep 0.02
  done
  die "mount on $1 did not appear (see $3)"
}

# forget PID...: a process that has been waited for (its id may be reused: never signal it).
forget() {
  local pid keep=() p
  for p in "${started[@]}"; do
    for pid in "$@"; do [ "$p" = "$pid" ] && continue 2; done
    keep+=("$p")
  done
  started=("${keep[@]}")
}

# stop PID...: SIGTERM (a mount unmounts itself), then wait.
stop() {
  local pid
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
  forget "$@"
}

# run OUT CMD...: CMD in the background, its stdout to OUT, and wait for it. Bash runs a trap
# only between foreground commands, so anything long runs this way: a SIGTERM to this script
# then cleans up at once instead of after the command.
run() {
  local out=$1 pid rc=0
  shift
  "$@" >"$out" &
  pid=$!
  started+=("$pid")
  wait "$pid" || rc=$?
  forget "$pid"
  return "$rc"
}

row() { "$B" row --results "$results" "$@"; }
median() { "$B" median --trials "$1" --target "$2" --size "$3" --metric "${4:-bytes}"; }

# ---------------------------------------------------------------------------------------------
section_service() {
  say "service ceiling: 40 MiB through a fresh mount, emulator enforcing 30/10 (~21 s)"
  local buf t0 name bufs=(1M 4M 16M)
  # All buffers at once, each against its own emulator (its own rate-limit windows): the
  # figure is bound by the schedule, not the CPU.
  for buf in "${bufs[@]}"; do
    name=svc$buf
    start_emulator "$name" --rate-limit 30/10
  done
  for buf in "${bufs[@]}"; do
    name=svc$buf
    url=url_$name
    t0=$(date +%s%N)
    mount_qrypt "$name" "${!url}" --buffer-size "$buf"
    "$B" read-exact --file "$work/$name/random" --bytes 40M --size 1M --since-ns "$t0" \
      >"$work/$name.secs" &
    started+=($!)
    printf -v "reader_$name" %s "$!"
  done
  for buf in "${bufs[@]}"; do
    name=svc$buf
    reader=reader_$name
    wait "${!reader}" || die "reading 40 MiB from the $buf mount failed"
    forget "${!reader}"
  done
  for buf in "${bufs[@]}"; do
    name=svc$buf
    url=url_$name
    local secs stats total n429 reqs
    secs=$(cat "$work/$name.secs")
    stats=$("$B" emulator-stats --url "${!url}")
    total=$(awk '$1 == "total_requests" { print $2 }' <<<"$stats")
    n429=$(awk '$1 == "status_429" { n = $2 } END { print n + 0 }' <<<"$stats")
    reqs=$("$B" status --status "$work/$name/status" --key requests_ok)
    echo "  buffer $buf: $secs s; emulator saw $total requests ($n429 answered 429); qrypt-fs: $reqs ok" >&2
    row --section service --figure "40 MiB, fresh mount, emulator 30/10, buffer $buf" \
      --value "$secs" --unit s --baseline 20 --baseline-note "(ideal)" --goal "ratio<=1.1"
    row --section service --figure "  429 answers (buffer $buf)" \
      --value "$n429" --unit count --goal "value==0"
    # Requests until the reader had its 40 MiB (the buffer's refill after it included).
    row --section service --figure "  requests per 40 MiB (buffer $buf)" \
      --value "$total" --unit count --baseline 80 --baseline-note "(81: one 16 KiB first)" --goal info
  done
  for buf in "${bufs[@]}"; do
    local f=fs_svc$buf e=emu_svc$buf
    stop "${!f}" "${!e}"
  done
}

# The value of key `$2` in the two-column TSV `$1`.
tsv_value() { awk -F '\t' -v k="$2" '$1 == k { print $2 }' "$1"; }

# Runs the fleet test `fleet::$1` (ignored, release) with FLEET_MOUNTS=$2 and FLEET_OUT=$3,
# logging to `$4`, and prints the summary it wrote to `$5`.
fleet_test() {
  FLEET_MOUNTS=$2 FLEET_OUT=$3 run "$4" cargo test --release --quiet --locked --features fuse-tests --test integration -- \
    "fleet::$1" --exact --ignored --nocapture --test-threads 1 || echo "  (fleet::$1 with $2 mounts missed a goal)" >&2
  [ -f "$5" ] || die "fleet::$1 wrote no summary (see $4)"
  echo "  $(tsv_value "$5" summary)" >&2
}

# The fleet's four goals, from the figures `$2_*` of the fleet test's summary `$1`; `$3` names
# the run.
fleet_rows() {
  row --section fleet --figure "$3: delivered" \
    --value "$(echo "$(tsv_value "$1" "$2_delivered") * 1572864" | bc -l)" --unit B/s --baseline 1572864 \
    --baseline-note "(30 x 512 KiB / 10 s)" --goal "ratio>=0.90"
  row --section fleet --figure "  429 answers, % of $(tsv_value "$1" requests) requests" \
    --value "$(echo "$(tsv_value "$1" "$2_refused") * 100" | bc -l)" --unit % --goal "value<=5"
  row --section fleet --figure "  bytes of the busiest mount / the least busy" \
    --value "$(tsv_value "$1" "$2_spread")" --unit x --goal "value<=1.5"
  row --section fleet --figure "  least share of a mount over 20 s / its fair share" \
    --value "$(tsv_value "$1" "$2_worst_20s")" --unit x --goal "value>=0.5"
}

section_fleet() {
  # shellcheck disable=SC2206 # FLEET_SIZES is a list of numbers, split on purpose
  # 16 mounts three times: one run's 429 share varies by about a point from run to run, as the
  # model's does from seed to seed, so the model (five seeds) is held against their mean.
  local sizes=(${FLEET_SIZES:-2 4 8 16 16 16}) n dir=$out/fleet run_dir i=0 again summary
  say "fleet: N mounts on one token (N = ${sizes[*]}), emulator enforcing 30/10, 20 s start + 60 s each (~$((${#sizes[@]} * 95)) s), the last of N = ${FLEET_JOINS:-4 16} joining (~155 s each), and the model up to 256"
  mkdir -p "$dir"
  rm -rf "$dir"/fleet-*-summary.tsv "$dir"/join-*-summary.tsv "$dir"/again-*
  for n in "${sizes[@]}"; do
    i=$((i + 1)) run_dir=$dir again=""
    if [ -f "$dir/fleet-$n-summary.tsv" ]; then
      run_dir=$dir/again-$i again=" (again)"
      mkdir -p "$run_dir"
    fi
    # The test starts its own emulator and mounts and unmounts them when it ends.
    summary=$run_dir/fleet-$n-summary.tsv
    fleet_test mounts_share_one_token "$n" "$run_dir" "$out/fleet-$n-$i.log" "$summary"
    fleet_rows "$summary" steady "$n mounts$again, one token, 60 s after a 20 s start"
    row --section fleet --figure "  whole 80 s, start included: 429 answers" \
      --value "$(echo "$(tsv_value "$summary" whole_refused) * 100" | bc -l)" --unit % --goal info
  done
  # A storm of 429s (3 / 10 s for 40 s) on a lone mount, and its way back to the whole limit.
  FLEET_OUT=$dir run "$out/fleet-storm.log" cargo test --release --quiet --locked --features fuse-tests --test integration -- \
    fleet::a_lone_mount_is_back_to_the_whole_limit_within_60_s_of_a_storm --exact --ignored --nocapture --test-threads 1 \
    || echo "  (the lone mount was not back within 60 s of the storm)" >&2
  grep -o 'back to 30 requests in 10 s from [^;]*' "$out/fleet-storm.log" | sed 's/^/  storm: /' >&2 || true
  # N mounts, the last joining the others at 60 s (FLEET_JOINS), held to the fleet's goals from
  # 30 s after the join.
  # shellcheck disable=SC2206 # FLEET_JOINS is a list of numbers, split on purpose
  local joins=(${FLEET_JOINS:-4 16})
  for n in "${joins[@]}"; do
    summary=$dir/join-$n-summary.tsv
    fleet_test a_mount_joins_a_busy_fleet "$n" "$dir" "$out/fleet-join-$n.log" "$summary"
    fleet_rows "$summary" joined "$n mounts, the last joining at 60 s; 60 s from 30 s after"
    row --section fleet --figure "  the joiner's bytes / the fleet's mean" \
      --value "$(tsv_value "$summary" joiner_share)" --unit x --goal info
  done
  # The model on a virtual clock, for the same N and for 64 and 256 mounts.
  FLEET_OUT=$dir run "$out/fleet-model.log" cargo test --release --quiet --locked --test integration -- \
    fleet_model::tests::table --exact --ignored --nocapture --test-threads 1 || die "the fleet model failed (see $out/fleet-model.log)"
  if python3 "$root/scripts/plot_fleet.py" "$dir" "$fleet_png" >"$out/fleet.md" 2>"$out/plot-fleet.log"; then
    echo "  plot: $fleet_png (table: $out/fleet.md)" >&2
  else
    echo "  fleet plot skipped (python3 with matplotlib needed; see $out/plot-fleet.log)" >&2
  fi
}

section_tenants() {
  say "tenants: an endless reader beside a small one, and four endless readers, 30/10 (~2.5 min)"
  local dir=$out/tenants
  mkdir -p "$dir"
  # The test starts its own emulators and mounts, and readers of other uids.
  TENANTS_OUT=$dir run "$out/tenants.log" cargo test --release --quiet --locked --features fuse-tests --test integration -- \
    tenants::bench_tenants_goals --exact --ignored --nocapture --test-threads 1 || echo "  (the tenants run failed)" >&2
  [ -f "$dir/tenants-summary.tsv" ] || die "the tenants run wrote no summary (see $out/tenants.log)"
  val() { awk -F '\t' -v k="$1" '$1 == k { print $2 }' "$dir/tenants-summary.tsv"; }
  row --section tenants --figure "32 B every 0.5 s beside an endless reader: median latency" \
    --value "$(val fair_median)" --unit s --baseline "$(val one_queue_median)" \
    --baseline-note "(one queue for all)" --goal "value<=0.4"
  row --section tenants --figure "  p99 latency" \
    --value "$(val fair_p99)" --unit s --baseline "$(val one_queue_p99)" \
    --baseline-note "(one queue for all)" --goal "value<=1.5"
  row --section tenants --figure "  failed of $(( $(val fair_reads) + $(val fair_failed) )) small reads" \
    --value "$(val fair_failed)" --unit count --goal "value==0"
  row --section tenants --figure "4 endless readers, 30 s: least share / equal share" \
    --value "$(val share_min)" --unit x --goal "value>=0.8"
  row --section tenants --figure "  largest share / equal share" \
    --value "$(val share_max)" --unit x --goal "value<=1.25"
}

# The local ceiling's mounts: a 1 GiB buffer (rate limit off) and the null filesystem.
ensure_local_mounts() {
  [ -n "${fs_big:-}" ] && return 0
  start_emulator local
  mount_qrypt big "$url_local" --rate-limit off --buffer-size 1G
  mount_null null
  local secs
  run "$work/fill.secs" "$B" wait-full --status "$work/big/status"
  secs=$(cat "$work/fill.secs")
  echo "  1 GiB buffer filled in $secs s" >&2
  row --section local --figure "fill the 1 GiB buffer (emulator, HTTP, unthrottled)" \
    --value "$(echo "1073741824 / $secs" | bc -l)" --unit B/s --goal info
}

section_local() {
  say "local ceiling: buffered reads (1 GiB buffer, full) vs /dev/urandom and a null FUSE fs"
  ensure_local_mounts
  local trials=$out/read-size.tsv
  : >"$trials"
  run /dev/null "$B" trials --target "random=$work/big/random" --target "null=$work/null/random" \
    --target urandom=/dev/urandom --buffered random --sizes 32,256,4K,64K,1M \
    --rounds "$ROUNDS" --seconds 0.4 --max-bytes 128M --out "$trials"
  row --section local --figure "1 MiB reads: /random (full 1G buffer) vs /dev/urandom" \
    --value "$(median "$trials" random 1M)" --unit B/s \
    --baseline "$(median "$trials" urandom 1M)" --goal "ratio>=5"
  # Small reads are bound by FUSE round trips, whose cost on this 2-vCPU VM swings with where
  # the scheduler puts the reader and the FUSE threads: more, shorter interleaved rounds.
  local small=$out/small-reads.tsv
  : >"$small"
  run /dev/null "$B" trials --target "random=$work/big/random" --target "null=$work/null/random" \
    --buffered random --sizes 32 --rounds $((ROUNDS * 4)) --seconds 0.25 --out "$small"
  row --section local --figure "32 B reads: /random (full 1G buffer) vs null FUSE fs" \
    --value "$(median "$small" random 32 reads)" --unit reads/s \
    --baseline "$(median "$small" null 32 reads)" --goal "ratio>=0.9"
  row --section local --figure "1 MiB reads: /random (full 1G buffer) vs null FUSE fs" \
    --value "$(median "$trials" random 1M)" --unit B/s \
    --baseline "$(median "$trials" null 1M)" --goal "ratio>=0.8"
  plot "$trials"
}

plot() {
  if ! python3 -c 'import matplotlib' 2>/dev/null; then
    echo "  installing matplotlib for the plot..." >&2
    python3 -m pip install --quiet matplotlib >&2 || true
  fi
  if python3 "$root/scripts/plot.py" "$1" "$plot_png" >"$out/read-size.md"; then
    echo "  plot: $plot_png (medians: $out/read-size.md)" >&2
  else
    echo "  plot skipped (python3 with matplotlib needed)" >&2
  fi
}

section_e2e() {
  say "end to end, emulator unthrottled: 256 MiB in 1 MiB reads (default buffer) vs /dev/urandom"
  start_emulator http
  start_emulator https --tls --cert-out "$work/ca.pem"
  mount_qrypt http "$url_http" --rate-limit off
  mount_qrypt https "$url_https" --rate-limit off --ca-cert "$work/ca.pem"
  run /dev/null "$B" wait-full --status "$work/http/status"
  run /dev/null "$B" wait-full --status "$work/https/status"
  local trials=$out/e2e.tsv rounds=$((ROUNDS < 3 ? ROUNDS : 3))
  : >"$trials"
  local pids=(--pid "$fs_http" --pid "$emu_http" --pid "$fs_https" --pid "$emu_https")
  local cpu0 cpu1 got0=() got1=() name
  cpu0=$("$B" cputime "${pids[@]}")
  for name in http https; do got0+=("$("$B" status --status "$work/$name/status" --key fetched_bytes)"); done
  run /dev/null "$B" trials --target "http=$work/http/random" --target "https=$work/https/random" \
    --target urandom=/dev/urandom --sizes 1M --bytes 256M --rounds "$rounds" --out "$trials"
  cpu1=$("$B" cputime "${pids[@]}")
  for name in http https; do got1+=("$("$B" status --status "$work/$name/status" --key fetched_bytes)"); done
  local base
  base=$(median "$trials" urandom 1M)
  row --section e2e --figure "256 MiB, 1 MiB reads, HTTP, default buffer vs /dev/urandom" \
    --value "$(median "$trials" http 1M)" --unit B/s --baseline "$base" --goal "ratio>=0.75"
  row --section e2e --figure "256 MiB, 1 MiB reads, HTTPS, default buffer vs /dev/urandom" \
    --value "$(median "$trials" https 1M)" --unit B/s --baseline "$base" --goal "ratio>=0.75"
  # Where the CPU went (both run on this machine's 2 cores): CPU seconds per GiB fetched.
  local i j label
  for i in 0 1; do
    label=$([ $i = 0 ] && echo HTTP || echo HTTPS)
    for j in 0 1; do
      row --section e2e --figure "  CPU per GiB, $label: $([ $j = 0 ] && echo qrypt-fs || echo emulator)" \
        --value "$(paste <(echo "$cpu0") <(echo "$cpu1") | sed -n "$((2 * i + j + 1))p" |
          awk -v b="$((got1[i] - got0[i]))" '{ print ($2 - $1) * 1073741824 / b }')" \
        --unit s/GiB --goal info
    done
  done
}

section_cost() {
  say "cost: RSS, idle CPU, startup"
  ensure_local_mounts
  if [ -z "${fs_http:-}" ]; then
    [ -n "${url_http:-}" ] || start_emulator http
    mount_qrypt http "$url_http" --rate-limit off
  fi
  run /dev/null "$B" fill --status "$work/big/status"
  run /dev/null "$B" fill --status "$work/http/status"
  # The bound: the buffer, 32 MiB for everything else, and the replay test's history, which
  # grows to 98 MiB as the first GiB is fetched (src/health/replay.rs, "Memory").
  local replay=98
  row --section cost --figure "RSS, 1 GiB buffer full" --value "$("$B" rss --pid "$fs_big")" \
    --unit B --baseline $(((1024 + 32 + replay) << 20)) \
    --baseline-note "(capacity + 32 MiB + replay 98 MiB)" --goal "ratio<=1"
  row --section cost --figure "RSS, default 4 MiB buffer full (after e2e if run)" \
    --value "$("$B" rss --pid "$fs_http")" --unit B --baseline $(((4 + 32 + replay) << 20)) \
    --baseline-note "(capacity + 32 MiB + replay 98 MiB)" --goal "ratio<=1"
  local cpu
  run "$work/cpu" "$B" cpu --pid "$fs_big" --pid "$fs_http" --seconds 5
  cpu=$(cat "$work/cpu")
  row --section cost --figure "idle CPU over 5 s, 1 GiB buffer full" \
    --value "$(sed -n 1p <<<"$cpu")" --unit % --goal "value<=0.5"
  row --section cost --figure "idle CPU over 5 s, 4 MiB buffer full" \
    --value "$(sed -n 2p <<<"$cpu")" --unit % --goal "value<=0.5"
  local st
  run "$work/startup" "$B" startup --qrypt-fs "$bin/qrypt-fs" \
    --null-fs "$bin/examples/null_fs" --endpoint "$url_local" --token "$token" --dir "$work" \
    --rounds "$ROUNDS"
  st=$(cat "$work/startup")
  val() { awk -v k="$1" '$1 == k { print $2 }' <<<"$st"; }
  row --section cost --figure "qrypt-fs MNT (daemon) until 32 bytes read" \
    --value "$(val startup)" --unit ms --baseline "$(val baseline)" \
    --baseline-note "(round trip $(printf %.1f "$(val rtt)") + null mount $(printf %.1f "$(val null_mount)"))" \
    --goal "ratio<=1.5"
  row --section cost --figure "  of which until the daemon returned (mounted)" \
    --value "$(val mounted)" --unit ms --goal info
}

for s in "${sections[@]}"; do "section_$s"; done

say "results (ROUNDS=$ROUNDS; medians; details in $out)"
"$B" table --results "$results" --markdown >"$out/results.md"
"$B" table --results "$results"
if grep -q $'\tFAIL$' "$results"; then exit 1; fi
