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

/// The most of one core the watch spends, whatever the number and kind of waiters. When a
/// pass costs more than this share of [`CHECK_EVERY`], the next pass waits longer: with many
/// waiters of the dearest kind signals are seen later, never at a higher cost. On a 2-core VM
/// the share holds up to about 300 readers with handlers alone in their group (a status read,
/// ~20 µs, every other pass) or 600 readers without handlers (a ~3 µs `schedstat` read each
/// pass, a status every 2 s); 1000 readers each in a user namespace of its own are then
/// looked at every ~1.3 s instead of every 0.45 s. The stretch stops at [`LONGEST_PERIOD`]:
/// past about 1500 such waiters the cost grows again, but no signal waits longer than that.
pub const CPU_BUDGET_PER_MILLE: u32 = 15;

/// The longest time between passes however dear they are: a bound on how late a signal is seen.
pub const LONGEST_PERIOD: Duration = Duration::from_secs(2);

/// The time from the start of one pass to the start of the next, after a pass that used
/// `pass_cpu` of the watch thread's CPU time.
fn period_after(pass_cpu: Duration) -> Duration {
    CHECK_EVERY
        .max(pass_cpu * 1000 / CPU_BUDGET_PER_MILLE)
        .min(LONGEST_PERIOD)
}

/// CPU time of the calling thread (`None` when the clock is not there: then no stretching).
fn thread_cpu() -> Option<Duration> {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}

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
                let cpu_before = thread_cpu();
                let ids: std::collections::HashSet<u64> = waiting.iter().map(|w| w.id).collect();
                watch.retain(|id| ids.contains(&id));
                for w in waiting {
                    if w.deadline.is_some_and(|d| now >= d) {
                        pool.cancel(w.id, ReadError::TimedOut);
                    } else if watch.interrupted(w.id, w.pid, now) {
                        pool.cancel(w.id, ReadError::Interrupted);
                    }
                }
                // A fixed rate: the time a pass takes does not stretch the period; only its
                // CPU cost does (see CPU_BUDGET_PER_MILLE).
                let pass_cpu = thread_cpu()
                    .zip(cpu_before)
                    .map_or(Duration::ZERO, |(after, before)| {
                        after.saturating_sub(before)
                    });
                tick = (tick + period_after(pass_cpu)).max(Instant::now());
                thread::sleep(tick.saturating_duration_since(Instant::now()));
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cheap_pass_keeps_the_tick() {
        assert_eq!(period_after(Duration::ZERO), CHECK_EVERY);
        // 1.5% of 225 ms is 3.375 ms: a pass up to that keeps the tick.
        assert_eq!(period_after(Duration::from_micros(3375)), CHECK_EVERY);
    }

    #[test]
    fn a_dear_pass_stretches_the_period_to_the_budget() {
        // 1000 status reads of 20 µs: 20 ms of CPU, so 1.5% of a core means a pass per 1.33 s.
        let period = period_after(Duration::from_millis(20));
        assert_eq!(period.as_micros(), 1_333_333);
        let share = 20.0 / period.as_secs_f64() / 1000.0;
        assert!((share - 0.015).abs() < 1e-6, "{share}");
    }

    #[test]
    fn no_pass_waits_longer_than_the_longest_period() {
        assert_eq!(period_after(Duration::from_millis(50)), LONGEST_PERIOD);
        assert_eq!(period_after(Duration::from_secs(10)), LONGEST_PERIOD);
    }

    #[test]
    fn the_thread_clock_moves_with_work() {
        let before = thread_cpu().expect("CLOCK_THREAD_CPUTIME_ID");
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = thread_cpu().expect("CLOCK_THREAD_CPUTIME_ID");
        assert!(after > before, "{before:?} -> {after:?}");
    }
}
