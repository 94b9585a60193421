//! `qrypt-fs-mount`: the service's one privileged step. Run by the unit as `ExecStartPre=+`
//! (outside its sandbox), it enters PID 1's mount namespace, mounts `/dev/fuse` on the mount
//! point there and hands the descriptor to systemd's file descriptor store (`FDNAME=fuse`),
//! which passes it to `qrypt-fs`. The daemon then needs no privilege at all and can run in a
//! mount namespace of its own, while the mount stays where every process on the host sees it.
//! `--unmount` (`ExecStopPost=+`) detaches it there again.
//!
//! ```text
//! qrypt-fs-mount [--allow-other] MOUNTPOINT
//! qrypt-fs-mount --unmount MOUNTPOINT
//! ```
use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::Mode;
use sd_notify::NotifyState;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The name `qrypt-fs` looks for in `LISTEN_FDNAMES`.
const FD_NAME: &str = "fuse";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qrypt-fs-mount: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut allow_other = false;
    let mut unmount = false;
    let mut mountpoint = None;
    for arg in std::env::args_os().skip(1) {
        match arg.to_str() {
            Some("--allow-other") => allow_other = true,
            Some("--unmount") => unmount = true,
            Some(a) if a.starts_with('-') => return Err(format!("unknown option {a}")),
            _ if mountpoint.is_none() => mountpoint = Some(PathBuf::from(arg)),
            _ => return Err("usage: qrypt-fs-mount [--allow-other] MOUNTPOINT".into()),
        }
    }
    let mountpoint = mountpoint.ok_or("usage: qrypt-fs-mount [--allow-other] MOUNTPOINT")?;
    // systemd runs even `+` commands in the unit's mount namespace (for its credentials): a
    // mount made there would vanish with it.
    enter_host_mount_namespace()?;
    if unmount {
        return detach(&mountpoint);
    }
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return Err(
            "NOTIFY_SOCKET is not set: run by systemd (ExecStartPre=+, NotifyAccess=all, \
                    FileDescriptorStoreMax=1)"
                .into(),
        );
    }
    // A mount left by a daemon that died (a dead FUSE mount) is detached first.
    detach(&mountpoint)?;
    // The previous run's descriptor, if any: it served the mount just detached.
    sd_notify::notify(
        false,
        &[NotifyState::FdStoreRemove, NotifyState::FdName(FD_NAME)],
    )
    .map_err(|e| format!("fd store: {e}"))?;
    let fuse = open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| format!("/dev/fuse: {e}"))?;
    // As qrypt-fs mounts itself (src/fs/mount_options.rs): read-only, nodev, nosuid, noexec,
    // noatime, default_permissions; owned by the uid and gid that will serve it.
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},default_permissions",
        fuse.as_raw_fd(),
        nix::unistd::geteuid(),
        nix::unistd::getegid()
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    mount(
        Some("qrypt"),
        &mountpoint,
        Some("fuse.qrypt-fs"),
        MsFlags::MS_RDONLY
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_NOATIME,
        Some(data.as_str()),
    )
    .map_err(|e| format!("cannot mount on {}: {e}", mountpoint.display()))?;
    let stored = sd_notify::notify_with_fds(
        false,
        &[NotifyState::FdStore, NotifyState::FdName(FD_NAME)],
        &[fuse.as_fd()],
    )
    .map_err(|e| format!("fd store: {e}"));
    if let Err(e) = stored.and_then(|()| barrier(Duration::from_secs(10))) {
        let _ = umount2(&mountpoint, MntFlags::MNT_DETACH);
        return Err(e);
    }
    Ok(())
}

/// Lazily unmounts `mountpoint`; nothing mounted there (EINVAL) is fine.
fn detach(mountpoint: &std::path::Path) -> Result<(), String> {
    match umount2(mountpoint, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => Ok(()),
        Err(e) => Err(format!("cannot detach {}: {e}", mountpoint.display())),
    }
}

/// Moves this (single-threaded) process into PID 1's mount namespace.
fn enter_host_mount_namespace() -> Result<(), String> {
    let ns = std::fs::File::open("/proc/1/ns/mnt").map_err(|e| format!("/proc/1/ns/mnt: {e}"))?;
    // SAFETY: setns with a descriptor we hold open and a flag; no memory is passed.
    let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) };
    if r != 0 {
        return Err(format!(
            "cannot enter PID 1's mount namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Waits until systemd has handled the messages sent so far (`BARRIER=1`): the descriptor must
/// be in the store before this process exits and systemd starts `ExecStart=`.
fn barrier(within: Duration) -> Result<(), String> {
    let (read_end, write_end) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    sd_notify::notify_with_fds(
        false,
        &[NotifyState::Custom("BARRIER=1")],
        &[write_end.as_fd()],
    )
    .map_err(|e| format!("barrier: {e}"))?;
    drop(write_end);
    let mut fds = [nix::poll::PollFd::new(
        read_end.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = u16::try_from(within.as_millis()).unwrap_or(u16::MAX);
    match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err(format!(
            "systemd did not answer the barrier within {within:?}"
        )),
        Err(e) => Err(format!("barrier: {e}")),
    }
}
