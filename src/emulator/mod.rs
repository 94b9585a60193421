//! A local emulator of Qrypt's Entropy-as-a-Service API, faults included.
//!
//! It serves `GET /api/v1/quantum-entropy?size=N` as the public docs describe (400 for a bad
//! `size`, 401 for a wrong or missing bearer token, optional per-token rate limit with 429 and
//! `Retry-After`, optional quota with 403, 200 with fresh random blocks otherwise), plus
//! switchable faults so tests can drive every error path. **Its bytes are not quantum
//! entropy**: they come from the OS CSPRNG.
//!
//! It records every block it put in a response (when `record` is on), so tests can prove each
//! byte a reader got came from a correct response.
//!
//! Admin API on the same listener, for scripts:
//! - `POST /_emulator/fault` with `{"fault": NAME, ..., "times": N}`: NAME is one of `none`,
//!   `status` (`"status": 503`), `too_many_requests` (`"retry_after": 2` optional),
//!   `malformed_json`, `wrong_types`, `size_mismatch`, `short_block`, `non_base64`,
//!   `all_zero_blocks`, `repeat_block`, `wrong_content_type`, `oversized_body`,
//!   `delay` (`"ms": 2000`), `drop_connection`, `reset_mid_body`, `truncated_body`,
//!   `slow_drip` (`"bytes_per_sec": 100`). `times` omitted: until cleared.
//! - `GET /_emulator/stats`: `{"total_requests", "by_status": {"200": n, ...}, "good_bytes",
//!   "max_in_flight"}`.
//! - `POST /_emulator/tokens` with `{"tokens": [..]}`; `POST /_emulator/quota` with
//!   `{"bytes": N}` or `{"bytes": null}`.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

mod body;
mod respond;
mod server;
mod tls;

/// At most `requests` accepted requests per token in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub window: Duration,
}

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub bind: SocketAddr,
    /// Accepted bearer tokens.
    pub tokens: Vec<String>,
    pub rate_limit: Option<RateLimit>,
    /// Bytes each token may fetch before it gets 403.
    pub quota_bytes: Option<u64>,
    /// HTTPS with a freshly generated CA and a leaf for localhost, 127.0.0.1 and ::1.
    pub tls: bool,
    /// Keep a copy of every block sent (see [`Emulator::records`]).
    pub record: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            tokens: vec!["emulator-token".into()],
            rate_limit: None,
            quota_bytes: None,
            tls: false,
            record: false,
        }
    }
}

/// A misbehaviour for the next entropy requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a JSON error body.
    Status(u16),
    /// 429, with or without `Retry-After` (seconds).
    TooManyRequests { retry_after: Option<u64> },
    /// 200 with truncated JSON.
    MalformedJson,
    /// 200, valid JSON of the wrong types.
    WrongTypes,
    /// 200, `size` differs from the array length and from N.
    SizeMismatch,
    /// 200, one block decodes to 1000 bytes.
    ShortBlock,
    /// 200, one block has a character outside base64.
    NonBase64,
    /// 200, every block is 1024 zero bytes.
    AllZeroBlocks,
    /// 200, one block repeats a block of an earlier response.
    RepeatBlock,
    /// 200, correct body, `Content-Type: text/html`.
    WrongContentType,
    /// 200, a correct body followed by 64 MiB of whitespace, streamed.
    OversizedBody,
    /// A correct answer after this delay (before headers).
    Delay(Duration),
    /// Close the connection without answering.
    DropConnection,
    /// Headers and half the body, then abort the connection.
    ResetMidBody,
    /// `Content-Length` larger than the body sent, then close.
    TruncatedBody,
    /// A correct body, sent slowly.
    SlowDrip { bytes_per_sec: u32 },
}

impl Fault {
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Status(_) => "status",
            Fault::TooManyRequests { .. } => "too_many_requests",
            Fault::MalformedJson => "malformed_json",
            Fault::WrongTypes => "wrong_types",
            Fault::SizeMismatch => "size_mismatch",
            Fault::ShortBlock => "short_block",
            Fault::NonBase64 => "non_base64",
            Fault::AllZeroBlocks => "all_zero_blocks",
            Fault::RepeatBlock => "repeat_block",
            Fault::WrongContentType => "wrong_content_type",
            Fault::OversizedBody => "oversized_body",
            Fault::Delay(_) => "delay",
            Fault::DropConnection => "drop_connection",
            Fault::ResetMidBody => "reset_mid_body",
            Fault::TruncatedBody => "truncated_body",
            Fault::SlowDrip { .. } => "slow_drip",
        }
    }

    /// Parses the admin API's JSON form.
    pub fn from_json(v: &serde_json::Value) -> Result<Option<Fault>, String> {
        let name = v["fault"].as_str().ok_or("missing \"fault\"")?;
        let num = |k: &str| v[k].as_u64().ok_or_else(|| format!("{name} needs \"{k}\""));
        Ok(Some(match name {
            "none" => return Ok(None),
            "status" => Fault::Status(
                u16::try_from(num("status")?).map_err(|_| "status out of range".to_owned())?,
            ),
            "too_many_requests" => Fault::TooManyRequests {
                retry_after: v["retry_after"].as_u64(),
            },
            "malformed_json" => Fault::MalformedJson,
            "wrong_types" => Fault::WrongTypes,
            "size_mismatch" => Fault::SizeMismatch,
            "short_block" => Fault::ShortBlock,
            "non_base64" => Fault::NonBase64,
            "all_zero_blocks" => Fault::AllZeroBlocks,
            "repeat_block" => Fault::RepeatBlock,
            "wrong_content_type" => Fault::WrongContentType,
            "oversized_body" => Fault::OversizedBody,
            "delay" => Fault::Delay(Duration::from_millis(num("ms")?)),
            "drop_connection" => Fault::DropConnection,
            "reset_mid_body" => Fault::ResetMidBody,
            "truncated_body" => Fault::TruncatedBody,
            "slow_drip" => Fault::SlowDrip {
                bytes_per_sec: u32::try_from(num("bytes_per_sec")?.max(1))
                    .map_err(|_| "bytes_per_sec out of range".to_owned())?,
            },
            other => return Err(format!("unknown fault {other:?}")),
        }))
    }
}

