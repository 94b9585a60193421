#!/usr/bin/env bash
# The Debian package end to end: build it with `cargo deb`, run lintian on it, then install,
# use, remove and purge it inside a container with a real systemd booted on a throwaway overlay
# of this machine's root (scripts/lib/container.sh), so this machine's /usr/bin and /etc are
# never touched. The emulator (not in the package) stands in for the API on loopback.
#
# Checks: the installed files; no token -> the unit is enabled but not started and the install
# says so; the README's fstab line mounts with installed files only (plus the emulator's
# endpoint); an existing /etc/qrypt/token is never overwritten and a fresh install with a
# token starts the service; `dpkg -r` while mounted (even with a reader holding the file open)
# leaves no mount and no daemon; after `dpkg -r` only configuration is left; `dpkg -P` removes
# that too. Needs root, cargo-deb, lintian, systemd-container (scripts/install-test-deps.sh).
# Usage: scripts/test-deb.sh [--no-build]   (--no-build: use target/debian/*.deb as it is)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/container.sh
# What only the packaging tests use (systemd-container, lintian), installed now if missing.
scripts/install-test-deps.sh --packaging

if [ "${1:-}" != "--no-build" ]; then
    if ! cargo deb --version 2>/dev/null | grep -qx 'cargo-deb 3\.8\.0'; then
        cargo install cargo-deb --locked --version 3.8.0
    fi
    start=$SECONDS
    cargo deb
    ct_log "cargo deb: $((SECONDS - start)) s"
    cargo build --locked --workspace --quiet --bins
fi
DEB=$(ls -t target/debian/qrypt-fs_*.deb | head -1)
PORT=18443

# Lintian: no errors and no warnings (the two that cannot be fixed are overridden, with the
# reason, in contrib/debian/lintian-overrides).
lintian_clean() {
    lintian --fail-on error,warning "$DEB" 2>&1 | grep -v '^running with root privileges' |
        tee "$CT_LOG_DIR/lintian.log"
    return "${PIPESTATUS[0]}"
}
ct_log "lintian"
check "lintian: no errors, no warnings ($DEB)" lintian_clean
no_emulator_in_package() { ! dpkg-deb -c "$DEB" | grep -q emulator; }
check "the emulator is not in the package" no_emulator_in_package

ct_setup
R=$CT_ROOT
if [ -e "$R/usr/bin/qrypt-fs" ] || dpkg -s qrypt-fs >/dev/null 2>&1; then
    echo "qrypt-fs is already installed on this machine: the test needs a clean base" >&2
    exit 1
fi
cp "$DEB" "$R/root/qrypt-fs.deb"
install -m 0755 target/debug/qrypt-emulator "$R/usr/local/bin/qrypt-emulator"
cat >"$R/etc/systemd/system/qrypt-emulator.service" <<EOF
[Unit]
Description=qrypt-emulator: a test stand-in for Qrypt's API on loopback
[Service]
ExecStart=/usr/local/bin/qrypt-emulator --listen 127.0.0.1:$PORT
EOF
rm -rf "$R/etc/qrypt" "$R/var/lib/qrypt-fs" "$R/mnt/qrypt"
# This machine's image forbids starting services from maintainer scripts (policy-rc.d exits
# 101, as in Docker images); a server does not. deb-systemd-invoke honours it, so drop it here.
rm -f "$R/usr/sbin/policy-rc.d"

ct_boot
ct systemctl start qrypt-emulator
ct_wait 20 ct bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT"

mounted() { ct awk '$5 == "/mnt/qrypt" && $0 ~ / - fuse\.qrypt-fs / { f = 1 } END { exit !f }' /proc/1/mountinfo; }
any_qrypt_mount() { ct grep -q ' - fuse\.qrypt-fs ' /proc/1/mountinfo; }
daemon_running() { ct pgrep -x qrypt-fs >/dev/null; }
no_daemon() { ! daemon_running; }
reads_32() { [ "$(ct timeout 10 head -c 32 /mnt/qrypt/random | wc -c)" = 32 ]; }
mode_of() { ct stat -c '%a %U' "$1"; }
FSTAB_OPTS="token_file=/etc/qrypt/token,allow_other,_netdev"   # the README's line
EMU_OPTS="endpoint=http://127.0.0.1:$PORT,rate_limit=off"       # ... pointed at the emulator

