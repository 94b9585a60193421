//! The spending budget (`--budget SIZE/PERIOD`): caps on the bytes requested from the
//! upstream per calendar hour, day or month (UTC), held across restarts and crashes.
//!
//! Write-ahead: [`Budget::reserve`] records a request's size in the state file, durably, before
//! the request may be sent. A crash can then only over-count the requests that were in
//! flight, never under-count, so a cap holds even across `kill -9`. Bytes of responses later
//! rejected by validation or health tests stay counted (Qrypt bills them); a request the
//! service refused outright (400, 401, 403, 429) is refunded, since nothing was served.
//!
//! Without a cap nothing is written: the spend of the current day and month is then counted
//! in memory since start, for `/status` and `/metrics`.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

mod calendar;
pub mod ledger;
mod report;
mod spec;
mod store;

pub use ledger::{Exhausted, Spend};
pub use report::BudgetReport;
pub use spec::{Cap, Period, merge_caps};
pub use store::{StateFile, StoreError, default_state_dir, prepare_state_dir};

/// Unix seconds now. Injected so tests can cross a renewal without waiting for it.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// `1M`, `200M`, `1G`, `1536K`, `1000B`: the largest binary unit that divides exactly, so
/// a cap reads back as it was written.
pub fn human_bytes(n: u64) -> String {
    for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] {
        if n != 0 && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}B")
}

/// What the budget needs at start.
#[derive(Debug, Clone)]
pub struct BudgetConfig {
    pub caps: Vec<Cap>,
    pub state_dir: PathBuf,
    /// As `/status` shows it (no credentials).
    pub endpoint: String,
    /// As `/status` shows it: `environment (QRYPT_TOKEN)` or `file PATH` (absolute).
    pub token_source: String,
    /// `--reset-budget`: start from zero, whatever the state file holds.
    pub reset: bool,
}

/// Bytes granted to one request, and the periods they were counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub bytes: u64,
    starts: [u64; 3],
}

/// Why a request may not be sent now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A cap is reached; nothing may be requested before `renews_at`.
    Exhausted(Exhausted),
    /// The spend could not be recorded (disk full, read-only, file damaged while running):
    /// sending would spend unrecorded bytes, so nothing is sent until it can be.
    Unwritable(String),
}

pub struct Budget {
    caps: Vec<Cap>,
    file: Option<StateFile>,
    clock: Clock,
    /// The spend as last read or written; what `/status` shows.
    cache: Mutex<Spend>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("caps", &self.caps)
            .field("file", &self.state_file())
            .finish_non_exhaustive()
    }
}

impl Budget {
    /// A budget without caps, counting in memory: what a mount without `--budget` has.
    pub fn unlimited() -> Budget {
        let clock = system_clock();
        let mut spend = Spend::default();
        spend.roll(clock());
        Budget::in_memory(clock, spend)
    }

    /// Opens the budget: reads the state file (an unusable one is an error naming it, unless
    /// `reset`) and writes it back at once, so an unwritable state directory is found at start
    /// rather than at the first request. Without caps, touches no file.
    pub fn open(cfg: &BudgetConfig, clock: Clock) -> Result<Budget, String> {
        let now = clock();
        if cfg.caps.is_empty() {
            let mut spend = Spend::default();
            spend.roll(now);
            return Ok(Budget::in_memory(clock, spend));
        }
        let file = StateFile::new(&cfg.state_dir, &cfg.endpoint, &cfg.token_source);
        file.create_dir()?;
        let ((), spend) = file
            .update(cfg.reset, |s| {
                s.roll(now);
                ((), true)
            })
            .map_err(|e| match e {
                StoreError::Corrupt(why) => format!(
                    "{why}. It is never zeroed silently: repair or remove it, or start once \
                     with --reset-budget (which forgets what was spent)"
                ),
                StoreError::Io(why) => format!(
                    "{why}. The budget needs a writable --state-dir (it records each request \
                     before sending it)"
                ),
            })?;
        Ok(Budget {
            caps: cfg.caps.clone(),
            file: Some(file),
            clock,
            cache: Mutex::new(spend),
        })
    }

    fn in_memory(clock: Clock, spend: Spend) -> Budget {
        Budget {
            caps: Vec::new(),
            file: None,
            clock,
            cache: Mutex::new(spend),
        }
    }

    pub fn state_file(&self) -> Option<&std::path::Path> {
        self.file.as_ref().map(StateFile::path)
    }

    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Records up to `max` bytes (whole multiples of `unit`) as spent, before they are
    /// requested, and grants them; fewer than `max` when a cap leaves less.
    pub fn reserve(&self, max: u64, unit: u64) -> Result<Grant, Refusal> {
        let now = self.now();
        let caps = &self.caps;
        let decide = |s: &mut Spend| {
            s.roll(now);
            let grant = max.min(s.room(caps)) / unit * unit;
            if grant == 0 {
                let e = s.exhausted(caps, unit, now).unwrap_or(Exhausted {
                    caps: Vec::new(),
                    renews_at: now,
                });
                return (Err(Refusal::Exhausted(e)), false);
            }
            let starts = s.starts();
            s.add(grant);
            (
                Ok(Grant {
                    bytes: grant,
                    starts,
                }),
                true,
            )
        };
        let Some(file) = &self.file else {
            return decide(&mut self.cache.lock()).0;
        };
        match file.update(false, decide) {
            Ok((out, spend)) => {
                *self.cache.lock() = spend;
                out
            }
            Err(e) => Err(Refusal::Unwritable(e.to_string())),
        }
    }

    /// Gives back a grant the service refused outright. Best effort: if it cannot be
    /// recorded, the bytes stay counted, which errs on the safe side.
    pub fn refund(&self, grant: Grant) -> Result<(), String> {
        let Some(file) = &self.file else {
            self.cache.lock().refund(grant.bytes, grant.starts);
            return Ok(());
        };
        let ((), spend) = file
            .update(false, |s| {
                s.refund(grant.bytes, grant.starts);
                ((), true)
            })
            .map_err(|e| e.to_string())?;
        *self.cache.lock() = spend;
        Ok(())
    }

    /// The caps already spent now (as last recorded), if any: a mount starting with them
    /// sends nothing until they renew.
    pub fn exhausted_now(&self) -> Option<Exhausted> {
        let now = self.now();
        let mut spend = *self.cache.lock();
        spend.roll(now);
        spend.exhausted(&self.caps, 1024, now)
    }

    /// The caps and spend as of now, for `/status`.
    pub fn report(&self) -> BudgetReport {
        let now = self.now();
        let mut spend = *self.cache.lock();
        spend.roll(now);
        let mut r = BudgetReport::new(&self.caps, &spend, now);
        r.state_file = self.state_file().map(|p| p.display().to_string());
        r
    }
}

#[cfg(test)]
mod tests;
