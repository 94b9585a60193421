//! Checks before mounting that turn a confusing failure (or a silent risk) into a sentence
//! saying what to do: FUSE access for non-root users, a token file others can read, a log
//! file's directory others can write, a mount point whose contents the mount would hide.
use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The device FUSE filesystems talk to the kernel through.
pub const DEV_FUSE: &str = "/dev/fuse";

/// Can this process mount? Root mounts directly; anyone else needs read-write access to
/// `/dev/fuse` and the setuid `fusermount3` (or `fusermount`) on `PATH`, as fuser mounts
/// through it. Err: which is missing, and how to fix it.
pub fn fuse_access(root: bool, dev_fuse: &Path, path_var: Option<&OsStr>) -> Result<(), String> {
    if !dev_fuse.exists() {
        return Err(format!(
            "{} does not exist: load the FUSE module (modprobe fuse) or, in a container, \
             pass the device in (--device /dev/fuse)",
            dev_fuse.display()
        ));
    }
    if root {
        return Ok(());
    }
    if nix::unistd::access(
        dev_fuse,
        nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
    )
    .is_err()
    {
        let mode = std::fs::metadata(dev_fuse)
            .map(|m| format!(" (mode {:o})", m.permissions().mode() & 0o777))
            .unwrap_or_default();
        return Err(format!(
            "no read-write access to {}{mode} for this user: run qrypt-fs as root, or have an \
             administrator grant access (chmod 666 {} is the usual setting)",
            dev_fuse.display(),
            dev_fuse.display()
        ));
    }
    if find_in_path(path_var, &["fusermount3", "fusermount"]).is_none() {
        return Err(
            "fusermount3 is not installed (a mount by a user other than root goes through \
             it): install fuse3 (apt-get install fuse3), or run qrypt-fs as root"
                .into(),
        );
    }
    Ok(())
}

fn find_in_path(path_var: Option<&OsStr>, names: &[&str]) -> Option<PathBuf> {
    let dirs: Vec<PathBuf> = std::env::split_paths(path_var?).collect();
    names.iter().find_map(|name| {
        dirs.iter().map(|d| d.join(name)).find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
    })
}

/// A token file that group or others can read (ssh refuses such a key; we warn).
pub fn token_file_warning(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o044 != 0).then(|| {
        format!(
            "token file {} is readable by group or others (mode {mode:03o}): anyone who can \
             read it can spend your quota; chmod 600 {}",
            path.display(),
            path.display()
        )
    })
}

/// The `--log-file`'s directory, when someone else could replace the file in it (a new file
/// there would get our log, and the lines we wrote before would be theirs to keep): writable
/// by group or others without the sticky bit, or owned by another user than `uid` or root.
pub fn log_dir_warning(log_file: &Path, uid: u32) -> Option<String> {
    let dir = match log_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir).ok()?;
    let mode = meta.permissions().mode() & 0o7777;
    let (d, f) = (dir.display(), log_file.display());
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Some(format!(
            "directory {d} of log file {f} is writable by group or others without the sticky \
             bit (mode {mode:04o}): they can replace the log file; chmod go-w {d}, or log to a \
             directory only you can write to"
        ));
    }
    if meta.uid() != uid && meta.uid() != 0 {
        return Some(format!(
            "directory {d} of log file {f} belongs to another user (uid {}), who can replace \
             the log file: log to a directory of your own or root's",
            meta.uid()
        ));
    }
    None
}

/// A mount point with something in it: the mount hides it until unmounted.
pub fn mountpoint_warning(path: &Path) -> Option<String> {
    let mut entries = std::fs::read_dir(path).ok()?;
    entries.next().is_some().then(|| {
        format!(
            "mount point {} is not empty: its contents are hidden while qrypt-fs is mounted",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("token");
        std::fs::write(&p, "t").expect("write");
        for (mode, warned) in [(0o600, false), (0o400, false), (0o640, true), (0o604, true)] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let w = token_file_warning(&p);
            assert_eq!(w.is_some(), warned, "{mode:o}: {w:?}");
            if let Some(w) = w {
                assert!(w.ends_with(&format!("chmod 600 {}", p.display())), "{w}");
                assert!(w.contains(&format!("(mode {mode:03o})")), "{w}");
            }
        }
    }

    #[test]
    fn log_file_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("q.log");
        let me = nix::unistd::geteuid().as_raw();
        for (mode, warned) in [
            (0o700, false),
            (0o755, false),
            (0o1777, false),
            (0o775, true),
            (0o757, true),
            (0o777, true),
        ] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
            let w = log_dir_warning(&log, me);
            assert_eq!(w.is_some(), warned, "{mode:o}: {w:?}");
            if let Some(w) = w {
                assert!(w.contains(&format!("(mode {mode:04o})")), "{w}");
                assert!(
                    w.contains(&format!("chmod go-w {}", dir.path().display())),
                    "{w}"
                );
            }
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        // Owned by someone else (seen from another uid): warned, unless that is root.
        let owner = std::fs::metadata(dir.path()).expect("meta").uid();
        let w = log_dir_warning(&log, owner.wrapping_add(1));
        assert_eq!(w.is_some(), owner != 0, "{w:?}");
        if let Some(w) = w {
            assert!(
                w.contains(&format!("belongs to another user (uid {owner})")),
                "{w}"
            );
        }
        // A bare file name is in the working directory.
        assert_eq!(log_dir_warning(Path::new("q.log"), me).is_some(), {
            let m = std::fs::metadata(".").expect("cwd");
            (m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0) || (m.uid() != me && m.uid() != 0)
        });
    }

    #[test]
    fn non_empty_mount_point() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(mountpoint_warning(dir.path()), None);
        std::fs::write(dir.path().join("x"), "x").expect("write");
        assert_eq!(
            mountpoint_warning(dir.path()),
            Some(format!(
                "mount point {} is not empty: its contents are hidden while qrypt-fs is mounted",
                dir.path().display()
            ))
        );
    }

    #[test]
    fn fuse_access_names_what_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("fuse");
        let e = fuse_access(true, &missing, None).expect_err("no device");
        assert!(e.contains("modprobe fuse"), "{e}");
        // A stand-in device: a file this (root or not) process can read and write.
        let dev = dir.path().join("dev-fuse");
        std::fs::write(&dev, "").expect("write");
        assert_eq!(fuse_access(true, &dev, None), Ok(()));
        let empty_path = dir.path().join("bin");
        std::fs::create_dir(&empty_path).expect("mkdir");
        let e = fuse_access(false, &dev, Some(empty_path.as_os_str())).expect_err("no fusermount3");
        assert!(e.contains("apt-get install fuse3"), "{e}");
        let tool = empty_path.join("fusermount3");
        std::fs::write(&tool, "").expect("write");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(
            fuse_access(false, &dev, Some(empty_path.as_os_str())),
            Ok(())
        );
    }
}
