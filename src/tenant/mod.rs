//! Who a read belongs to (`--tenant-by`), what each tenant was served, and whether its cap
//! (`--tenant-budget`) lets it have more: the pool only sees an opaque [`Tenant`] key.
//!
//! Keys: a uid is its own number; one key stands for everyone (`--tenant-by none`), one for
//! readers whose cgroup cannot be read (`unknown`, never merged with a real tenant), and each
//! cgroup path seen gets a fresh key of its own. A reader's cgroup is read once per task and
//! remembered for [`PID_TTL`], so a reader already seen costs no system call.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::budget::tenants::{Refused, TenantBudget};
use crate::budget::{Clock, Period};
use crate::pool::{SMALL_READ_MAX, Tenant};
use crate::read_guard::log_limit::LogLimiter;
use crate::status::{TenantReport, TenantsView};

pub mod cgroup;

/// Everyone, with `--tenant-by none`.
const ALL: u64 = 1 << 32;
/// Readers whose cgroup cannot be read.
const UNKNOWN: u64 = ALL + 1;
/// The first key of a cgroup.
const FIRST_CGROUP: u64 = 1 << 33;
/// How long a task's cgroup is remembered: a process moved to another cgroup (or a pid
/// reused) is seen within this long.
pub const PID_TTL: Duration = Duration::from_secs(2);
/// The most tasks and cgroup paths remembered; beyond it the memory starts afresh.
const MAX_REMEMBERED: usize = 4096;
/// Tenants counted one by one for `/status`; beyond it they count as `other`.
const MAX_COUNTED: usize = 4096;
/// The tenants `/status` and `/metrics` name; the rest are summed as `other`.
pub const TOP: usize = 10;
/// A tenant that read within this long is active.
const ACTIVE: Duration = Duration::from_secs(60);

/// How readers are told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantBy {
    /// The reader's uid, as the FUSE request carries it.
    Uid,
    /// The reader's cgroup (v2), cut after `depth` components when given.
    Cgroup { depth: Option<usize> },
    /// One tenant for everyone.
    None,
}

impl std::fmt::Display for TenantBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TenantBy::Uid => f.write_str("uid"),
            TenantBy::Cgroup { depth: None } => f.write_str("cgroup"),
            TenantBy::Cgroup { depth: Some(d) } => write!(f, "cgroup (depth {d})"),
            TenantBy::None => f.write_str("none"),
        }
    }
}

/// What [`Tenants`] needs at start.
pub struct TenantConfig {
    pub by: TenantBy,
    /// The per-tenant caps, with their record (none: no cap).
    pub budget: Option<TenantBudget>,
    /// Tenants without a cap, as `uid:N` or `cgroup:PATH`.
    pub exempt: Vec<String>,
}

/// Bytes one tenant received.
struct Served {
    this_period: u64,
    total: u64,
    last: Instant,
    at_cap: bool,
}

struct Counts {
    per: HashMap<u64, Served>,
    /// Tenants beyond [`MAX_COUNTED`], summed.
    other_period: u64,
    other_total: u64,
    /// When `this_period` counts start over (Unix seconds).
    renews_at: u64,
}

#[derive(Default)]
struct Names {
    by_path: HashMap<Arc<str>, u64>,
    by_key: HashMap<u64, Arc<str>>,
    next: u64,
}

/// Called with a message when a tenant is refused for its cap (the status's `last_error`).
pub type ErrorSink = Box<dyn Fn(String) + Send + Sync>;

/// By uid, without caps: the default.
impl Default for Tenants {
    fn default() -> Tenants {
        Tenants::new(
            TenantConfig {
                by: TenantBy::Uid,
                budget: None,
                exempt: Vec::new(),
            },
            crate::budget::system_clock(),
        )
    }
}

pub struct Tenants {
    by: TenantBy,
    budget: Option<TenantBudget>,
    exempt_uids: HashSet<u32>,
    exempt_cgroups: HashSet<String>,
    tasks: Mutex<HashMap<u32, (Tenant, Instant)>>,
    names: Mutex<Names>,
    counts: Mutex<Counts>,
    /// The period `/status` counts "this period" in: the tightest cap's, else the UTC day.
    period: Period,
    clock: Clock,
    on_refused: Mutex<Option<ErrorSink>>,
}

