//! Quiet answers to every FUSE operation qrypt-fs does not support.
//!
//! fuser's default method bodies log a multi-line `[Not Implemented]` warning on *every* call, so
//! any local reader could flood the log (10,000 `ioctl`s gave 30,000 lines). Each operation here
//! gets one fixed, silent answer with the errno a read-only device-like file should give:
//!
//! - `ENOSYS` where the kernel remembers it for the whole mount and answers later calls itself
//!   (flush, fsync, fsyncdir, xattrs → `EOPNOTSUPP`, access, lseek's SEEK_DATA/SEEK_HOLE,
//!   copy_file_range and fallocate fall back or fail in the kernel): one request per mount, not
//!   one per call, so a hostile reader cannot even make the daemon work.
//! - `ENOTTY` for ioctl (no ioctl is supported; the kernel forwards every one).
//! - `EROFS` for anything that would change the tree (the mount is `ro`, so the VFS normally
//!   answers first; this is the same answer if it ever does not).
//! - `EINVAL` for readlink (nothing here is a symlink), `EBADF` for write (nothing is ever open
//!   for writing), `ENOLCK` for POSIX locks (never negotiated; the kernel keeps them locally).
use fuser::Errno;

/// The kernel caches "not implemented" for the mount and answers callers itself.
pub const KERNEL_REMEMBERS: Errno = Errno::ENOSYS;
pub const IOCTL: Errno = Errno::ENOTTY;
pub const CHANGES_TREE: Errno = Errno::EROFS;
pub const READLINK: Errno = Errno::EINVAL;
pub const WRITE: Errno = Errno::EBADF;
pub const LOCKS: Errno = Errno::ENOLCK;

