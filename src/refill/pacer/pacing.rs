//! One client's pacing as a whole: the sliding-window gate ([`Pacer`]), the adaptive
//! allowance ([`AdaptiveRate`]) and the even spacing between requests, fed with each request's
//! answer. The refill worker and the fleet model both drive this one type.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::adaptive::{AdaptiveRate, Reaction};
use super::{MARGIN, Pacer, RateLimit, Wait};

/// What the service said to a request, as far as pacing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Counted in the service's window (any answer but 429).
    Accepted,
    /// 429, with its `Retry-After`.
    RateLimited(Option<Duration>),
}

/// A request allowed to start: give it back to [`Pacing::finished`] or [`Pacing::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    slot: u64,
    sent: Instant,
}

impl Ticket {
    /// When the request started.
    pub fn sent(&self) -> Instant {
        self.sent
    }
}

pub struct Pacing {
    limit: Option<RateLimit>,
    pacer: Pacer,
    rate: Option<AdaptiveRate>,
    /// Send times of our requests the service accepted in the last window, oldest first.
    accepted: VecDeque<Instant>,
    /// No request starts before this (the allowance spread evenly over the window).
    next_start: Option<Instant>,
    /// The last start and the jitter drawn for the gap after it.
    last_start: Option<(Instant, f64)>,
    /// A chance 429's request goes again at this time, whatever the allowance does meanwhile.
    retry_at: Option<Instant>,
}

impl Pacing {
    pub fn new(limit: Option<RateLimit>) -> Pacing {
        let rate = limit.map(|l| AdaptiveRate::new(l, MARGIN));
        let mut pacer = Pacer::new(limit);
        if let Some(r) = &rate {
            pacer.set_allowance(r.current());
        }
        Pacing {
            limit,
            pacer,
            rate,
            accepted: VecDeque::new(),
            next_start: None,
            last_start: None,
            retry_at: None,
        }
    }

    /// Requests per window allowed now (None: no limit).
    pub fn allowance(&self) -> Option<u32> {
        self.rate.as_ref().map(AdaptiveRate::current)
    }

    /// Requests per window allowed now, unrounded (None: no limit).
    pub fn rate(&self) -> Option<f64> {
        self.rate.as_ref().map(AdaptiveRate::rate)
    }

    /// Lets a request start at `now`, or says until when to wait. `unit` (uniform in [0, 1))
    /// draws the jitter of the gap to the next request.
    pub fn try_start(&mut self, now: Instant, unit: f64) -> Result<Ticket, Wait> {
        loop {
            let held = match self.next_start.filter(|&t| now < t) {
                Some(t) => Err(Wait::Until(t)),
                None => self.pacer.try_acquire(now),
            };
            match held {
                Ok(slot) => {
                    // The first request is a small one that tells the mount is up: the
                    // allowance is spread from the second on.
                    let gap = match (&self.rate, self.last_start) {
                        (Some(r), Some(_)) => r.gap(unit),
                        _ => Duration::ZERO,
                    };
                    self.next_start = Some(now + gap);
                    if let Some(r) = &mut self.rate {
                        r.on_start(now);
                    }
                    self.last_start = Some((now, unit));
                    self.retry_at = None;
                    return Ok(Ticket { slot, sent: now });
                }
                Err(wait) => {
                    // Demand the allowance holds back: the moment to probe higher.
                    if self.rate.as_mut().is_some_and(|r| r.on_held_back(now)) {
                        self.allowance_changed();
                        continue;
                    }
                    return Err(wait);
                }
            }
        }
    }

    /// Gives back a ticket whose request was never sent.
    pub fn cancel(&mut self, ticket: Ticket) {
        self.pacer.cancel(ticket.slot);
        if self.last_start.is_some_and(|(t, _)| t == ticket.sent) {
            self.next_start = None;
        }
    }

