//! The one table of status fields: each key, its type, its unit and one line of help.
//!
//! `/status`, `/status.json` and `/metrics` render a snapshot by walking this table, and the man
//! page's STATUS FIELDS section is printed from it, so a field is declared once and carries
//! the same key everywhere. Self-contained (no imports): build.rs includes this file.

/// How a field's value is shown. `/status` and `/status.json` show every field under its key;
/// the kind says what `/metrics` makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A number that only grows: the series `qrypt_fs_KEY_total`.
    Counter,
    /// A number that goes up and down: the series `qrypt_fs_KEY`. Absent from `/metrics`
    /// while the value is unknown (`none` in `/status`, `null` in JSON).
    Gauge,
    /// Unix time; `/status` shows it in RFC 3339 (UTC). The series `qrypt_fs_NAME_timestamp_seconds`,
    /// NAME being the key without its `_at` suffix; absent while unknown.
    Timestamp,
    /// yes or no: the series `qrypt_fs_KEY`, 1 or 0.
    Flag,
    /// Text that may be absent: the series `qrypt_fs_KEY`, 1 while there is some, else 0.
    Presence,
    /// Text fixed at start-up: a label of the series `qrypt_fs_info`.
    Info,
    /// The upstream state: the series `qrypt_fs_state{state="..."}`, 1 for the current one.
    State,
    /// Counts per class: the series `qrypt_fs_KEY_total{class="..."}`.
    PerClass,
    /// A number per tenant, for the top tenants and `other`: the series
    /// `qrypt_fs_KEY{tenant="..."}` (bounded: at most 11 series).
    PerTenant,
    /// A growing count per tenant, as [`Kind::PerTenant`]: `qrypt_fs_KEY_total{tenant="..."}`.
    PerTenantCounter,
}

/// One status field.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The key in `/status` and `/status.json`, and the base of the metric's name. `{period}`
    /// stands for each budget period shown (hour, day, month); in `/metrics` it becomes the
    /// label `period="..."` and leaves the name.
    pub key: &'static str,
    pub kind: Kind,
    /// bytes, seconds, percent, requests, readers, ... or "" for text.
    pub unit: &'static str,
    pub help: &'static str,
}

const fn f(key: &'static str, kind: Kind, unit: &'static str, help: &'static str) -> Field {
    Field {
        key,
        kind,
        unit,
        help,
    }
}

use Kind::{
    Counter, Flag, Gauge, Info, PerClass, PerTenant, PerTenantCounter, Presence, State, Timestamp,
};

