//! The upstream state machine: the one owner of the upstream's state. A request's outcome goes
//! in, the next state and the time of the next attempt come out. No I/O, no clock of its own
//! (time is an argument), no tokio: each status code's policy is tested here on its own.
//!
//! | outcome                                  | state             | next attempt              |
//! |------------------------------------------|-------------------|---------------------------|
//! | 200, validated and healthy               | `ok`              | now                       |
//! | 400                                      | `bad request`     | none until SIGHUP         |
//! | 401                                      | `unauthorized`    | none until new token/HUP  |
//! | 403                                      | `quota exhausted` | after `quota_retry`       |
//! | 429 with `Retry-After`                   | `backing off`     | as asked (base..=cap), or |
//! |                                          |                   | the backoff if longer     |
//! | any other status, transport, validation, | `backing off`     | exponential backoff with  |
//! | health or local RNG failure              |                   | full jitter               |
//!
//! Readers on an empty buffer fail fast (`EIO`) only in the three stops (400, 401, 403).
//!
//! Requests carry the *epoch* they were sent in. The epoch advances whenever the upstream
//! enters a stop (400, 401, 403) or leaves one, so the answer to a request sent before that
//! cannot undo it: a 200 in flight when a 403 arrived still delivers its bytes, but does not
//! declare the quota available again.
use std::time::{Duration, Instant};

use crate::status::view::{UpstreamState, View};
use crate::upstream::FetchError;
use backoff::Backoff;

mod backoff;

/// What a finished request tells the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Validated bytes that passed the health tests.
    Delivered,
    /// The service answered with this non-200 status (and, for a 429, maybe `Retry-After`).
    Http {
        code: u16,
        retry_after: Option<Duration>,
    },
    /// No usable bytes for another reason: transport, validation, health, the local RNG.
    Failed,
}

impl From<&FetchError> for Outcome {
    fn from(e: &FetchError) -> Outcome {
        match e {
            FetchError::Status { code, retry_after } => Outcome::Http {
                code: *code,
                retry_after: *retry_after,
            },
            _ => Outcome::Failed,
        }
    }
}

/// What the machine decided about a failure, for the log line that explains it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// 400: stopped until SIGHUP.
    StopBadRequest,
    /// 401: stopped until a new token.
    StopUnauthorized,
    /// 403: next try after this long.
    QuotaWait(Duration),
    /// 429 with `Retry-After`: waiting `wait` (the server asked for `asked`).
    RateLimited { wait: Duration, asked: Duration },
    /// Anything else: retrying after this long.
    Retry(Duration),
}

/// Timing of the policy, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// How long to wait before asking again after a 403 (quota used up).
    pub quota_retry: Duration,
}

/// The epoch a request was sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch(u64);

/// When the next request may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Not before this time.
    At(Instant),
    /// Not until an outside change (a new token, SIGHUP).
    Halted,
}

/// `now + d`, saturating instead of panicking far in the future.
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400))
}

/// The upstream state machine. The prefetcher feeds it every finished request's outcome and
/// asks it when the next request may go; nothing else changes the upstream state.
#[derive(Debug, Clone)]
pub struct Machine {
    policy: Policy,
    state: UpstreamState,
    next_attempt: Instant,
    backoff: Backoff,
    epoch: u64,
    consecutive_failures: u64,
    last_failure: Option<Instant>,
}

impl Machine {
    pub fn new(policy: Policy, now: Instant) -> Machine {
        Machine {
            backoff: Backoff::new(policy.backoff_base, policy.backoff_cap),
            policy,
            state: UpstreamState::Starting,
            next_attempt: now,
            epoch: 0,
            consecutive_failures: 0,
            last_failure: None,
        }
    }

    pub fn state(&self) -> UpstreamState {
        self.state
    }

