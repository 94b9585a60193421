//! How many requests per window this client allows itself when unknown others may share its
//! token's rate limit, learnt only from the service's answers and our own timing.
//!
//! The allowance is a real number of requests per window, spent evenly (one request every
//! `window / allowance`, jittered), so a share below one request per window exists and a
//! fleet's requests interleave instead of colliding in bursts.
//!
//! - **Start**: half the limit, doubled after a window without a 429. A fleet started
//!   together meets the limit within seconds, each mount with one 429; a mount alone has the
//!   whole limit after 10 s.
//! - **The first 429** sets the allowance to our share of the full window:
//!   - from the start's allowance: `START_TRIM` of what we sent by then, less `START_LESS`
//!     of a request: the first request and then the allowance spread evenly (whole requests
//!     are too coarse when the share is one or two); every mount of a fleet started together
//!     measures alike. The measure runs high (we learn the window is full only at our send
//!     after it filled), and shares that add up to more than the limit cost more in 429s
//!     than the trim costs; a share of a few requests needs more room (its count in any
//!     window varies more with where its requests fall);
//!   - once the start's allowance grew: the allowance before it doubled, trimmed (a pair of
//!     mounts fits the start's half limit each for a whole window and meets its first 429
//!     only after doubling; how many each got in after that is a race);
//!   - the window full at once, and filled within the last second (`Retry-After` is the whole
//!     window): a fleet started just before us. Each of them met the full window at its
//!     send one gap of the start's pace after its spread began: our share is what we would
//!     have sent by then (measured from our own start, a mount that started 0.2 s after the
//!     others took a sixth less than they did, and ended with two thirds of their bytes);
//!   - the window full at once, and filled earlier: we joined a token in use and measured
//!     nothing; grow by `QUIET_GROWTH` per window until the next 429 (the others make room
//!     as the 429s our growth causes meet them, in proportion to their shares).
//! - **Each later 429**, once per episode (429s answering requests sent before the last
//!   decrease are echoes of it):
//!   - *chance*, on a shared token past its start, some of our requests since the last cut
//!     accepted: the window was full at our send because the fleet's sends bunched (the
//!     start's measure left room). The allowance keeps `CHANCE_KEPT` of itself, for good,
//!     and the request goes again as soon as the service's oldest request leaves (its
//!     `Retry-After`; a 429 takes no slot), not a whole gap later: with each mount sending
//!     evenly, a bunch recurs at the same phase each period, so a mount that waits meets it
//!     again, is cut again and falls behind the others (16 mounts ended 1.5 to 2.2x apart
//!     after a minute). The retry races the others for the slot that freed; lost, it goes
//!     once more (`CHANCE_RETRIES`) without a further cut. Not below one request per
//!     window: that share is a fleet of more mounts than the limit has requests, where one
//!     bunch's 429s meet many mounts at once and their retries, all at the same
//!     `Retry-After`, bunch again (64 mounts in the model: 17 % of requests answered 429
//!     with the retry, 11 % without);
//!   - *never let in*, none of our requests ever accepted: the service counted none of them,
//!     so what fills its window is others' (a mount alone at the whole limit refills each
//!     slot as it frees, and a joiner that cut itself at each 429 vanished). No cut, no
//!     growth; the request goes again when the window's oldest leaves (or later: the
//!     backoff of repeated 429s);
//!   - *refused again*, none of our requests sent since the last cut accepted: no chance,
//!     the token is over its limit (a fleet larger than a request per window each, whose
//!     start measured nothing); the cut deepens with each such 429 in a row (`BETA`
//!     squared, cubed, up to the fourth power) and is kept;
//!   - otherwise (the 429 that ends a joiner's probe, or that tells a mount which believed
//!     it was alone that it is not): `BETA`, regrown most of the way back (`REGROW`) each
//!     window towards `KEEP` of what it was.
//! - **Increase**, only while the allowance is what holds requests back (probe only with
//!   demand), once per window; how fast depends on what the 429s said:
//!   - *shared*: `SHARED_GROWTH * limit * (allowance / limit)^2` requests per window: the
//!     fleet's growth (N mounts of a share 1/N each) then shrinks as 1/N, as does what one
//!     429 takes, so a fleet's 429s per window do not grow with its size. The growth has no
//!     pull towards equal shares (a larger share meets more 429s but also grows more), so
//!     nothing else may push shares apart. After a long quiet, by `QUIET_GROWTH`: a mount
//!     may have left. Long is `QUIET_TIMES` our usual number of requests between two 429s
//!     (known once a 429 came after the start's) and at least `QUIET` times the fleet our
//!     share implies (`limit / allowance`) to the power `QUIET_EXPONENT`, at most
//!     `QUIET_MOST`: a leave matters less in a larger fleet, and there a mount spared by
//!     chance grew while the others paid for its growth with their 429s (over ten
//!     minutes, 8 mounts drifted to 3x apart in the model, 16 to 2-3x). The 429 that ends
//!     the growth keeps `QUIET_KEPT` of it, for good.
//!   - *alone*: two steady 429s in a row said the oldest request in the service's window was
//!     ours (its `Retry-After` is when our own oldest leaves, and at least 2 s: with others
//!     sending evenly, the window's oldest request leaves within a second). The limit itself
//!     fell (a storm of 429s); grow by `ALONE_GROWTH` per window so that when it rises again
//!     the whole limit is back within a minute. A later 429 that says others are there
//!     takes it back to what it had when it believed it was alone.
//! - Never above the configured limit, never below `MIN_SHARE` of it.
//!
//! Pure: every call takes the time, so tests and the fleet model run on a virtual clock.
use std::time::{Duration, Instant};

