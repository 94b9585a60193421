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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use zeroize::Zeroizing;

mod calendar;
pub mod ledger;
mod rate;
mod report;
mod spec;
mod store;
pub mod tenants;

pub use ledger::{Exhausted, Spend};
pub use report::BudgetReport;
pub use spec::{Cap, Period, merge_caps};
pub use store::{
    AccountKey, Base, Legacy, StateFile, StoreError, default_state_dir, owned_by_us,
    prepare_state_dir, set_state_owner, state_owner,
};

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

/// The token's bytes, for the account's keyed digest only. Wiped on drop; `Debug` redacted.
#[derive(Clone, Default)]
pub struct TokenBytes(Zeroizing<Vec<u8>>);

impl TokenBytes {
    pub fn new(token: &str) -> TokenBytes {
        TokenBytes(Zeroizing::new(token.as_bytes().to_vec()))
    }
}

impl std::fmt::Debug for TokenBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenBytes(<redacted>)")
    }
}

/// What the budget needs at start.
#[derive(Debug, Clone)]
pub struct BudgetConfig {
    pub caps: Vec<Cap>,
    pub state_dir: PathBuf,
    /// Canonical (see `upstream::http::canonical_endpoint`): every spelling of one service
    /// is one string.
    pub endpoint: String,
    /// The token: with the endpoint, the account whose spend is counted.
    pub token: TokenBytes,
    /// Where a release that keyed state by spelling kept this mount's count (the endpoint as
    /// `/status` shows it, the token source as `environment (QRYPT_TOKEN)` or `file PATH`):
    /// its count is carried into the account's record once.
    pub legacy: Option<Legacy>,
    /// `--reset-budget`: start from zero, whatever the state file holds.
    pub reset: bool,
}

