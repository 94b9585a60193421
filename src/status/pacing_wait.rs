//! When the client's own pacing is why readers wait: `/status` shows `rate_limited_until`
//! (and `state: pacing` while a reader waits), and `/metrics` counts the seconds readers spent
//! waiting on it. Pure bookkeeping on times it is given.
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone)]
pub struct PacingWait {
    /// Since when, and until when, the pacer holds requests back (`None`: it does not).
    held: Option<(Instant, Instant)>,
    /// Reader-waiting seconds of holds that ended.
    total: Duration,
}

/// The part of a hold from `since` to `end` during which a reader was waiting: from the later
/// of the hold's start and the oldest waiting reader's start.
fn overlap(since: Instant, end: Instant, waiting_since: Option<Instant>) -> Duration {
    waiting_since.map_or(Duration::ZERO, |w| {
        end.saturating_duration_since(since.max(w))
    })
}

impl PacingWait {
    /// The pacer holds requests back until `until` (a later call moves it).
    pub fn hold(&mut self, now: Instant, until: Instant) {
        let since = self.held.map_or(now, |(since, _)| since);
        self.held = Some((since, until));
    }

    /// The hold ended at `now` (a request went out, or something else than pacing stops us);
    /// `waiting_since`: when the oldest reader still waiting started.
    pub fn release(&mut self, now: Instant, waiting_since: Option<Instant>) {
        if let Some((since, until)) = self.held.take() {
            self.total += overlap(since, now.min(until.max(since)), waiting_since);
        }
    }

    /// Until when requests are held back, if they are at `now`.
    pub fn until(&self, now: Instant) -> Option<Instant> {
        self.held.map(|(_, u)| u).filter(|u| *u > now)
    }

    /// Seconds readers spent waiting on pacing, up to `now`.
    pub fn total(&self, now: Instant, waiting_since: Option<Instant>) -> Duration {
        let open = self.held.map_or(Duration::ZERO, |(since, until)| {
            overlap(since, now.min(until.max(since)), waiting_since)
        });
        self.total + open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn counts_only_while_a_reader_waits_and_the_pacer_holds() {
        let t = Instant::now();
        let mut p = PacingWait::default();
        assert_eq!(p.total(t, Some(t)), Duration::ZERO);
        p.hold(t, t + 10 * S);
        assert_eq!(p.until(t + S), Some(t + 10 * S));
        // No reader: nothing counted.
        assert_eq!(p.total(t + 2 * S, None), Duration::ZERO);
        // A reader since t + 3 s: counted from then.
        assert_eq!(p.total(t + 5 * S, Some(t + 3 * S)), 2 * S);
        // A hold that outlived its end counts to its end only.
        assert_eq!(p.total(t + 20 * S, Some(t + 3 * S)), 7 * S);
        p.release(t + 6 * S, Some(t + 3 * S));
        assert_eq!(p.until(t + 6 * S), None);
        assert_eq!(p.total(t + 30 * S, Some(t)), 3 * S);
        // A second hold extends in place.
        p.hold(t + 40 * S, t + 41 * S);
        p.hold(t + 41 * S, t + 42 * S);
        p.release(t + 42 * S, Some(t));
        assert_eq!(p.total(t + 50 * S, None), 5 * S);
    }
}