use super::RateLimit;

/// Multiplicative decrease: the allowance kept after a 429, at most.
pub const BETA: f64 = 0.8;
/// The allowance at start, as a fraction of the limit.
pub const START: f64 = 0.5;
/// The allowance kept after a 429, at least (the share got may be a chance low).
pub const FLOOR: f64 = 0.1;
/// A limit of at most this many requests starts whole: a third of it would be one request.
pub const START_FLOOR: f64 = 3.0;
/// Growth per window before the first 429.
pub const START_GROWTH: f64 = 2.0;
/// Steady 429s in a row that said we were alone before we believe it.
pub const ALONE_AFTER: u32 = 2;
/// Growth per window when the last 429s said we were alone under a lower limit.
pub const ALONE_GROWTH: f64 = 1.6;
/// What a 429 that is neither chance nor a refusal in a row (it ends a joiner's probe, or
/// a belief in being alone) takes for good from the allowance regrown to.
pub const KEEP: f64 = 0.9;
/// Below the allowance before the last 429, the part of the distance to it regained per window.
pub const REGROW: f64 = 0.7;
/// Growth per window on a shared token, times the limit and the square of the allowance's
/// fraction of it.
pub const SHARED_GROWTH: f64 = 0.03;
/// The least quiet, times `(limit / allowance)^QUIET_EXPONENT` and at most `QUIET_MOST`,
/// after which a shared mount grows by `QUIET_GROWTH` per window: a mount may have left.
pub const QUIET: Duration = Duration::from_secs(25);
/// Growth per window after a long quiet on a shared token (not the start's doubling: a
/// whole fleet grows at once when its 429s are rare).
pub const QUIET_GROWTH: f64 = 1.25;
/// A long quiet is at least this many times our usual number of requests between two 429s.
pub const QUIET_TIMES: f64 = 2.0;
/// Of what a long quiet made a mount grow by, the part kept at the 429 that ends it.
pub const QUIET_KEPT: f64 = 0.5;
/// The spread of the gap between two requests, as a fraction of it (centred on it). Small:
/// the service counts requests per window, so what matters is that each mount's count in
/// any window stays steady, not that mounts never meet at one instant.
pub const JITTER: f64 = 0.2;
/// The smallest allowance, as a fraction of the limit: one request per 200 windows.
pub const MIN_SHARE: f64 = 1.0 / 6000.0;
/// A first 429 before we sent this many requests (at our start's pace) means we joined.
pub const JOINED: f64 = 1.5;
/// The part of the share measured in time at the first 429 that is kept (see the module's doc).
pub const START_TRIM: f64 = 0.95;
/// Requests taken off the share measured at the first 429, besides the trim: a share of a few
/// requests varies more, in any window, with where they fall, and needs more room.
pub const START_LESS: f64 = 0.12;
/// What a chance 429 keeps of the allowance, for good.
pub const CHANCE_KEPT: f64 = 0.9;
/// Times a chance 429's request goes again when the retry is refused too, before the 429
/// counts as a refusal in a row (the retry races the others for the slot that freed).
pub const CHANCE_RETRIES: u32 = 1;
/// The least quiet grows with the fleet the share implies, as this power of it: a leave
/// matters less in a larger fleet, and a quiet growth there takes from many small shares.
pub const QUIET_EXPONENT: f64 = 1.25;
/// The longest least quiet: a fleet of hundreds, cut below its share by its start, regains it.
pub const QUIET_MOST: Duration = Duration::from_secs(400);

/// What a 429 asks of the pacing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    /// An echo of an earlier decrease: nothing.
    Echo,
    /// The allowance was cut (`changed`: it moved).
    Cut { changed: bool },
    /// Chance (see the module's doc): the service did not count the request; send again as
    /// soon as its oldest request leaves the window. `changed`: the allowance moved.
    Retry { changed: bool },
}

impl Reaction {
    /// The allowance moved.
    pub fn changed(self) -> bool {
        matches!(
            self,
            Reaction::Cut { changed: true } | Reaction::Retry { changed: true }
        )
    }
}

/// What the last 429s said about who else uses the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No 429 yet.
    Start,
    Shared,
    Alone,
}

