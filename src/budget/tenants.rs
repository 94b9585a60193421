//! Per-tenant caps (`--tenant-budget SIZE/PERIOD`): the most one tenant may receive per
//! calendar period (UTC), recorded in `--state-dir` ahead of use, in chunks.
//!
//! A tenant's bytes are taken from a chunk already recorded as spent; only when its chunk is
//! used up is the next one recorded (locked, temporary file, fsync, rename, as the global
//! budget's record). A crash therefore over-counts at most the unused part of one chunk per
//! tenant and never under-counts, so a cap holds across `kill -9`. The record holds at most
//! `max_tenants` tenants with spend in a current period; a newcomer beyond that is refused
//! (see [`Refused::Full`]) rather than an older tenant forgotten, since forgetting a spend would
//! let that tenant read its cap again. Tenants without spend in a current period leave the
//! record at each renewal.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::ledger::Spend;
use super::store::{StateFile, StoreError, prepare_state_dir};
use super::{Cap, Clock};

/// Written in the record; a file without it was not written by this program.
const FORMAT: &str = "qrypt-fs tenant budget v1";
/// The record's name in the state directory (`.json`, `.lock`).
const NAME: &str = "tenant-budget";
/// A chunk is this fraction of the smallest cap: a crash over-counts at most 1/32 of it.
const CHUNK_DIVISOR: u64 = 32;
const MIN_CHUNK: u64 = 64 << 10;
const MAX_CHUNK: u64 = 16 << 20;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    format: String,
    /// Spend per tenant name (`uid:1000`, `cgroup:/system.slice/x.service`, ...).
    tenants: BTreeMap<String, Spend>,
}

/// Why a tenant gets no byte now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// These caps are reached until they renew.
    AtCap(Vec<Cap>),
    /// The record already holds as many tenants as `--tenant-max` allows, this one not among
    /// them, until the period renews.
    Full(usize),
    /// The record could not be read or written (its message).
    Store(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::AtCap(caps) => {
                let caps: Vec<String> = caps.iter().map(Cap::to_string).collect();
                write!(f, "reached its --tenant-budget {}", caps.join(" "))
            }
            Refused::Full(n) => write!(
                f,
                "is refused: the tenant budget record already holds {n} tenants (--tenant-max)"
            ),
            Refused::Store(why) => f.write_str(why),
        }
    }
}

/// A tenant's chunk in this process: bytes recorded as spent but not yet handed out.
struct Local {
    left: u64,
    /// The periods (hour, day, month) the chunk was recorded in: a chunk of a period that
    /// has ended is dropped (the new period's count does not include it).
    starts: [u64; 3],
}

pub struct TenantBudget {
    caps: Vec<Cap>,
    chunk: u64,
    max_tenants: usize,
    file: StateFile,
    clock: Clock,
    local: Mutex<HashMap<u64, Local>>,
    /// One chunk recorded at a time by this process (the file's lock covers other processes).
    writing: Mutex<()>,
}

fn starts_at(now: u64) -> [u64; 3] {
    let mut s = Spend::default();
    s.roll(now);
    s.starts()
}

impl TenantBudget {
    /// The caps `caps` (at least one), their record in `dir`, which is read now so that an
    /// unusable one is an error at start.
    pub fn open(
        caps: Vec<Cap>,
        dir: &Path,
        max_tenants: usize,
        clock: Clock,
    ) -> Result<TenantBudget, String> {
        prepare_state_dir(dir, "tenant budget state directory")?;
        let smallest = caps.iter().map(|c| c.limit).min().unwrap_or(u64::MAX);
        let budget = TenantBudget {
            chunk: (smallest / CHUNK_DIVISOR).clamp(MIN_CHUNK, MAX_CHUNK),
            caps,
            max_tenants: max_tenants.max(1),
            file: StateFile::named(dir, NAME),
            clock,
            local: Mutex::new(HashMap::new()),
            writing: Mutex::new(()),
        };
        let _lock = budget.file.lock().map_err(|e| e.to_string())?;
        budget.load().map_err(|e| e.to_string())?;
        Ok(budget)
    }

