//! Tells a reader's own `read(2)` of `/random` from a page-cache fill, so that no pool byte
//! ever enters the page cache.
//!
//! `FOPEN_DIRECT_IO` keeps `read(2)` off the page cache, but `mmap(MAP_PRIVATE)`, `readahead(2)`,
//! `posix_fadvise(WILLNEED)`, `splice(2)` and `sendfile(2)` still make the kernel fill pages with
//! ordinary FUSE READ requests. Those pages would be shared by every later mapper. The kernel
//! marks the difference: a direct read (`fuse_direct_io`) passes `current->files` as lock owner,
//! which sets `FUSE_READ_LOCKOWNER` (fuser: `lock_owner: Some(_)`); the page-cache paths
//! (`read_folio`, `readahead`) fill `fuse_read_in` without one. See ARCHITECTURE.md.
use std::time::Duration;

use crate::log_limit::LogLimiter;

/// Where a FUSE READ of `/random` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOrigin {
    /// The reader's own `read(2)`/`readv(2)`/`io_uring` read: bytes go to that reader only.
    Direct,
    /// The kernel filling page-cache pages: must fail, or the bytes could reach many readers.
    PageCache,
}

impl ReadOrigin {
    /// Classifies a READ by its `FUSE_READ_LOCKOWNER` flag. Unknown means page cache: if a
    /// future kernel ever sent a direct read without an owner it would fail, never leak.
    pub fn of(lock_owner: Option<u64>) -> ReadOrigin {
        match lock_owner {
            Some(_) => ReadOrigin::Direct,
            None => ReadOrigin::PageCache,
        }
    }
}

/// A reader can repeat a refused fill as fast as it likes: a few lines a minute at most.
static REFUSALS: LogLimiter = LogLimiter::new(3, Duration::from_secs(60));

/// Logs (rate-limited) that a page-cache fill by `pid` was refused.
pub fn note_refused(pid: u32) {
    crate::warn_limited!(
        REFUSALS,
        "refused a page-cache fill of /random by pid {pid} (mmap, readahead, fadvise, splice \
         or sendfile): its pages could reach other readers; it gets EIO/SIGBUS"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_with_a_lock_owner_are_direct() {
        assert_eq!(ReadOrigin::of(Some(0x1234)), ReadOrigin::Direct);
        assert_eq!(ReadOrigin::of(Some(0)), ReadOrigin::Direct);
        assert_eq!(ReadOrigin::of(None), ReadOrigin::PageCache);
    }
}