#[derive(Debug, Clone)]
pub struct AdaptiveRate {
    ceiling: f64,
    /// Requests per window allowed now.
    rate: f64,
    window: Duration,
    /// A window plus the pacer's margin: how long a request counts at the service.
    span: Duration,
    phase: Phase,
    /// 429 episodes in a row whose `Retry-After` said the window's oldest request was ours.
    alone_streak: u32,
    /// The allowance before the last decrease on a shared token: regrown to quickly.
    before: f64,
    /// The allowance when we came to believe we were alone.
    shared_level: f64,
    /// The first request's start.
    started_at: Option<Instant>,
    /// The second request's start, from which the allowance is spread (the first is sent
    /// alone, and its answer takes longer: a new connection).
    spread_from: Option<Instant>,
    /// The allowance before the start's last doubling, if it doubled before the first 429:
    /// the token bore it for a window.
    grown_from: Option<f64>,
    /// The first 429 said we joined a token in use; until the next one we probe for a share.
    joining: bool,
    /// The last decrease or increase.
    changed_at: Option<Instant>,
    decreased_at: Option<Instant>,
    /// The send time of our latest request the service accepted.
    last_accepted: Option<Instant>,
    /// 429 episodes in a row with nothing of ours accepted between them.
    refused_streak: i32,
    /// The allowance when a long quiet made us grow by `QUIET_GROWTH`; cleared by a 429.
    quiet_from: Option<f64>,
    /// Requests started, and since the last cut.
    sent: u64,
    sent_since_cut: u64,
    /// 429 episodes (cuts), the start's included.
    cuts: u64,
    /// Times the request of the last chance 429 went again (see `CHANCE_RETRIES`); `None`
    /// when the last 429 was not chance.
    retries: Option<u32>,
}

impl AdaptiveRate {
    pub fn new(limit: RateLimit, margin: Duration) -> AdaptiveRate {
        let ceiling = f64::from(limit.requests.max(1));
        AdaptiveRate {
            ceiling,
            rate: (ceiling * START).max(START_FLOOR.min(ceiling)),
            window: limit.window,
            span: limit.window + margin,
            phase: Phase::Start,
            alone_streak: 0,
            before: 0.0,
            shared_level: 0.0,
            started_at: None,
            spread_from: None,
            grown_from: None,
            joining: false,
            changed_at: None,
            decreased_at: None,
            last_accepted: None,
            refused_streak: 0,
            quiet_from: None,
            sent: 0,
            sent_since_cut: 0,
            cuts: 0,
            retries: None,
        }
    }

    /// Requests allowed per window now, rounded up (the slots the pacer may hold).
    pub fn current(&self) -> u32 {
        self.rate.ceil().clamp(1.0, self.ceiling) as u32
    }

    /// Requests allowed per window now.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The least time from one request's start to the next, drawn from `unit` (uniform in
    /// [0, 1)): the window spread evenly over the allowance, jittered so that mounts sharing
    /// a token do not keep meeting at the same instants. Zero at the whole limit: a mount
    /// alone keeps its bursts.
    pub fn gap(&self, unit: f64) -> Duration {
        if self.rate >= self.ceiling {
            return Duration::ZERO;
        }
        let spread = 1.0 + JITTER * (unit.clamp(0.0, 1.0) - 0.5);
        self.span.mul_f64(spread / self.rate)
    }

    /// `quiet` since the last cut is long (see the module's doc): long for the share, and
    /// `QUIET_TIMES` our usual number of requests between two 429s.
    fn long_quiet(&self, quiet: Duration) -> bool {
        let usual = (self.sent - self.sent_since_cut) as f64 / self.cuts.max(1) as f64;
        self.cuts >= 2
            && quiet
                >= QUIET
                    .mul_f64((self.ceiling / self.rate).powf(QUIET_EXPONENT))
                    .min(QUIET_MOST)
            && self.sent_since_cut as f64 >= QUIET_TIMES * usual
    }

    /// Requests per window added each window on a shared token (see the module's doc).
    fn shared_growth(&self) -> f64 {
        self.shared_growth_at(self.rate)
    }

    fn shared_growth_at(&self, rate: f64) -> f64 {
        SHARED_GROWTH * self.ceiling * (rate / self.ceiling).powi(2)
    }

    /// A request starts at `now`.
    pub fn on_start(&mut self, now: Instant) {
        if self.started_at.is_some() {
            self.spread_from.get_or_insert(now);
        }
        self.started_at.get_or_insert(now);
        self.sent += 1;
        self.sent_since_cut += 1;
    }

    /// The service accepted a request sent at `sent`.
    pub fn on_accepted(&mut self, sent: Instant) {
        self.last_accepted = Some(self.last_accepted.map_or(sent, |t| t.max(sent)));
    }

