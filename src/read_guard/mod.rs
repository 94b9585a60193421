//! The guard on the read path: may this READ of `/random` be served now?
//!
//! [`ReadGuard::admit`] answers each READ with [`Admission::Serve`] (the pool answers it, at
//! once or when bytes arrive) or [`Admission::Refuse`] (its bytes could reach more than the
//! reader: a page-cache fill or a kernel thread's read, see [`origin`]), and
//! [`ReadGuard::refuse`] answers a refusal slowly ([`slow_refusal`]). A read that waits in the
//! pool is ended by [`wait_limits`]: `EINTR` once its thread has a pending signal that would
//! end a device read ([`pending_signals`], watched cheaply by [`signal_watch`]), `EIO` past
//! `--read-timeout`. Who sent a READ is told by [`reader_kind`].
use std::sync::Arc;

pub mod log_limit;
pub mod origin;
pub mod pending_signals;
pub mod reader_kind;
pub mod signal_watch;
pub mod slow_refusal;
pub mod wait_limits;

use origin::ReadOrigin;
use reader_kind::Requesters;
use slow_refusal::{Answer, RefusalPacer};

/// What the guard decided for one READ of `/random`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The reader's own read: the pool serves it, now or once bytes arrive.
    Serve,
    /// Its bytes could reach a cache others share: it gets `EIO` (or `SIGBUS`), slowly.
    Refuse(ReadOrigin),
}

/// The state the guard keeps: the readers it has classified, and the refusals it paces.
#[derive(Default)]
pub struct ReadGuard {
    requesters: Requesters,
    refusals: Arc<RefusalPacer>,
}

impl ReadGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve or refuse a READ by thread `pid` with `FUSE_READ_LOCKOWNER`'s `lock_owner`
    /// (`None` for a page-cache fill).
    pub fn admit(&self, lock_owner: Option<u64>, pid: u32) -> Admission {
        match ReadOrigin::of(lock_owner, pid, |pid| self.requesters.kind(pid)) {
            ReadOrigin::Direct => Admission::Serve,
            refused => Admission::Refuse(refused),
        }
    }

    /// Logs (rate-limited) why `pid`'s READ was refused and runs `answer` (which sends the
    /// error) once that thread's refusals are due: a kernel loop re-sending them costs nothing.
    pub fn refuse(&self, pid: u32, origin: ReadOrigin, answer: Answer) {
        origin::note_refused(pid, origin);
        self.refusals.refuse(pid, answer);
    }

    /// The paced refusals; the session shuts them down with the pool.
    pub fn refusals(&self) -> Arc<RefusalPacer> {
        self.refusals.clone()
    }
}
