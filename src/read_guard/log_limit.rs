//! Rate limits for log lines that a reader can trigger at will: without one, any local user
//! could fill the disk or the journal by repeating a refused operation. (Requests to the API
//! are paced by `qrypt_api::RateLimit`, a different thing.)

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows `burst` events per `interval`, like the kernel's `printk_ratelimit`; counts the
/// events it suppressed so the next allowed line can say how many were dropped.
pub struct LogLimiter {
    burst: u32,
    interval: Duration,
    state: Mutex<State>,
}

struct State {
    window_start: Option<Instant>,
    allowed: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub const fn new(burst: u32, interval: Duration) -> Self {
        LogLimiter {
            burst,
            interval,
            state: Mutex::new(State {
                window_start: None,
                allowed: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when this event may be logged, `n` being how many were suppressed since
    /// the last one that was; `None` when it must stay quiet.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let expired = s
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.interval);
        if expired {
            s.window_start = Some(now);
            s.allowed = 0;
        }
        if s.allowed < self.burst {
            s.allowed += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

/// Logs a warning through `$limit` (a `static LogLimiter`), adding how many were dropped.
#[macro_export]
macro_rules! warn_limited {
    ($limit:expr, $($arg:tt)+) => {
        if let Some(dropped) = $limit.check() {
            if dropped == 0 {
                tracing::warn!($($arg)+);
            } else {
                tracing::warn!("{} ({dropped} similar messages suppressed)", format_args!($($arg)+));
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_per_interval_and_counts_the_rest() {
        let limit = LogLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let allowed: Vec<_> = (0..10_000).map(|_| limit.check_at(t0)).collect();
        assert_eq!(allowed.iter().filter(|a| a.is_some()).count(), 3);
        assert_eq!(&allowed[..4], &[Some(0), Some(0), Some(0), None]);
        // Next window: allowed again, reporting the 9,997 it dropped, then quiet.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(limit.check_at(t1), Some(9_997));
        assert_eq!(limit.check_at(t1), Some(0));
        assert_eq!(limit.check_at(t1), Some(0));
        assert_eq!(limit.check_at(t1 + Duration::from_secs(9)), None);
    }
}
