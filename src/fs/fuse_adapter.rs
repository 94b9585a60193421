//! The fuser adapter: translates each `Filesystem` call into a call on [`EntropyFs`] and its
//! result into the reply. Nothing is decided here; [`crate::fs`] holds the logic and is tested
//! without a kernel. [`super::mount_options`] holds the mount options, shared with the benchmark's null fs.
use std::ffi::OsStr;

use fuser::{
    Errno, FileHandle, Filesystem, Generation, INodeNo, LockOwner, OpenFlags, PollEvents,
    PollFlags, PollNotifier, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyPoll, Request,
};

use crate::fs::{DataReply, EntropyFs, Read, TTL};

/// [`EntropyFs`] as fuser sees it.
pub struct FuseAdapter(pub EntropyFs);

impl DataReply for ReplyData {
    fn data(self, data: &[u8]) {
        ReplyData::data(self, data);
    }

    fn error(self, err: Errno) {
        ReplyData::error(self, err);
    }
}

/// Serving a reader beats refilling the buffer for a core: each FUSE thread raises its own
/// priority by 5 nice levels (relative, so an administrator's `Nice=` still counts) the first
/// time it serves a request. Needs CAP_SYS_NICE or a high enough RLIMIT_NICE (the systemd
/// unit sets `LimitNICE=`); without them nothing changes. The refill runtime is untouched.
/// Public for the benchmark's null filesystem, which must be as fast as a FUSE file can be.
pub fn favour_this_thread() {
    thread_local!(static RAISED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    RAISED.with(|raised| {
        if !raised.replace(true) {
            // nix has no getpriority/setpriority wrapper.
            let tid = nix::unistd::gettid().as_raw() as libc::id_t;
            nix::errno::Errno::clear();
            // SAFETY: getpriority reads the calling thread's nice value (per-thread on Linux)
            // and touches no memory of ours.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
            // -1 is a valid nice value: errno (cleared above) tells it from a failure.
            if nice != -1 || nix::errno::Errno::last_raw() == 0 {
                // SAFETY: changes the calling thread's own nice value; no memory involved.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, (nice - 5).max(-20)) };
            }
        }
    });
}

impl Filesystem for FuseAdapter {
    // Everything else: one quiet, fixed answer each (no log line a reader could repeat).
    crate::quiet_unsupported_ops!();

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        favour_this_thread();
        match self.0.lookup(parent, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.getattr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
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
        match self.0.readdir(ino, offset) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(e.ino, e.next_offset, e.kind, e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        favour_this_thread();
        match self.0.open(ino, flags) {
            Ok((fh, open_flags)) => reply.opened(fh, open_flags),
            Err(e) => reply.error(e),
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
        let read = Read {
            ino,
            fh,
            offset,
            size,
            flags,
            pid: req.pid(),
            uid: req.uid(),
            lock_owner: lock_owner.map(|o| o.0),
        };
        self.0.read(read, reply);
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
        self.0.release(fh);
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
        let waker = flags.contains(PollFlags::FUSE_POLL_SCHEDULE_NOTIFY).then(
            || -> Box<dyn FnOnce() + Send> {
                Box::new(move || {
                    let _ = ph.notify();
                })
            },
        );
        match self.0.poll(ino, fh, waker) {
            Ok(ev) => reply.poll(ev),
            Err(e) => reply.error(e),
        }
    }
}
