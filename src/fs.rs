//! The FUSE adapter: maps inodes and file handles onto the pool and status snapshots.
//! Thin on purpose: every decision about bytes lives in the pool.
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, PollEvents, PollFlags, PollNotifier, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyPoll, Request,
};
use parking_lot::Mutex;

use crate::pool::{Pool, ReadError, ReadRequest, ReadSink};
use crate::read_origin::{self, ReadOrigin};

/// `st_size` of `/random`. Programs that read a regular file "to its size" (`openssl rand
/// -rand FILE`) read this much and stop; a size of 0 would make them read until EOF, i.e.
/// forever. Readers that ignore the size (`cat`, `dd`, `head`) stream as from `/dev/random`.
pub const RANDOM_FILE_SIZE: u64 = 4096;

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

/// Attributes change only at mount time; let the kernel cache them briefly.
const TTL: Duration = Duration::from_secs(1);

pub type StatusRenderer = Box<dyn Fn(StatusFormat) -> String + Send + Sync>;

pub struct EntropyFs {
    pool: Arc<Pool>,
    render_status: StatusRenderer,
    read_timeout: Option<Duration>,
    snapshots: Mutex<HashMap<u64, Arc<[u8]>>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
}

/// Answers one FUSE read from the pool, now or later, from whichever thread has the bytes.
struct FuseReply(ReplyData);

impl ReadSink for FuseReply {
    fn deliver(self, data: &[u8]) {
        self.0.data(data);
    }

    fn fail(self, err: ReadError) {
        self.0.error(match err {
            ReadError::WouldBlock => Errno::EAGAIN,
            ReadError::Interrupted => Errno::EINTR,
            ReadError::Unavailable | ReadError::TimedOut | ReadError::ShuttingDown => Errno::EIO,
        });
    }
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
        }
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
            blksize: 4096,
            flags: 0,
        }
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }
}

/// Serving a reader beats refilling the buffer for a core: each FUSE thread raises its own
/// priority by 5 nice levels (relative, so an administrator's `Nice=` still counts) the first
/// time it serves a request. Needs CAP_SYS_NICE or a high enough RLIMIT_NICE (the systemd
/// unit sets `LimitNICE=`); without them nothing changes. The refill runtime is untouched.
fn favour_this_thread() {
    thread_local!(static RAISED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    RAISED.with(|raised| {
        if !raised.replace(true) {
            // SAFETY: reads and changes the calling thread's nice value only (per-thread on
            // Linux); errno is cleared first because -1 is a valid getpriority result.
            unsafe {
                let tid = libc::gettid() as libc::id_t;
                *libc::__errno_location() = 0;
                let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
                if nice != -1 || *libc::__errno_location() == 0 {
                    libc::setpriority(libc::PRIO_PROCESS, tid, (nice - 5).max(-20));
                }
            }
        }
    });
}

impl Filesystem for EntropyFs {
    // Everything else: one quiet, fixed answer each (no log line a reader could repeat).
    crate::quiet_unsupported_ops!();

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        favour_this_thread();
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        match NODES.iter().find(|(_, n, _)| OsStr::new(n) == name) {
            Some((ino, _, node)) => {
                reply.entry(&TTL, &self.attr(INodeNo(*ino), *node), Generation(0));
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match node(ino) {
            Some(n) => reply.attr(&TTL, &self.attr(ino, n)),
            None => reply.error(Errno::ENOENT),
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
            (INodeNo::ROOT.0, FileType::Directory, "."),
            (INodeNo::ROOT.0, FileType::Directory, ".."),
        ]
        .into_iter()
        .chain(
            NODES
                .iter()
                .map(|(i, n, _)| (*i, FileType::RegularFile, *n)),
        );
        for (i, (ino, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        favour_this_thread();
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match node(ino) {
            // Never cached, never seekable, offset ignored: every read takes fresh bytes.
            Some(Node::Random) => reply.opened(
                FileHandle(self.new_fh()),
                FopenFlags::FOPEN_DIRECT_IO
                    | FopenFlags::FOPEN_NONSEEKABLE
                    | FopenFlags::FOPEN_STREAM,
            ),
            // A snapshot taken now and served by offset, so `cat` sees one consistent picture
            // and terminates. Direct I/O because the reported size is 0.
            Some(Node::Status(format)) => {
                let fh = self.new_fh();
                let text: Arc<[u8]> = (self.render_status)(format).into_bytes().into();
                self.snapshots.lock().insert(fh, text);
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
            }
            Some(Node::Root) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        favour_this_thread();
        match node(ino) {
            // No pool byte may enter the page cache (see read_origin).
            Some(Node::Random)
                if ReadOrigin::of(lock_owner.map(|o| o.0)) == ReadOrigin::PageCache =>
            {
                read_origin::note_refused(req.pid());
                reply.error(Errno::EIO);
            }
            Some(Node::Random) => self.pool.read(
                ReadRequest {
                    len: size as usize,
                    nonblocking: flags.0 & libc::O_NONBLOCK != 0,
                    pid: req.pid(),
                    deadline: self.read_timeout.map(|d| Instant::now() + d),
                },
                FuseReply(reply),
            ),
            Some(Node::Status(_)) => {
                let snap = self.snapshots.lock().get(&fh.0).cloned();
                match snap {
                    Some(text) => {
                        let start = (offset as usize).min(text.len());
                        let end = start.saturating_add(size as usize).min(text.len());
                        reply.data(&text[start..end]);
                    }
                    None => reply.error(Errno::EBADF),
                }
            }
            Some(Node::Root) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.snapshots.lock().remove(&fh.0);
        self.pool.forget_poller(fh.0);
        reply.ok();
    }

    fn poll(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        ph: PollNotifier,
        _events: PollEvents,
        flags: PollFlags,
        reply: ReplyPoll,
    ) {
        match node(ino) {
            Some(Node::Random) => {
                let waker = flags.contains(PollFlags::FUSE_POLL_SCHEDULE_NOTIFY).then(
                    || -> Box<dyn FnOnce() + Send> {
                        Box::new(move || {
                            let _ = ph.notify();
                        })
                    },
                );
                let r = self.pool.poll(fh.0, waker);
                let mut ev = PollEvents::empty();
                if r.readable || r.error {
                    // On error a read fails at once, so it is "ready" too.
                    ev |= PollEvents::POLLIN | PollEvents::POLLRDNORM;
                }
                if r.error {
                    ev |= PollEvents::POLLERR;
                }
                reply.poll(ev);
            }
            Some(_) => reply.poll(PollEvents::POLLIN | PollEvents::POLLRDNORM),
            None => reply.error(Errno::ENOENT),
        }
    }
}
