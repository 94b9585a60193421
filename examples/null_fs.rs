//! A null FUSE filesystem: the baseline of `scripts/bench.sh`.
//!
//! `cargo run --release --example null_fs -- MOUNTPOINT` mounts a read-only directory holding one
//! regular file, `random`, opened exactly as qrypt-fs opens its `/random` (`FOPEN_DIRECT_IO |
//! FOPEN_NONSEEKABLE | FOPEN_STREAM`) and served by the same fuser setup (the same thread
//! count, one cloned `/dev/fuse` fd each) with the same mount options: it calls qrypt-fs's own
//! `fuse_config` (src/fs/mount_options.rs). Every read is answered at once from a static
//! buffer, by threads raised in priority as qrypt-fs raises its own, and nothing else runs in
//! the process, so reading it measures what the kernel, `/dev/fuse` and fuser cost: the
//! ceiling that any FUSE file can reach on this machine.
//!
//! It stays in the foreground until SIGINT or SIGTERM, then unmounts and exits 0.
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, OpenAccMode,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};
use qrypt_fs::{FuseOptions, favour_this_thread, fuse_config};
use qrypt_fs::{RANDOM_FILE_SIZE, RANDOM_OPEN_FLAGS, page_size};
use signal_hook::consts::{SIGINT, SIGTERM};

/// The largest read FUSE hands a filesystem (256 pages).
const MAX_READ: usize = 1 << 20;
/// What every read returns (a prefix of it).
static DATA: [u8; MAX_READ] = [0x5a; MAX_READ];

const RANDOM: INodeNo = INodeNo(2);
const TTL: Duration = Duration::from_secs(1);

struct NullFs {
    uid: u32,
    gid: u32,
}

impl NullFs {
    fn attr(&self, ino: INodeNo) -> FileAttr {
        let dir = ino == INodeNo::ROOT;
        FileAttr {
            ino,
            // Same size as qrypt-fs's /random, so tools treat both files alike.
            size: if dir { 0 } else { RANDOM_FILE_SIZE },
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if dir { 0o555 } else { 0o444 },
            nlink: if dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: page_size(),
            flags: 0,
        }
    }
}

impl Filesystem for NullFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == "random" {
            reply.entry(&TTL, &self.attr(RANDOM), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT || ino == RANDOM {
            reply.attr(&TTL, &self.attr(ino));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (RANDOM, FileType::RegularFile, "random"),
        ];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        if ino == RANDOM {
            reply.opened(FileHandle(0), RANDOM_OPEN_FLAGS);
        } else if ino == INodeNo::ROOT {
            reply.error(Errno::EISDIR);
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        favour_this_thread();
        if ino == RANDOM {
            reply.data(&DATA[..(size as usize).min(MAX_READ)]);
        } else {
            reply.error(Errno::EISDIR);
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(mountpoint), None) = (args.next(), args.next()) else {
        eprintln!("usage: null_fs MOUNTPOINT");
        return ExitCode::from(2);
    };
    match run(PathBuf::from(mountpoint)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("null_fs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(mountpoint: PathBuf) -> anyhow::Result<()> {
    // Registered before mounting, so a signal right after the mount appears is not missed.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("signals")?;
    let fs = NullFs {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
    };
    // The same session setup as qrypt-fs.
    let cfg = fuse_config(&FuseOptions {
        fsname: "null".into(),
        subtype: "null_fs".into(),
        allow_other: false,
        allow_root: false,
        default_permissions: true,
        clone_fd: true,
    });
    let session = fuser::Session::new(fs, &mountpoint, &cfg)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))?
        .spawn()
        .context("cannot start the FUSE session")?;

    // Nothing else runs here, so the baseline does no work but answering reads.
    let _ = signals.forever().next();
    session.umount_and_join().context("unmount")
}