    /// A 429 answered a request sent at `sent` with `retry_after`; `accepted`: the send times
    /// of our requests the service accepted in the window before `now`, oldest first.
    pub fn on_rate_limited(
        &mut self,
        sent: Instant,
        retry_after: Option<Duration>,
        accepted: &[Instant],
        now: Instant,
    ) -> Reaction {
        if self.decreased_at.is_some_and(|d| sent < d) {
            // An echo; after a chance 429 its request goes again too.
            return if self.retries.is_some() {
                Reaction::Retry { changed: false }
            } else {
                Reaction::Echo
            };
        }
        // Whole seconds until our oldest accepted request leaves the service's window, as
        // the service rounds its `Retry-After`.
        let ours = accepted
            .iter()
            .find(|&&t| t + self.window > sent)
            .map(|&t| ceil_secs((t + self.window).saturating_duration_since(sent)));
        let alone = matches!((retry_after, ours), (Some(r), Some(o)) if r.as_secs() >= 2 && o <= r.as_secs());
        // Only a 429 a window after the last decrease counts as evidence of being alone:
        // right after one (and at the start) the token's users send in bursts, which fill the
        // window early and make its oldest request anyone's.
        let steady = self
            .decreased_at
            .is_some_and(|d| now.saturating_duration_since(d) >= self.span);
        if !alone {
            self.alone_streak = 0;
        } else if steady {
            self.alone_streak += 1;
        }
        // The start's allowance was a guess, not a level the token bore.
        let was_start = self.phase == Phase::Start;
        let was_alone = self.phase == Phase::Alone;
        self.phase = if self.alone_streak >= ALONE_AFTER {
            Phase::Alone
        } else {
            Phase::Shared
        };
        // Others are there after all: what we grew to while alone was never our share.
        let left_alone = was_alone && self.phase == Phase::Shared;
        if !was_start && self.last_accepted.is_none() {
            // Nothing of ours was ever accepted: the service counted none of our requests, so
            // what fills its window is others'. No cut: the request goes again when the
            // window's oldest leaves.
            self.decreased_at = Some(now);
            self.retries = Some(0);
            return Reaction::Retry { changed: false };
        }
        // Refused again, and none of our requests sent since the last cut accepted: the token
        // is over its limit, not unlucky; this cut is kept.
        let refused_again = !was_start
            && self
                .decreased_at
                .is_some_and(|d| self.last_accepted.is_none_or(|a| a < d));
        self.refused_streak = if refused_again {
            self.refused_streak + 1
        } else {
            0
        };
        let cut = BETA.powi(1 + self.refused_streak.min(3));
        // Chance: a steady shared mount whose window was full at its send (see the module's
        // doc). Not while joining or growing after a quiet: their 429 is the measure.
        let chance = !was_start
            && !was_alone
            && self.phase == Phase::Shared
            && !self.joining
            && self.quiet_from.is_none()
            && self.rate >= 1.0;
        let retries = self.retries.take();
        if chance && refused_again && retries.is_some_and(|n| n < CHANCE_RETRIES) {
            // The retry lost the race for the slot that freed: again, and no further cut.
            self.refused_streak = 0;
            self.retries = retries.map(|n| n + 1);
            self.decreased_at = Some(now);
            return Reaction::Retry { changed: false };
        }
        if chance && !refused_again {
            self.retries = Some(0);
            self.cuts += 1;
            self.sent_since_cut = 0;
            self.decreased_at = Some(now);
            let next = (self.rate * CHANCE_KEPT).max(self.ceiling * MIN_SHARE);
            self.before *= next / self.rate;
            let changed = next != self.rate;
            self.rate = next;
            return Reaction::Retry { changed };
        }
        let share = if was_start {
            if let Some(from) = self.grown_from {
                // The token bore the allowance before the doubling for a whole window; what
                // each of us got in after it is a race.
                from * START_TRIM
            } else {
                // Everyone started as we did, and the window filled `filled` after our
                // spread began: our share of it is what we sent by then, the first request
                // and then our allowance spread evenly (counted from the second request, so
                // that the first answer's latency does not count as time spent sending).
                let filled = self
                    .spread_from
                    .or(self.started_at)
                    .map_or(self.window, |s| sent.saturating_duration_since(s));
                let sent_by_then = |d: Duration| {
                    START_TRIM * (1.0 + self.rate * d.as_secs_f64() / self.span.as_secs_f64())
                        - START_LESS
                };
                let ours = sent_by_then(filled);
                match retry_after {
                    // The window filled within the last second, whole seconds as the service
                    // rounds: the others started just before us, and each of them met it at
                    // its send one gap of the start's pace after its spread began.
                    Some(r) if ours < JOINED && r + Duration::from_secs(1) >= self.window => {
                        sent_by_then(self.span.div_f64(self.rate))
                    }
                    _ => ours,
                }
            }
        } else if left_alone {
            (self.rate * cut).min(self.shared_level)
        } else if let Some(from) = self.quiet_from {
            // What the quiet made us grow by was a guess: half of it is kept.
            (self.rate * cut).min(from + (self.rate - from) * QUIET_KEPT)
        } else {
            self.rate * cut
        };
        let ended_quiet = self.quiet_from.take().is_some();
        self.cuts += 1;
        self.sent_since_cut = 0;
        let next = share
            .max(self.rate * FLOOR)
            .min(self.rate * cut)
            .clamp(self.ceiling * MIN_SHARE, self.ceiling);
        self.joining = was_start && share < JOINED * START_TRIM;
        self.before = if was_start || refused_again || ended_quiet {
            next
        } else if left_alone {
            next * KEEP
        } else {
            self.rate * KEEP
        };
        if self.phase == Phase::Alone && !was_alone {
            self.shared_level = next;
        }
        self.decreased_at = Some(now);
        self.changed_at = Some(now);
        let changed = next != self.rate;
        self.rate = next;
        Reaction::Cut { changed }
    }

