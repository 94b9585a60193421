//! Counters and the upstream state as told, and their renderings for `/status`,
//! `/status.json`, `/metrics`. Nothing here decides a state: the prefetcher publishes the
//! state machine's [`View`] and the daemon says when it stops.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

pub mod fields;
pub mod pacing_wait;
mod render;
pub mod view;

use crate::budget::{Budget, BudgetReport};
use crate::pool::Pool;
use pacing_wait::PacingWait;
pub use view::{UpstreamState, View};

/// A wall-clock time as `/status` shows times (RFC 3339, UTC), for messages.
pub fn time_text(t: SystemTime) -> String {
    render::rfc3339(
        t.duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    )
}

/// Longest error message kept for `last_error`.
pub const MAX_ERROR_CHARS: usize = 300;

/// Cuts an error message to [`MAX_ERROR_CHARS`], whatever an error chain holds, so `/status`
/// and the log stay readable.
pub fn bounded(message: String) -> String {
    match message.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}...", &message[..cut]),
        None => message,
    }
}

/// Facts fixed at start-up.
#[derive(Debug, Clone)]
pub struct StaticInfo {
    pub endpoint: String,
    pub token_source: String,
    pub capacity: usize,
    pub mix_local: bool,
    pub rate_limit: String,
}

#[derive(Debug)]
struct Mutable {
    upstream: View,
    stopping: bool,
    last_error: Option<(SystemTime, String)>,
    last_success: Option<SystemTime>,
    failures_by_class: BTreeMap<String, u64>,
    /// Why the last token file read was refused, until a read succeeds.
    token_error: Option<String>,
}

/// What the server knows of the mount's other processes: how the last fetcher ended and how
/// often one did, and how the processes are confined. Shared with the fetch channel.
#[derive(Debug)]
pub struct Processes {
    fetcher_restarts: AtomicU64,
    fetcher_last_exit: Mutex<Option<String>>,
    sandbox: Mutex<String>,
    fetcher_sandbox: Mutex<Option<String>>,
}

impl Default for Processes {
    fn default() -> Processes {
        Processes {
            fetcher_restarts: AtomicU64::new(0),
            fetcher_last_exit: Mutex::new(None),
            sandbox: Mutex::new("none".into()),
            fetcher_sandbox: Mutex::new(None),
        }
    }
}

/// One tenant's line in `/status` (or `other`: the tenants beyond the top ones, summed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantReport {
    pub name: String,
    /// Bytes served this period ([`TenantsView::period`]).
    pub period_bytes: u64,
    /// Bytes served since start.
    pub served_bytes: u64,
    /// Tenants at their cap now (0 or 1, more for `other`).
    pub at_cap: u64,
}

/// The tenants as `/status` shows them, filled in by the tenant module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantsView {
    pub tenant_by: String,
    /// The `--tenant-budget` caps, `None` without.
    pub budget: Option<String>,
    /// What "this period" is: hour, day or month.
    pub period: &'static str,
    /// Tenants that read in the last minute.
    pub active: u64,
    /// Tenants at their cap now.
    pub at_cap: u64,
    /// The top tenants by bytes this period, then `other` if any.
    pub top: Vec<TenantReport>,
}

/// By uid, nobody seen yet: what a mount shows before its first read.
impl Default for TenantsView {
    fn default() -> TenantsView {
        TenantsView {
            tenant_by: "uid".into(),
            budget: None,
            period: "day",
            active: 0,
            at_cap: 0,
            top: Vec::new(),
        }
    }
}

impl Processes {
    /// A fetcher ended (`why`: pid and exit status or signal); another is started.
    pub fn fetcher_ended(&self, why: String) {
        *self.fetcher_last_exit.lock() = Some(bounded(why));
        self.fetcher_restarts.fetch_add(1, Ordering::SeqCst);
    }

    /// How the server is confined (`full`, `partial (...)`, `none ...`).
    pub fn set_sandbox(&self, report: String) {
        *self.sandbox.lock() = report;
    }

    /// How the last fetcher said it is confined.
    pub fn set_fetcher_sandbox(&self, report: String) {
        *self.fetcher_sandbox.lock() = Some(report);
    }