    pub fn caps(&self) -> &[Cap] {
        &self.caps
    }

    /// Up to `len` bytes tenant `key` may receive now: `len`, or fewer when its cap is near.
    /// `name` names the tenant in the record. What is not handed out goes back with
    /// [`TenantBudget::give_back`].
    pub fn take(&self, key: u64, name: &dyn Fn() -> String, len: u64) -> Result<u64, Refused> {
        if let Some(n) = self.take_local(key, len, starts_at((self.clock)())) {
            return Ok(n);
        }
        let _one = self.writing.lock();
        // Another thread may have recorded a chunk for this tenant meanwhile.
        let now = (self.clock)();
        let starts = starts_at(now);
        if let Some(n) = self.take_local(key, len, starts) {
            return Ok(n);
        }
        // What the chunk still holds counts towards this read: a crash then loses at most
        // one chunk (and the reads under way), however large the reads.
        let left = self
            .local
            .lock()
            .get(&key)
            .filter(|l| l.starts == starts)
            .map_or(0, |l| l.left);
        // At the cap, what the chunk still holds is handed out first.
        let (granted, at_cap) = match self.record(&name(), self.chunk.max(len - left), now) {
            Ok(granted) => (granted, None),
            Err(Refused::AtCap(caps)) => (0, Some(caps)),
            Err(e) => return Err(e),
        };
        let mut local = self.local.lock();
        let l = local.entry(key).or_insert(Local { left: 0, starts });
        if l.starts != starts {
            *l = Local { left: 0, starts };
        }
        l.left = l.left.saturating_add(granted);
        let n = l.left.min(len);
        if n == 0 {
            return Err(Refused::AtCap(at_cap.unwrap_or_default()));
        }
        l.left -= n;
        Ok(n)
    }

    /// `len` from the tenant's chunk, if it holds that much.
    fn take_local(&self, key: u64, len: u64, starts: [u64; 3]) -> Option<u64> {
        let mut local = self.local.lock();
        let l = local.get_mut(&key)?;
        if l.starts != starts {
            l.left = 0;
            l.starts = starts;
        }
        (l.left >= len).then(|| {
            l.left -= len;
            len
        })
    }

    /// Returns `n` bytes taken by [`TenantBudget::take`] but not handed out.
    pub fn give_back(&self, key: u64, n: u64) {
        let starts = starts_at((self.clock)());
        if let Some(l) = self.local.lock().get_mut(&key) {
            if l.starts == starts {
                l.left = l.left.saturating_add(n);
            }
        }
    }

    /// The record, `OnDisk::default()` if there is none yet (the lock held).
    fn load(&self) -> Result<OnDisk, StoreError> {
        let corrupt = |why: String| {
            StoreError::Corrupt(format!(
                "tenant budget state file {} is unusable: {why}",
                self.file.path().display()
            ))
        };
        let Some(text) = StateFile::read_record(self.file.path())? else {
            return Ok(OnDisk {
                format: FORMAT.into(),
                tenants: BTreeMap::new(),
            });
        };
        let disk: OnDisk =
            serde_json::from_str(&text).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
        if disk.format != FORMAT {
            return Err(corrupt(format!("format is not {FORMAT:?}")));
        }
        for spend in disk.tenants.values() {
            spend.check().map_err(corrupt)?;
        }
        Ok(disk)
    }

    /// Records up to `want` more bytes as spent by `name` (what its caps still allow) and
    /// returns how many were recorded.
    fn record(&self, name: &str, want: u64, now: u64) -> Result<u64, Refused> {
        let store = |e: StoreError| Refused::Store(e.to_string());
        let _lock = self.file.lock().map_err(store)?;
        let mut disk = self.load().map_err(store)?;
        for spend in disk.tenants.values_mut() {
            spend.roll(now);
        }
        let caps = &self.caps;
        disk.tenants
            .retain(|_, s| caps.iter().any(|c| s.slot(c.period).spent > 0));
        if !disk.tenants.contains_key(name) && disk.tenants.len() >= self.max_tenants {
            return Err(Refused::Full(self.max_tenants));
        }
        let spend = disk.tenants.entry(name.to_owned()).or_insert_with(|| {
            let mut s = Spend::default();
            s.roll(now);
            s
        });
        let granted = want.min(spend.room(caps));
        if granted == 0 {
            let exhausted = spend.exhausted(caps, 1, now).map(|e| e.caps);
            return Err(Refused::AtCap(exhausted.unwrap_or_default()));
        }
        spend.add(granted);
        let mut text = serde_json::to_string_pretty(&disk)
            .map_err(|e| Refused::Store(format!("tenant budget state: {e}")))?;
        text.push('\n');
        self.file.replace(&text).map_err(store)?;
        Ok(granted)
    }

