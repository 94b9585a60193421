//! The answer to the mount's first request, kept for the start's check (the session's
//! `check_upstream`), which waits for it before it reports the mount ready.
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::upstream::FetchError;

/// How the first request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstAnswer {
    /// Valid entropy arrived and entered the pool.
    Delivered,
    Failed(FetchError),
    /// The answer was good, but a local step it needs failed (`--mix-local`'s RNG).
    LocalFailure(String),
}

/// Where the first answer is kept until the starter looks.
#[derive(Debug, Default)]
pub struct FirstAnswerCell {
    answer: Mutex<Option<FirstAnswer>>,
    arrived: Condvar,
}

impl FirstAnswerCell {
    /// Keeps `answer` if it is the first; later ones are ignored.
    pub fn record(&self, answer: FirstAnswer) {
        let mut slot = self.answer.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(answer);
            self.arrived.notify_all();
        }
    }

    /// Waits up to `timeout` for the first answer; `None` if none came in time.
    pub fn wait(&self, timeout: Duration) -> Option<FirstAnswer> {
        let deadline = Instant::now() + timeout;
        let mut slot = self.answer.lock().unwrap_or_else(|p| p.into_inner());
        while slot.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            slot = self
                .arrived
                .wait_timeout(slot, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        slot.clone()
    }
}
