//! The sections of qrypt-fs(1) beyond the options: the one place their text lives.
//!
//! Self-contained (no imports at all): build.rs includes this file next to `args.rs` and renders
//! the man page from both, so the options can never disagree with `--help`, and these sections
//! are written once. The integration tests (`packaging`) check them against the unit file and
//! the package. The STATUS FIELDS section comes from the status layer's field table
//! (`src/status/fields.rs`).

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
                 SOURCE MOUNTPOINT -o OPTIONS form that mount.fuse3(8) uses. There is no \
                 token= option: mount options are visible to every user. The generic options \
                 mount(8), systemd and fstab pass to every filesystem are accepted and \
                 ignored:",
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
                 invisible to a filesystem: a caught signal always gives EINTR (docs/semantics.md, section \
                 Signals while a read waits). O_NONBLOCK gets EAGAIN; EIO when the upstream \
                 cannot recover by itself (token rejected, quota used up, a --budget cap \
                 reached) and nothing is buffered.",
            ),
            Item(
                "MOUNTPOINT/status",
                "One snapshot, taken at open(2), as key: value lines; the keys are listed under \
                 STATUS FIELDS.",
            ),
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
                 qrypt-fs --token-file /etc/qrypt/token --budget 100M/day --budget 1G/month /mnt/qrypt\n\
                 head -c 32 /mnt/qrypt/random | xxd\n\
                 cat /mnt/qrypt/status\n\
                 umount /mnt/qrypt",
            ),
            Para("Store the token (paste it, then Ctrl-D):"),
            Code("install -d -m 0700 /etc/qrypt\ninstall -m 0600 /dev/stdin /etc/qrypt/token"),
            Para("In /etc/fstab:"),
            Code(
                "qrypt  /mnt/qrypt  fuse.qrypt-fs  token_file=/etc/qrypt/token,budget=100M/day,budget=1G/month,allow_other,_netdev  0 0",
            ),
            Para(
                "As a systemd service (Type=notify: active once the mount is live; the unit \
                 adds --budget 100M/day --budget 1G/month):",
            ),
            Code(
                "systemctl enable --now qrypt-fs\n\
                 systemctl reload qrypt-fs    # SIGHUP: re-read the token, retry now\n\
                 journalctl -u qrypt-fs",
            ),
            Para(
                "Feed the kernel's pool (64 bytes with credit, then a reseed; the package's \
                 qrypt-fs-seed.timer does this every 10 minutes), or seed OpenSSL:",
            ),
            Code(
                "qrypt-fs-seed --bytes 64 /mnt/qrypt\n\
                 openssl rand -rand /mnt/qrypt/random -hex 32",
            ),
        ],
    },
    Section {
        title: "SEE ALSO",
        body: &[Para(
            "mount.fuse3(8), fusermount3(1), fstab(5), systemd.service(5), systemctl(1), \
             random(4), qrypt-fs-seed(8)",
        )],
    },
];
