//! The spend rate: bytes requested per second over the last hour and the last day, and when
//! each cap runs out at that pace.
//!
//! Kept in memory as one bucket per minute (at most a day of them), so its size is fixed
//! whatever the request rate. A restart starts it empty: the state file keeps the spend per
//! period, not its history.
use std::collections::VecDeque;

/// The windows the rate is shown over.
pub const HOUR: u64 = 3600;
pub const DAY: u64 = 86_400;
const BUCKET: u64 = 60;
const MAX_BUCKETS: usize = (DAY / BUCKET) as usize;

/// Bytes granted per minute, oldest first: (minute start in Unix seconds, bytes).
#[derive(Debug, Default)]
pub struct RateRing {
    buckets: VecDeque<(u64, u64)>,
}

impl RateRing {
    /// Counts `bytes` granted at `now`.
    pub fn add(&mut self, now: u64, bytes: u64) {
        let minute = now - now % BUCKET;
        match self.buckets.back_mut() {
            Some((m, b)) if *m == minute => *b = b.saturating_add(bytes),
            // A clock that stepped back: count it in the newest minute rather than reorder.
            Some((m, b)) if *m > minute => *b = b.saturating_add(bytes),
            _ => self.buckets.push_back((minute, bytes)),
        }
        self.forget(now);
    }

    /// Takes back `bytes` granted at `at` (a refund), if that minute is still kept.
    pub fn remove(&mut self, at: u64, bytes: u64) {
        let minute = at - at % BUCKET;
        if let Some((_, b)) = self.buckets.iter_mut().rev().find(|(m, _)| *m <= minute) {
            *b = b.saturating_sub(bytes);
        }
    }

    /// Drops the minutes older than a day, and bounds the ring whatever the clock does.
    fn forget(&mut self, now: u64) {
        while let Some(&(m, _)) = self.buckets.front() {
            if m + DAY <= now || self.buckets.len() > MAX_BUCKETS {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    /// Bytes per second over the last `window` seconds up to `now`: the bytes granted in the
    /// minutes that ended inside it (the current one included) over the whole window, so a
    /// mount up for less than the window shows the average as if nothing was spent before.
    pub fn rate(&self, now: u64, window: u64) -> f64 {
        let since = now.saturating_sub(window);
        let bytes: u64 = self
            .buckets
            .iter()
            .filter(|(m, _)| m + BUCKET > since)
            .map(|(_, b)| b)
            .sum();
        bytes as f64 / window as f64
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// When `remaining` bytes run out at `rate` bytes/s from `now`: `None` when nothing is spent,
/// or when it would happen only at or after `renews_at` (the cap starts over first).
pub fn runs_out_at(now: u64, remaining: u64, rate: f64, renews_at: u64) -> Option<u64> {
    if rate <= 0.0 {
        return None;
    }
    let at = now as f64 + (remaining as f64 / rate).ceil();
    (at < renews_at as f64).then_some(at as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_795_867_200; // a whole hour

    #[test]
    fn rate_over_the_hour_and_the_day() {
        let mut r = RateRing::default();
        assert_eq!(r.rate(T, HOUR), 0.0);
        r.add(T, 3600);
        r.add(T + 30, 3600);
        assert_eq!(r.len(), 1, "one bucket per minute");
        assert_eq!(r.rate(T + 59, HOUR), 2.0);
        assert_eq!(r.rate(T + 59, DAY), 7200.0 / 86_400.0);
        // Two hours later the hour's rate has forgotten it, the day's has not.
        r.add(T + 2 * HOUR, 360);
        assert_eq!(r.rate(T + 2 * HOUR, HOUR), 0.1);
        assert_eq!(r.rate(T + 2 * HOUR, DAY), 7560.0 / 86_400.0);
        // A day later only the newer one is kept.
        r.add(T + DAY + 60, 0);
        assert_eq!(r.rate(T + DAY + 60, DAY), 360.0 / 86_400.0);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn refunds_and_a_clock_stepping_back() {
        let mut r = RateRing::default();
        r.add(T, 7200);
        r.remove(T + 10, 3600);
        assert_eq!(r.rate(T, HOUR), 1.0);
        r.remove(T, 1 << 40);
        assert_eq!(r.rate(T, HOUR), 0.0, "never below zero");
        r.add(T + 600, 100);
        r.add(T + 300, 100);
        assert_eq!(r.len(), 2, "counted in the newest minute");
        assert_eq!(r.rate(T + 600, HOUR) * 3600.0, 200.0);
    }

    #[test]
    fn bounded_to_a_day_of_minutes() {
        let mut r = RateRing::default();
        for i in 0..(3 * MAX_BUCKETS as u64) {
            r.add(T + i * BUCKET, 1);
        }
        assert!(r.len() <= MAX_BUCKETS, "{}", r.len());
    }

    #[test]
    fn projection() {
        // 1 KiB/s with 3600 KiB left: an hour, before a renewal two hours away.
        assert_eq!(
            runs_out_at(T, 3600 * 1024, 1024.0, T + 2 * HOUR),
            Some(T + HOUR)
        );
        // Renews first.
        assert_eq!(runs_out_at(T, 3600 * 1024, 1024.0, T + HOUR), None);
        assert_eq!(runs_out_at(T, 3600 * 1024, 0.0, T + HOUR), None);
        // Already spent: now.
        assert_eq!(runs_out_at(T, 0, 1.0, T + HOUR), Some(T));
    }
}
