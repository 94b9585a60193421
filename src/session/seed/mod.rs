//! `qrypt-fs-seed`: a short privileged job, separate from the FUSE daemon, that reads a few
//! bytes from a qrypt-fs mount into the kernel's RNG and makes it reseed at once.
//!
//! Feeding on a timer, not on the kernel's demand: since Linux 5.18 the CRNG is seeded within
//! seconds of boot and then never asks again, so a feeder that waits for it to ask (rngd)
//! rarely runs.
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use zeroize::Zeroizing;

use crate::session::cli::args::SeedCli;

mod ioctl;

/// The filesystem type a qrypt-fs mount shows in /proc/self/mountinfo.
const FSTYPE: &str = "fuse.qrypt-fs";

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("{0}")]
    NotQryptMount(String),
    #[error("reading {path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("/dev/random refused {what}: {errno}{hint}")]
    Kernel {
        what: &'static str,
        errno: Errno,
        hint: &'static str,
    },
}

impl SeedError {
    /// The exit status: distinct per cause, so a unit's journal and a script can tell them apart.
    pub fn exit_code(&self) -> u8 {
        match self {
            SeedError::NotQryptMount(_) => 3,
            SeedError::Read { .. } => 4,
            SeedError::Kernel { .. } => 5,
        }
    }
}

/// Parses `argv` and runs the job; the process's exit status.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    use clap::Parser;
    let cli = match SeedCli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match seed(&cli) {
        Ok(n) => {
            println!(
                "qrypt-fs-seed: added {n} bytes ({} bits credited) from {} to the kernel's \
                 entropy pool and reseeded its CRNG",
                n * 8,
                cli.mountpoint.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qrypt-fs-seed: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Reads `cli.bytes` from the mount, adds them to the kernel's pool with full credit, forces
/// a reseed; every copy of the bytes is wiped on the way out. The bytes added, on success.
pub fn seed(cli: &SeedCli) -> Result<usize, SeedError> {
    let n = usize::try_from(cli.bytes)
        .ok()
        .filter(|n| (1..=ioctl::MAX_BYTES).contains(n))
        .ok_or_else(|| SeedError::Read {
            path: cli.mountpoint.clone(),
            why: format!("--bytes must be 1..={}", ioctl::MAX_BYTES),
        })?;
    check_mount(&cli.mountpoint)?;
    let bytes = read_random(&cli.mountpoint.join("random"), n, cli.timeout)?;
    let random = File::open("/dev/random").map_err(|e| SeedError::Kernel {
        what: "to open",
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        hint: "",
    })?;
    let refused = |what, errno| SeedError::Kernel {
        what,
        errno,
        hint: if errno == Errno::EPERM {
            " (needs CAP_SYS_ADMIN)"
        } else {
            ""
        },
    };
    ioctl::add_entropy(random.as_fd(), &bytes).map_err(|e| refused("RNDADDENTROPY", e))?;
    ioctl::reseed_crng(random.as_fd()).map_err(|e| refused("RNDRESEEDCRNG", e))?;
    Ok(n)
}

/// Fails unless `path` is the mount point of a qrypt-fs mount (the topmost mount there).
fn check_mount(path: &Path) -> Result<(), SeedError> {
    let not = |why: String| SeedError::NotQryptMount(why);
    let real = path
        .canonicalize()
        .map_err(|e| not(format!("{}: {e}: no qrypt-fs mount there", path.display())))?;
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| not(format!("/proc/self/mountinfo: {e}")))?;
    match fstype_at(&table, &real) {
        Some(t) if t == FSTYPE => Ok(()),
        Some(t) => Err(not(format!(
            "{} is a {t} mount, not a qrypt-fs mount ({FSTYPE})",
            path.display()
        ))),
        None => Err(not(format!(
            "{} is not a mount point: is qrypt-fs mounted there?",
            path.display()
        ))),
    }
}

/// The filesystem type of the topmost mount at `mount_point` in a mountinfo table.
fn fstype_at(mountinfo: &str, mount_point: &Path) -> Option<String> {
    let want = mount_point.to_str()?;
    mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = unescape(left.split(' ').nth(4)?);
        let fstype = right.split(' ').next()?;
        (point == want).then(|| fstype.to_owned())
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` (octal).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Reads exactly `n` bytes from `path` within `timeout` (non-blocking reads and poll, so a
/// mount with nothing to serve cannot hold the boot up).
fn read_random(path: &Path, n: usize, timeout: Duration) -> Result<Zeroizing<Vec<u8>>, SeedError> {
    let err = |why: String| SeedError::Read {
        path: path.to_owned(),
        why,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| err(e.to_string()))?;
    let deadline = Instant::now() + timeout;
    let mut buf = Zeroizing::new(vec![0u8; n]);
    let mut got = 0;
    while got < n {
        match f.read(&mut buf[got..]) {
            Ok(0) => return Err(err("end of file".into())),
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(err(format!("nothing to read within {timeout:?}")));
                }
                let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(err(format!("poll: {e}"))),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(e.to_string())),
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /mnt/qrypt ro,nosuid,nodev,relatime shared:20 - fuse.qrypt-fs qrypt-fs ro,user_id=0
41 22 0:36 / /mnt/with\\040space rw shared:21 - tmpfs tmpfs rw
42 40 0:37 / /mnt/qrypt rw shared:22 - tmpfs tmpfs rw
";

    #[test]
    fn finds_the_topmost_mount_and_its_type() {
        assert_eq!(
            fstype_at(MOUNTINFO, Path::new("/mnt/with space")).as_deref(),
            Some("tmpfs")
        );
        // Something mounted over the qrypt-fs mount hides it: that one counts.
        assert_eq!(
            fstype_at(MOUNTINFO, Path::new("/mnt/qrypt")).as_deref(),
            Some("tmpfs")
        );
        let only = MOUNTINFO.lines().take(2).collect::<Vec<_>>().join("\n");
        assert_eq!(
            fstype_at(&only, Path::new("/mnt/qrypt")).as_deref(),
            Some(FSTYPE)
        );
        assert_eq!(fstype_at(MOUNTINFO, Path::new("/mnt")), None);
    }

    #[test]
    fn refuses_what_is_not_a_qrypt_mount() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            check_mount(dir.path()),
            Err(SeedError::NotQryptMount(_))
        ));
        let e = check_mount(Path::new("/")).expect_err("/ is no qrypt-fs mount");
        assert_eq!(e.exit_code(), 3);
        assert!(e.to_string().contains("not a qrypt-fs mount"), "{e}");
    }
}