    /// The epoch to stamp on a request sent now.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch)
    }

    /// 400 and 401 need an outside change; a 403 only a long wait.
    fn halted(&self) -> bool {
        matches!(
            self.state,
            UpstreamState::BadRequest | UpstreamState::Unauthorized
        )
    }

    pub fn gate(&self, now: Instant) -> Gate {
        if self.halted() {
            Gate::Halted
        } else if now < self.next_attempt {
            Gate::At(self.next_attempt)
        } else {
            Gate::Open
        }
    }

    pub fn view(&self) -> View {
        // A retry time is worth showing only while waiting for one (backing off, quota).
        let scheduled =
            !self.halted() && !matches!(self.state, UpstreamState::Ok | UpstreamState::Starting);
        View {
            state: self.state,
            next_attempt: scheduled.then_some(self.next_attempt),
            consecutive_failures: self.consecutive_failures,
            last_failure: self.last_failure,
        }
    }

    /// Whether the answer to a request sent in `sent` may change the state. Late answers are
    /// set aside only while stopped: otherwise a fill in flight at a SIGHUP would leave the
    /// state at `starting`.
    pub fn is_current(&self, sent: Epoch) -> bool {
        sent.0 == self.epoch || !self.state.holds()
    }

    /// Takes a finished request's outcome. Returns whether it was current (see
    /// [`Machine::is_current`]; older answers change nothing) and, for a current failure, what
    /// was decided.
    pub fn on_outcome(
        &mut self,
        sent: Epoch,
        outcome: Outcome,
        now: Instant,
    ) -> (bool, Option<Decision>) {
        if !self.is_current(sent) {
            return (false, None);
        }
        if outcome == Outcome::Delivered {
            self.delivered(now);
            return (true, None);
        }
        self.consecutive_failures += 1;
        self.last_failure = Some(now);
        let decision = self.failed(outcome, now);
        (true, Some(decision))
    }

    fn delivered(&mut self, now: Instant) {
        self.backoff.reset();
        self.next_attempt = now;
        self.consecutive_failures = 0;
        if self.state.holds() {
            self.epoch += 1;
        }
        self.state = UpstreamState::Ok;
    }

    fn failed(&mut self, outcome: Outcome, now: Instant) -> Decision {
        let (state, decision) = match outcome {
            Outcome::Http { code: 400, .. } => {
                (UpstreamState::BadRequest, Decision::StopBadRequest)
            }
            Outcome::Http { code: 401, .. } => {
                (UpstreamState::Unauthorized, Decision::StopUnauthorized)
            }
            Outcome::Http { code: 403, .. } => {
                self.backoff.note_failure();
                self.next_attempt = after(now, self.policy.quota_retry);
                (
                    UpstreamState::QuotaExhausted,
                    Decision::QuotaWait(self.policy.quota_retry),
                )
            }
            Outcome::Http {
                code: 429,
                retry_after: Some(asked),
            } => {
                // A server may ask for more than the backoff, never for less: "0", a date
                // in the past or a stream of small values still meet the backoff as it
                // grows with each failure. A huge value (a broken or hostile server) is
                // capped like the backoff, so one 429 cannot park the mount for years.
                let own = self.backoff.next_delay();
                let wait = asked
                    .max(self.policy.backoff_base)
                    .min(self.policy.backoff_cap)
                    .max(own);
                self.next_attempt = self.next_attempt.max(after(now, wait));
                (
                    UpstreamState::BackingOff,
                    Decision::RateLimited { wait, asked },
                )
            }
            _ => {
                let delay = self.backoff.next_delay();
                // Several requests fail together in an outage: the latest retry time wins.
                self.next_attempt = self.next_attempt.max(after(now, delay));
                (
                    UpstreamState::BackingOff,
                    Decision::Retry(self.next_attempt.saturating_duration_since(now)),
                )
            }
        };
        if state.is_stop() {
            self.epoch += 1;
        }
        self.state = state;
        decision
    }

    /// The budget refused the next request: no request until `until` (its renewal, or the
    /// next try to record it). Returns whether this entered the state (false: already there).
    pub fn budget_refused(&mut self, exhausted: bool, until: Instant) -> bool {
        let state = if exhausted {
            UpstreamState::BudgetExhausted
        } else {
            UpstreamState::BudgetUnwritable
        };
        let entered = self.state != state;
        if entered {
            // Answers to requests sent before this do not end it.
            self.epoch += 1;
        }
        self.state = state;
        self.next_attempt = until;
        entered
    }

    /// The budget allowed a request again. Returns whether a budget state ended.
    pub fn budget_allows(&mut self, now: Instant) -> bool {
        if !matches!(
            self.state,
            UpstreamState::BudgetExhausted | UpstreamState::BudgetUnwritable
        ) {
            return false;
        }
        self.epoch += 1;
        self.next_attempt = now;
        self.state = UpstreamState::Starting;
        true
    }

    /// Retries at once after an outside change (a new token, SIGHUP). Readers wait for the
    /// answer again instead of failing; a new refusal fails them again.
    pub fn resume(&mut self, now: Instant) {
        self.epoch += 1;
        self.next_attempt = now;
        self.backoff.reset();
        // A working upstream stays `ok`: bytes are served as before, and "starting" would
        // say they are not.
        if self.state != UpstreamState::Ok {
            self.state = UpstreamState::Starting;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::view::DEGRADED_WINDOW;

    #[test]
    fn budget_states_hold_until_the_budget_allows() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        let sent = m.epoch();
        let renews = t0 + Duration::from_secs(3600);
        assert!(m.budget_refused(true, renews));
        assert!(!m.budget_refused(true, renews), "entered once");
        let v = m.view();
        assert_eq!(
            (v.state, v.next_attempt),
            (UpstreamState::BudgetExhausted, Some(renews))
        );
        assert!(v.readers_fail_fast());
        assert_eq!(m.gate(t0), Gate::At(renews));
        // A 200 sent before the cap was reached delivers, but the state stays.
        assert_eq!(m.on_outcome(sent, Outcome::Delivered, t0), (false, None));
        assert_eq!(m.state(), UpstreamState::BudgetExhausted);
        assert!(m.budget_allows(renews));
        assert_eq!(
            (m.state(), m.gate(renews)),
            (UpstreamState::Starting, Gate::Open)
        );
        assert!(!m.budget_allows(renews));
        // Unwritable: readers wait, and late answers do not end it either.
        let sent = m.epoch();
        assert!(m.budget_refused(false, t0 + Duration::from_secs(5)));
        assert!(!m.view().readers_fail_fast());
        assert_eq!(m.on_outcome(sent, Outcome::Delivered, t0), (false, None));
        assert_eq!(m.state(), UpstreamState::BudgetUnwritable);
    }

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(2);
    const QUOTA: Duration = Duration::from_secs(3600);

    fn machine(now: Instant) -> Machine {
        Machine::new(
            Policy {
                backoff_base: BASE,
                backoff_cap: CAP,
                quota_retry: QUOTA,
            },
            now,
        )
    }

    fn http(code: u16) -> Outcome {
        Outcome::Http {
            code,
            retry_after: None,
        }
    }

    /// Feeds one outcome sent in the current epoch.
    fn feed(m: &mut Machine, outcome: Outcome, now: Instant) -> Option<Decision> {
        let sent = m.epoch();
        let (current, decision) = m.on_outcome(sent, outcome, now);
        assert!(current);
        decision
    }

    #[test]
    fn starts_open_and_a_success_is_ok() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        assert_eq!(m.state(), UpstreamState::Starting);
        assert_eq!(m.gate(t0), Gate::Open);
        assert_eq!(m.view().next_attempt, None);
        assert_eq!(feed(&mut m, Outcome::Delivered, t0), None);
        assert_eq!(m.view().state, UpstreamState::Ok);
        assert_eq!(m.view().next_attempt, None);
        assert!(!m.view().readers_fail_fast());
    }

    #[test]
    fn bad_request_and_unauthorized_halt_until_resumed() {
        for (code, state, decision) in [
            (400, UpstreamState::BadRequest, Decision::StopBadRequest),
            (401, UpstreamState::Unauthorized, Decision::StopUnauthorized),
        ] {
            let t0 = Instant::now();
            let mut m = machine(t0);
            assert_eq!(feed(&mut m, http(code), t0), Some(decision));
            let v = m.view();
            assert_eq!((v.state, v.next_attempt), (state, None));
            assert!(v.readers_fail_fast());
            assert_eq!(m.gate(t0 + Duration::from_secs(86_400)), Gate::Halted);
            let t1 = t0 + Duration::from_secs(5);
            m.resume(t1);
            assert_eq!(m.state(), UpstreamState::Starting);
            assert_eq!(m.gate(t1), Gate::Open);
            assert!(!m.view().readers_fail_fast(), "readers wait for the retry");
            assert_eq!(feed(&mut m, http(code), t1), Some(decision), "fails again");
            assert!(m.view().readers_fail_fast());
        }
    }

    #[test]
    fn quota_exhausted_waits_quota_retry_then_recovers() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        assert_eq!(
            feed(&mut m, http(403), t0),
            Some(Decision::QuotaWait(QUOTA))
        );
        let v = m.view();
        assert_eq!(v.state, UpstreamState::QuotaExhausted);
        assert_eq!(v.next_attempt, Some(t0 + QUOTA));
        assert!(v.readers_fail_fast());
        assert_eq!(m.gate(t0 + QUOTA / 2), Gate::At(t0 + QUOTA));
        assert_eq!(m.gate(t0 + QUOTA), Gate::Open);
        feed(&mut m, Outcome::Delivered, t0 + QUOTA);
        assert_eq!(m.state(), UpstreamState::Ok);
        assert!(!m.view().readers_fail_fast());
    }

    #[test]
    fn retry_after_is_honoured_within_base_and_cap() {
        for (asked, wait) in [
            (Duration::from_secs(1), Duration::from_secs(1)),
            (Duration::ZERO, BASE),
            (Duration::MAX, CAP),
        ] {
            let t0 = Instant::now();
            let mut m = machine(t0);
            let outcome = Outcome::Http {
                code: 429,
                retry_after: Some(asked),
            };
            assert_eq!(
                feed(&mut m, outcome, t0),
                Some(Decision::RateLimited { wait, asked })
            );
            assert_eq!(m.view().state, UpstreamState::BackingOff);
            assert_eq!(m.view().next_attempt, Some(t0 + wait));
            assert!(!m.view().readers_fail_fast(), "readers wait out a 429");
        }
    }

    /// Repeated 429s asking for no wait meet the backoff as it grows: each wait is at least
    /// the base and the jittered backoff, at most the larger of the clamped ask and the
    /// backoff's ceiling, and together they come to about half the cap each (the base each
    /// time would be 2 s in all).
    #[test]
    fn repeated_429s_never_retry_sooner_than_the_backoff() {
        for asked in [Duration::ZERO, Duration::from_millis(1), BASE] {
            let t0 = Instant::now();
            let mut m = machine(t0);
            let mut total = Duration::ZERO;
            for n in 0..20 {
                let ceiling = m.backoff.ceiling();
                let outcome = Outcome::Http {
                    code: 429,
                    retry_after: Some(asked),
                };
                let Some(Decision::RateLimited { wait, .. }) = feed(&mut m, outcome, t0) else {
                    panic!("not rate limited");
                };
                assert!(wait >= BASE && wait <= ceiling.max(BASE), "{n}: {wait:?}");
                assert_eq!(m.backoff.ceiling(), (BASE * 2u32.pow(n + 1)).min(CAP));
                total += wait;
            }
            // 15 draws at the 2 s cap average 15 s; under 5 s is 4.5 deviations away.
            assert!(total > Duration::from_secs(5), "{asked:?}: {total:?}");
        }
    }

    #[test]
    fn other_failures_back_off_with_jitter_under_the_ceiling() {
        let failures = [
            http(429),
            http(500),
            http(503),
            Outcome::Failed, // transport, validation, health, local RNG
        ];
        for outcome in failures {
            let t0 = Instant::now();
            let mut m = machine(t0);
            let Some(Decision::Retry(delay)) = feed(&mut m, outcome, t0) else {
                panic!("{outcome:?}: not a retry");
            };
            assert!(delay <= BASE, "{outcome:?}: {delay:?}");
            let v = m.view();
            assert_eq!(v.state, UpstreamState::BackingOff, "{outcome:?}");
            assert_eq!(v.next_attempt, Some(t0 + delay));
            assert!(!v.readers_fail_fast());
            assert_eq!(v.consecutive_failures, 1);
        }
    }

    #[test]
    fn backoff_schedule_doubles_to_the_cap_and_resets_on_success() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            ceilings.push(m.backoff.ceiling().as_millis());
            let Some(Decision::Retry(d)) = feed(&mut m, http(503), t0) else {
                panic!("not a retry");
            };
            assert!(d <= CAP);
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(m.view().consecutive_failures, 8);
        feed(&mut m, Outcome::Delivered, t0);
        assert_eq!(m.backoff.ceiling(), BASE);
        assert_eq!(m.view().consecutive_failures, 0);
        assert_eq!(m.gate(t0), Gate::Open);
    }

    #[test]
    fn the_latest_retry_time_wins() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        let asked = Duration::from_secs(1);
        feed(
            &mut m,
            Outcome::Http {
                code: 429,
                retry_after: Some(asked),
            },
            t0,
        );
        // A 503 right after, with a shorter backoff, does not bring the retry forward.
        feed(&mut m, http(503), t0);
        assert_eq!(m.view().next_attempt, Some(t0 + asked));
    }

    #[test]
    fn a_late_success_does_not_end_a_stop_or_a_failure_streak() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        let before = m.epoch();
        feed(&mut m, http(403), t0);
        // A 200 and another 403, both sent before the first 403 arrived.
        assert_eq!(m.on_outcome(before, Outcome::Delivered, t0), (false, None));
        assert_eq!(m.on_outcome(before, http(403), t0), (false, None));
        let v = m.view();
        assert_eq!(v.state, UpstreamState::QuotaExhausted);
        assert_eq!(v.consecutive_failures, 1);
        assert_eq!(v.next_attempt, Some(t0 + QUOTA));
        // The retry after the quota wait is current, and its 403 lengthens the streak.
        assert_eq!(
            m.on_outcome(m.epoch(), http(403), t0 + QUOTA),
            (true, Some(Decision::QuotaWait(QUOTA)))
        );
        assert_eq!(m.view().consecutive_failures, 2);
    }

    #[test]
    fn sighup_while_working_stays_ok() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        feed(&mut m, Outcome::Delivered, t0);
        assert_eq!(m.state(), UpstreamState::Ok);
        m.resume(t0 + Duration::from_secs(1));
        assert_eq!(m.state(), UpstreamState::Ok, "bytes are still served");
        assert_eq!(m.gate(t0 + Duration::from_secs(1)), Gate::Open);
    }

    #[test]
    fn a_late_answer_counts_while_not_stopped() {
        // A fill in flight at a SIGHUP still brings the state to ok.
        let t0 = Instant::now();
        let mut m = machine(t0);
        let before = m.epoch();
        m.resume(t0);
        assert!(m.is_current(before));
        assert_eq!(m.on_outcome(before, Outcome::Delivered, t0), (true, None));
        assert_eq!(m.state(), UpstreamState::Ok);
    }

    #[test]
    fn a_success_after_a_stop_opens_a_new_epoch() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        feed(&mut m, http(403), t0);
        let retry = m.epoch();
        feed(&mut m, Outcome::Delivered, t0 + QUOTA);
        assert_ne!(m.epoch(), retry);
        // A 403 to a request sent with the retry, arriving now: still current (not stopped),
        // so the quota is used up again.
        assert_eq!(
            m.on_outcome(retry, http(403), t0 + QUOTA),
            (true, Some(Decision::QuotaWait(QUOTA)))
        );
        assert_eq!(m.state(), UpstreamState::QuotaExhausted);
    }

    #[test]
    fn backing_off_after_a_stop_lets_readers_wait_again() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        feed(&mut m, http(403), t0);
        feed(&mut m, http(503), t0 + QUOTA);
        assert_eq!(m.state(), UpstreamState::BackingOff);
        assert!(!m.view().readers_fail_fast());
    }

    #[test]
    fn degraded_for_a_window_after_a_failure() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        feed(&mut m, http(503), t0);
        feed(&mut m, Outcome::Delivered, t0);
        let v = m.view();
        assert_eq!(v.state, UpstreamState::Ok);
        assert_eq!(v.shown_at(t0), UpstreamState::Degraded);
        assert_eq!(
            v.shown_at(t0 + DEGRADED_WINDOW - Duration::from_millis(1)),
            UpstreamState::Degraded
        );
        assert_eq!(v.shown_at(t0 + DEGRADED_WINDOW), UpstreamState::Ok);
        // Only `ok` turns degraded: a failing state is shown as it is.
        feed(&mut m, http(503), t0);
        assert_eq!(m.view().shown_at(t0), UpstreamState::BackingOff);
    }

    #[test]
    fn fetch_errors_map_to_outcomes_without_inventing_a_status() {
        let status = FetchError::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(
            Outcome::from(&status),
            Outcome::Http {
                code: 429,
                retry_after: Some(Duration::from_secs(3))
            }
        );
        for e in [
            FetchError::Transport("reset".into()),
            FetchError::Health("repetition".into()),
        ] {
            assert_eq!(Outcome::from(&e), Outcome::Failed);
        }
    }
}
