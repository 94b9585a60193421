//! The filesystem: which inodes exist, their attributes, how each file opens, and which
//! source serves a read (the pool for `/random`, a snapshot taken at open for the status
//! files). No kernel involved: [`crate::fs::fuse_adapter`] translates fuser's calls into these methods, and
//! the tests below drive them directly. Every decision about bytes lives in the pool.
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, INodeNo, OpenAccMode, OpenFlags, PollEvents,
};
use parking_lot::Mutex;

use crate::pool::{Pool, ReadError, ReadRequest, ReadSink, Tenant};

pub mod fuse_adapter;
pub mod mount_options;
mod unsupported;
use crate::read_guard::log_limit::LogLimiter;
use crate::read_guard::slow_refusal::RefusalPacer;
use crate::read_guard::{Admission, ReadGuard};
use crate::tenant::Tenants;

/// `st_size` of `/random`. Programs that read a regular file "to its size" (`openssl rand
/// -rand FILE`) read this much and stop; a size of 0 would make them read until EOF, i.e.
/// forever. Readers that ignore the size (`cat`, `dd`, `head`) stream as from `/dev/random`.
pub const RANDOM_FILE_SIZE: u64 = 4096;

/// Attributes change only at mount time; let the kernel cache them briefly.
pub const TTL: Duration = Duration::from_secs(1);

/// How `/random` is opened: never cached, never seekable, offset ignored, so every read takes
/// fresh bytes.
pub const RANDOM_OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_DIRECT_IO
    .union(FopenFlags::FOPEN_NONSEEKABLE)
    .union(FopenFlags::FOPEN_STREAM);

/// How a status file is opened: a snapshot served by offset, so never `FOPEN_STREAM`; direct
/// I/O because the reported size is 0.
pub const STATUS_OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_DIRECT_IO;

/// The status files and how each renders a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFormat {
    Text,
    Json,
    Prometheus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Root,
    Random,
    Status(StatusFormat),
}

const NODES: [(u64, &str, Node); 4] = [
    (2, "random", Node::Random),
    (3, "status", Node::Status(StatusFormat::Text)),
    (4, "status.json", Node::Status(StatusFormat::Json)),
    (5, "metrics", Node::Status(StatusFormat::Prometheus)),
];

fn node(ino: INodeNo) -> Option<Node> {
    if ino == INodeNo::ROOT {
        return Some(Node::Root);
    }
    NODES
        .iter()
        .find(|(i, _, _)| *i == ino.0)
        .map(|(_, _, n)| *n)
}

/// The system's page size: the preferred I/O size (`st_blksize`) of every file.
pub fn page_size() -> u32 {
    u32::try_from(crate::sys::page_size()).unwrap_or(4096)
}

pub type StatusRenderer = Box<dyn Fn(StatusFormat) -> String + Send + Sync>;

/// Where the answer to a read goes, exactly once and possibly later from another thread:
/// fuser's `ReplyData` in the adapter, a channel in tests.
pub trait DataReply: Send + 'static {
    fn data(self, data: &[u8]);
    fn error(self, err: Errno);
}

/// The errno a reader sees for each reason a read got no bytes.
pub fn errno_for(err: ReadError) -> Errno {
    match err {
        ReadError::WouldBlock => Errno::EAGAIN,
        ReadError::Interrupted => Errno::EINTR,
        ReadError::Unavailable | ReadError::TimedOut | ReadError::ShuttingDown => Errno::EIO,
        ReadError::TooManyWaiters => Errno::EBUSY,
    }
}

/// Hands the pool's answer to a [`DataReply`], counted for its tenant.
struct PoolReply<R> {
    reply: R,
    tenant: Tenant,
    /// What the tenant was admitted for.
    asked: usize,
    tenants: Arc<Tenants>,
}

impl<R: DataReply> ReadSink for PoolReply<R> {
    fn deliver(self, data: &[u8]) {
        self.tenants.settle(self.tenant, self.asked, data.len());
        self.reply.data(data);
    }