    /// Both reports in one: the server's alone when the fetcher's says the same (or none came
    /// yet), else each named.
    fn sandbox(&self) -> String {
        let server = self.sandbox.lock().clone();
        match self.fetcher_sandbox.lock().as_ref() {
            Some(f) if *f != server => format!("server {server}, fetcher {f}"),
            _ => server,
        }
    }
}

type TenantsSource = Box<dyn Fn() -> TenantsView + Send + Sync>;

struct TenantsSlot(Mutex<Option<TenantsSource>>);

impl std::fmt::Debug for TenantsSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TenantsSlot")
    }
}

#[derive(Debug)]
pub struct Status {
    info: StaticInfo,
    processes: Arc<Processes>,
    started: SystemTime,
    pub fetched_bytes: AtomicU64,
    pub requests_ok: AtomicU64,
    pub requests_failed: AtomicU64,
    pub discarded_bytes: AtomicU64,
    /// Upstream bytes the replay history covers (estimated from its anchors).
    replay_history_bytes: AtomicU64,
    /// Whether the replay history is written to --state-dir.
    replay_history_saved: AtomicBool,
    /// Requests per window the client allows itself now (0: no `--rate-limit`).
    rate_allowance: AtomicU32,
    budget: Mutex<Option<Arc<Budget>>>,
    pacing: Mutex<PacingWait>,
    mutable: Mutex<Mutable>,
    tenants: TenantsSlot,
}

/// One consistent picture, rendered three ways (see [`fields`]).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: &'static str,
    pub buffered_bytes: u64,
    pub capacity_bytes: u64,
    pub buffer_fill_percent: u64,
    pub served_bytes: u64,
    pub fetched_bytes: u64,
    pub discarded_bytes: u64,
    pub replay_history_bytes: u64,
    pub replay_history_saved: bool,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub consecutive_failures: u64,
    pub next_attempt_in_seconds: Option<f64>,
    pub waiting_readers: u64,
    /// Reads refused because their user had the most reads waiting it may.
    pub refused_waiters: u64,
    pub failures: BTreeMap<String, u64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    pub last_success_at: Option<u64>,
    pub memory_locked: bool,
    /// Bytes of the buffer locked in RAM now (it is locked as it fills).
    pub locked_bytes: u64,
    pub mix_local: bool,
    pub endpoint: String,
    pub token_source: String,
    /// Why the token file's last read was refused (the token in use stays), if it was.
    pub token_error: Option<String>,
    pub sandbox: String,
    pub fetcher_restarts: u64,
    pub fetcher_last_exit: Option<String>,
    pub rate_limit: String,
    /// Requests per window the client allows itself now; `None` without `--rate-limit`.
    pub rate_allowance: Option<u32>,
    /// Unix time until which the client's own pacing holds requests back.
    pub rate_limited_until: Option<f64>,
    /// Seconds readers spent waiting while the client's pacing held requests back.
    pub pacing_wait_seconds: f64,
    pub budget: BudgetReport,
    pub tenants: TenantsView,
    pub uptime_seconds: u64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

impl Status {
    pub fn new(info: StaticInfo) -> Status {
        Status {
            info,
            processes: Arc::default(),
            started: SystemTime::now(),
            fetched_bytes: AtomicU64::new(0),
            requests_ok: AtomicU64::new(0),
            requests_failed: AtomicU64::new(0),
            discarded_bytes: AtomicU64::new(0),
            replay_history_bytes: AtomicU64::new(0),
            replay_history_saved: AtomicBool::new(false),
            rate_allowance: AtomicU32::new(0),
            budget: Mutex::new(None),
            tenants: TenantsSlot(Mutex::new(None)),
            pacing: Mutex::new(PacingWait::default()),
            mutable: Mutex::new(Mutable {
                upstream: View {
                    state: UpstreamState::Starting,
                    next_attempt: None,
                    consecutive_failures: 0,
                    last_failure: None,
                },
                stopping: false,
                last_error: None,
                last_success: None,
                failures_by_class: BTreeMap::new(),
                token_error: None,
            }),
        }
    }

    /// Reports on `processes` (the fetch channel's and the sandbox's) instead of its own.
    pub fn with_processes(mut self, processes: Arc<Processes>) -> Status {
        self.processes = processes;
        self
    }

    /// The upstream state as last told (`stopping` once the daemon said so).
    #[cfg(test)]
    pub fn state(&self) -> UpstreamState {
        let m = self.mutable.lock();
        if m.stopping {
            UpstreamState::Stopping
        } else {
            m.upstream.state
        }
    }