/// One answer to an entropy request.
#[derive(Debug, Clone)]
pub struct ResponseRecord {
    pub seq: u64,
    /// Status sent (0: connection dropped without an answer).
    pub status: u16,
    pub kib: u32,
    /// The fault applied; `None` for a correct response.
    pub fault: Option<String>,
    /// The decoded bytes of every block put in the body (empty unless recording).
    pub blocks: Vec<u8>,
    pub at: Instant,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub total_requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// Bytes sent in correct 200 responses.
    pub good_bytes: u64,
    pub max_in_flight: u64,
}

struct Shared {
    tokens: Vec<String>,
    rate_limit: Option<RateLimit>,
    quota: Option<u64>,
    used: HashMap<String, u64>,
    accepted: HashMap<String, VecDeque<Instant>>,
    fault: Option<(Fault, Option<u32>)>,
    records: Vec<ResponseRecord>,
    /// Recent good blocks, for `RepeatBlock`.
    recent: VecDeque<Vec<u8>>,
    stats: Stats,
    seq: u64,
}

/// State shared by every connection.
pub(crate) struct State {
    shared: Mutex<Shared>,
    record: bool,
    in_flight: AtomicU64,
}

/// A running emulator; dropping it stops it.
pub struct Emulator {
    state: Arc<State>,
    addr: SocketAddr,
    url: String,
    ca_pem: Option<String>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Emulator {
    /// Binds and starts serving on its own runtime.
    pub fn start(cfg: EmulatorConfig) -> std::io::Result<Emulator> {
        let state = Arc::new(State {
            shared: Mutex::new(Shared {
                tokens: cfg.tokens.clone(),
                rate_limit: cfg.rate_limit,
                quota: cfg.quota_bytes,
                used: HashMap::new(),
                accepted: HashMap::new(),
                fault: None,
                records: Vec::new(),
                recent: VecDeque::new(),
                stats: Stats::default(),
                seq: 0,
            }),
            record: cfg.record,
            in_flight: AtomicU64::new(0),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("emulator")
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind(cfg.bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (acceptor, ca_pem) = if cfg.tls {
            let (acceptor, pem) = tls::self_signed().map_err(std::io::Error::other)?;
            (Some(acceptor), Some(pem))
        } else {
            (None, None)
        };
        let url = match (&acceptor, addr) {
            (Some(_), a) => format!("https://localhost:{}", a.port()),
            (None, SocketAddr::V4(a)) => format!("http://{a}"),
            (None, SocketAddr::V6(a)) => format!("http://[{}]:{}", a.ip(), a.port()),
        };
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        runtime.spawn(server::serve(listener, acceptor, state.clone()));
        Ok(Emulator {
            state,
            addr,
            url,
            ca_pem,
            runtime: Some(runtime),
        })
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate (PEM) that signed the server certificate, when TLS is on.
    pub fn ca_cert_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// Applies `fault` to the next `times` entropy requests (`None`: until cleared).
    pub fn set_fault(&self, fault: Fault, times: Option<u32>) {
        self.state.shared.lock().fault = Some((fault, times));
    }

    pub fn clear_fault(&self) {
        self.state.shared.lock().fault = None;
    }

    pub fn set_tokens(&self, tokens: Vec<String>) {
        self.state.shared.lock().tokens = tokens;
    }

    /// Sets the per-token quota and forgets what was used.
    pub fn set_quota(&self, quota_bytes: Option<u64>) {
        let mut s = self.state.shared.lock();
        s.quota = quota_bytes;
        s.used.clear();
    }

    pub fn set_rate_limit(&self, rl: Option<RateLimit>) {
        let mut s = self.state.shared.lock();
        s.rate_limit = rl;
        s.accepted.clear();
    }

    pub fn records(&self) -> Vec<ResponseRecord> {
        self.state.shared.lock().records.clone()
    }

    pub fn reset_records(&self) {
        self.state.shared.lock().records.clear();
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.state.shared.lock().stats.clone();
        s.max_in_flight = s
            .max_in_flight
            .max(self.state.in_flight.load(Ordering::SeqCst));
        s
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