    /// The request of `ticket` was answered at `now`. Returns whether the allowance changed.
    pub fn finished(&mut self, ticket: Ticket, answer: Answer, now: Instant) -> bool {
        self.pacer.complete(ticket.slot, now);
        let (Some(limit), Some(rate)) = (self.limit, self.rate.as_mut()) else {
            return false;
        };
        while self
            .accepted
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= limit.window)
        {
            self.accepted.pop_front();
        }
        match answer {
            Answer::Accepted => {
                // Kept in send order: answers may arrive out of it.
                let at = self.accepted.partition_point(|&t| t <= ticket.sent);
                self.accepted.insert(at, ticket.sent);
                rate.on_accepted(ticket.sent);
                false
            }
            Answer::RateLimited(retry_after) => {
                let accepted: Vec<Instant> = self.accepted.iter().copied().collect();
                match rate.on_rate_limited(ticket.sent, retry_after, &accepted, now) {
                    Reaction::Echo => false,
                    Reaction::Cut { changed } => {
                        if changed {
                            self.allowance_changed();
                        }
                        changed
                    }
                    Reaction::Retry { changed } => {
                        // The service did not count the request: its slot is free, and the
                        // next request goes when the service's oldest one leaves.
                        self.pacer.cancel(ticket.slot);
                        self.retry_at = Some(now + retry_after.unwrap_or_default());
                        self.next_start = self.retry_at;
                        if changed {
                            self.allowance_changed();
                        }
                        changed
                    }
                }
            }
        }
    }

    /// The allowance moved: the pacer's slots and the gap after the last start follow.
    fn allowance_changed(&mut self) {
        let Some(r) = &self.rate else {
            return;
        };
        self.pacer.set_allowance(r.current());
        if let Some((at, unit)) = self.last_start.filter(|_| self.retry_at.is_none()) {
            self.next_start = Some(at + r.gap(unit));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn spreads_the_allowance_over_the_window() {
        let mut p = Pacing::new(Some(RateLimit::QRYPT));
        let t0 = Instant::now();
        p.try_start(t0, 0.5).expect("the first, at once");
        let a = p.try_start(t0, 0.5).expect("second");
        let gap = Duration::from_millis(10_100) / 15;
        assert_eq!(p.try_start(t0, 0.5), Err(Wait::Until(t0 + gap)));
        p.cancel(a);
        assert!(
            p.try_start(t0, 0.5).is_ok(),
            "a cancelled start frees the gap"
        );
    }

    #[test]
    fn the_first_429_lowers_the_allowance_to_the_share_sent() {
        let mut p = Pacing::new(Some(RateLimit::QRYPT));
        let mut t = Instant::now();
        for _ in 0..3 {
            let k = p.try_start(t, 0.5).expect("start");
            p.finished(k, Answer::Accepted, t + S / 100);
            t += S * 2;
        }
        let k = p.try_start(t, 0.5).expect("start");
        assert!(p.finished(k, Answer::RateLimited(Some(S)), t + S / 100));
        // The first request, then 15 per 10.1 s for the 4 s from the second request (2 s
        // after the first: its answer was slow) to the window found full.
        let sent = 1.0 + 15.0 * 4.0 / 10.1;
        let share = sent * super::super::adaptive::START_TRIM - super::super::adaptive::START_LESS;
        assert_eq!(p.rate(), Some(share));
        assert_eq!(p.allowance(), Some(7));
    }

    #[test]
    fn a_chance_429_frees_its_slot_and_the_next_request_goes_when_the_oldest_leaves() {
        let mut p = Pacing::new(Some(RateLimit::QRYPT));
        let mut t = Instant::now();
        // The start's 429, then requests accepted at the allowance's pace.
        let k = p.try_start(t, 0.5).expect("start");
        p.finished(k, Answer::RateLimited(Some(S * 10)), t + S / 100);
        for _ in 0..3 {
            t += S * 20;
            let k = p.try_start(t, 0.5).expect("paced");
            p.finished(k, Answer::Accepted, t + S / 100);
        }
        let allowance = p.rate().expect("limited");
        t += S * 20;
        let k = p.try_start(t, 0.5).expect("paced");
        assert!(p.finished(k, Answer::RateLimited(Some(S * 2)), t + S / 100));
        let kept = allowance * super::super::adaptive::CHANCE_KEPT;
        assert_eq!(p.rate(), Some(kept));
        // Not a whole gap later: when the service's oldest request leaves.
        let at = t + S / 100 + S * 2;
        assert_eq!(p.try_start(at - S / 100, 0.5), Err(Wait::Until(at)));
        assert!(p.try_start(at, 0.5).is_ok());
    }

    #[test]
    fn unlimited() {
        let mut p = Pacing::new(None);
        let t = Instant::now();
        for _ in 0..100 {
            let k = p.try_start(t, 0.5).expect("no limit");
            assert!(!p.finished(k, Answer::RateLimited(None), t));
        }
        assert_eq!(p.allowance(), None);
    }
}