    /// Spend recorded per tenant in the tightest capped period (chunks included), highest
    /// first, at most `n`.
    #[cfg(test)]
    fn recorded(&self) -> BTreeMap<String, Spend> {
        self.load().map(|d| d.tenants).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::budget::Period;

    const T0: u64 = 1_795_867_200; // a midnight UTC

    fn clock(at: &Arc<AtomicU64>) -> Clock {
        let at = at.clone();
        Arc::new(move || at.load(Ordering::SeqCst))
    }

    fn cap(limit: u64) -> Vec<Cap> {
        vec![Cap {
            limit,
            period: Period::Day,
        }]
    }

    #[test]
    fn a_cap_is_never_exceeded_and_renews_with_its_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = Arc::new(AtomicU64::new(T0 + 10));
        let b = TenantBudget::open(cap(100 << 10), dir.path(), 4, clock(&at)).expect("open");
        let name = || "uid:1000".to_owned();
        let mut got = 0;
        loop {
            match b.take(1000, &name, 4096) {
                Ok(n) => got += n,
                Err(Refused::AtCap(caps)) => {
                    assert_eq!(caps, cap(100 << 10));
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, 100 << 10);
        // Another tenant goes on.
        assert_eq!(b.take(1001, &|| "uid:1001".to_owned(), 32), Ok(32));
        // The next day: a new count.
        at.store(T0 + 86_400 + 5, Ordering::SeqCst);
        assert_eq!(b.take(1000, &name, 4096), Ok(4096));
    }

    #[test]
    fn a_restart_counts_the_chunks_recorded_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = Arc::new(AtomicU64::new(T0 + 10));
        let name = || "cgroup:/a".to_owned();
        {
            let b = TenantBudget::open(cap(4 << 20), dir.path(), 4, clock(&at)).expect("open");
            assert_eq!(b.take(7, &name, 32), Ok(32));
            // Dropped without giving anything back: as after kill -9.
        }
        let b = TenantBudget::open(cap(4 << 20), dir.path(), 4, clock(&at)).expect("open");
        let recorded = b.recorded();
        assert_eq!(recorded["cgroup:/a"].day.spent, 128 << 10, "one chunk");
        let mut got = 0;
        while let Ok(n) = b.take(7, &name, 1 << 20) {
            got += n;
        }
        assert_eq!(got, (4 << 20) - (128 << 10), "the first chunk stays spent");
    }

    #[test]
    fn beyond_max_tenants_a_newcomer_is_refused_until_renewal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = Arc::new(AtomicU64::new(T0 + 10));
        let b = TenantBudget::open(cap(1 << 20), dir.path(), 2, clock(&at)).expect("open");
        assert!(b.take(1, &|| "uid:1".to_owned(), 32).is_ok());
        assert!(b.take(2, &|| "uid:2".to_owned(), 32).is_ok());
        assert_eq!(b.take(3, &|| "uid:3".to_owned(), 32), Err(Refused::Full(2)));
        at.store(T0 + 86_400 + 5, Ordering::SeqCst);
        assert_eq!(b.take(3, &|| "uid:3".to_owned(), 32), Ok(32));
    }

    #[test]
    fn a_damaged_record_is_an_error_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("tenant-budget.json"), "{").expect("write");
        let at = Arc::new(AtomicU64::new(T0));
        let err = TenantBudget::open(cap(1 << 20), dir.path(), 2, clock(&at))
            .err()
            .expect("refused");
        assert!(err.contains("tenant-budget.json is unusable"), "{err}");
    }
}
