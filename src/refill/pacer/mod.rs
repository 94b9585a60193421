//! Client-side pacing under the service's rate limit (30 requests per 10 s per token by default).
use std::time::{Duration, Instant};

pub mod adaptive;
pub mod pacing;

/// One type and one syntax (`30/10`) for the client's pacer and the emulator's limit.
pub use qrypt_api::RateLimit;

/// Added to the window a slot is held after its request completed (clock granularity).
pub const MARGIN: Duration = Duration::from_millis(100);

/// A sliding-window gate that never lets the server see more than `requests` in a `window`.
///
/// The server counts a request somewhere between our send and its answer, so a slot is held
/// from the moment a request starts until `window` after it completed: an upper bound on the
/// server's own timestamp, however long the request queued or transferred. A small margin
/// absorbs clock granularity. Bursts up to the full allowance go at once.
pub struct Pacer {
    limit: Option<RateLimit>,
    /// Requests per window allowed now, at most `limit.requests` (see `AdaptiveRate`).
    allowance: u32,
    margin: Duration,
    next_id: u64,
    /// (slot id, completion time; `None` while in flight).
    slots: Vec<(u64, Option<Instant>)>,
}

/// Why a request may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A slot frees at this time.
    Until(Instant),
    /// Every slot is held by a request in flight; one frees `window` after it completes.
    ForCompletion,
}

impl Pacer {
    pub fn new(limit: Option<RateLimit>) -> Pacer {
        Pacer {
            limit,
            allowance: limit.map_or(u32::MAX, |l| l.requests),
            margin: MARGIN,
            next_id: 0,
            slots: Vec::new(),
        }
    }

    /// Takes a slot for a request starting at `now`, or says how long to wait.
    pub fn try_acquire(&mut self, now: Instant) -> Result<u64, Wait> {
        let Some(limit) = self.limit else {
            return Ok(0);
        };
        let span = limit.window + self.margin;
        self.slots
            .retain(|(_, done)| done.is_none_or(|t| now.saturating_duration_since(t) < span));
        if self.slots.len() < limit.requests.min(self.allowance) as usize {
            self.next_id += 1;
            self.slots.push((self.next_id, None));
            return Ok(self.next_id);
        }
        match self.slots.iter().filter_map(|(_, done)| *done).min() {
            Some(t) => Err(Wait::Until(t + span)),
            None => Err(Wait::ForCompletion),
        }
    }

    /// Lowers (or raises, never above the configured limit) the requests allowed per window.
    /// Slots already taken stay taken: a lower allowance only delays the next request.
    pub fn set_allowance(&mut self, requests: u32) {
        self.allowance = requests.max(1);
    }

    /// Gives back a slot whose request was never sent (the budget refused it).
    pub fn cancel(&mut self, slot: u64) {
        self.slots.retain(|(id, _)| *id != slot);
    }

    /// The request holding `slot` completed (successfully or not) at `now`.
    pub fn complete(&mut self, slot: u64, now: Instant) {
        if let Some(s) = self.slots.iter_mut().find(|(id, _)| *id == slot) {
            s.1 = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!("30/10".parse::<RateLimit>(), Ok(RateLimit::QRYPT));
        assert!("0/10".parse::<RateLimit>().is_err());
        assert!("30".parse::<RateLimit>().is_err());
        assert!("30/-1".parse::<RateLimit>().is_err());
    }

    #[test]
    fn burst_then_slide_from_completion() {
        let mut p = Pacer::new(Some(RateLimit {
            requests: 3,
            window: Duration::from_secs(10),
        }));
        let t0 = Instant::now();
        let ids: Vec<u64> = (0..3).map(|_| p.try_acquire(t0).expect("burst")).collect();
        assert_eq!(p.try_acquire(t0), Err(Wait::ForCompletion));
        // Completions at 1 s and 2 s: the first slot frees 10.1 s after the first completion.
        p.complete(ids[0], t0 + Duration::from_secs(1));
        p.complete(ids[1], t0 + Duration::from_secs(2));
        let at = t0 + Duration::from_millis(11_100);
        assert_eq!(
            p.try_acquire(t0 + Duration::from_secs(5)),
            Err(Wait::Until(at))
        );
        assert!(p.try_acquire(at).is_ok());
        assert!(p.try_acquire(at).is_err(), "second slot frees at 12.1 s");
        assert!(p.try_acquire(t0 + Duration::from_millis(12_100)).is_ok());
    }

    #[test]
    fn a_lower_allowance_delays_the_next_request() {
        let mut p = Pacer::new(Some(RateLimit::QRYPT));
        let t0 = Instant::now();
        for _ in 0..3 {
            let id = p.try_acquire(t0).expect("slot");
            p.complete(id, t0);
        }
        p.set_allowance(3);
        let at = t0 + Duration::from_millis(10_100);
        assert_eq!(p.try_acquire(t0), Err(Wait::Until(at)));
        p.set_allowance(4);
        let id = p.try_acquire(t0).expect("a fourth");
        assert!(p.try_acquire(t0).is_err());
        p.cancel(id);
        let id = p.try_acquire(t0).expect("a cancelled slot is free at once");
        p.complete(id, t0);
        p.set_allowance(0);
        assert!(
            p.try_acquire(at).is_ok(),
            "never below one request per window"
        );
        assert!(p.try_acquire(at).is_err());
    }

    #[test]
    fn unlimited() {
        let mut p = Pacer::new(None);
        let t = Instant::now();
        for _ in 0..1000 {
            assert_eq!(p.try_acquire(t), Ok(0));
        }
    }
}
