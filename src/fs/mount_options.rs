//! How qrypt-fs mounts: the FUSE mount options and session settings. The benchmark's null
//! filesystem (examples/null_fs.rs) mounts with this same function, so its baseline measures
//! exactly our setup.
use fuser::{MountOption, SessionACL};

/// Worker threads for FUSE requests: one per core, two to four. Reads never block one
/// (waiting reads are parked in the pool), so a few suffice for concurrent readers plus
/// `/status`; more threads than cores only make them wake each other up for nothing (on two
/// cores, four threads served a third fewer small reads than two).
pub fn fuse_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

/// What varies between mounts.
#[derive(Debug, Clone)]
pub struct FuseOptions {
    /// The mount's source, as /proc/mounts shows it (`qrypt` unless mount(8) passed one).
    pub fsname: String,
    /// Shown as `fuse.SUBTYPE` in /proc/mounts.
    pub subtype: String,
    pub allow_other: bool,
    pub allow_root: bool,
    /// Let the kernel check permissions against the 0444/0555 modes.
    pub default_permissions: bool,
    /// Each FUSE thread opens a `/dev/fuse` of its own (a queue per thread). Only where the
    /// user the server runs as by then may open the device.
    pub clone_fd: bool,
}

/// Who may use the mount. fuser 0.18 has no AllowOther mount option: it is the session ACL.
pub fn acl(allow_other: bool, allow_root: bool) -> SessionACL {
    if allow_other {
        SessionACL::All
    } else if allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    }
}

/// The fuser configuration: read-only, nodev, nosuid, noexec, noatime; several threads, each
/// with its own cloned `/dev/fuse` descriptor.
pub fn fuse_config(opts: &FuseOptions) -> fuser::Config {
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(opts.fsname.clone()),
        // fuser passes Subtype only to fusermount; as a kernel option it also works for the
        // direct mount, so /proc/mounts says fuse.SUBTYPE.
        MountOption::CUSTOM(format!("subtype={}", opts.subtype)),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
        MountOption::NoAtime,
    ];
    if opts.default_permissions {
        cfg.mount_options.push(MountOption::DefaultPermissions);
    }
    cfg.acl = acl(opts.allow_other, opts.allow_root);
    cfg.n_threads = Some(fuse_threads());
    cfg.clone_fd = opts.clone_fd;
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_and_who_may_read() {
        let opts = FuseOptions {
            fsname: "qrypt".into(),
            subtype: "qrypt-fs".into(),
            allow_other: false,
            allow_root: true,
            default_permissions: true,
            clone_fd: true,
        };
        let cfg = fuse_config(&opts);
        for o in [
            MountOption::RO,
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::NoExec,
            MountOption::DefaultPermissions,
            MountOption::FSName("qrypt".into()),
            MountOption::CUSTOM("subtype=qrypt-fs".into()),
        ] {
            assert!(cfg.mount_options.contains(&o), "{o:?}");
        }
        assert_eq!(cfg.acl, SessionACL::RootAndOwner);
        assert_eq!(acl(true, true), SessionACL::All);
        assert_eq!(acl(false, false), SessionACL::Owner);
        assert_eq!((cfg.n_threads, cfg.clone_fd), (Some(fuse_threads()), true));
    }
}
