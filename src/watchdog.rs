//! Ends waits that must end: a reader with a pending signal that would end a device read gets
//! `EINTR` (which signals: `signals`; how they are watched cheaply: `waitwatch`), one past
//! `--read-timeout` gets `EIO`.
//!
//! Why this exists: fuser answers the kernel's FUSE_INTERRUPT with ENOSYS, after which the kernel
//! stops forwarding interrupts and leaves the reader in state D until we answer. So we look at
//! the reader's pending signals ourselves.
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::pool::{Pool, ReadError};

/// How often waiting readers are looked at (cheaply, see waitwatch); with
/// `signals::FULL_CHECK_CATCHING` it keeps a Ctrl-C under half a second.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Starts the watchdog thread; it ends when the pool shuts down.
pub fn spawn(pool: Arc<Pool>) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("qrypt-watchdog".into())
        .spawn(move || {
            let mut watch = crate::waitwatch::WaitWatch::new();
            while !pool.is_shut_down() {
                let waiting = pool.waiting_reads();
                if waiting.is_empty() {
                    watch.retain(|_| false);
                    pool.wait_for_waiters(Duration::from_secs(1));
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
                thread::sleep(CHECK_EVERY);
            }
        })
}