/// Bytes granted to one request, and the periods they were counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub bytes: u64,
    starts: [u64; 3],
    /// When it was granted (the rate's record).
    at: u64,
    /// The account it was counted against (see [`Budget::rekey`]).
    generation: u64,
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
    /// The account's record; replaced when the token changes.
    file: Mutex<Option<StateFile>>,
    /// What names the records: the directory's key and the canonical endpoint.
    keying: Option<(Arc<AccountKey>, String)>,
    /// Counts the accounts this budget was keyed to; a grant refunds only to its own.
    generation: AtomicU64,
    clock: Clock,
    /// The spend as last read or written; what `/status` shows, and what the record may never
    /// fall below while this process runs.
    cache: Mutex<Spend>,
    /// This process's grants per minute, for the spend rate and the forecast.
    rate: Mutex<rate::RateRing>,
    /// The last repair logged, so a file that keeps vanishing is logged once per reason.
    repaired: Mutex<Option<String>>,
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

    /// Opens the budget: reads the account's state file (an unusable one is an error naming
    /// it, unless `reset`), carries in a record kept the old way, and writes it back at once,
    /// so an unwritable state directory is found at start rather than at the first request.
    /// Without caps, touches no file.
    pub fn open(cfg: &BudgetConfig, clock: Clock) -> Result<Budget, String> {
        let now = clock();
        if cfg.caps.is_empty() {
            let mut spend = Spend::default();
            spend.roll(now);
            return Ok(Budget::in_memory(clock, spend));
        }
        let dir = StateFile::new(&cfg.state_dir, &cfg.endpoint, "");
        dir.create_dir()?;
        let key = Arc::new(AccountKey::load_or_create(&cfg.state_dir).map_err(|e| {
            format!("{e}. The budget needs a usable --state-dir (it keeps its key there)")
        })?);
        let account = key.account(&cfg.endpoint, &cfg.token.0);
        let file = StateFile::new(&cfg.state_dir, &cfg.endpoint, &account).with_key(key.clone());
        let corrupt = |why: String| {
            format!(
                "{why}. It is never zeroed silently: repair or remove it, or start once \
                 with --reset-budget (which forgets what was spent)"
            )
        };
        // With --reset-budget an old record is forgotten like the new one (moved aside below,
        // whatever its state, so it never stops a later start).
        let legacy = match &cfg.legacy {
            Some(l) if !cfg.reset => file.read_legacy(l).map_err(|e| match e {
                StoreError::Corrupt(why) => corrupt(why),
                other => other.to_string(),
            })?,
            _ => None,
        };
        let base = if cfg.reset { Base::Fresh } else { Base::File };
        let ((), spend, _) = file
            .update(base, |s| {
                s.roll(now);
                if let Some((_, old)) = &legacy {
                    let mut old = *old;
                    old.roll(now);
                    s.absorb(&old);
                }
                ((), true)
            })
            .map_err(|e| match e {
                StoreError::Corrupt(why) => corrupt(why),
                StoreError::Io(why) => format!(
                    "{why}. The budget needs a writable --state-dir (it records each request \
                     before sending it)"
                ),
                StoreError::Locked(why) => format!(
                    "{why}: another qrypt-fs counting the same account should let go within \
                     milliseconds; find what holds it (`fuser` or /proc/locks)"
                ),
            })?;
        let old_record = match (&legacy, &cfg.legacy) {
            (Some((path, _)), _) => Some(path.clone()),
            (None, Some(l)) if cfg.reset => Some(file.legacy_path(l)),
            _ => None,
        };
        if let Some(path) = old_record.filter(|p| p.symlink_metadata().is_ok()) {
            StateFile::retire_legacy(&path)?;
        }
        Ok(Budget {
            caps: cfg.caps.clone(),
            file: Mutex::new(Some(file)),
            keying: Some((key, cfg.endpoint.clone())),
            generation: AtomicU64::new(0),
            clock,
            cache: Mutex::new(spend),
            rate: Mutex::default(),
            repaired: Mutex::new(None),
        })
    }

    fn in_memory(clock: Clock, spend: Spend) -> Budget {
        Budget {
            caps: Vec::new(),
            file: Mutex::new(None),
            keying: None,
            generation: AtomicU64::new(0),
            clock,
            cache: Mutex::new(spend),
            rate: Mutex::default(),
            repaired: Mutex::new(None),
        }
    }

    /// The token changed (SIGHUP, a new token file): from now on the spend is counted in the
    /// new token's record, which starts from no less than what was counted so far. A rotated
    /// token of the same account so never restarts its count; a token of another account
    /// starts at least where the previous one stood (it errs on the safe side). Returns
    /// whether the record changed. A record that cannot be read now is read at the next
    /// request, which is refused until it can be written.
    pub fn rekey(&self, token: &str) -> Result<bool, String> {
        let Some((key, endpoint)) = &self.keying else {
            return Ok(false);
        };
        let account = key.account(endpoint, token.as_bytes());
        let new = {
            let mut file = self.file.lock();
            let Some(old) = file.as_ref() else {
                return Ok(false);
            };
            if old.account() == account {
                return Ok(false);
            }
            let new = StateFile::new(&old_dir(old), endpoint, &account).with_key(key.clone());
            *file = Some(new.clone());
            self.generation.fetch_add(1, Ordering::SeqCst);
            new
        };
        let now = self.now();
        let carried = *self.cache.lock();
        let ((), spend, _) = new
            .update(Base::AtLeast(carried), |s| {
                s.roll(now);
                ((), true)
            })
            .map_err(|e| e.to_string())?;
        *self.cache.lock() = spend;
        Ok(true)
    }

    /// Runs `f` on the account's record, never letting it fall below what this process
    /// knows it spent; a repair (a record that vanished, went back or broke) is logged once.
    fn update<T>(
        &self,
        file: &StateFile,
        f: impl FnOnce(&mut Spend) -> (T, bool),
    ) -> Result<T, StoreError> {
        let floor = *self.cache.lock();
        match file.update(Base::AtLeast(floor), f) {
            Ok((out, spend, repaired)) => {
                *self.cache.lock() = spend;
                let mut logged = self.repaired.lock();
                if let Some(why) = &repaired {
                    if logged.as_deref() != Some(why.as_str()) {
                        tracing::warn!(
                            "{why}: kept the higher count this process knows and wrote it again"
                        );
                    }
                }
                *logged = repaired;
                Ok(out)
            }
            Err(e) => Err(e),
        }
    }

    pub fn state_file(&self) -> Option<PathBuf> {
        self.file.lock().as_ref().map(|f| f.path().to_owned())
    }

    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Records up to `max` bytes (whole multiples of `unit`) as spent, before they are
    /// requested, and grants them; fewer than `max` when a cap leaves less.
    pub fn reserve(&self, max: u64, unit: u64) -> Result<Grant, Refusal> {
        let now = self.now();
        let caps = &self.caps;
        let generation = self.generation.load(Ordering::SeqCst);
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
                    at: now,
                    generation,
                }),
                true,
            )
        };
        let file = self.file.lock().clone();
        let out = match file {
            Some(file) => self
                .update(&file, decide)
                .unwrap_or_else(|e| Err(Refusal::Unwritable(e.to_string()))),
            None => decide(&mut self.cache.lock()).0,
        };
        if let Ok(g) = &out {
            self.rate.lock().add(now, g.bytes);
        }
        out
    }

    /// Gives back a grant the service refused outright. Best effort: if it cannot be
    /// recorded (or the token changed since), the bytes stay counted, which errs on the safe
    /// side.
    pub fn refund(&self, grant: Grant) -> Result<(), String> {
        if grant.generation != self.generation.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.rate.lock().remove(grant.at, grant.bytes);
        let give_back = |s: &mut Spend| {
            s.refund(grant.bytes, grant.starts);
            ((), true)
        };
        let file = self.file.lock().clone();
        match file {
            Some(file) => self.update(&file, give_back).map_err(|e| e.to_string()),
            None => {
                give_back(&mut self.cache.lock());
                Ok(())
            }
        }
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
        let ring = self.rate.lock();
        r.set_rates(ring.rate(now, rate::HOUR), ring.rate(now, rate::DAY), now);
        drop(ring);
        r.state_file = self.state_file().map(|p| p.display().to_string());
        r
    }
}

fn old_dir(file: &StateFile) -> PathBuf {
    file.path()
        .parent()
        .map_or_else(PathBuf::new, std::path::Path::to_owned)
}

#[cfg(test)]
mod tests;
