//! How many requests per window this client allows itself, when other clients may share its
//! token's rate limit: additive increase, multiplicative decrease (AIMD), as TCP shares a
//! link, with the service's 429 as the congestion signal.
//!
//! - **Decrease** on a 429, once per episode (429s answering requests sent before the last
//!   decrease are echoes of it): to the share of the window this client actually got (the
//!   requests it had accepted in the last window), and at most `BETA` of the allowance.
//!   The share is what the token's other users left us; the factor makes room for them to
//!   grow and, being proportional, moves a large share more than a small one, so the clients
//!   converge on equal shares.
//! - **Increase** after `QUIET` windows without a 429 or a change, and only while the
//!   allowance is what holds requests back (RFC 7661's rule: probe only with demand, so an
//!   idle mount does not grow an allowance it would spend in one burst). By one request, or
//!   more for a mount far below the limit (`CATCH_UP`): a mount that joins a token others
//!   already saturate gets little at first, and one step per 20 s would leave it behind for
//!   minutes; growing in proportion to how small it is (as HighSpeed TCP grows faster from
//!   a small window) brings it to its share in a few windows, and its 429s to the others
//!   make room.
//! - Never above the configured limit, never below one request per window.
//!
//! Pure: every call takes the time, so tests and the fleet model run on a virtual clock.
use std::time::{Duration, Instant};

use super::RateLimit;

/// Multiplicative decrease: the allowance kept after a 429, at most.
pub const BETA: f64 = 0.75;
/// The longest jitter, as a fraction of the window.
pub const JITTER: f64 = 0.1;
/// A mount with less than `1 / CATCH_UP` of the limit grows by up to that much per quiet
/// window (the step is `ceiling / CATCH_UP / current`, at least one).
pub const CATCH_UP: u32 = 5;
/// Windows without a 429 or a change before probing higher.
pub const QUIET: u32 = 2;

#[derive(Debug, Clone)]
pub struct AdaptiveRate {
    ceiling: u32,
    current: u32,
    /// A window plus the pacer's margin: how long a request counts at the service.
    span: Duration,
    /// The last decrease or increase.
    changed_at: Option<Instant>,
    decreased_at: Option<Instant>,
}

impl AdaptiveRate {
    pub fn new(limit: RateLimit, margin: Duration) -> AdaptiveRate {
        AdaptiveRate {
            ceiling: limit.requests.max(1),
            current: limit.requests.max(1),
            span: limit.window + margin,
            changed_at: None,
            decreased_at: None,
        }
    }

    /// Requests allowed per window now.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// Extra time a completed request keeps its slot, drawn from `unit` (uniform in [0, 1)).
    /// None while the allowance is whole: a mount alone keeps its full bursts. Once a 429 has
    /// shown the token is shared, up to `JITTER` of the window (a second at 10 s: the grain
    /// of `Retry-After`). Without it, mounts sharing a token reuse their own slots the instant
    /// the service frees them, every window: a mount that was told to come back in whole
    /// seconds always arrives after the slot was taken again, and a small share never grows.
    pub fn jitter(&self, unit: f64) -> Duration {
        if self.current >= self.ceiling {
            return Duration::ZERO;
        }
        self.span.mul_f64(unit.clamp(0.0, 1.0) * JITTER)
    }

    /// A 429 answered a request sent at `sent`; `accepted`: our requests the service accepted
    /// in the window before `now`. Returns whether the allowance changed.
    pub fn on_rate_limited(&mut self, sent: Instant, accepted: u32, now: Instant) -> bool {
        if self.decreased_at.is_some_and(|d| sent < d) {
            return false;
        }
        let scaled = (f64::from(self.current) * BETA).floor() as u32;
        let next = accepted.min(scaled).clamp(1, self.ceiling);
        self.decreased_at = Some(now);
        self.changed_at = Some(now);
        let changed = next != self.current;
        self.current = next;
        changed
    }

    /// The allowance held a request back at `now`: after a quiet window, one more.
    /// Returns whether the allowance changed.
    pub fn on_held_back(&mut self, now: Instant) -> bool {
        if self.current >= self.ceiling {
            return false;
        }
        if self
            .changed_at
            .is_some_and(|t| now.saturating_duration_since(t) < self.span * QUIET)
        {
            return false;
        }
        let step = (self.ceiling / CATCH_UP).div_ceil(self.current).max(1);
        self.current = (self.current + step).min(self.ceiling);
        self.changed_at = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPAN: Duration = Duration::from_millis(10_100);

    fn rate() -> AdaptiveRate {
        AdaptiveRate::new(RateLimit::QRYPT, Duration::from_millis(100))
    }

    #[test]
    fn decreases_to_the_share_got_once_per_episode() {
        let mut r = rate();
        let t0 = Instant::now();
        assert_eq!(r.current(), 30);
        assert!(r.on_rate_limited(t0, 8, t0 + Duration::from_millis(50)));
        assert_eq!(r.current(), 8);
        // Answers to requests sent before the decrease change nothing.
        assert!(!r.on_rate_limited(
            t0 + Duration::from_millis(10),
            8,
            t0 + Duration::from_millis(60)
        ));
        assert_eq!(r.current(), 8);
        // A later episode: at most BETA of the allowance, even if the share was larger.
        let t1 = t0 + Duration::from_secs(20);
        assert!(r.on_rate_limited(t1, 8, t1));
        assert_eq!(r.current(), 6);
        let t2 = t1 + Duration::from_secs(20);
        r.on_rate_limited(t2, 0, t2);
        assert_eq!(r.current(), 1, "never below one");
    }

    #[test]
    fn probes_up_only_with_demand_after_quiet_windows_never_above_the_limit() {
        let mut r = rate();
        let t0 = Instant::now();
        r.on_rate_limited(t0, 12, t0);
        assert_eq!(r.current(), 12);
        let quiet = SPAN * QUIET;
        assert!(
            !r.on_held_back(t0 + quiet - Duration::from_millis(1)),
            "not quiet yet"
        );
        assert!(r.on_held_back(t0 + quiet));
        assert_eq!(r.current(), 13);
        assert!(
            !r.on_held_back(t0 + quiet + SPAN),
            "one step per quiet period"
        );
        let mut t = t0 + quiet;
        for _ in 0..100 {
            t += quiet;
            r.on_held_back(t);
        }
        assert_eq!(r.current(), 30);
    }

    #[test]
    fn a_small_share_catches_up_faster() {
        let mut r = rate();
        let t0 = Instant::now();
        r.on_rate_limited(t0, 1, t0);
        assert_eq!(r.current(), 1);
        let quiet = SPAN * QUIET;
        let steps: Vec<u32> = (1..=4)
            .map(|i| {
                r.on_held_back(t0 + quiet * i);
                r.current()
            })
            .collect();
        // Steps of 6, 1, 1, 1: ceiling / CATCH_UP / current, at least one.
        assert_eq!(steps, vec![7, 8, 9, 10]);
    }
}