    fn fail(self, err: ReadError) {
        self.tenants.settle(self.tenant, self.asked, 0);
        if err == ReadError::TooManyWaiters {
            // Any user can repeat this at will: rate-limited.
            static REFUSED: LogLimiter = LogLimiter::new(3, Duration::from_secs(60));
            crate::warn_limited!(
                REFUSED,
                "{} has as many reads of random waiting as --max-waiters-per-user allows: \
                 one more answered EBUSY",
                self.tenants.name(self.tenant)
            );
        }
        self.reply.error(errno_for(err));
    }
}

/// One directory entry, as `readdir` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: INodeNo,
    /// The offset of the entry after this one.
    pub next_offset: u64,
    pub kind: FileType,
    pub name: &'static str,
}

/// A read as the kernel asks for it.
#[derive(Debug, Clone, Copy)]
pub struct Read {
    pub ino: INodeNo,
    pub fh: FileHandle,
    pub offset: u64,
    pub size: u32,
    pub flags: OpenFlags,
    /// The reading thread, as the kernel names it (0: outside the daemon's pid namespace).
    pub pid: u32,
    /// The reading process's uid (fsuid), as the kernel names it.
    pub uid: u32,
    /// `FUSE_READ_LOCKOWNER`'s owner: set for direct reads, `None` for page-cache fills (see
    /// `read_guard::origin`).
    pub lock_owner: Option<u64>,
}

pub struct EntropyFs {
    pool: Arc<Pool>,
    render_status: StatusRenderer,
    read_timeout: Option<Duration>,
    snapshots: Mutex<HashMap<u64, Arc<[u8]>>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
    guard: ReadGuard,
    tenants: Arc<Tenants>,
}

impl EntropyFs {
    pub fn new(
        pool: Arc<Pool>,
        render_status: StatusRenderer,
        read_timeout: Option<Duration>,
    ) -> Self {
        EntropyFs {
            pool,
            render_status,
            read_timeout,
            snapshots: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mounted_at: SystemTime::now(),
            guard: ReadGuard::new(),
            tenants: Arc::new(Tenants::default()),
        }
    }

    /// Tells readers apart (and caps them) as `tenants` says; by uid without caps otherwise.
    pub fn with_tenants(mut self, tenants: Arc<Tenants>) -> Self {
        self.tenants = tenants;
        self
    }

    /// The paced refusals of page-cache fills; the session shuts them down with the pool.
    pub fn refusals(&self) -> Arc<RefusalPacer> {
        self.guard.refusals()
    }