    /// The allowance held a request back at `now`: grow, at most once a window.
    /// Returns whether the allowance changed.
    pub fn on_held_back(&mut self, now: Instant) -> bool {
        if self.rate >= self.ceiling {
            return false;
        }
        if self.phase != Phase::Start && self.last_accepted.is_none() {
            // Never let in: no level the token bore to grow from.
            return false;
        }
        let Some(changed_at) = self.changed_at else {
            // The first window starts now.
            self.changed_at = Some(now);
            return false;
        };
        if now.saturating_duration_since(changed_at) < self.span {
            return false;
        }
        let quiet = self
            .decreased_at
            .map_or(Duration::MAX, |d| now.saturating_duration_since(d));
        let next = match self.phase {
            Phase::Start => {
                self.grown_from = Some(self.rate);
                self.rate * START_GROWTH
            }
            Phase::Alone => self.rate * ALONE_GROWTH,
            Phase::Shared if self.joining => self.rate * QUIET_GROWTH,
            Phase::Shared if self.long_quiet(quiet) => {
                self.quiet_from.get_or_insert(self.rate);
                self.rate * QUIET_GROWTH
            }
            // Back towards what the token bore before the last 429, `REGROW` of the distance
            // each window; the 429 was most likely chance (see the module's doc).
            Phase::Shared if self.rate < self.before => {
                self.rate + ((self.before - self.rate) * REGROW).max(self.shared_growth())
            }
            Phase::Shared => self.rate + self.shared_growth(),
        };
        self.rate = next.min(self.ceiling);
        self.changed_at = Some(now);
        true
    }
}

