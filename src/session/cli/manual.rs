//! The sections of qrypt-fs(1) beyond the options: the one place their text lives.
//!
//! Self-contained (no imports at all): build.rs includes this file next to `args.rs` and renders
//! the man page from both, so the options can never disagree with `--help`, and these sections
//! are written once. tests/packaging.rs checks them against a live mount (every `/status` key is
//! described under FILES) and against the unit file and the package.

/// One block of text inside a section.
pub enum Block {
    /// A paragraph of running text.
    Para(&'static str),
    /// A term and its description (a tagged paragraph).
    Item(&'static str, &'static str),
    /// Lines shown as written (commands, configuration files).
    Code(&'static str),
}

/// A man page section: its title (upper case) and its blocks.
pub struct Section {
    pub title: &'static str,
    pub body: &'static [Block],
}

use Block::{Code, Item, Para};

pub const SECTIONS: &[Section] = &[
    Section {
        title: "MOUNT OPTIONS",
        body: &[Para(
            "Every long option is also a mount option for fstab(5) and mount -t fuse.qrypt-fs: \
                 write it without the dashes and with underscores (token_file=PATH, \
                 buffer_size=4M, allow_other, verbose). qrypt-fs accepts the \
                 SOURCE MOUNTPOINT -o OPTIONS form that mount.fuse3(8) uses. The generic options \
                 rw, ro, dev, suid, exec, atime (and their no forms), _netdev, nofail, auto, \
                 noauto, user, users, defaults and x-* are accepted and ignored. There is no \
                 token= option: mount options are visible to every user.",
        )],
    },
    Section {
        title: "FILES",
        body: &[
            Item(
                "MOUNTPOINT/random",
                "Entropy (mode 0444, st_size 4096, never in the page cache; offsets are ignored). \
                 Every byte is handed out once, to one reader, then wiped. Reads of up to 256 \
                 bytes are never short; larger reads may return what is buffered (use \
                 dd iflag=fullblock). A read waits while the buffer is empty. A signal that is \
                 caught (a handler) or fatal by default ends the wait (EINTR, or the process \
                 dies); stop, continue, ignored and blocked signals do not. SA_RESTART is \
                 invisible to a filesystem: a caught signal always gives EINTR (README, section \
                 Signals while a read waits). O_NONBLOCK gets EAGAIN; EIO when the upstream \
                 cannot recover by itself (token rejected, quota used up, a --budget cap \
                 reached) and nothing is buffered.",
            ),
            Item(
                "MOUNTPOINT/status",
                "One snapshot, taken at open(2), as key: value lines. The keys:",
            ),
            Item(
                "state",
                "starting, ok, degraded (working, but a request failed in the last minute), \
                 pacing (a reader waits because the client's own pacing holds the next request \
                 back), backing off, budget state unwritable (the budget cannot be recorded: \
                 nothing is requested, readers wait), budget exhausted (a --budget cap is \
                 reached until it renews: readers on an empty buffer get EIO), unauthorized \
                 (401), quota exhausted (403), bad request (400) or stopping.",
            ),
            Item(
                "buffered_bytes, capacity_bytes, buffer_fill_percent",
                "The prefetch buffer: bytes ready to read, its size, and how full it is.",
            ),
            Item(
                "served_bytes, fetched_bytes, discarded_bytes",
                "Bytes handed to readers, received in valid responses, and received but thrown \
                 away (failed validation or health tests). served + buffered <= fetched, always.",
            ),
            Item(
                "requests_ok, requests_failed, consecutive_failures",
                "Requests to the upstream that succeeded, that failed, and failures since the \
                 last success.",
            ),
            Item(
                "next_attempt_in_seconds",
                "While backing off or stopped: when the next request is due (none otherwise).",
            ),
            Item("waiting_readers", "Readers waiting for bytes right now."),
            Item(
                "failures",
                "Failed requests per class (http_503=2 timeout=1 ...), or none.",
            ),
            Item(
                "last_error, last_success",
                "The last failure (UTC time and reason) and the time of the last success, or \
                 none.",
            ),
            Item(
                "memory_locked, locked_bytes",
                "yes when the buffer is mlock(2)ed (so entropy never reaches swap); the bytes \
                 of it locked now (it is locked as it fills).",
            ),
            Item(
                "mix_local",
                "on when every byte is XORed with getrandom(2) (--mix-local), else off.",
            ),
            Item(
                "token_error",
                "Why the token file's last read was refused (not a regular file, too large, a \
                 symlink to a symlink, no answer in 5 s); the token in use is kept. none once a \
                 read succeeds.",
            ),
            Item(
                "endpoint, token_source, rate_limit",
                "The API base URL, where the token came from (a path or the environment, never \
                 the token), and the client-side pacing.",
            ),
            Item(
                "rate_allowance, rate_limited_until, pacing_wait_seconds",
                "Requests per window the client allows itself now (lower than --rate-limit \
                 after 429s from a token shared with others), the UTC time until which its \
                 pacing holds requests back (or none), and the seconds readers spent waiting \
                 on that pacing.",
            ),
            Item(
                "budget, budget_PERIOD_limit_bytes, budget_PERIOD_spent_bytes, \
                 budget_PERIOD_remaining_bytes, budget_PERIOD_renews_at",
                "The --budget caps (or off) and, for each capped PERIOD (hour, day, month): \
                 its limit, what was spent in the current period (UTC), what is left, and when \
                 it renews.",
            ),
            Item(
                "spent_day_bytes, spent_month_bytes, budget_state_file",
                "Bytes requested from the upstream today and this month (UTC), with or without \
                 a cap (without one, since start), and the file that records the spend (or \
                 none without a cap).",
            ),
            Item("uptime_seconds", "Seconds since the mount started."),
            Item(
                "MOUNTPOINT/status.json",
                "The same snapshot as one JSON object.",
            ),
            Item(
                "MOUNTPOINT/metrics",
                "The same numbers in Prometheus text format (qrypt_fs_*), for node_exporter's \
                 textfile collector or a scrape sidecar.",
            ),
            Item(
                "/etc/qrypt/token",
                "The API token (first line), mode 0600 in a directory of mode 0700. The package \
                 creates the directory, never the token.",
            ),
            Item(
                "/usr/lib/systemd/system/qrypt-fs.service",
                "The systemd unit: mounts /mnt/qrypt once /etc/qrypt/token exists.",
            ),
            Item(
                "/var/lib/qrypt-fs",
                "State directory (mode 0700) kept across restarts: budget-DIGEST.json (mode \
                 0600) records the --budget spend per endpoint and token source, written before \
                 each request; budget-DIGEST.lock serializes daemons sharing it. The default \
                 --state-dir for root; others use $XDG_STATE_HOME/qrypt-fs or \
                 ~/.local/state/qrypt-fs.",
            ),
        ],
    },
    Section {
        title: "ENVIRONMENT",
        body: &[
            Item(
                "QRYPT_TOKEN",
                "The API token, when --token-file is not given. qrypt-fs removes it from its \
                 environment at start. Never put the token on the command line: argv is \
                 visible to every user through ps(1).",
            ),
            Item(
                "RUST_LOG",
                "Log filter (tracing-subscriber syntax, e.g. qrypt_fs=debug); overrides -v.",
            ),
        ],
    },
    Section {
        title: "SIGNALS",
        body: &[
            Item(
                "SIGTERM, SIGINT",
                "Answer waiting readers with EIO, unmount (lazily if a reader still has a file \
                 open), wipe the buffer, exit 0. umount(8) of the mount point also ends the \
                 daemon.",
            ),
            Item(
                "SIGHUP",
                "Re-read the token file and retry the upstream at once, whatever the state \
                 (systemctl reload qrypt-fs sends it).",
            ),
            Item(
                "SIGKILL",
                "Leaves a dead mount (\"Transport endpoint is not connected\"): umount -l \
                 MOUNTPOINT recovers it, and the systemd unit does that before restarting.",
            ),
        ],
    },
    Section {
        title: "EXIT STATUS",
        body: &[
            Item(
                "0",
                "The mount is live (in the background: the parent returns once it is) or, in \
                 the foreground, it ended cleanly (signal or umount).",
            ),
            Item(
                "1",
                "It could not mount or failed while running; the reason is printed on stderr \
                 (and logged).",
            ),
            Item(
                "2",
                "Bad command line or mount options; nothing was mounted.",
            ),
        ],
    },
    Section {
        title: "EXAMPLES",
        body: &[
            Para("Try it, then unmount:"),
            Code(
                "mkdir -p /mnt/qrypt\n\
                 qrypt-fs --token-file /etc/qrypt/token /mnt/qrypt\n\
                 head -c 32 /mnt/qrypt/random | xxd\n\
                 cat /mnt/qrypt/status\n\
                 umount /mnt/qrypt",
            ),
            Para("Store the token (paste it, then Ctrl-D):"),
            Code("install -d -m 0700 /etc/qrypt\ninstall -m 0600 /dev/stdin /etc/qrypt/token"),
            Para("In /etc/fstab:"),
            Code(
                "qrypt  /mnt/qrypt  fuse.qrypt-fs  token_file=/etc/qrypt/token,allow_other,_netdev  0 0",
            ),
            Para("As a systemd service (Type=notify: active once the mount is live):"),
            Code(
                "systemctl enable --now qrypt-fs\n\
                 systemctl reload qrypt-fs    # SIGHUP: re-read the token, retry now\n\
                 journalctl -u qrypt-fs",
            ),
            Para("Feed the kernel's pool, or seed OpenSSL:"),
            Code(
                "rngd -f -r /mnt/qrypt/random\n\
                 openssl rand -rand /mnt/qrypt/random -hex 32",
            ),
        ],
    },
    Section {
        title: "SEE ALSO",
        body: &[Para(
            "mount.fuse3(8), fusermount3(1), fstab(5), systemd.service(5), systemctl(1), \
             random(4), rngd(8)",
        )],
    },
];