# 1. Fresh install, no token.
# apt resolves the dependencies (fuse3: already on this machine, so nothing is downloaded).
ct apt-get install -y /root/qrypt-fs.deb >"$CT_LOG_DIR/install-1.log" 2>&1
installed_files() {
    ct test -x /usr/bin/qrypt-fs &&
        ct test -f /usr/lib/systemd/system/qrypt-fs.service &&
        ct test -f /usr/share/man/man1/qrypt-fs.1.gz &&
        ct test -f /usr/share/bash-completion/completions/qrypt-fs &&
        ct test -f /usr/share/zsh/vendor-completions/_qrypt-fs &&
        ct test -f /usr/share/fish/vendor_completions.d/qrypt-fs.fish &&
        ct test -f /usr/lib/tmpfiles.d/qrypt-fs.conf &&
        [ "$(mode_of /etc/qrypt)" = "700 root" ] && [ "$(mode_of /var/lib/qrypt-fs)" = "700 root" ] &&
        ct bash -c 'qrypt-fs --version | grep -Eq "^qrypt-fs [0-9.]+ \(commit [0-9a-f]+\)$"' &&
        ct bash -c 'zcat /usr/share/man/man1/qrypt-fs.1.gz | grep -q "^\.SH \"\?EXIT STATUS"'
}
check "installed: binary, unit, man page, completions, tmpfiles, /etc/qrypt 0700, --version" \
    installed_files
not_started_without_token() {
    ! ct test -e /etc/qrypt/token && [ "$(ct systemctl is-enabled qrypt-fs)" = enabled ] &&
        [ "$(ct systemctl show -p ActiveState --value qrypt-fs)" = inactive ] && ! mounted &&
        grep -q 'no token in /etc/qrypt/token' "$CT_LOG_DIR/install-1.log"
}
check "no token: enabled, not started, nothing mounted, the install says why" \
    not_started_without_token

# 2. The README's fstab line, installed files only (mount(8) -> mount.fuse3 -> /usr/bin/qrypt-fs).
ct bash -c "umask 077; printf 'emulator-token\n' >/etc/qrypt/token"
ct bash -c "echo 'qrypt  /mnt/qrypt  fuse.qrypt-fs  $FSTAB_OPTS,$EMU_OPTS  0 0' >>/etc/fstab"
ct mkdir -p /mnt/qrypt
fstab_mount_read_umount() {
    ct timeout 30 mount /mnt/qrypt && mounted && reads_32 &&
        [ "$(ct bash -c "grep '^state:' /mnt/qrypt/status")" != "" ] &&
        ct umount /mnt/qrypt && ! mounted && ct_wait 10 no_daemon
}
check "fstab line: mount /mnt/qrypt, read 32 bytes, umount, daemon exits" fstab_mount_read_umount

# 3. dpkg -r while mounted from fstab and in use: prerm unmounts; no dead mount, no daemon.
remove_while_mounted() {
    ct timeout 30 mount /mnt/qrypt && mounted || return 1
    # A reader holds /random open for 3 s, across the removal.
    ct bash -c 'exec 3</mnt/qrypt/random; sleep 3' &
    local holder=$!
    sleep 0.5
    ct dpkg -L qrypt-fs >"$CT_LOG_DIR/files.list"
    ct bash -c "dpkg-query -W -f='\${Conffiles}\n' qrypt-fs" >"$CT_LOG_DIR/conffiles.list"
    ct dpkg -r qrypt-fs >"$CT_LOG_DIR/remove.log" 2>&1 || return 1
    local ok=0
    any_qrypt_mount && ok=1
    wait "$holder"
    ct_wait 10 no_daemon || ok=1
    ! ct stat /mnt/qrypt/random >/dev/null 2>&1 || ok=1
    return $ok
}
check "dpkg -r while mounted and a reader holds /random open: no mount, no daemon left" \
    remove_while_mounted