/// Every field, in the order the files show them.
pub static FIELDS: &[Field] = &[
    f(
        "state",
        State,
        "",
        "The upstream's state: starting, ok, degraded (working, but a request failed in the last \
         minute), pacing (a reader waits while the client's own pacing holds the next request \
         back), backing off, budget state unwritable (nothing is requested, readers wait), budget \
         exhausted (a --budget cap is reached until it renews: readers on an empty buffer get \
         EIO), unauthorized (401), quota exhausted (403), bad request (400) or stopping.",
    ),
    f(
        "buffered_bytes",
        Gauge,
        "bytes",
        "Bytes in the prefetch buffer, ready to read.",
    ),
    f(
        "capacity_bytes",
        Gauge,
        "bytes",
        "Size of the prefetch buffer (--buffer-size).",
    ),
    f(
        "buffer_fill_percent",
        Gauge,
        "percent",
        "How full the prefetch buffer is.",
    ),
    f("served_bytes", Counter, "bytes", "Bytes handed to readers."),
    f(
        "fetched_bytes",
        Counter,
        "bytes",
        "Bytes received in valid upstream responses; served + buffered <= fetched, always.",
    ),
    f(
        "discarded_bytes",
        Counter,
        "bytes",
        "Bytes received but thrown away: failed validation or health tests.",
    ),
    f(
        "replay_history_bytes",
        Gauge,
        "bytes",
        "Upstream bytes the replay test remembers (estimated, one anchor per 245 bytes), \
         including what was loaded from --state-dir at start; a repeat of them at any shift is \
         discarded. Up to 1 GiB.",
    ),
    f(
        "replay_history_saved",
        Flag,
        "",
        "yes when the replay history is written to --state-dir, so it survives a restart; no \
         when it lives in memory only (no usable state directory), or while writing it fails.",
    ),
    f(
        "requests_ok",
        Counter,
        "requests",
        "Upstream requests that delivered entropy.",
    ),
    f(
        "requests_failed",
        Counter,
        "requests",
        "Upstream requests that failed.",
    ),
    f(
        "consecutive_failures",
        Gauge,
        "requests",
        "Upstream failures since the last success.",
    ),
    f(
        "next_attempt_in_seconds",
        Gauge,
        "seconds",
        "While backing off, pacing or stopped: when the next request is due (none otherwise).",
    ),
    f(
        "waiting_readers",
        Gauge,
        "reads",
        "Reads waiting for bytes right now.",
    ),
    f(
        "refused_waiters",
        Counter,
        "reads",
        "Reads answered EBUSY: their user already had --max-waiters-per-user reads waiting.",
    ),
    f(
        "failures",
        PerClass,
        "requests",
        "Failed upstream requests per class (http_503=2 timeout=1 ...), or none.",
    ),
    f(
        "last_error",
        Presence,
        "",
        "The reason of the last failure (upstream, token file or budget), or none. A stop \
         (a budget cap reached, the token rejected, the quota used up) adds what ends it: \
         \"REASON; until ...\".",
    ),
    f(
        "last_error_at",
        Timestamp,
        "seconds",
        "When the last failure happened, or none.",
    ),
    f(
        "last_success_at",
        Timestamp,
        "seconds",
        "When a request last delivered entropy, or none.",
    ),
    f(
        "memory_locked",
        Flag,
        "",
        "yes when the buffer is mlock(2)ed, so entropy never reaches swap.",
    ),
    f(
        "locked_bytes",
        Gauge,
        "bytes",
        "Bytes of the buffer locked in RAM now (it is locked as it fills).",
    ),
    f(
        "mix_local",
        Flag,
        "",
        "yes when every byte is XORed with getrandom(2) (--mix-local).",
    ),
    f(
        "endpoint",
        Info,
        "",
        "The API base URL (credentials never shown).",
    ),
    f(
        "token_source",
        Info,
        "",
        "Where the token came from: a path or the environment, never the token.",
    ),
    f(
        "sandbox",
        Info,
        "",
        "How the processes are confined: full, partial (and what the kernel lacks), or none.",
    ),
    f(
        "fetcher_restarts",
        Counter,
        "",
        "Times the fetcher (the process that talks to the upstream) ended and another was started.",
    ),
    f(
        "fetcher_last_exit",
        Presence,
        "",
        "How the last fetcher ended (its pid, exit status or signal), or none.",
    ),
    f(
        "token_error",
        Presence,
        "",
        "Why the token file's last read was refused (the token in use is kept), or none once a \
         read succeeds.",
    ),
    f(
        "rate_limit",
        Info,
        "",
        "The client-side pacing (--rate-limit), or off.",
    ),
    f(
        "rate_allowance",
        Gauge,
        "requests",
        "Requests per window the client allows itself now: lower than --rate-limit after 429s \
         from a token shared with others; none without pacing.",
    ),
    f(
        "rate_limited_until",
        Timestamp,
        "seconds",
        "Until when the client's own pacing holds requests back, or none.",
    ),
    f(
        "pacing_wait_seconds",
        Counter,
        "seconds",
        "Seconds readers spent waiting while the client's own pacing held requests back.",
    ),
    f(
        "budget",
        Info,
        "",
        "The --budget caps (50M/hour 1G/month), or off.",
    ),
    f(
        "budget_{period}_limit_bytes",
        Gauge,
        "bytes",
        "A --budget cap, for each capped period (UTC).",
    ),
    f(
        "budget_{period}_spent_bytes",
        Gauge,
        "bytes",
        "Bytes requested from the upstream in the current period (UTC), refused ones included: \
         for each capped period, and always for the day and the month (without a cap, since \
         start).",
    ),
    f(
        "budget_{period}_remaining_bytes",
        Gauge,
        "bytes",
        "What a cap still allows in the current period.",
    ),
    f(
        "budget_{period}_renews_at",
        Timestamp,
        "seconds",
        "When the period's count starts over: for each capped period, the day and the month.",
    ),
    f(
        "budget_{period}_spend_rate_bytes_per_second",
        Gauge,
        "bytes/s",
        "Bytes this mount requested per second over the last hour and the last day (sliding \
         windows, counted since start: a restart starts them at zero).",
    ),
    f(
        "budget_{period}_runs_out_at",
        Timestamp,
        "seconds",
        "For each cap: when it runs out at the current pace (the higher of the two spend \
         rates), or none when it renews first.",
    ),
    f(
        "budget_state_file",
        Info,
        "",
        "The file that records the spend, or none without a cap.",
    ),
    f(
        "tenant_by",
        Info,
        "",
        "How readers are told apart (--tenant-by): uid, cgroup, cgroup (depth N) or none.",
    ),
    f(
        "tenant_budget",
        Info,
        "",
        "The --tenant-budget caps, each tenant's own (50M/day), or off.",
    ),
    f(
        "active_tenants",
        Gauge,
        "tenants",
        "Tenants that read random in the last minute.",
    ),
    f(
        "tenants_at_cap",
        Gauge,
        "tenants",
        "Tenants refused for their --tenant-budget cap in the current period.",
    ),
    f(
        "tenant_period_bytes",
        PerTenant,
        "bytes",
        "Bytes served this period (the tightest --tenant-budget period, else the UTC day) to \
         each of the 10 tenants served most (uid:1000, cgroup:/system.slice/x.service, \
         unknown, all), and to the rest as other.",
    ),
    f(
        "tenant_served_bytes",
        PerTenantCounter,
        "bytes",
        "Bytes served since start to the same tenants, and to the rest as other.",
    ),
    f(
        "tenant_at_cap",
        PerTenant,
        "tenants",
        "For the same tenants: 1 while at its --tenant-budget cap (for other: how many are).",
    ),
    f(
        "uptime_seconds",
        Gauge,
        "seconds",
        "Seconds since the mount started.",
    ),
];

/// The metric that shows `field` in `/metrics` (without `qrypt_fs_` and labels).
pub fn metric_name(field: &Field) -> String {
    let base = field.key.replace("_{period}", "");
    match field.kind {
        Kind::Counter | Kind::PerClass | Kind::PerTenantCounter => format!("{base}_total"),
        Kind::Timestamp => format!("{}_timestamp_seconds", base.trim_end_matches("_at")),
        Kind::Info => "info".to_owned(),
        Kind::State | Kind::Gauge | Kind::Flag | Kind::Presence | Kind::PerTenant => base,
    }
}
