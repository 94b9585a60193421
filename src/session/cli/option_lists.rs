//! The lists `-o` parsing goes by, which build.rs also puts in the man page and the shell
//! completions (self-contained, so build.rs can include it).

/// Flags that make no sense in fstab: `-o foreground` would hang `mount -a`, `-o help` would
/// print help instead of mounting.
/// `user` among them: fstab's `user` flag (any user may mount) is a different thing, so the
/// daemon's user is chosen with `--user` only.
pub const NOT_MOUNT_OPTIONS: [&str; 4] = ["foreground", "help", "version", "user"];

/// Options mount(8), systemd and fstab conventions pass to every filesystem. The mount is
/// always read-only, nodev, nosuid, noexec and noatime, with default_permissions; the rest
/// concern mount(8) itself.
pub const IGNORED: [&str; 25] = [
    "ro",
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "_netdev",
    "nofail",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "defaults",
    "async",
    "sync",
    "default_permissions",
    // Set by mount(8) and fusermount from the fstab line; we set our own.
    "fsname",
    "subtype",
    // A comma after the last option.
    "",
];
