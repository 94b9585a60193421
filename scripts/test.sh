#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, property tests, the emulator's tests, and the
# integration tests that mount real FUSE filesystems against the emulator (the `fuse-tests`
# feature; needs root, or /dev/fuse access plus fusermount3). Plain `cargo test` runs all but
# the mounting ones, anywhere.
# Ends with one summary line over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --workspace --features qrypt-fs/fuse-tests --lib --bins --tests "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
