//! Counters and the upstream state as told, and their renderings for `/status`,
//! `/status.json`, `/metrics`. Nothing here decides a state: the prefetcher publishes the
//! state machine's [`View`] (see [`crate::state_machine`]) and the daemon says when it stops.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

pub mod pacing_wait;
pub mod view;

use crate::budget::{Budget, BudgetReport};
use crate::pool::Pool;
use pacing_wait::PacingWait;
pub use view::{UpstreamState, View};

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

#[derive(Debug)]
pub struct Status {
    info: StaticInfo,
    started: SystemTime,
    pub fetched_bytes: AtomicU64,
    pub requests_ok: AtomicU64,
    pub requests_failed: AtomicU64,
    pub discarded_bytes: AtomicU64,
    /// Requests per window the client allows itself now (0: no `--rate-limit`).
    rate_allowance: AtomicU32,
    budget: Mutex<Option<Arc<Budget>>>,
    pacing: Mutex<PacingWait>,
    mutable: Mutex<Mutable>,
}

/// One consistent picture, rendered three ways.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub state: &'static str,
    pub buffered_bytes: u64,
    pub capacity_bytes: u64,
    pub buffer_fill_percent: u64,
    pub served_bytes: u64,
    pub fetched_bytes: u64,
    pub discarded_bytes: u64,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub consecutive_failures: u64,
    pub next_attempt_in_seconds: Option<f64>,
    pub waiting_readers: u64,
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
    pub rate_limit: String,
    /// Requests per window the client allows itself now; `None` without `--rate-limit`.
    pub rate_allowance: Option<u32>,
    /// Unix time until which the client's own pacing holds requests back.
    pub rate_limited_until: Option<f64>,
    /// Seconds readers spent waiting while the client's pacing held requests back.
    pub pacing_wait_seconds: f64,
    #[serde(flatten)]
    pub budget: BudgetReport,
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
            started: SystemTime::now(),
            fetched_bytes: AtomicU64::new(0),
            requests_ok: AtomicU64::new(0),
            requests_failed: AtomicU64::new(0),
            discarded_bytes: AtomicU64::new(0),
            rate_allowance: AtomicU32::new(0),
            budget: Mutex::new(None),
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
            requests_ok: self.requests_ok.load(Ordering::SeqCst),
            requests_failed: self.requests_failed.load(Ordering::SeqCst),
            consecutive_failures: m.upstream.consecutive_failures,
            next_attempt_in_seconds: next_attempt
                .map(|t| t.saturating_duration_since(now).as_millis() as f64 / 1000.0),
            waiting_readers: waiting as u64,
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
            rate_limit: self.info.rate_limit.clone(),
            rate_allowance: Some(self.rate_allowance.load(Ordering::SeqCst)).filter(|&r| r > 0),
            rate_limited_until: pacing_until.and_then(unix_at),
            pacing_wait_seconds: pacing_wait.as_millis() as f64 / 1000.0,
            budget,
            uptime_seconds: SystemTime::now()
                .duration_since(self.started)
                .unwrap_or(Duration::ZERO)
                .as_secs(),
        }
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn rfc3339(secs: u64) -> String {
    // Civil-from-days (H. Hinnant), UTC; avoids a date crate for one timestamp format.
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Snapshot {
    /// `key: value` lines.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: &dyn std::fmt::Display| {
            let _ = writeln!(s, "{k}: {v}");
        };
        line("state", &self.state);
        line("buffered_bytes", &self.buffered_bytes);
        line("capacity_bytes", &self.capacity_bytes);
        line("buffer_fill_percent", &self.buffer_fill_percent);
        line("served_bytes", &self.served_bytes);
        line("fetched_bytes", &self.fetched_bytes);
        line("discarded_bytes", &self.discarded_bytes);
        line("requests_ok", &self.requests_ok);
        line("requests_failed", &self.requests_failed);
        line("consecutive_failures", &self.consecutive_failures);
        line(
            "next_attempt_in_seconds",
            &self
                .next_attempt_in_seconds
                .map_or("none".to_owned(), |v| format!("{v:.1}")),
        );
        line("waiting_readers", &self.waiting_readers);
        let failures = if self.failures.is_empty() {
            "none".to_owned()
        } else {
            self.failures
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        line("failures", &failures);
        let last = match (&self.last_error, self.last_error_at) {
            (Some(e), Some(t)) => format!("{} {e}", rfc3339(t)),
            _ => "none".to_owned(),
        };
        line("last_error", &last);
        line(
            "last_success",
            &self.last_success_at.map_or("none".to_owned(), rfc3339),
        );
        line(
            "memory_locked",
            &if self.memory_locked { "yes" } else { "no" },
        );
        line("locked_bytes", &self.locked_bytes);
        line(
            "mix_local",
            &if self.mix_local {
                "on (output = Qrypt XOR getrandom)"
            } else {
                "off"
            },
        );
        line("endpoint", &self.endpoint);
        line("token_source", &self.token_source);
        line(
            "token_error",
            &self.token_error.as_deref().unwrap_or("none"),
        );
        line("rate_limit", &self.rate_limit);
        line(
            "rate_allowance",
            &self
                .rate_allowance
                .map_or("none".to_owned(), |r| r.to_string()),
        );
        line(
            "rate_limited_until",
            &self.rate_limited_until.map_or("none".to_owned(), |t| {
                let ms = (t * 1000.0) as u64;
                rfc3339(ms / 1000).replace('Z', &format!(".{:03}Z", ms % 1000))
            }),
        );
        line(
            "pacing_wait_seconds",
            &format!("{:.1}", self.pacing_wait_seconds),
        );
        self.budget.write_text(&mut s, rfc3339);
        let _ = writeln!(s, "uptime_seconds: {}", self.uptime_seconds);
        s
    }

    /// One JSON object; integers as numbers.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_owned());
        s.push('\n');
        s
    }

    /// Prometheus text exposition format.
    pub fn to_prometheus(&self) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(s, "# HELP qrypt_fs_{name} {help}");
            let _ = writeln!(s, "# TYPE qrypt_fs_{name} {kind}");
            let _ = writeln!(s, "qrypt_fs_{name} {value}");
        };
        metric(
            "buffered_bytes",
            "gauge",
            "Bytes in the prefetch buffer.",
            self.buffered_bytes.to_string(),
        );
        metric(
            "capacity_bytes",
            "gauge",
            "Capacity of the prefetch buffer.",
            self.capacity_bytes.to_string(),
        );
        metric(
            "buffer_fill_percent",
            "gauge",
            "How full the prefetch buffer is, in percent.",
            self.buffer_fill_percent.to_string(),
        );
        metric(
            "served_bytes_total",
            "counter",
            "Bytes handed to readers.",
            self.served_bytes.to_string(),
        );
        metric(
            "fetched_bytes_total",
            "counter",
            "Validated bytes received from the upstream.",
            self.fetched_bytes.to_string(),
        );
        metric(
            "discarded_bytes_total",
            "counter",
            "Bytes of responses rejected by validation or health tests.",
            self.discarded_bytes.to_string(),
        );
        metric(
            "requests_ok_total",
            "counter",
            "Upstream requests that delivered entropy.",
            self.requests_ok.to_string(),
        );
        metric(
            "requests_failed_total",
            "counter",
            "Upstream requests that failed.",
            self.requests_failed.to_string(),
        );
        metric(
            "consecutive_failures",
            "gauge",
            "Upstream failures since the last success.",
            self.consecutive_failures.to_string(),
        );
        if let Some(next) = self.next_attempt_in_seconds {
            metric(
                "next_attempt_in_seconds",
                "gauge",
                "Seconds until the next upstream attempt while backing off (absent otherwise).",
                format!("{next:.3}"),
            );
        }
        if let Some(t) = self.last_success_at {
            metric(
                "last_success_timestamp_seconds",
                "gauge",
                "Unix time of the last request that delivered entropy.",
                t.to_string(),
            );
        }
        if let Some(t) = self.last_error_at {
            metric(
                "last_error_timestamp_seconds",
                "gauge",
                "Unix time of the last upstream failure.",
                t.to_string(),
            );
        }
        metric(
            "waiting_readers",
            "gauge",
            "Reads waiting for entropy.",
            self.waiting_readers.to_string(),
        );
        metric(
            "memory_locked",
            "gauge",
            "1 if the buffer is locked in RAM.",
            u8::from(self.memory_locked).to_string(),
        );
        metric(
            "locked_bytes",
            "gauge",
            "Bytes of the buffer locked in RAM (locked as it fills).",
            self.locked_bytes.to_string(),
        );
        metric(
            "token_error",
            "gauge",
            "1 if the token file's last read was refused (the token in use stays; /status says why).",
            u8::from(self.token_error.is_some()).to_string(),
        );
        metric(
            "mix_local",
            "gauge",
            "1 if every byte is XORed with the local CSPRNG (--mix-local).",
            u8::from(self.mix_local).to_string(),
        );
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since start.",
            self.uptime_seconds.to_string(),
        );
        metric(
            "pacing_wait_seconds_total",
            "counter",
            "Seconds readers spent waiting while the client's own pacing held requests back.",
            format!("{:.3}", self.pacing_wait_seconds),
        );
        if let Some(r) = self.rate_allowance {
            metric(
                "rate_allowance_requests",
                "gauge",
                "Requests per rate-limit window the client allows itself now (lower after 429s).",
                r.to_string(),
            );
        }
        if let Some(t) = self.rate_limited_until {
            metric(
                "rate_limited_until_timestamp_seconds",
                "gauge",
                "Unix time until which the client's pacing holds requests back (absent otherwise).",
                format!("{t:.3}"),
            );
        }
        let _ = writeln!(
            s,
            "# HELP qrypt_fs_info Configuration, as labels (where the token comes from, never the token)."
        );
        let _ = writeln!(s, "# TYPE qrypt_fs_info gauge");
        let _ = writeln!(
            s,
            "qrypt_fs_info{{endpoint=\"{}\",rate_limit=\"{}\",token_source=\"{}\"}} 1",
            label(&self.endpoint),
            label(&self.rate_limit),
            label(&self.token_source)
        );
        let _ = writeln!(
            s,
            "# HELP qrypt_fs_failures_total Upstream failures by class."
        );
        let _ = writeln!(s, "# TYPE qrypt_fs_failures_total counter");
        for (class, n) in &self.failures {
            let _ = writeln!(s, "qrypt_fs_failures_total{{class=\"{class}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "# HELP qrypt_fs_state Upstream state (1 for the current one)."
        );
        let _ = writeln!(s, "# TYPE qrypt_fs_state gauge");
        for st in UpstreamState::ALL {
            let _ = writeln!(
                s,
                "qrypt_fs_state{{state=\"{}\"}} {}",
                st.as_str(),
                u8::from(st.as_str() == self.state)
            );
        }
        self.budget.write_prometheus(&mut s);
        s
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_867_200), "2026-11-28T12:00:00Z");
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
            "qrypt_fs_info{endpoint=\"http://127.0.0.1:1\",rate_limit=\"30/10s\",\
             token_source=\"environment (QRYPT_TOKEN)\"} 1\n"
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
