#!/usr/bin/env bash
# Runs every test: unit tests, property tests, and the integration tests that mount real FUSE
# filesystems against the emulator (needs root, or /dev/fuse access plus fusermount3).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --all-targets "$@"
