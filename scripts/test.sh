#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, property tests, the emulator's tests, and the
# integration tests that mount real FUSE filesystems against the emulator (the `fuse-tests`
# feature; needs root, or /dev/fuse access plus fusermount3). Plain `cargo test` runs all but
# the mounting ones, anywhere.
#
#   scripts/test.sh [CARGO ARGS] [-- TEST ARGS]
#
# 1. Checks that the programs the tests drive are installed (scripts/install-test-deps.sh
#    --check): as root it installs what is missing; otherwise it stops, before any test runs,
#    with the command that installs them.
# 2. Builds every test binary with `cargo build --keep-going`, so one that does not compile
#    stops none of the others.
# 3. Runs every test binary with `cargo test --no-fail-fast`, so a binary that fails or dies
#    (a crash, a signal, a panic outside a test) stops none of the others. If some did not
#    build, cargo would run none: then the binaries that did build are run directly.
# 4. Ends with the binaries that failed to build or run, by name, and one summary line over
#    all of them, `tests: N passed, M failed`; a binary that failed to build, or exited
#    non-zero without reporting a failed test, counts as one failed test. Exit status 0 only
#    if everything passed.
#
# CARGO ARGS go to both cargo commands, after the defaults --locked --features
# qrypt-fs/fuse-tests (e.g. --release), except those that choose packages and targets
# (--workspace, -p, --lib, --tests, --test NAME, ...), which choose what is built; without
# them the default is --workspace --lib --bins --tests.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo_args=(--locked --features qrypt-fs/fuse-tests) select_args=() package_args=() test_args=()
while [ $# -gt 0 ]; do
  case $1 in
  --) shift; test_args=("$@"); break ;;
  --lib | --bins | --tests | --all-targets | --bin=* | --test=*) select_args+=("$1") ;;
  --bin | --test) select_args+=("$1" "${2:?$1 needs a name}"); shift ;;
  # Which packages: the build step's business; each run names its binary's package.
  --workspace | --all | --package=* | -p?*) package_args+=("$1") ;;
  --package | -p) package_args+=("$1" "${2:?$1 needs a name}"); shift ;;
  *) cargo_args+=("$1") ;;
  esac
  shift
done
[ ${#select_args[@]} -gt 0 ] || select_args=(--lib --bins --tests)
[ ${#package_args[@]} -gt 0 ] || package_args=(--workspace)

if ! missing=$(scripts/install-test-deps.sh --check); then
  if [ "$(id -u)" -eq 0 ]; then
    echo "test.sh: installing what the tests need: ${missing:-/dev/fuse}"
    scripts/install-test-deps.sh
  else
    echo "test.sh: missing what the tests drive: ${missing:-/dev/fuse}" >&2
    echo "test.sh: install it with: sudo scripts/install-test-deps.sh" >&2
    exit 1
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed_bins=()

# Build. stdout is cargo's JSON (one message a line); diagnostics go to the terminal and a log.
build_status=0
cargo build --keep-going --message-format=json-render-diagnostics "${cargo_args[@]}" "${package_args[@]}" \
  "${select_args[@]}" \
  >"$work/build.json" 2> >(tee "$work/build.err" >&2) || build_status=$?
wait # for tee
# `error: could not compile `qrypt-fs` (test "integration") due to 2 previous errors`
while IFS= read -r line; do
  failed_bins+=("$line: failed to build")
done < <(sed -nE 's/^error: could not compile `([^`]*)` \(([^)]*)\).*/\1 \2/p' "$work/build.err")
if [ "$build_status" -ne 0 ] && [ ${#failed_bins[@]} -eq 0 ]; then
  failed_bins+=("cargo build: exit status $build_status (see above)")
fi

# Per binary: the test counts, and whether it died before reporting (no `test result:`).
# Reads a test run's output, whose sections start with cargo's `Running NAME (EXE)` line (or
# `== NAME` when run directly); prints "passed failed" and then one line per failed binary.
count() {
  awk '
    function close_section() {
      if (name != "" && !reported) bad[++nbad] = name ": exited without reporting (crashed or killed)"
      else if (name != "" && sf > 0) bad[++nbad] = name ": " sf " failed"
      name = ""; reported = 0; sf = 0
    }
    /^ *Running / { close_section(); name = $0; sub(/^ *Running /, "", name); next }
    /^== / { close_section(); name = substr($0, 4); next }
    /^ *Doc-tests / { close_section(); next }
    /^test result:/ {
      reported = 1
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^passed;?$/) p += $(i - 1)
        if ($i ~ /^failed;?$/) { f += $(i - 1); sf += $(i - 1) }
      }
    }
    END { close_section(); print p + 0, f + 0; for (i = 1; i <= nbad; i++) print bad[i] }
  ' "$1"
}

status=0
if [ "$build_status" -eq 0 ]; then
  # Everything built: cargo runs every binary, also after one fails.
  cargo test --no-fail-fast "${cargo_args[@]}" "${package_args[@]}" "${select_args[@]}" \
    -- "${test_args[@]}" </dev/null 2>&1 | tee "$work/run.log" || status=${PIPESTATUS[0]}
else
  # cargo test would build (and fail) again and run nothing: run the binaries that were
  # built ourselves, each from its package's directory as cargo does.
  sed -nE '/"reason":"compiler-artifact"/{/"profile":\{[^}]*"test":true\}/{
    s/.*"manifest_path":"([^"]*)\/Cargo\.toml".*"target":\{"kind":\["([^"]*)"\][^}]*"name":"([^"]*)".*"executable":"([^"]*)".*/\1 \2 \3 \4/p}}' \
    "$work/build.json" | while read -r dir kind name exe; do
    echo "== $kind $name ($exe)"
    (cd "$dir" && CARGO_MANIFEST_DIR=$dir "$exe" "${test_args[@]}" </dev/null 2>&1) || true
  done | tee "$work/run.log"
fi
{
  read -r passed failed
  while IFS= read -r line; do failed_bins+=("$line"); done
} < <(count "$work/run.log")
# A binary that died counts as one failed test; so does a failure cargo saw but we could not
# place, so that a broken run never reads as a clean one.
for b in "${failed_bins[@]}"; do
  case $b in *" failed") ;; *) failed=$((failed + 1)) ;; esac
done
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  failed_bins+=("cargo test: exit status $status without a failed test (see above)")
  failed=1
fi

if [ ${#failed_bins[@]} -gt 0 ]; then
  echo
  echo "test binaries that failed:"
  printf '  %s\n' "${failed_bins[@]}"
fi
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$build_status" -eq 0 ]