    /// Records the upstream state machine's view after a transition.
    pub fn publish(&self, upstream: View) {
        self.mutable.lock().upstream = upstream;
    }

    /// The daemon is stopping: shown from now on, whatever is published after.
    pub fn set_stopping(&self) {
        self.mutable.lock().stopping = true;
    }

    /// Counts a request that delivered `bytes`, including a late answer to a request sent
    /// before a stop (its bytes are good; only the state machine decides what it means).
    pub fn record_success(&self, bytes: usize) {
        self.fetched_bytes.fetch_add(bytes as u64, Ordering::SeqCst);
        self.requests_ok.fetch_add(1, Ordering::SeqCst);
        self.mutable.lock().last_success = Some(SystemTime::now());
    }

    /// Counts a failed request of class `class` with its message (never containing the token,
    /// already [`bounded`] by the caller, which logs the same text) and the bytes it discarded.
    pub fn record_failure(&self, class: &str, message: String, discarded: usize) {
        self.requests_failed.fetch_add(1, Ordering::SeqCst);
        self.discarded_bytes
            .fetch_add(discarded as u64, Ordering::SeqCst);
        let mut m = self.mutable.lock();
        *m.failures_by_class.entry(class.to_owned()).or_default() += 1;
        m.last_error = Some((SystemTime::now(), message));
    }

    /// A stop state was entered (a budget cap reached, the token rejected, the quota used up;
    /// a tenant cap goes the same way): `last_error` becomes "REASON; until UNTIL", which says
    /// why and when it may end ([`time_text`] for a time). Returns the text, which the caller
    /// logs once.
    pub fn record_stop(&self, reason: &str, until: &str) -> String {
        let message = format!("{reason}; until {until}");
        self.record_error(message.clone());
        message
    }

    /// An error that is no request's (the budget could not be recorded): the last error.
    pub fn record_error(&self, message: String) {
        self.mutable.lock().last_error = Some((SystemTime::now(), message));
    }

    /// A token file read was refused (`message` never holds the token): shown as
    /// `token_error` until a read succeeds, and as the last error.
    pub fn record_token_error(&self, message: String) {
        let mut m = self.mutable.lock();
        m.last_error = Some((SystemTime::now(), message.clone()));
        m.token_error = Some(message);
    }

    /// The token file was read and its token taken.
    pub fn clear_token_error(&self) {
        self.mutable.lock().token_error = None;
    }

    /// The budget whose caps and spend `/status` shows (it renews with the clock, so it is
    /// read at each snapshot rather than told).
    pub fn set_budget(&self, budget: Arc<Budget>) {
        *self.budget.lock() = Some(budget);
    }

    /// What the replay history covers now, and whether it survives a restart.
    /// Where the tenants' view comes from.
    pub fn set_tenants(&self, source: TenantsSource) {
        *self.tenants.0.lock() = Some(source);
    }

    pub fn set_replay_history(&self, bytes: u64, saved: bool) {
        self.replay_history_bytes.store(bytes, Ordering::Relaxed);
        self.replay_history_saved.store(saved, Ordering::Relaxed);
    }

    pub fn set_rate_allowance(&self, requests: u32) {
        self.rate_allowance.store(requests, Ordering::SeqCst);
    }

    /// The client's own pacing holds requests back until `until`.
    pub fn pacing_hold(&self, now: Instant, until: Instant) {
        self.pacing.lock().hold(now, until);
    }

    /// The pacing hold (if any) ended; `waiting_since` as [`Pool::waiting_since`] says.
    pub fn pacing_release(&self, now: Instant, waiting_since: Option<Instant>) {
        self.pacing.lock().release(now, waiting_since);
    }

    #[cfg(test)]
    pub fn consecutive_failures(&self) -> u64 {
        self.mutable.lock().upstream.consecutive_failures
    }

    pub fn snapshot(&self, pool: &Pool) -> Snapshot {
        self.snapshot_at(pool, Instant::now())
    }