impl Tenants {
    pub fn new(cfg: TenantConfig, clock: Clock) -> Tenants {
        let mut exempt_uids = HashSet::new();
        let mut exempt_cgroups = HashSet::new();
        for e in &cfg.exempt {
            if let Some(uid) = e.strip_prefix("uid:").and_then(|u| u.parse().ok()) {
                exempt_uids.insert(uid);
            } else if let Some(path) = e.strip_prefix("cgroup:") {
                exempt_cgroups.insert(path.to_owned());
            }
        }
        let period = cfg
            .budget
            .as_ref()
            .and_then(|b| b.caps().iter().map(|c| c.period).min())
            .unwrap_or(Period::Day);
        let now = clock();
        Tenants {
            by: cfg.by,
            budget: cfg.budget,
            exempt_uids,
            exempt_cgroups,
            tasks: Mutex::new(HashMap::new()),
            names: Mutex::new(Names {
                next: FIRST_CGROUP,
                ..Names::default()
            }),
            counts: Mutex::new(Counts {
                per: HashMap::new(),
                other_period: 0,
                other_total: 0,
                renews_at: period.next_start(now),
            }),
            period,
            clock,
            on_refused: Mutex::new(None),
        }
    }

    /// Where a refusal for a cap is reported, besides the log.
    pub fn on_refused(&self, sink: ErrorSink) {
        *self.on_refused.lock() = Some(sink);
    }

    /// The tenant of a read by task `pid` running as `uid`.
    pub fn resolve(&self, pid: u32, uid: u32) -> Tenant {
        match self.by {
            TenantBy::Uid => Tenant::uid(uid),
            TenantBy::None => Tenant::new(ALL),
            TenantBy::Cgroup { depth } => self.cgroup_tenant(pid, depth, Instant::now()),
        }
    }

    fn cgroup_tenant(&self, pid: u32, depth: Option<usize>, now: Instant) -> Tenant {
        if let Some((t, at)) = self.tasks.lock().get(&pid) {
            if now.saturating_duration_since(*at) < PID_TTL {
                return *t;
            }
        }
        let t = match cgroup::of_task(pid, depth) {
            Some(path) => Tenant::new(self.intern(&path)),
            None => Tenant::new(UNKNOWN),
        };
        let mut tasks = self.tasks.lock();
        if tasks.len() >= MAX_REMEMBERED {
            tasks.retain(|_, (_, at)| now.saturating_duration_since(*at) < PID_TTL);
            if tasks.len() >= MAX_REMEMBERED {
                tasks.clear();
            }
        }
        tasks.insert(pid, (t, now));
        t
    }

    /// The key of cgroup `path`.
    fn intern(&self, path: &str) -> u64 {
        let mut n = self.names.lock();
        if let Some(k) = n.by_path.get(path) {
            return *k;
        }
        if n.by_path.len() >= MAX_REMEMBERED {
            // Keys are never reused: a forgotten path comes back under a new key (its cap's
            // spend is recorded by name, so nothing is lost but its unused chunk).
            n.by_path.clear();
            n.by_key.clear();
        }
        let key = n.next;
        n.next += 1;
        let path: Arc<str> = path.into();
        n.by_path.insert(path.clone(), key);
        n.by_key.insert(key, path);
        key
    }

    /// The tenant's name, as the log, `/status` and the cap's record show it.
    pub fn name(&self, t: Tenant) -> String {
        match t.key() {
            k if k < ALL => format!("uid:{k}"),
            ALL => "all".to_owned(),
            UNKNOWN => "unknown".to_owned(),
            k => match self.names.lock().by_key.get(&k) {
                Some(p) => format!("cgroup:{p}"),
                None => "cgroup:?".to_owned(),
            },
        }
    }

