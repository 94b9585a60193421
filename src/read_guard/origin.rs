//! Tells a reader's own `read(2)` of `/random` from every READ whose bytes could reach more than
//! that reader, so that no pool byte ever enters a cache: the page cache of `/random`, or any
//! cache a kernel thread fills from it.
//!
//! `FOPEN_DIRECT_IO` keeps `read(2)` off the page cache, but `mmap(MAP_PRIVATE)`, `readahead(2)`,
//! `posix_fadvise(WILLNEED)`, `splice(2)` and `sendfile(2)` still make the kernel fill pages with
//! ordinary FUSE READ requests. Those pages would be shared by every later mapper. The kernel
//! marks the difference: a direct read (`fuse_direct_io`) passes `current->files` as lock owner,
//! which sets `FUSE_READ_LOCKOWNER` (fuser: `lock_owner: Some(_)`); the page-cache paths
//! (`read_folio`, `readahead`) fill `fuse_read_in` without one.
//!
//! A lock owner says the read is direct, not whose memory it fills: kernel threads have a
//! files table too. A loop device on `/random` (`losetup -r`) reads it from the loop driver's
//! workers into the block device's page cache, which every reader of `/dev/loopN` shares; nfsd,
//! ksmbd and cachefiles hand what they read to clients and caches. So a direct read is served
//! only to a user thread ([`crate::read_guard::reader_kind`]): one by a kernel thread, or by a thread the
//! daemon cannot see (pid 0: outside its pid namespace, where every kernel thread is), is
//! refused like a page-cache fill. See ARCHITECTURE.md.
use std::time::Duration;

use crate::read_guard::log_limit::LogLimiter;
use crate::read_guard::reader_kind::TaskKind;

/// Where a FUSE READ of `/random` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOrigin {
    /// A user thread's own `read(2)`/`readv(2)`/`io_uring` read: bytes go to that reader only.
    Direct,
    /// The kernel filling page-cache pages: must fail, or the bytes could reach many readers.
    PageCache,
    /// A kernel thread's direct read (loop device, nfsd, ksmbd, cachefiles): must fail, its
    /// bytes go on to a cache shared by many.
    KernelThread,
    /// A direct read by a thread we cannot attribute (pid 0, or gone): it could be a kernel
    /// thread, so it fails too.
    Unattributed,
}

impl ReadOrigin {
    /// Classifies a READ by its `FUSE_READ_LOCKOWNER` flag and, for a direct read only, by the
    /// kind of thread that sent it (`task`, called at most once). Unknown means refused: if a
    /// future kernel ever sent a direct read without an owner it would fail, never leak.
    pub fn of(lock_owner: Option<u64>, pid: u32, task: impl FnOnce(u32) -> TaskKind) -> Self {
        if lock_owner.is_none() {
            return ReadOrigin::PageCache;
        }
        match task(pid) {
            TaskKind::User => ReadOrigin::Direct,
            TaskKind::Kernel => ReadOrigin::KernelThread,
            TaskKind::Unattributed => ReadOrigin::Unattributed,
        }
    }

    /// Whether the pool may serve this READ.
    #[cfg(test)]
    pub fn is_served(self) -> bool {
        self == ReadOrigin::Direct
    }
}

/// A reader can repeat a refused fill as fast as it likes: a few lines a minute at most.
static REFUSALS: LogLimiter = LogLimiter::new(3, Duration::from_secs(60));

/// Logs (rate-limited) that a READ of `/random` by `pid` was refused, and why.
pub fn note_refused(pid: u32, origin: ReadOrigin) {
    match origin {
        ReadOrigin::Direct => {}
        ReadOrigin::PageCache => crate::warn_limited!(
            REFUSALS,
            "refused a page-cache fill of /random by pid {pid} (mmap, readahead, fadvise, \
             splice or sendfile): its pages could reach other readers; it gets EIO/SIGBUS"
        ),
        ReadOrigin::KernelThread => crate::warn_limited!(
            REFUSALS,
            "refused a read of /random by kernel thread {pid} ({}): a loop device, nfsd, ksmbd \
             or cachefiles would keep its bytes in a cache other readers share; it gets EIO",
            crate::read_guard::reader_kind::comm(pid)
        ),
        ReadOrigin::Unattributed => crate::warn_limited!(
            REFUSALS,
            "refused a read of /random by pid {pid}: a thread outside the daemon's pid \
             namespace (pid 0) or already gone cannot be told from a kernel thread; it gets \
             EIO (run the daemon in its readers' pid namespace)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_user_threads_with_a_lock_owner_are_direct() {
        let user = |_| TaskKind::User;
        assert_eq!(ReadOrigin::of(Some(0x1234), 42, user), ReadOrigin::Direct);
        assert_eq!(ReadOrigin::of(Some(0), 42, user), ReadOrigin::Direct);
        assert_eq!(ReadOrigin::of(None, 42, user), ReadOrigin::PageCache);
        assert_eq!(
            ReadOrigin::of(Some(7), 42, |_| TaskKind::Kernel),
            ReadOrigin::KernelThread
        );
        assert_eq!(
            ReadOrigin::of(Some(7), 0, |_| TaskKind::Unattributed),
            ReadOrigin::Unattributed
        );
        assert!(ReadOrigin::Direct.is_served());
        for o in [
            ReadOrigin::PageCache,
            ReadOrigin::KernelThread,
            ReadOrigin::Unattributed,
        ] {
            assert!(!o.is_served(), "{o:?}");
        }
    }

    #[test]
    fn a_page_cache_fill_asks_nothing_about_the_thread() {
        let o = ReadOrigin::of(None, 42, |_| panic!("looked up a page-cache fill's thread"));
        assert_eq!(o, ReadOrigin::PageCache);
    }

    #[test]
    fn the_thread_asked_about_is_the_requesting_one() {
        let mut asked = None;
        let o = ReadOrigin::of(Some(1), 4242, |pid| {
            asked = Some(pid);
            TaskKind::User
        });
        assert_eq!((o, asked), (ReadOrigin::Direct, Some(4242)));
    }
}