/// Expands, inside `impl fuser::Filesystem for ...`, to quiet versions of every method whose
/// fuser default logs. One line in the adapter: `crate::quiet_unsupported_ops!();`.
#[macro_export]
macro_rules! quiet_unsupported_ops {
    () => {
        fn setattr(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _mode: Option<u32>,
            _uid: Option<u32>,
            _gid: Option<u32>,
            _size: Option<u64>,
            _atime: Option<fuser::TimeOrNow>,
            _mtime: Option<fuser::TimeOrNow>,
            _ctime: Option<std::time::SystemTime>,
            _fh: Option<fuser::FileHandle>,
            _crtime: Option<std::time::SystemTime>,
            _chgtime: Option<std::time::SystemTime>,
            _bkuptime: Option<std::time::SystemTime>,
            _flags: Option<fuser::BsdFileFlags>,
            reply: fuser::ReplyAttr,
        ) {
            reply.error($crate::fs::unsupported::CHANGES_TREE);
        }

        fn readlink(&self, _req: &fuser::Request, _ino: fuser::INodeNo, reply: fuser::ReplyData) {
            reply.error($crate::fs::unsupported::READLINK);
        }

        fn mknod(
            &self,
            _req: &fuser::Request,
            _parent: fuser::INodeNo,
            _name: &std::ffi::OsStr,
            _mode: u32,
            _umask: u32,
            _rdev: u32,
            reply: fuser::ReplyEntry,
        ) {
            reply.error($crate::fs::unsupported::CHANGES_TREE);
        }

        fn mkdir(
            &self,
            _req: &fuser::Request,
            _parent: fuser::INodeNo,
            _name: &std::ffi::OsStr,
            _mode: u32,
            _umask: u32,
            reply: fuser::ReplyEntry,
        ) {
            reply.error($crate::fs::unsupported::CHANGES_TREE);
        }

        fn unlink(
            &self,
            _req: &fuser::Request,
            _parent: fuser::INodeNo,
            _name: &std::ffi::OsStr,
            reply: fuser::ReplyEmpty,
        ) {
            reply.error($crate::fs::unsupported::CHANGES_TREE);
        }

        fn rmdir(
            &self,
            _req: &fuser::Request,
            _parent: fuser::INodeNo,
            _name: &std::ffi::OsStr,
            reply: fuser::ReplyEmpty,
        ) {
            reply.error($crate::fs::unsupported::CHANGES_TREE);
        }

        fn symlink(
            &self,
            _req: &fuser::Request,
            _parent: fuser::INodeNo,
            _link_name: &std::ffi::OsStr,
            _target: &std::path::Path,
            reply: fuser::ReplyEntry,
        ) {
            reply.error($crate::fs::unsupported::CHANGES_TREE);
        }

        fn rename(
            &self,
            _req: &fuser::Request,
            _parent: fuser::INodeNo,
            _name: &std::ffi::OsStr,
            _newparent: fuser::INodeNo,
            _newname: &std::ffi::OsStr,
            _flags: fuser::RenameFlags,
            reply: fuser::ReplyEmpty,
        ) {
            reply.error($crate::fs::unsupported::CHANGES_TREE);
        }

        fn link(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _newparent: fuser::INodeNo,
            _newname: &std::ffi::OsStr,
            reply: fuser::ReplyEntry,
        ) {
            reply.error($crate::fs::unsupported::CHANGES_TREE);
        }

        fn create(
            &self,
            _req: &fuser::Request,
            _parent: fuser::INodeNo,
            _name: &std::ffi::OsStr,
            _mode: u32,
            _umask: u32,
            _flags: i32,
            reply: fuser::ReplyCreate,
        ) {
            reply.error($crate::fs::unsupported::CHANGES_TREE);
        }

        fn write(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _offset: u64,
            _data: &[u8],
            _write_flags: fuser::WriteFlags,
            _flags: fuser::OpenFlags,
            _lock_owner: Option<fuser::LockOwner>,
            reply: fuser::ReplyWrite,
        ) {
            reply.error($crate::fs::unsupported::WRITE);
        }

        fn flush(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _lock_owner: fuser::LockOwner,
            reply: fuser::ReplyEmpty,
        ) {
            reply.error($crate::fs::unsupported::KERNEL_REMEMBERS);
        }

        fn fsync(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _datasync: bool,
            reply: fuser::ReplyEmpty,
        ) {
            reply.error($crate::fs::unsupported::KERNEL_REMEMBERS);
        }

        fn readdirplus(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _offset: u64,
            reply: fuser::ReplyDirectoryPlus,
        ) {
            reply.error($crate::fs::unsupported::KERNEL_REMEMBERS);
        }

        fn fsyncdir(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _datasync: bool,
            reply: fuser::ReplyEmpty,
        ) {
            reply.error($crate::fs::unsupported::KERNEL_REMEMBERS);
        }

        fn setxattr(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _name: &std::ffi::OsStr,
            _value: &[u8],
            _flags: i32,
            _position: u32,
            reply: fuser::ReplyEmpty,
        ) {
            reply.error($crate::fs::unsupported::KERNEL_REMEMBERS);
        }

        fn getxattr(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _name: &std::ffi::OsStr,
            _size: u32,
            reply: fuser::ReplyXattr,
        ) {
            reply.error($crate::fs::unsupported::KERNEL_REMEMBERS);
        }

        fn listxattr(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _size: u32,
            reply: fuser::ReplyXattr,
        ) {
            reply.error($crate::fs::unsupported::KERNEL_REMEMBERS);
        }

        fn removexattr(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _name: &std::ffi::OsStr,
            reply: fuser::ReplyEmpty,
        ) {
            reply.error($crate::fs::unsupported::KERNEL_REMEMBERS);
        }

        fn access(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _mask: fuser::AccessFlags,
            reply: fuser::ReplyEmpty,
        ) {
            reply.error($crate::fs::unsupported::KERNEL_REMEMBERS);
        }

        fn getlk(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _lock_owner: fuser::LockOwner,
            _start: u64,
            _end: u64,
            _typ: i32,
            _pid: u32,
            reply: fuser::ReplyLock,
        ) {
            reply.error($crate::fs::unsupported::LOCKS);
        }

        fn setlk(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _lock_owner: fuser::LockOwner,
            _start: u64,
            _end: u64,
            _typ: i32,
            _pid: u32,
            _sleep: bool,
            reply: fuser::ReplyEmpty,
        ) {
            reply.error($crate::fs::unsupported::LOCKS);
        }

        fn bmap(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _blocksize: u32,
            _idx: u64,
            reply: fuser::ReplyBmap,
        ) {
            reply.error($crate::fs::unsupported::KERNEL_REMEMBERS);
        }

        fn ioctl(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _flags: fuser::IoctlFlags,
            _cmd: u32,
            _in_data: &[u8],
            _out_size: u32,
            reply: fuser::ReplyIoctl,
        ) {
            reply.error($crate::fs::unsupported::IOCTL);
        }

        fn fallocate(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _offset: u64,
            _length: u64,
            _mode: i32,
            reply: fuser::ReplyEmpty,
        ) {
            reply.error($crate::fs::unsupported::KERNEL_REMEMBERS);
        }

        fn lseek(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _offset: i64,
            _whence: i32,
            reply: fuser::ReplyLseek,
        ) {
            reply.error($crate::fs::unsupported::KERNEL_REMEMBERS);
        }

        fn copy_file_range(
            &self,
            _req: &fuser::Request,
            _ino_in: fuser::INodeNo,
            _fh_in: fuser::FileHandle,
            _offset_in: u64,
            _ino_out: fuser::INodeNo,
            _fh_out: fuser::FileHandle,
            _offset_out: u64,
            _len: u64,
            _flags: fuser::CopyFileRangeFlags,
            reply: fuser::ReplyWrite,
        ) {
            reply.error($crate::fs::unsupported::KERNEL_REMEMBERS);
        }
    };
}
