//! What the status files show of the upstream: its state as an operator would name it, and
//! the view the state machine publishes after each change. Defined here, beside what renders
//! them, so that the status layer imports nothing from the layers that report to it.
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long a failure keeps a working upstream `degraded` rather than `ok`.
pub const DEGRADED_WINDOW: Duration = Duration::from_secs(60);

/// The upstream's condition, as an operator would name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum UpstreamState {
    /// No request has succeeded yet since start, or since a new token / SIGHUP.
    Starting,
    /// The last request succeeded, and none failed in the last [`DEGRADED_WINDOW`].
    Ok,
    /// The last request succeeded, but one failed in the last [`DEGRADED_WINDOW`]: the
    /// upstream is flaky. Derived when shown ([`View::shown_at`]), never stored.
    Degraded,
    /// Working, but the client's own pacing holds the next request back while a reader
    /// waits. Derived when shown (by `/status`, which sees the readers), never stored.
    Pacing,
    /// Failing; waiting before the next attempt.
    BackingOff,
    /// The budget's state file cannot be written: nothing is requested until it can be
    /// (an unrecorded request could exceed the budget). Readers wait.
    BudgetUnwritable,
    /// A `--budget` cap is reached: nothing is requested until it renews.
    BudgetExhausted,
    /// 401: the token was rejected; waiting for a new token (file change or SIGHUP).
    Unauthorized,
    /// 403: the monthly quota is used up; retrying rarely.
    QuotaExhausted,
    /// 400: the service rejected our request; stopped until SIGHUP.
    BadRequest,
    /// The daemon is stopping (told by the daemon, never entered by the machine).
    Stopping,
}

impl UpstreamState {
    /// Every state, in the order `/metrics` lists them.
    pub const ALL: [UpstreamState; 11] = [
        UpstreamState::Starting,
        UpstreamState::Ok,
        UpstreamState::Degraded,
        UpstreamState::Pacing,
        UpstreamState::BackingOff,
        UpstreamState::BudgetUnwritable,
        UpstreamState::BudgetExhausted,
        UpstreamState::Unauthorized,
        UpstreamState::QuotaExhausted,
        UpstreamState::BadRequest,
        UpstreamState::Stopping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamState::Starting => "starting",
            UpstreamState::Ok => "ok",
            UpstreamState::Degraded => "degraded",
            UpstreamState::Pacing => "pacing",
            UpstreamState::BackingOff => "backing off",
            UpstreamState::BudgetUnwritable => "budget state unwritable",
            UpstreamState::BudgetExhausted => "budget exhausted",
            UpstreamState::Unauthorized => "unauthorized",
            UpstreamState::QuotaExhausted => "quota exhausted",
            UpstreamState::BadRequest => "bad request",
            UpstreamState::Stopping => "stopping",
        }
    }

    /// A stop: only an outside change or a long wait ends it (400, 401, 403, a spent
    /// budget). Readers on an empty buffer get `EIO` instead of waiting.
    pub fn is_stop(self) -> bool {
        matches!(
            self,
            UpstreamState::Unauthorized
                | UpstreamState::QuotaExhausted
                | UpstreamState::BadRequest
                | UpstreamState::BudgetExhausted
        )
    }

    /// A state no answer to a request sent before it may end: the stops, and a budget that
    /// cannot be recorded (readers wait there, but a late 200 does not make it `ok`).
    pub fn holds(self) -> bool {
        self.is_stop() || self == UpstreamState::BudgetUnwritable
    }
}

/// What others are told of the state: `/status` renders it, the pool takes its availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub state: UpstreamState,
    /// When the next request may go; `None` when none is scheduled (working, or stopped until
    /// an outside change).
    pub next_attempt: Option<Instant>,
    /// Failures since the last success, counting only answers to requests of their epoch.
    pub consecutive_failures: u64,
    /// The last such failure.
    pub last_failure: Option<Instant>,
}

impl View {
    /// The state as shown at `now`: `ok` within [`DEGRADED_WINDOW`] of a failure is `degraded`.
    pub fn shown_at(&self, now: Instant) -> UpstreamState {
        let recently_failed = self
            .last_failure
            .is_some_and(|t| now.saturating_duration_since(t) < DEGRADED_WINDOW);
        match self.state {
            UpstreamState::Ok if recently_failed => UpstreamState::Degraded,
            s => s,
        }
    }

    /// Readers fail fast only in a stop; while backing off (even after a stop whose retry now
    /// fails another way) they wait, as docs/operations.md (States) says.
    pub fn readers_fail_fast(&self) -> bool {
        self.state.is_stop()
    }
}