    fn attr(&self, ino: INodeNo, node: Node) -> FileAttr {
        let (kind, perm, nlink, size) = match node {
            Node::Root => (FileType::Directory, 0o555, 2, 0),
            Node::Random => (FileType::RegularFile, 0o444, 1, RANDOM_FILE_SIZE),
            Node::Status(_) => (FileType::RegularFile, 0o444, 1, 0),
        };
        FileAttr {
            ino,
            size,
            blocks: 0,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: page_size(),
            flags: 0,
        }
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    pub fn lookup(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        if parent != INodeNo::ROOT {
            return Err(Errno::ENOENT);
        }
        NODES
            .iter()
            .find(|(_, n, _)| OsStr::new(n) == name)
            .map(|(ino, _, node)| self.attr(INodeNo(*ino), *node))
            .ok_or(Errno::ENOENT)
    }

    pub fn getattr(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        node(ino).map(|n| self.attr(ino, n)).ok_or(Errno::ENOENT)
    }

    /// The root's entries from `offset` on.
    pub fn readdir(
        &self,
        ino: INodeNo,
        offset: u64,
    ) -> Result<impl Iterator<Item = DirEntry>, Errno> {
        if ino != INodeNo::ROOT {
            return Err(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT.0, FileType::Directory, "."),
            (INodeNo::ROOT.0, FileType::Directory, ".."),
        ]
        .into_iter()
        .chain(
            NODES
                .iter()
                .map(|(i, n, _)| (*i, FileType::RegularFile, *n)),
        );
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        Ok(entries
            .enumerate()
            .skip(skip)
            .map(|(i, (ino, kind, name))| DirEntry {
                ino: INodeNo(ino),
                next_offset: i as u64 + 1,
                kind,
                name,
            }))
    }

    pub fn open(&self, ino: INodeNo, flags: OpenFlags) -> Result<(FileHandle, FopenFlags), Errno> {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return Err(Errno::EROFS);
        }
        match node(ino) {
            Some(Node::Random) => Ok((FileHandle(self.new_fh()), RANDOM_OPEN_FLAGS)),
            // A snapshot taken now and served by offset, so `cat` sees one consistent picture
            // and terminates.
            Some(Node::Status(format)) => {
                let fh = self.new_fh();
                let text: Arc<[u8]> = (self.render_status)(format).into_bytes().into();
                self.snapshots.lock().insert(fh, text);
                Ok((FileHandle(fh), STATUS_OPEN_FLAGS))
            }
            Some(Node::Root) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    /// Answers `read` through `reply`: at once for a status file, from the pool (now or once
    /// bytes arrive) for `/random`.
    pub fn read<R: DataReply>(&self, read: Read, reply: R) {
        match node(read.ino) {
            // No pool byte may enter a page cache, ours or one a kernel thread fills.
            Some(Node::Random) => {
                if let Admission::Refuse(origin) = self.guard.admit(read.lock_owner, read.pid) {
                    self.guard
                        .refuse(read.pid, origin, Box::new(move || reply.error(Errno::EIO)));
                    return;
                }
                let tenant = self.tenants.resolve(read.pid, read.uid);
                // A tenant at its --tenant-budget cap: EIO at once, as at the global cap.
                let Some(len) = self.tenants.admit(tenant, read.size as usize) else {
                    reply.error(Errno::EIO);
                    return;
                };
                self.pool.read(
                    ReadRequest {
                        len,
                        nonblocking: read.flags.0 & libc::O_NONBLOCK != 0,
                        pid: read.pid,
                        tenant,
                        deadline: self.read_timeout.map(|d| Instant::now() + d),
                    },
                    PoolReply {
                        reply,
                        tenant,
                        asked: len,
                        tenants: self.tenants.clone(),
                    },
                );
            }
            Some(Node::Status(_)) => {
                let snap = self.snapshots.lock().get(&read.fh.0).cloned();
                match snap {
                    Some(text) => {
                        let start = usize::try_from(read.offset)
                            .unwrap_or(usize::MAX)
                            .min(text.len());
                        let end = start.saturating_add(read.size as usize).min(text.len());
                        reply.data(&text[start..end]);
                    }
                    None => reply.error(Errno::EBADF),
                }
            }
            Some(Node::Root) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    pub fn release(&self, fh: FileHandle) {
        self.snapshots.lock().remove(&fh.0);
        self.pool.forget_poller(fh.0);
    }

    /// What `poll` reports; `waker` (if the kernel wants a notification) is called once when
    /// `/random` becomes ready.
    pub fn poll(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        waker: Option<Box<dyn FnOnce() + Send>>,
    ) -> Result<PollEvents, Errno> {
        match node(ino) {
            Some(Node::Random) => {
                let r = self.pool.poll(fh.0, waker);
                let mut ev = PollEvents::empty();
                if r.readable || r.error {
                    // On error a read fails at once, so it is "ready" too.
                    ev |= PollEvents::POLLIN | PollEvents::POLLRDNORM;
                }
                if r.error {
                    ev |= PollEvents::POLLERR;
                }
                Ok(ev)
            }
            Some(_) => Ok(PollEvents::POLLIN | PollEvents::POLLRDNORM),
            None => Err(Errno::ENOENT),
        }
    }
}

#[cfg(test)]
mod tests;
