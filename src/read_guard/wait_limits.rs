//! Ends waits that must end: a reader with a pending signal that would end a device read gets
//! `EINTR` (which signals: `pending_signals`; how they are watched cheaply: `signal_watch`),
//! one past `--read-timeout` gets `EIO`.
//!
//! Why this exists: fuser answers the kernel's FUSE_INTERRUPT with ENOSYS, after which the kernel
//! stops forwarding interrupts and leaves the reader in state D until we answer. So we look at
//! the reader's pending signals ourselves.
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::pool::{Pool, ReadError};

/// How often waiting readers are looked at (cheaply, see signal_watch). Ticks are at a fixed
/// rate. For processes with handlers one status a tick per user shows whether any signal is
/// queued (signal_watch, "probe"): a Ctrl-C is seen at the next tick, 225 ms, plus the time the
/// pass takes to reach the reader (about 10 ms for 1000 waiters). While a user's count stays
/// above 0 (some signal of theirs is pending, e.g. one a reader blocks), that user's readers
/// with handlers are read in full every second tick (`signals::FULL_CHECK_CATCHING` lies
/// between one and two ticks): a signal that lands just after a read is seen two ticks later,
/// 450 ms plus the pass: still under half a second. A reader with handlers alone in its group
/// (its user's only waiter, or in a user namespace of its own) is read on that cadence too.
pub const CHECK_EVERY: Duration = Duration::from_millis(225);

const _: () = {
    let catching = crate::read_guard::pending_signals::FULL_CHECK_CATCHING.as_millis();
    let tick = CHECK_EVERY.as_millis();
    assert!(catching > tick && catching <= 2 * tick && 2 * tick <= 460);
};

/// Starts the wait-limits thread; it ends when the pool shuts down.
pub fn spawn(pool: Arc<Pool>) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("qrypt-watchdog".into())
        .spawn(move || {
            let mut watch = crate::read_guard::signal_watch::WaitWatch::new();
            let mut tick = Instant::now();
            while !pool.is_shut_down() {
                let waiting = pool.waiting_reads();
                if waiting.is_empty() {
                    watch.retain(|_| false);
                    pool.wait_for_waiters(Duration::from_secs(1));
                    tick = Instant::now();
                    continue;
                }
                let now = Instant::now();
                let ids: std::collections::HashSet<u64> = waiting.iter().map(|w| w.id).collect();
                watch.retain(|id| ids.contains(&id));
                for w in waiting {
                    if w.deadline.is_some_and(|d| now >= d) {
                        pool.cancel(w.id, ReadError::TimedOut);
                    } else if watch.interrupted(w.id, w.pid, now) {
                        pool.cancel(w.id, ReadError::Interrupted);
                    }
                }
                // A fixed rate: the time a pass takes does not stretch the period.
                tick = (tick + CHECK_EVERY).max(Instant::now());
                thread::sleep(tick.saturating_duration_since(Instant::now()));
            }
        })
}
