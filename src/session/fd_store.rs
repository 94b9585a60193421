//! The FUSE descriptor the service manager hands over: mounted by `qrypt-fs-mount` outside
//! the service's sandbox and kept in systemd's file descriptor store under the name `fuse`.
use anyhow::bail;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// The name `qrypt-fs-mount` stores the descriptor under (`FDNAME=fuse`).
pub const FD_NAME: &str = "fuse";

/// `/dev/fuse` is character device 10:229.
const FUSE_DEV: (u64, u64) = (10, 229);

/// Takes the descriptor named [`FD_NAME`] from `LISTEN_FDS`, if systemd passed one to this
/// process, and clears the variables. Must run before any thread exists (it changes the
/// environment). A descriptor under that name that is not `/dev/fuse` is refused.
pub fn take_fuse_fd() -> anyhow::Result<Option<OwnedFd>> {
    let Ok(fds) = sd_notify::listen_fds_with_names(true) else {
        return Ok(None);
    };
    let mut found = None;
    for (raw, name) in fds {
        if name == FD_NAME && found.is_none() {
            // SAFETY: systemd passed this descriptor to this process (LISTEN_PID is ours) and
            // nothing else in the process owns it.
            found = Some(unsafe { OwnedFd::from_raw_fd(raw) });
        }
    }
    let Some(fd) = found else { return Ok(None) };
    let meta = std::fs::File::from(fd.try_clone()?).metadata()?;
    let dev = libc_dev(meta.rdev());
    if !meta.file_type().is_char_device() || dev != FUSE_DEV {
        bail!("the descriptor named {FD_NAME} that systemd passed is not /dev/fuse");
    }
    Ok(Some(fd))
}

/// How many descriptors systemd passed to this process (`LISTEN_FDS`, if `LISTEN_PID` is
/// ours): they start at 3 and must survive the start's closing of inherited descriptors.
pub fn passed_count() -> u32 {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    if !ours {
        return 0;
    }
    std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn libc_dev(rdev: u64) -> (u64, u64) {
    (u64::from(libc::major(rdev)), u64::from(libc::minor(rdev)))
}