/// Whole seconds, rounded up, as the service gives `Retry-After`.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPAN: Duration = Duration::from_millis(10_100);
    const S: Duration = Duration::from_secs(1);

    fn rate() -> AdaptiveRate {
        AdaptiveRate::new(RateLimit::QRYPT, Duration::from_millis(100))
    }

    #[test]
    fn starts_at_half_the_limit_and_doubles_after_a_window_without_a_429() {
        let mut r = rate();
        let t0 = Instant::now();
        assert_eq!(r.current(), 15);
        assert!(!r.on_held_back(t0), "the first window starts");
        assert!(!r.on_held_back(t0 + SPAN - Duration::from_millis(1)));
        assert!(r.on_held_back(t0 + SPAN));
        assert_eq!(r.current(), 30);
        assert_eq!(
            r.gap(0.5),
            Duration::ZERO,
            "the whole limit keeps its bursts"
        );
        assert!(!r.on_held_back(t0 + SPAN * 2), "never above the limit");
    }

    #[test]
    fn requests_are_spread_evenly_with_jitter() {
        let r = rate();
        assert_eq!(r.gap(0.5), SPAN / 15);
        assert!(r.gap(0.0) < r.gap(0.5) && r.gap(0.5) < r.gap(0.999));
        assert_eq!(r.gap(0.0), SPAN.mul_f64((1.0 - JITTER / 2.0) / 15.0));
    }

    #[test]
    fn the_first_429_lowers_to_the_share_sent() {
        let mut r = rate();
        let t0 = Instant::now() + Duration::from_secs(100);
        // Started 2.02 s before the window was found full: the first request, then 15 per
        // 10.1 s: 4 of the window's requests were ours, less the trim.
        r.on_start(t0 - Duration::from_millis(2020));
        let mine = [t0 - Duration::from_millis(2020), t0 - S];
        let reaction = r.on_rate_limited(t0, Some(S), &mine, t0 + Duration::from_millis(5));
        assert_eq!(reaction, Reaction::Cut { changed: true });
        let first = 4.0 * START_TRIM - START_LESS;
        assert!((r.rate() - first).abs() < 1e-9, "{}", r.rate());
        // Answers to requests sent before the decrease change nothing.
        let echo = r.on_rate_limited(t0, Some(S), &mine, t0 + Duration::from_millis(6));
        assert_eq!(echo, Reaction::Echo);
        assert!((r.rate() - first).abs() < 1e-9, "{}", r.rate());
    }

    /// Past the start's 429 (at 3.68), one request accepted; returns the start's share.
    fn past_the_start(r: &mut AdaptiveRate, t0: Instant) -> f64 {
        r.on_start(t0 - Duration::from_millis(2020));
        r.on_rate_limited(t0, Some(S), &[], t0);
        r.on_accepted(t0 + S);
        r.rate()
    }

    #[test]
    fn a_chance_429_keeps_nine_tenths_for_good_and_its_request_goes_again() {
        let mut r = rate();
        let t0 = Instant::now() + Duration::from_secs(100);
        let first = past_the_start(&mut r, t0);
        let t1 = t0 + S * 20;
        r.on_start(t1);
        let reaction = r.on_rate_limited(t1, Some(S * 2), &[t0 + S], t1);
        assert_eq!(reaction, Reaction::Retry { changed: true });
        let kept = first * CHANCE_KEPT;
        assert!((r.rate() - kept).abs() < 1e-9, "{}", r.rate());
        // Kept for good: it grows by the shared growth alone.
        assert!(r.on_held_back(t1));
        assert!((r.rate() - kept - r.shared_growth_at(kept)).abs() < 1e-9);
        let now = r.rate();
        // An echo of it goes again too; the retry, refused, goes once more without a cut.
        let echo = r.on_rate_limited(t1 - S, Some(S * 2), &[], t1 + S);
        assert_eq!(echo, Reaction::Retry { changed: false });
        let t2 = t1 + S * 2;
        r.on_start(t2);
        let lost = r.on_rate_limited(t2, Some(S), &[], t2);
        assert_eq!(lost, Reaction::Retry { changed: false });
        assert_eq!(r.rate(), now);
        // Refused a third time with nothing accepted: the token is over its limit.
        let t3 = t2 + S;
        r.on_start(t3);
        let over = r.on_rate_limited(t3, Some(S), &[], t3);
        assert_eq!(over, Reaction::Cut { changed: true });
        assert!((r.rate() - now * BETA * BETA).abs() < 1e-9, "{}", r.rate());
    }

    #[test]
    fn a_mount_never_let_in_is_not_cut_and_goes_again_when_the_oldest_leaves() {
        let mut r = rate();
        let t0 = Instant::now() + Duration::from_secs(100);
        // A joiner whose first request met a window filled long before (a mount alone at the
        // whole limit refills each slot as it frees).
        r.on_start(t0);
        r.on_rate_limited(t0, Some(S * 2), &[], t0);
        let share = r.rate();
        for i in 1..5 {
            let t = t0 + S * 10 * i;
            r.on_start(t);
            let reaction = r.on_rate_limited(t, Some(S), &[], t);
            assert_eq!(reaction, Reaction::Retry { changed: false });
            assert_eq!(r.rate(), share, "no cut");
            assert!(!r.on_held_back(t + SPAN), "no growth before it got in");
        }
        // In at last: a refusal with nothing accepted since a cut is over the limit again.
        let t = t0 + S * 60;
        r.on_accepted(t);
        r.on_start(t + S);
        r.on_rate_limited(t + S, Some(S), &[t], t + S);
        let cut = r.rate();
        assert!(cut < share, "{cut}");
        r.on_start(t + S * 11);
        assert!(
            r.on_rate_limited(t + S * 11, Some(S), &[], t + S * 11)
                .changed()
        );
        assert!(r.rate() < cut);
    }

    #[test]
    fn below_one_request_per_window_a_429_is_a_cut_and_no_retry() {
        let mut r = rate();
        let t0 = Instant::now() + Duration::from_secs(100);
        // The start's 429, then one more with nothing accepted between: the token is over
        // its limit, and the share falls below one request per window.
        r.on_start(t0 - S);
        r.on_accepted(t0 - S);
        r.on_start(t0);
        r.on_rate_limited(t0, Some(S * 2), &[], t0);
        r.on_start(t0 + S * 10);
        r.on_rate_limited(t0 + S * 10, Some(S * 2), &[], t0 + S * 10);
        r.on_accepted(t0 + S * 30);
        assert!(r.rate() < 1.0, "{}", r.rate());
        let share = r.rate();
        let t1 = t0 + S * 60;
        r.on_start(t1);
        let reaction = r.on_rate_limited(t1, Some(S), &[t0 + S * 30], t1);
        assert_eq!(reaction, Reaction::Cut { changed: true });
        assert!((r.rate() - share * BETA).abs() < 1e-9, "{}", r.rate());
    }

    #[test]
    fn chance_429s_never_take_the_allowance_below_the_least_share() {
        let mut r = rate();
        let t0 = Instant::now() + Duration::from_secs(100);
        past_the_start(&mut r, t0);
        for i in 1..100 {
            let t = t0 + S * 20 * i;
            r.on_accepted(t - S);
            r.on_rate_limited(t, Some(S), &[], t);
        }
        assert_eq!(r.rate(), 30.0 * MIN_SHARE, "never below the least share");
        assert_eq!(r.current(), 1);
    }

    #[test]
    fn a_first_429_after_the_start_grew_takes_what_the_token_bore_before() {
        let mut r = rate();
        let t0 = Instant::now() + Duration::from_secs(100);
        r.on_start(t0 - S * 12);
        // Two mounts at 15 each fit the limit: no 429 in the first window, then both double.
        assert!(!r.on_held_back(t0 - S * 12));
        assert!(r.on_held_back(t0 - Duration::from_millis(1900)));
        assert_eq!(r.current(), 30);
        // 17 of ours in the window when the first 429 came, ahead of the other mount in the
        // race after both doubled: the 15 the token bore a window long is the share.
        let mine: Vec<Instant> = (1..=17).map(|i| t0 - S * 10 + S * i / 2).collect();
        assert!(r.on_rate_limited(t0, Some(S), &mine, t0).changed());
        assert!((r.rate() - 15.0 * START_TRIM).abs() < 1e-9, "{}", r.rate());
    }

    #[test]
    fn a_mount_that_finds_a_window_filled_within_the_second_takes_what_the_others_sent() {
        let t0 = Instant::now() + Duration::from_secs(100);
        // Its first request refused, and the window's oldest request leaves in 10 s: a fleet
        // started together just before it, each of which met the full window one gap of the
        // start's pace after its start, having sent two.
        let mut r = rate();
        r.on_start(t0);
        r.on_rate_limited(t0, Some(S * 10), &[], t0 + Duration::from_millis(5));
        let share = START_TRIM * 2.0 - START_LESS;
        assert!((r.rate() - share).abs() < 1e-9, "{}", r.rate());
        assert!(!r.joining);
        // The window's oldest leaves in 2 s: a token in use; once in, it probes for its share.
        let mut r = rate();
        r.on_start(t0);
        r.on_rate_limited(t0, Some(S * 2), &[], t0 + Duration::from_millis(5));
        assert!(r.joining);
        assert!(
            !r.on_held_back(t0 + Duration::from_millis(5) + SPAN),
            "not before it got in"
        );
        r.on_accepted(t0 + S * 2);
        let got = r.rate();
        assert!(r.on_held_back(t0 + Duration::from_millis(5) + SPAN));
        assert!((r.rate() - got * QUIET_GROWTH).abs() < 1e-9, "{}", r.rate());
    }

    /// `n` requests accepted, one every second from `from`; returns when the last was sent.
    fn accepted(r: &mut AdaptiveRate, from: Instant, n: u32) -> Instant {
        for i in 0..n {
            r.on_start(from + S * i);
            r.on_accepted(from + S * i);
        }
        from + S * n.saturating_sub(1)
    }

    /// A mount past its start's 429 that met a second after 20 accepted requests: its usual
    /// is 11 requests (22 sent over 2 cuts) between two 429s. Returns the second's time.
    fn shared_with_a_usual_of_11(r: &mut AdaptiveRate) -> Instant {
        let t0 = Instant::now() + Duration::from_secs(100);
        r.on_start(t0 - Duration::from_millis(1010));
        r.on_rate_limited(t0, Some(S), &[t0 - S], t0);
        let last = accepted(r, t0 + S, 20);
        let t1 = last + S;
        r.on_start(t1);
        assert!(r.on_rate_limited(t1, Some(S), &[], t1).changed());
        t1
    }

    /// `shared_with_a_usual_of_11`, then `n` requests accepted; returns a window after both
    /// the last of them and the share's least quiet.
    fn quiet_after(r: &mut AdaptiveRate, n: u32) -> Instant {
        let t1 = shared_with_a_usual_of_11(r);
        let last = accepted(r, t1 + S, n);
        last.max(t1 + QUIET.mul_f64((30.0 / r.rate()).powf(QUIET_EXPONENT))) + SPAN
    }

    #[test]
    fn a_shared_token_grows_slowly_and_no_faster_before_a_429_after_the_start() {
        let mut r = rate();
        let t0 = Instant::now() + Duration::from_secs(100);
        r.on_start(t0 - Duration::from_millis(1010));
        r.on_accepted(t0 - Duration::from_millis(1010));
        r.on_rate_limited(t0, Some(S), &[t0 - S], t0);
        let share = 2.5 * START_TRIM - START_LESS;
        assert!((r.rate() - share).abs() < 1e-9, "{}", r.rate());
        assert!(r.on_held_back(t0 + SPAN));
        // SHARED_GROWTH * 30 * (share / 30)^2: a share of 2.3 in 30 grows by 0.005 a window.
        let grown = share + SHARED_GROWTH * share * share / 30.0;
        assert!((r.rate() - grown).abs() < 1e-9, "{}", r.rate());
        // The start's 429 says nothing of how often 429s come: no quiet yet, however long.
        let last = accepted(&mut r, t0 + SPAN, 200);
        assert!(r.on_held_back(last + SPAN));
        assert!(r.rate() < grown * 1.01, "{}", r.rate());
    }

    #[test]
    fn a_long_quiet_is_two_usual_spans_between_429s_and_long_for_the_share() {
        let mut r = rate();
        // 21 requests after the cut, longer than the share's quiet: not yet.
        let late = quiet_after(&mut r, 21);
        r.on_held_back(late);
        let before = r.rate();
        assert!(r.on_held_back(late + SPAN));
        assert!(r.rate() < before * 1.1, "{before} -> {}", r.rate());
        // The 22nd (twice 11): a mount may have left.
        let at = late + SPAN * 2;
        accepted(&mut r, at, 1);
        let before = r.rate();
        assert!(r.on_held_back(at + SPAN));
        assert!(
            (r.rate() - before * QUIET_GROWTH).abs() < 1e-9,
            "{}",
            r.rate()
        );
    }

    #[test]
    fn the_429_that_ends_a_quiet_keeps_half_of_what_the_quiet_grew() {
        let mut r = rate();
        let quiet = quiet_after(&mut r, 22);
        // Three windows of growth from where the last cut left it.
        let from = r.rate();
        assert!(r.on_held_back(quiet));
        assert!(r.on_held_back(quiet + SPAN));
        assert!(r.on_held_back(quiet + SPAN * 2));
        let grown = r.rate();
        assert!(
            (grown - from * QUIET_GROWTH.powi(3)).abs() < 1e-9,
            "{from} {grown}"
        );
        // The 429 says the token bore less: half of the quiet's growth is kept, for good.
        let t2 = quiet + SPAN * 3;
        r.on_accepted(t2 - S);
        r.on_start(t2);
        assert!(r.on_rate_limited(t2, Some(S), &[], t2).changed());
        let kept = from + (grown - from) * QUIET_KEPT;
        assert!((r.rate() - kept).abs() < 1e-9, "{} != {kept}", r.rate());
        r.on_held_back(t2 + SPAN);
        assert!((r.rate() - kept - r.shared_growth_at(kept)).abs() < 1e-9);
    }

    #[test]
    fn the_429_that_ends_a_joiners_probe_regrows_towards_most_of_what_it_had() {
        let mut r = rate();
        let t0 = Instant::now() + Duration::from_secs(100);
        r.on_start(t0 - Duration::from_millis(9090));
        r.on_rate_limited(t0, Some(S), &[], t0);
        assert!(
            (r.rate() - 15.0 * BETA).abs() < 1e-9,
            "BETA of 15 at most: {}",
            r.rate()
        );
        // A joiner: its first request refused by a window filled long before; then one in.
        let mut r = rate();
        r.on_start(t0);
        r.on_rate_limited(t0, Some(S * 2), &[], t0);
        assert!(r.joining);
        r.on_accepted(t0 + S * 2);
        let mut t = t0;
        for _ in 0..4 {
            t += SPAN;
            assert!(r.on_held_back(t));
        }
        let grown = r.rate();
        let t1 = t + S;
        r.on_accepted(t1 - S);
        r.on_start(t1);
        let reaction = r.on_rate_limited(t1, Some(S), &[], t1);
        assert_eq!(reaction, Reaction::Cut { changed: true }, "not chance");
        assert!(!r.joining);
        let cut = grown * BETA;
        assert!((r.rate() - cut).abs() < 1e-9);
        r.on_held_back(t1 + SPAN);
        // Most of the way back to what it had, less what the 429 took for good.
        assert!(
            (r.rate() - (cut + (grown * KEEP - cut) * REGROW)).abs() < 1e-9,
            "{}",
            r.rate()
        );
    }

    #[test]
    fn a_429_after_nothing_accepted_since_the_last_cut_cuts_deeper_and_for_good() {
        let mut r = rate();
        let t0 = Instant::now() + Duration::from_secs(100);
        r.on_start(t0 - Duration::from_millis(9090));
        r.on_accepted(t0 - Duration::from_millis(9090));
        r.on_rate_limited(t0, Some(S), &[], t0);
        let start = r.rate();
        // Refused again, nothing accepted in between: over the limit, not unlucky.
        let t1 = t0 + S * 10;
        assert!(r.on_rate_limited(t1, Some(S), &[], t1).changed());
        assert!(
            (r.rate() - start * BETA * BETA).abs() < 1e-9,
            "{}",
            r.rate()
        );
        let t2 = t1 + S * 10;
        r.on_rate_limited(t2, Some(S), &[], t2);
        let kept = start * BETA.powi(5);
        assert!((r.rate() - kept).abs() < 1e-9, "{}", r.rate());
        // Nothing to regrow to: the level it was cut to is the level it bore.
        r.on_held_back(t2 + SPAN);
        assert!((r.rate() - kept - r.shared_growth_at(kept)).abs() < 1e-9);
        // One accepted since: a later 429 is chance again.
        r.on_accepted(t2 + SPAN * 2);
        let got = r.rate();
        let t3 = t2 + SPAN * 3;
        let reaction = r.on_rate_limited(t3, Some(S), &[], t3);
        assert_eq!(reaction, Reaction::Retry { changed: true });
        assert!((r.rate() - got * CHANCE_KEPT).abs() < 1e-9, "{}", r.rate());
    }

    #[test]
    fn steady_429s_whose_retry_after_is_our_own_oldest_request_mean_a_lower_limit() {
        let mut r = rate();
        let t0 = Instant::now() + Duration::from_secs(100);
        // Alone under 3 / 10 s: our oldest of three leaves the window in 4 s, and the
        // service says 4.
        let mine = [t0 - S * 6, t0 - S * 3, t0 - S];
        r.on_accepted(t0 - S);
        r.on_rate_limited(t0, Some(S * 4), &mine, t0);
        assert_eq!(r.phase, Phase::Shared, "the start's 429 is no evidence");
        let t1 = t0 + S * 11;
        let mine = [t1 - S * 7, t1 - S * 4, t1 - S];
        r.on_rate_limited(t1, Some(S * 3), &mine, t1);
        assert_eq!(r.phase, Phase::Shared, "one steady 429 is not enough");
        let t1 = t1 + S * 11;
        let mine = [t1 - S * 7, t1 - S * 4, t1 - S];
        r.on_rate_limited(t1, Some(S * 3), &mine, t1);
        assert_eq!(r.phase, Phase::Alone);
        let got = r.rate();
        r.on_held_back(t1 + SPAN);
        assert!((r.rate() - got * ALONE_GROWTH).abs() < 1e-9);
        // With others sending, the window's oldest leaves within a second: what it grew to
        // while it believed it was alone is dropped.
        r.on_held_back(t1 + SPAN * 2);
        assert!(r.rate() > got * ALONE_GROWTH);
        let t2 = t1 + S * 30;
        r.on_rate_limited(t2, Some(S), &[t2 - S * 4], t2);
        assert_eq!(r.phase, Phase::Shared);
        assert!(r.rate() <= got, "{} > {got}", r.rate());
    }
}
