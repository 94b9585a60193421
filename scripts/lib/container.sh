# Sourced by scripts/test-systemd.sh and scripts/test-deb.sh: a real systemd (PID 1 of a
# systemd-nspawn container) booted on a throwaway overlay of this machine's root. Reads come
# from the host's own /usr, /etc and work tree; every write (installed packages, /etc/qrypt,
# units) lands in a tmpfs that disappears with the container, so the host is left as it was.
# Private network: the container has only its own loopback, where the emulator listens.
#
#   ct_setup            mount the overlay at $CT_ROOT (write files into it before booting)
#   ct_boot             boot systemd on it (basic.target) and wait until it is up
#   ct CMD...           run CMD inside the container (all its namespaces, clean environment)
#   ct_cleanup          power off, wait, unmount, remove (installed as an EXIT trap by ct_setup)
#   check NAME CMD...   run a check; prints "ok - NAME" or "not ok - NAME"; counts
#   summary             "N passed, N failed" and the exit status
# The container gets CAP_IPC_LOCK (nspawn drops it by default; a host's PID 1 has it), so the
# unit's mlock works as it would on a host. Needs root, systemd-nspawn (systemd-container) and overlayfs. Every wait is bounded.

CT_NAME="qrypt-test-$$"
CT_BASE=""
CT_ROOT=""
CT_TIMER_PID=""
CT_LEADER=""
CT_KEEP_LOGS="${CT_LOG_DIR:+yes}"
CT_LOG_DIR="${CT_LOG_DIR:-$(mktemp -d /tmp/qrypt-ct-logs.XXXXXX)}"
CT_MAX_SECONDS="${CT_MAX_SECONDS:-600}"
PASSED=0
FAILED=0

ct_log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

ct_setup() {
    [ "$(id -u)" = 0 ] || { echo "needs root (mounts, systemd-nspawn)" >&2; exit 1; }
    command -v systemd-nspawn >/dev/null || {
        echo "systemd-nspawn missing: scripts/install-test-deps.sh installs systemd-container" >&2
        exit 1
    }
    CT_BASE=$(mktemp -d /tmp/qrypt-ct.XXXXXX)
    trap ct_cleanup EXIT
    # A timeout(1) around the script sends TERM: exit through the EXIT trap, which cleans up.
    trap 'exit 143' TERM INT HUP
    # upper and work must share one filesystem outside the lower one: a tmpfs of their own.
    mount -t tmpfs -o size=2g,mode=0755 qrypt-ct "$CT_BASE"
    mkdir "$CT_BASE/upper" "$CT_BASE/work" "$CT_BASE/root"
    mount -t overlay qrypt-ct -o "lowerdir=/,upperdir=$CT_BASE/upper,workdir=$CT_BASE/work" \
        "$CT_BASE/root"
    CT_ROOT="$CT_BASE/root"
    # Nothing of the host's own state should leak into the test: no machine-id (systemd makes
    # a fresh one), no journal, no fstab entries.
    rm -f "$CT_ROOT/etc/machine-id"
    : >"$CT_ROOT/etc/fstab"
    # The private network has no link that could come "online": without this,
    # network-online.target (which the unit wants) waits 2 minutes for nothing.
    local u
    for u in systemd-networkd-wait-online ifupdown-wait-online NetworkManager-wait-online; do
        ln -sf /dev/null "$CT_ROOT/etc/systemd/system/$u.service"
    done
    ct_log "overlay of / at $CT_ROOT; logs in $CT_LOG_DIR"
}

ct_boot() {
    # basic.target: no getty, no host services (databases, rngd) from multi-user.target.
    # timeout bounds the container's whole life even if this script is killed hard.
    timeout --signal=TERM --kill-after=20 "$CT_MAX_SECONDS" \
        systemd-nspawn --quiet -D "$CT_ROOT" -M "$CT_NAME" --boot --register=no --keep-unit \
        --private-network --bind=/dev/fuse --console=read-only --capability=CAP_IPC_LOCK \
        -- systemd.unit=basic.target >"$CT_LOG_DIR/console.log" 2>&1 &
    CT_TIMER_PID=$!
    local start=$SECONDS nspawn="" pid comm
    while [ -z "$CT_LEADER" ]; do
        if ((SECONDS - start > 30)) || ! kill -0 "$CT_TIMER_PID" 2>/dev/null; then
            echo "systemd-nspawn did not start systemd; console:" >&2
            cat "$CT_LOG_DIR/console.log" >&2
            return 1
        fi
        [ -n "$nspawn" ] || nspawn=$(pgrep -P "$CT_TIMER_PID" -x systemd-nspawn || true)
        if [ -n "$nspawn" ]; then
            for pid in $(pgrep -P "$nspawn" || true); do
                comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
                [ "$comm" = systemd ] && CT_LEADER=$pid
            done
        fi
        sleep 0.2
    done
    local state
    # systemctl needs PID 1's private socket, which appears a moment after PID 1 does.
    ct_wait 30 test -S "/proc/$CT_LEADER/root/run/systemd/private" || true
    state=$(timeout 60 nsenter -t "$CT_LEADER" -a -r -w \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin systemctl is-system-running --wait || true)
    ct_log "container $CT_NAME booted in $((SECONDS - start)) s: PID 1 is host PID $CT_LEADER, state $state"
    case "$state" in
        running | degraded) ;;
        *)
            echo "container systemd not up (state '$state'); console:" >&2
            cat "$CT_LOG_DIR/console.log" >&2
            return 1
            ;;
    esac
}

ct() {
    nsenter -t "$CT_LEADER" -a -r -w env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}

# Waits up to $1 seconds for CMD to succeed.
ct_wait() {
    local limit=$1 start=$SECONDS
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS - start < limit)) || return 1
        sleep 0.2
    done
}

ct_cleanup() {
    local rc=$?
    set +e
    if [ -n "$CT_LEADER" ] && [ -d "/proc/$CT_LEADER" ]; then
        ct journalctl --no-pager -o short-monotonic >"$CT_LOG_DIR/journal.log" 2>&1
        ct systemctl poweroff --no-block >/dev/null 2>&1
    fi
    if [ -n "$CT_TIMER_PID" ]; then
        local start=$SECONDS
        while kill -0 "$CT_TIMER_PID" 2>/dev/null && ((SECONDS - start < 30)); do sleep 0.2; done
        # Still there: end the timeout(1) we started; it passes TERM on to systemd-nspawn.
        kill -0 "$CT_TIMER_PID" 2>/dev/null && kill -TERM "$CT_TIMER_PID"
        wait "$CT_TIMER_PID" 2>/dev/null
    fi
    if [ -n "$CT_BASE" ]; then
        umount "$CT_BASE/root" 2>/dev/null || umount -l "$CT_BASE/root"
        umount "$CT_BASE" 2>/dev/null || umount -l "$CT_BASE"
        rmdir "$CT_BASE"
    fi
    # Logs (console, journal, status) stay for a failed run, or when CT_LOG_DIR was given.
    if [ "$rc" = 0 ] && [ -z "$CT_KEEP_LOGS" ]; then
        rm -rf "$CT_LOG_DIR"
    else
        echo "container logs: $CT_LOG_DIR" >&2
    fi
    exit "$rc"
}

check() {
    local name=$1
    shift
    if "$@"; then
        PASSED=$((PASSED + 1))
        echo "ok - $name"
    else
        FAILED=$((FAILED + 1))
        echo "not ok - $name"
    fi
}

summary() {
    echo "$1: $PASSED passed, $FAILED failed"
    [ "$FAILED" = 0 ]
}