    fn is_exempt(&self, t: Tenant) -> bool {
        match t.key() {
            k if k < ALL => u32::try_from(k).is_ok_and(|u| self.exempt_uids.contains(&u)),
            ALL | UNKNOWN => false,
            k => {
                !self.exempt_cgroups.is_empty()
                    && self
                        .names
                        .lock()
                        .by_key
                        .get(&k)
                        .is_some_and(|p| self.exempt_cgroups.contains(&**p))
            }
        }
    }

    /// How much of a `len`-byte read tenant `t` may have: `len`, fewer near its cap (reads
    /// over [`SMALL_READ_MAX`] only: the others are never short), or `None` at its cap. What
    /// is not handed out goes back through [`Tenants::settle`].
    pub fn admit(&self, t: Tenant, len: usize) -> Option<usize> {
        let Some(budget) = &self.budget else {
            return Some(len);
        };
        if len == 0 || self.is_exempt(t) {
            return Some(len);
        }
        let name = || self.name(t);
        match budget.take(t.key(), &name, len as u64) {
            // Larger reads may be short: they take the cap's last bytes.
            Ok(n) if n as usize >= len || (len > SMALL_READ_MAX && n > 0) => {
                Some(usize::try_from(n).unwrap_or(len))
            }
            Ok(n) => {
                budget.give_back(t.key(), n);
                self.refused(t, &Refused::AtCap(budget.caps().to_vec()));
                None
            }
            Err(why) => {
                self.refused(t, &why);
                None
            }
        }
    }

    /// Notes a refusal: in the counts, the log (once per tenant and period, rate-limited
    /// across tenants) and the status.
    fn refused(&self, t: Tenant, why: &Refused) {
        let first = {
            let mut c = self.counts.lock();
            self.roll(&mut c);
            let room = c.per.len() < MAX_COUNTED;
            match c.per.get_mut(&t.key()) {
                Some(s) => !std::mem::replace(&mut s.at_cap, true),
                None if room => {
                    c.per.insert(
                        t.key(),
                        Served {
                            this_period: 0,
                            total: 0,
                            last: Instant::now(),
                            at_cap: true,
                        },
                    );
                    true
                }
                None => false,
            }
        };
        if first || matches!(why, Refused::Store(_)) {
            static CAPPED: LogLimiter = LogLimiter::new(5, Duration::from_secs(60));
            let message = format!("tenant {} {why}: its reads of random get EIO", self.name(t));
            crate::warn_limited!(CAPPED, "{message}");
            if let Some(sink) = &*self.on_refused.lock() {
                sink(message);
            }
        }
    }

    /// Counts what a read of `asked` bytes (as admitted) received: `got` bytes.
    pub fn settle(&self, t: Tenant, asked: usize, got: usize) {
        if let Some(budget) = &self.budget {
            if asked > got && !self.is_exempt(t) {
                budget.give_back(t.key(), (asked - got) as u64);
            }
        }
        let mut c = self.counts.lock();
        self.roll(&mut c);
        let now = Instant::now();
        let room = c.per.len() < MAX_COUNTED;
        match c.per.get_mut(&t.key()) {
            Some(s) => {
                s.this_period += got as u64;
                s.total += got as u64;
                s.last = now;
            }
            None if room => {
                c.per.insert(
                    t.key(),
                    Served {
                        this_period: got as u64,
                        total: got as u64,
                        last: now,
                        at_cap: false,
                    },
                );
            }
            None => {
                c.other_period += got as u64;
                c.other_total += got as u64;
            }
        }
    }

    /// Starts the period's counts over once it has renewed.
    fn roll(&self, c: &mut Counts) {
        let now = (self.clock)();
        if now >= c.renews_at {
            c.renews_at = self.period.next_start(now);
            c.other_period = 0;
            for s in c.per.values_mut() {
                s.this_period = 0;
                s.at_cap = false;
            }
            // Tenants gone quiet leave the table; their bytes stay counted under `other`.
            let now = Instant::now();
            let mut gone = 0;
            c.per.retain(|_, s| {
                let keep = now.saturating_duration_since(s.last) < ACTIVE;
                if !keep {
                    gone += s.total;
                }
                keep
            });
            c.other_total += gone;
        }
    }