    /// The snapshot as of `now` (a clock other than the system's in tests).
    pub(crate) fn snapshot_at(&self, pool: &Pool, now: Instant) -> Snapshot {
        let (buffered, served, waiting) = pool.counts();
        let waiting_since = pool.waiting_since();
        let (pacing_until, pacing_wait) = {
            let p = self.pacing.lock();
            (p.until(now), p.total(now, waiting_since))
        };
        let budget = self
            .budget
            .lock()
            .as_ref()
            .map(|b| b.report())
            .unwrap_or_default();
        let tenants = self
            .tenants
            .0
            .lock()
            .as_ref()
            .map(|f| f())
            .unwrap_or_default();
        let wall = SystemTime::now();
        let unix_at = |t: Instant| {
            wall.checked_add(t.saturating_duration_since(now))
                .and_then(|w| w.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as f64 / 1000.0)
        };
        // Read after the pool: fetched only grows, so served + buffered <= fetched holds.
        let fetched = self.fetched_bytes.load(Ordering::SeqCst);
        let m = self.mutable.lock();
        let capacity = self.info.capacity as u64;
        let mut next_attempt = m.upstream.next_attempt;
        let state = if m.stopping {
            UpstreamState::Stopping
        } else {
            match m.upstream.shown_at(now) {
                // The client itself is why a reader waits: say so, and until when.
                UpstreamState::Ok | UpstreamState::Degraded | UpstreamState::Starting
                    if pacing_until.is_some() && waiting > 0 =>
                {
                    next_attempt = pacing_until;
                    UpstreamState::Pacing
                }
                s => s,
            }
        };
        Snapshot {
            state: state.as_str(),
            buffered_bytes: buffered as u64,
            capacity_bytes: capacity,
            buffer_fill_percent: (buffered as u64 * 100).checked_div(capacity).unwrap_or(0),
            served_bytes: served,
            fetched_bytes: fetched,
            discarded_bytes: self.discarded_bytes.load(Ordering::SeqCst),
            replay_history_bytes: self.replay_history_bytes.load(Ordering::Relaxed),
            replay_history_saved: self.replay_history_saved.load(Ordering::Relaxed),
            requests_ok: self.requests_ok.load(Ordering::SeqCst),
            requests_failed: self.requests_failed.load(Ordering::SeqCst),
            consecutive_failures: m.upstream.consecutive_failures,
            next_attempt_in_seconds: next_attempt
                .map(|t| t.saturating_duration_since(now).as_millis() as f64 / 1000.0),
            waiting_readers: waiting as u64,
            refused_waiters: pool.refused_waiters(),
            failures: m.failures_by_class.clone(),
            last_error: m.last_error.as_ref().map(|(_, e)| e.clone()),
            last_error_at: m.last_error.as_ref().map(|(t, _)| unix(*t)),
            last_success_at: m.last_success.map(unix),
            memory_locked: pool.memory_locked(),
            locked_bytes: pool.locked_bytes() as u64,
            mix_local: self.info.mix_local,
            endpoint: self.info.endpoint.clone(),
            token_source: self.info.token_source.clone(),
            token_error: m.token_error.clone(),
            sandbox: self.processes.sandbox(),
            fetcher_restarts: self.processes.fetcher_restarts.load(Ordering::SeqCst),
            fetcher_last_exit: self.processes.fetcher_last_exit.lock().clone(),
            rate_limit: self.info.rate_limit.clone(),
            rate_allowance: Some(self.rate_allowance.load(Ordering::SeqCst)).filter(|&r| r > 0),
            rate_limited_until: pacing_until.and_then(unix_at),
            pacing_wait_seconds: pacing_wait.as_millis() as f64 / 1000.0,
            budget,
            tenants,
            uptime_seconds: SystemTime::now()
                .duration_since(self.started)
                .unwrap_or(Duration::ZERO)
                .as_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::render::{label, rfc3339};
    use super::*;

    fn status() -> Status {
        Status::new(StaticInfo {
            endpoint: "http://127.0.0.1:1".into(),
            token_source: "environment (QRYPT_TOKEN)".into(),
            capacity: 4096,
            mix_local: false,
            rate_limit: "30/10s".into(),
        })
    }

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_867_200.0), "2026-11-28T12:00:00Z");
        assert_eq!(rfc3339(1_795_867_200.25), "2026-11-28T12:00:00.25Z");
    }

    /// A snapshot in which every optional field has a value, a cap is set, and a failure is
    /// recorded: each field of the table must then show in every format.
    fn full_snapshot() -> Snapshot {
        let st = status();
        let pool = Pool::new(4096);
        st.record_failure("http_503", "HTTP 503".into(), 0);
        st.record_success(1024);
        st.record_token_error("not a regular file".into());
        st.processes
            .fetcher_ended("pid 7 killed by signal 9 (SIGKILL)".into());
        st.processes.set_sandbox("full".into());
        st.set_rate_allowance(30);
        let now = Instant::now();
        st.pacing_hold(now, now + Duration::from_secs(2));
        st.publish(View {
            state: UpstreamState::BackingOff,
            next_attempt: Some(now + Duration::from_secs(3)),
            consecutive_failures: 1,
            last_failure: Some(now),
        });
        let mut snap = st.snapshot_at(&pool, now);
        let cap = crate::budget::Cap {
            limit: 1 << 20,
            period: crate::budget::Period::Hour,
        };
        snap.budget = BudgetReport::new(&[cap], &Default::default(), 1_795_867_200);
        // 1 KiB/s over the last hour: the 1 MiB cap runs out in 1024 s, before it renews.
        snap.budget.set_rates(1024.0, 42.5, 1_795_867_200);
        snap.budget.state_file = Some("/var/lib/qrypt-fs/budget.json".into());
        snap.tenants = TenantsView {
            tenant_by: "uid".into(),
            budget: Some("20M/day".into()),
            period: "day",
            active: 2,
            at_cap: 1,
            top: vec![
                TenantReport {
                    name: "uid:1000".into(),
                    period_bytes: 20 << 20,
                    served_bytes: 30 << 20,
                    at_cap: 1,
                },
                TenantReport {
                    name: "uid:0".into(),
                    period_bytes: 32,
                    served_bytes: 64,
                    at_cap: 0,
                },
            ],
        };
        snap
    }

    #[test]
    fn every_field_shows_in_every_format_under_one_key() {
        let snap = full_snapshot();
        let entries = snap.entries();
        let text = snap.to_text();
        let json: serde_json::Value = serde_json::from_str(&snap.to_json()).expect("json");
        let json = json.as_object().expect("object");
        let prom = snap.to_prometheus();
        let text_keys: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, _)| k)
            .collect();
        let entry_keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(text_keys, entry_keys, "{text}");
        let mut json_keys: Vec<&str> = json.keys().map(String::as_str).collect();
        let mut sorted = entry_keys.clone();
        json_keys.sort_unstable();
        sorted.sort_unstable();
        assert_eq!(json_keys, sorted);
        for field in fields::FIELDS {
            let shown: Vec<&render::Entry> = entries
                .iter()
                .filter(|e| std::ptr::eq(e.field, field))
                .collect();
            assert!(!shown.is_empty(), "{} not shown", field.key);
            for e in shown {
                assert_ne!(e.value, render::Value::Text(None), "{} has no value", e.key);
                assert!(!json[&e.key].is_null(), "{} is null in JSON", e.key);
                assert!(!text.contains(&format!("\n{}: none\n", e.key)), "{}", e.key);
            }
            let metric = fields::metric_name(field);
            let series = if field.kind == fields::Kind::Info {
                format!("{}=\"", field.key)
            } else {
                format!("\nqrypt_fs_{metric}")
            };
            assert!(
                prom.contains(&series),
                "{} ({series}) not in /metrics:\n{prom}",
                field.key
            );
            assert!(
                field.kind == fields::Kind::Info
                    || prom.contains(&format!("# HELP qrypt_fs_{metric} ")),
                "{metric}"
            );
        }
        // Numbers in JSON are series in /metrics, under the derived name.
        assert!(
            prom.contains("\nqrypt_fs_budget_limit_bytes{period=\"hour\"} 1048576\n"),
            "{prom}"
        );
        assert!(
            prom.contains("\nqrypt_fs_budget_spent_bytes{period=\"day\"} 0\n"),
            "{prom}"
        );
        assert!(prom.contains("\nqrypt_fs_served_bytes_total 0\n"), "{prom}");
        assert!(prom.contains("\nqrypt_fs_token_error 1\n"), "{prom}");
        assert!(
            prom.contains("\nqrypt_fs_state{state=\"backing off\"} 1\n"),
            "{prom}"
        );
        assert!(
            prom.contains("\nqrypt_fs_tenant_served_bytes_total{tenant=\"uid:1000\"} 31457280\n")
                && prom.contains("\nqrypt_fs_tenant_at_cap{tenant=\"uid:1000\"} 1\n")
                && prom.contains("\nqrypt_fs_active_tenants 2\n"),
            "{prom}"
        );
        assert!(
            text.contains("\ntenant_period_bytes: uid:1000=20971520 uid:0=32\n"),
            "{text}"
        );
        assert_eq!(json["tenant_period_bytes"]["uid:0"], 32);
        assert_eq!(json["budget_hour_limit_bytes"], 1 << 20);
        assert_eq!(json["budget"], "1M/hour");
        // The forecast: the rates over the hour and the day, and when the cap runs out.
        assert!(
            text.contains("\nbudget_hour_spend_rate_bytes_per_second: 1024.0\n")
                && text.contains("\nbudget_day_spend_rate_bytes_per_second: 42.5\n")
                && text.contains("\nbudget_hour_runs_out_at: 2026-11-28T12:17:04Z\n"),
            "{text}"
        );
        assert_eq!(json["budget_hour_runs_out_at"], 1_795_867_200 + 1024);
        assert!(
            prom.contains("\nqrypt_fs_budget_spend_rate_bytes_per_second{period=\"day\"} 42.500\n")
                && prom.contains(
                    "\nqrypt_fs_budget_runs_out_timestamp_seconds{period=\"hour\"} 1795868224\n"
                ),
            "{prom}"
        );
        assert!(
            text.contains("\nbudget_month_renews_at: 2026-12-01T00:00:00Z\n"),
            "{text}"
        );
    }

    #[test]
    fn renders_all_three() {
        let st = status();
        let pool = Pool::new(4096);
        pool.push(&[1u8; 1024]);
        st.record_failure("http_503", "HTTP 503".into(), 0);
        st.record_success(1024);
        // As the state machine tells it after a 503 and then a 200.
        let failed_at = Instant::now();
        st.publish(View {
            state: UpstreamState::Ok,
            next_attempt: None,
            consecutive_failures: 0,
            last_failure: Some(failed_at),
        });
        let snap = st.snapshot_at(&pool, failed_at);
        let text = snap.to_text();
        assert!(text.contains("state: degraded\n"), "{text}");
        assert!(text.contains("buffered_bytes: 1024\n"));
        assert!(text.contains("failures: http_503=1\n"));
        let json: serde_json::Value = serde_json::from_str(&snap.to_json()).expect("json");
        assert_eq!(json["fetched_bytes"], 1024);
        let prom = snap.to_prometheus();
        assert!(prom.contains("qrypt_fs_buffered_bytes 1024\n"));
        assert!(prom.contains("qrypt_fs_failures_total{class=\"http_503\"} 1\n"));
        assert!(prom.contains(
            "qrypt_fs_info{endpoint=\"http://127.0.0.1:1\",\
             token_source=\"environment (QRYPT_TOKEN)\",sandbox=\"none\",rate_limit=\"30/10s\",budget=\"off\",\
             budget_state_file=\"none\",tenant_by=\"uid\",tenant_budget=\"off\"} 1\n"
        ));
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let later = failed_at + view::DEGRADED_WINDOW;
        assert_eq!(st.snapshot_at(&pool, later).state, "ok");
    }

    #[test]
    fn records_what_it_is_told_and_decides_nothing() {
        let st = status();
        st.record_failure("http_403", "HTTP 403".into(), 0);
        let told = View {
            state: UpstreamState::QuotaExhausted,
            next_attempt: Some(Instant::now() + std::time::Duration::from_secs(3600)),
            consecutive_failures: 1,
            last_failure: Some(Instant::now()),
        };
        st.publish(told);
        // A late 200 (sent before the 403) is counted, but the state stays as told.
        st.record_success(1024);
        assert_eq!(st.state(), UpstreamState::QuotaExhausted);
        assert_eq!(st.consecutive_failures(), 1);
        assert_eq!(st.requests_ok.load(Ordering::SeqCst), 1);
        // Stopping is shown from then on, whatever is published after.
        st.set_stopping();
        st.publish(View {
            state: UpstreamState::Ok,
            ..told
        });
        assert_eq!(st.state(), UpstreamState::Stopping);
        assert_eq!(st.snapshot(&Pool::new(4096)).state, "stopping");
    }
}