# 4. After dpkg -r only configuration remains.
only_config_left() {
    [ "$(ct dpkg-query -W -f='${db:Status-Status}' qrypt-fs)" = config-files ] || return 1
    local f left=0
    while read -r f; do
        [ -n "$f" ] && ct test -f "$f" || continue
        if ! grep -q "^ $f " "$CT_LOG_DIR/conffiles.list"; then
            echo "left behind: $f" >&2
            left=1
        fi
    done <"$CT_LOG_DIR/files.list"
    ct test -f /etc/default/qrypt-fs && ct test -f /etc/qrypt/token && return $left
}
check "after dpkg -r: status config-files; only conffiles and /etc/qrypt/token remain" only_config_left

# 5. dpkg -P removes the configuration too.
purge_removes_all() {
    ct dpkg -P qrypt-fs >"$CT_LOG_DIR/purge.log" 2>&1 &&
        ! ct dpkg-query -W qrypt-fs >/dev/null 2>&1 &&
        ! ct test -e /etc/default/qrypt-fs && ! ct test -e /etc/qrypt &&
        ! ct test -e /var/lib/qrypt-fs &&
        ! ct test -e /etc/systemd/system/multi-user.target.wants/qrypt-fs.service
}
check "dpkg -P: conffiles, /etc/qrypt, /var/lib/qrypt-fs and the enable link are gone" purge_removes_all

# 6. A token that exists before the install is kept byte for byte, and the service starts.
ct bash -c "install -d -m 0700 /etc/qrypt && umask 077 && printf 'emulator-token\n# mine\n' >/etc/qrypt/token"
before=$(ct sha256sum /etc/qrypt/token)
ct mkdir -p /etc/systemd/system/qrypt-fs.service.d
ct bash -c "printf '[Service]\nEnvironment=\"QRYPT_FS_OPTIONS=--endpoint http://127.0.0.1:$PORT --rate-limit off\"\n' \
    >/etc/systemd/system/qrypt-fs.service.d/emulator.conf"
ct sed -i '/fuse.qrypt-fs/d' /etc/fstab
ct dpkg -i /root/qrypt-fs.deb >"$CT_LOG_DIR/install-2.log" 2>&1 || true
token_kept_and_started() {
    [ "$(ct sha256sum /etc/qrypt/token)" = "$before" ] && [ "$(mode_of /etc/qrypt/token)" = "600 root" ] &&
        ct_wait 20 ct systemctl is-active qrypt-fs && mounted && reads_32
}
check "existing token kept byte for byte (0600); a fresh install with a token starts the service" \
    token_kept_and_started
ct dpkg -i /root/qrypt-fs.deb >"$CT_LOG_DIR/install-3.log" 2>&1 || true
reinstall_keeps_token() {
    [ "$(ct sha256sum /etc/qrypt/token)" = "$before" ] && ct_wait 20 ct systemctl is-active qrypt-fs &&
        mounted && reads_32
}
check "reinstall (upgrade path): token unchanged, service running and serving" reinstall_keeps_token
purge_stops_and_unmounts() {
    ct dpkg -P qrypt-fs >"$CT_LOG_DIR/purge-2.log" 2>&1 && ! any_qrypt_mount &&
        ct_wait 10 no_daemon && ! ct test -e /etc/qrypt
}
check "dpkg -P with the service running: stopped, unmounted, gone" purge_stops_and_unmounts

host_untouched() { [ ! -e /usr/bin/qrypt-fs ] && ! dpkg -s qrypt-fs >/dev/null 2>&1; }
check "this machine itself is untouched (no /usr/bin/qrypt-fs, no package)" host_untouched
summary deb