    /// What `/status` shows: active tenants and the top ones by bytes this period.
    pub fn view(&self) -> TenantsView {
        let mut c = self.counts.lock();
        self.roll(&mut c);
        let now = Instant::now();
        let active = c
            .per
            .values()
            .filter(|s| now.saturating_duration_since(s.last) < ACTIVE)
            .count();
        let mut all: Vec<(u64, u64, u64, bool)> = c
            .per
            .iter()
            .map(|(k, s)| (*k, s.this_period, s.total, s.at_cap))
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut top = Vec::new();
        let mut other = TenantReport {
            name: "other".to_owned(),
            period_bytes: c.other_period,
            served_bytes: c.other_total,
            at_cap: 0,
        };
        for (i, &(k, period, total, cap)) in all.iter().enumerate() {
            if i < TOP {
                top.push((k, period, total, cap));
            } else {
                other.period_bytes += period;
                other.served_bytes += total;
                other.at_cap += u64::from(cap);
            }
        }
        let at_cap = all.iter().filter(|a| a.3).count() as u64;
        drop(c);
        let mut tenants: Vec<TenantReport> = top
            .into_iter()
            .map(|(k, period_bytes, served_bytes, cap)| TenantReport {
                name: self.name(Tenant::new(k)),
                period_bytes,
                served_bytes,
                at_cap: u64::from(cap),
            })
            .collect();
        if all.len() > TOP || other.served_bytes > 0 {
            tenants.push(other);
        }
        TenantsView {
            tenant_by: self.by.to_string(),
            budget: self.budget.as_ref().map(|b| {
                b.caps()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            }),
            period: self.period.as_str(),
            active: active as u64,
            at_cap,
            top: tenants,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants(by: TenantBy) -> Tenants {
        Tenants::new(
            TenantConfig {
                by,
                budget: None,
                exempt: Vec::new(),
            },
            crate::budget::system_clock(),
        )
    }

    #[test]
    fn uids_are_tenants_and_none_is_one() {
        let t = tenants(TenantBy::Uid);
        assert_eq!(t.resolve(5, 1000), Tenant::uid(1000));
        assert_ne!(t.resolve(5, 1000), t.resolve(5, 0));
        assert_eq!(t.name(t.resolve(5, 1000)), "uid:1000");
        let n = tenants(TenantBy::None);
        assert_eq!(n.resolve(5, 1000), n.resolve(6, 0));
        assert_eq!(n.name(n.resolve(5, 1000)), "all");
    }

    #[test]
    fn an_unreadable_cgroup_is_unknown_and_apart() {
        let t = tenants(TenantBy::Cgroup { depth: None });
        let unknown = t.resolve(0, 0);
        assert_eq!(t.name(unknown), "unknown");
        assert_ne!(unknown, Tenant::uid(0));
        let me = t.resolve(std::process::id(), 0);
        if std::fs::read_to_string("/proc/self/cgroup").is_ok_and(|s| s.contains("0::")) {
            assert_ne!(me, unknown);
            assert!(t.name(me).starts_with("cgroup:/"), "{}", t.name(me));
            // Remembered: the same key again, and one interned path.
            assert_eq!(t.resolve(std::process::id(), 0), me);
            assert_eq!(t.names.lock().by_path.len(), 1);
        }
    }

    #[test]
    fn the_view_names_the_top_tenants_and_sums_the_rest() {
        let t = tenants(TenantBy::Uid);
        for uid in 0..(TOP as u32 + 5) {
            t.settle(Tenant::uid(uid), 100, 100 + uid as usize);
        }
        let v = t.view();
        assert_eq!(v.active, TOP as u64 + 5);
        assert_eq!(v.top.len(), TOP + 1);
        assert_eq!(v.top[0].name, format!("uid:{}", TOP + 4));
        let other = &v.top[TOP];
        assert_eq!(other.name, "other");
        assert_eq!(other.period_bytes, 100 + 101 + 102 + 103 + 104);
    }
}
