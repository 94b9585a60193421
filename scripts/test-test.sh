#!/usr/bin/env bash
# Tests scripts/test.sh itself on a throwaway crate (no dependencies, builds in seconds) whose
# test binaries pass, fail, crash and fail to compile, and with test programs missing:
#   - every binary runs although others fail; a binary that crashes or does not compile counts
#     as a failure and is named; the last line is `tests: N passed, M failed`; exit status 1;
#   - with everything passing: exit 0 and `tests: N passed, 0 failed`;
#   - a missing test program: not root -> stops before building, with the install command;
#     root -> runs scripts/install-test-deps.sh first.
# Run: scripts/test-test.sh (exit 0 and "test-test: all passed" when test.sh behaves).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
crate=$work/crate
mkdir -p "$crate/src" "$crate/tests" "$crate/scripts"
cp "$here/test.sh" "$crate/scripts/"
# Named like the real package, with its feature, so test.sh's defaults apply unchanged.
cat >"$crate/Cargo.toml" <<'EOF'
[package]
name = "qrypt-fs"
version = "0.1.0"
edition = "2021"
[dependencies]
[features]
fuse-tests = []
EOF
echo '#[test] fn unit_ok() {}' >"$crate/src/lib.rs"
echo '#[test] fn a() {} #[test] fn b() {}' >"$crate/tests/pass.rs"
echo '#[test] fn ok() {} #[test] fn bad() { panic!("expected failure") }' >"$crate/tests/fail.rs"
echo '#[test] fn dies() { std::process::abort() }' >"$crate/tests/crash.rs"
echo '#[test] fn broken() { let _x: u8 = "not a number"; }' >"$crate/tests/broken.rs"
# Stand-in for the real installer: everything present unless MISSING names a package.
cat >"$crate/scripts/install-test-deps.sh" <<'EOF'
#!/usr/bin/env bash
if [ "${1:-}" = --check ]; then [ -z "${MISSING:-}" ] || { echo "$MISSING"; exit 1; }; exit 0; fi
touch "$(dirname "$0")/../installer-ran"
EOF
chmod +x "$crate/scripts/"*.sh
export CARGO_TARGET_DIR=$work/target
(cd "$crate" && cargo generate-lockfile --quiet) # test.sh builds --locked

failures=0
check() { # check DESCRIPTION COMMAND...: counts a failed expectation
  if "${@:2}"; then echo "ok: $1"; else echo "FAILED: $1"; failures=$((failures + 1)); fi
}

# One binary does not compile: cargo test would run nothing, so test.sh runs the others.
status=0
"$crate/scripts/test.sh" >"$work/out" 2>&1 || status=$?
last=$(tail -n 1 "$work/out")
check "with a build failure: exits 1 (got $status)" test "$status" -eq 1
check "with a build failure: counts the crash and the build failure: '$last'" \
  test "$last" = "tests: 4 passed, 3 failed"
check "with a build failure: names the binary that did not compile" \
  grep -q '^  qrypt-fs test "broken": failed to build' "$work/out"
check "with a build failure: names the crashed binary" \
  grep -q '^  test crash (.*): exited without reporting' "$work/out"
check "with a build failure: names the binary with a failed test" \
  grep -q '^  test fail (.*): 1 failed' "$work/out"

# Everything compiles: cargo test --no-fail-fast runs every binary.
rm "$crate/tests/broken.rs"
status=0
"$crate/scripts/test.sh" >"$work/out" 2>&1 || status=$?
last=$(tail -n 1 "$work/out")
check "a failing run exits 1 (got $status)" test "$status" -eq 1
check "summary counts the crash: '$last'" test "$last" = "tests: 4 passed, 2 failed"
check "names the crashed binary" \
  grep -q '^  tests/crash.rs (.*): exited without reporting' "$work/out"
check "names the binary with a failed test" grep -q '^  tests/fail.rs (.*): 1 failed' "$work/out"
check "ran every binary" test "$(grep -c '^ *Running ' "$work/out")" -eq 4

rm "$crate/tests/crash.rs" "$crate/tests/fail.rs"
status=0
"$crate/scripts/test.sh" >"$work/out" 2>&1 || status=$?
last=$(tail -n 1 "$work/out")
check "a clean run exits 0 (got $status)" test "$status" -eq 0
check "a clean run's summary: '$last'" test "$last" = "tests: 3 passed, 0 failed"

if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null; then
  chmod -R a+rX "$work"
  status=0
  MISSING=fuse3 setpriv --reuid=65534 --regid=65534 --clear-groups \
    "$crate/scripts/test.sh" >"$work/out" 2>&1 || status=$?
  check "missing programs, not root: exit 1 (got $status)" test "$status" -eq 1
  check "missing programs, not root: the install command" \
    grep -q 'install it with: sudo scripts/install-test-deps.sh' "$work/out"
  check "missing programs, not root: names the package" grep -q 'fuse3' "$work/out"
  check "missing programs, not root: no test ran" \
    bash -c "! grep -q -e Running -e Compiling '$work/out'"
fi
if [ "$(id -u)" -eq 0 ]; then
  MISSING=fuse3 "$crate/scripts/test.sh" >"$work/out" 2>&1 || true
  check "missing programs, root: the installer runs first" test -e "$crate/installer-ran"
fi

if [ "$failures" -eq 0 ]; then echo "test-test: all passed"; else echo "test-test: $failures failed"; fi
[ "$failures" -eq 0 ]
