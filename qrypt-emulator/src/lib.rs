//! A local emulator of Qrypt's Entropy-as-a-Service API, faults included, for integration
//! tests, benchmarks and demos. **Its bytes are not quantum entropy**: they come from the OS
//! CSPRNG.
//!
//! # The API
//! `GET /api/v1/quantum-entropy?size=N` with `Authorization: Bearer TOKEN` answers
//! `{"random": [base64 of 1024 bytes, ...N], "size": N}` (`application/json`). Checks, in
//! order: 401 for a missing or unknown token; 400 unless `size` is absent (1) or an integer
//! from 1 to 512; 429 with `Retry-After` (whole seconds until a slot frees, rounded up) when
//! the token already had R accepted requests in the last W seconds (off by default); 403 when
//! N KiB would overdraw the token's quota (off by default); then the armed [`Fault`], if any.
//! Error bodies are `{"error": "..."}`. Other paths: 404; other methods on the path: 405.
//! A request answered with 200 is charged to the quota even if its body is faulty; one
//! answered by a status fault or a dropped connection is not.
//!
//! # Admin API
//! On the same listener, no authentication (a loopback test tool). Every answer is JSON;
//! a bad request gets 400 `{"error": "..."}`, success `{"ok": true}`.
//! - `POST /_emulator/fault` with `{"fault": NAME, ...parameters, "times": N}`: arms a fault
//!   for the next N entropy requests (`times` omitted or null: until cleared), replacing any
//!   armed one. NAME is `none` (clears), `status` (`"status": 503`), `too_many_requests`
//!   (optional `"retry_after": 2`), `too_many_requests_text` (`"retry_after": "TEXT"`, sent
//!   as it is: a past HTTP-date, `-3`), `malformed_json`, `wrong_types`, `size_mismatch`,
//!   `short_block`, `non_base64`, `all_zero_blocks`, `repeat_block`, `progression`,
//!   `shifted_replay`, `old_block` (`"age_mib": 70, "shift": 5`), `old_window`
//!   (`"age_kib": 4096, "shift": 333`), `wrong_content_type`,
//!   `oversized_body`, `delay` (`"ms": 2000`), `drop_connection`, `reset_mid_body`,
//!   `truncated_body`, `slow_drip` (`"bytes_per_sec": 100`). Example:
//!   `curl -d '{"fault":"status","status":503,"times":3}' http://127.0.0.1:PORT/_emulator/fault`
//! - `GET /_emulator/stats` → [`Stats`] as JSON: `{"total_requests": 7, "by_status": {"200": 6,
//!   "429": 1}, "good_bytes": 6144, "in_flight": 0, "max_in_flight": 1, "connections": 1,
//!   "max_connections": 1}`.
//! - `POST /_emulator/tokens` with `{"tokens": ["a", "b"]}`: the accepted tokens from now on.
//! - `POST /_emulator/quota` with `{"bytes": N}` or `{"bytes": null}`: per-token quota; usage
//!   starts over.
//! - `POST /_emulator/rate_limit` with `{"requests": R, "window_secs": W}` or
//!   `{"requests": null}`: windows start over.
//! - `POST /_emulator/reset_records`: forgets the records (see [`Emulator::records`]).
//!
//! # Layout
//! [`config`](EmulatorConfig), [`fault`](Fault), `limits` (tokens, rate limit, quota),
//! `ledger` (stats, records, recent blocks), `respond` (the entropy endpoint), `body`
//! (paced, padded or broken bodies), `tls`, `server` (accept and route), `admin`.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

mod admin;
mod body;
mod config;
mod fault;
mod ledger;
mod limits;
mod respond;
mod server;
mod tls;

pub use config::EmulatorConfig;
pub use fault::Fault;
pub use ledger::{ResponseRecord, Stats};
/// The same type, and the same `R/W` syntax, as the client's pacer.
pub use qrypt_api::RateLimit;

use fault::FaultSlot;
use ledger::{Gauge, Ledger};
use limits::Limits;

/// What decides whether a request is served, and how: one lock, so that concurrent requests
/// see one consistent order.
struct Gate {
    limits: Limits,
    fault: FaultSlot,
}

/// State shared by every connection.
struct State {
    gate: Mutex<Gate>,
    /// Locked after `gate` when both are needed, never before.
    ledger: Mutex<Ledger>,
    in_flight: Arc<Gauge>,
    connections: Arc<Gauge>,
}

impl State {
    fn stats(&self) -> Stats {
        Stats {
            in_flight: self.in_flight.now(),
            max_in_flight: self.in_flight.max(),
            connections: self.connections.now(),
            max_connections: self.connections.max(),
            ..self.ledger.lock().stats()
        }
    }
}

/// A running emulator; dropping it stops it and closes its port.
pub struct Emulator {
    state: Arc<State>,
    addr: SocketAddr,
    url: String,
    ca_pem: Option<String>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Emulator {
    /// Binds and starts serving on a runtime of its own (two threads), so callers need none.
    pub fn start(cfg: EmulatorConfig) -> std::io::Result<Emulator> {
        let state = Arc::new(State {
            gate: Mutex::new(Gate {
                limits: Limits::new(cfg.tokens, cfg.rate_limit, cfg.quota_bytes),
                fault: FaultSlot::default(),
            }),
            ledger: Mutex::new(Ledger::new(cfg.record)),
            in_flight: Arc::default(),
            connections: Arc::default(),
        });
        let (acceptor, ca_pem) = if cfg.tls {
            let (acceptor, pem) = tls::generate().map_err(std::io::Error::other)?;
            (Some(acceptor), Some(pem))
        } else {
            (None, None)
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("qrypt-emulator")
            .enable_all()
            .build()?;
        let listener = {
            let _guard = runtime.enter();
            let socket = match cfg.bind {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            // Like any server: a restart may rebind a port whose old connections linger.
            socket.set_reuseaddr(true)?;
            socket.bind(cfg.bind)?;
            socket.listen(1024)?
        };
        let addr = listener.local_addr()?;
        let url = match (acceptor.is_some(), addr) {
            // The certificate names localhost; 127.0.0.1 and ::1 work too.
            (true, _) => format!("https://localhost:{}", addr.port()),
            (false, addr) => format!("http://{addr}"),
        };
        runtime.spawn(server::serve(listener, acceptor, state.clone()));
        tracing::info!("emulator listening on {url}");
        Ok(Emulator {
            state,
            addr,
            url,
            ca_pem,
            runtime: Some(runtime),
        })
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` with TLS.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate (PEM) that signed the server's certificate, when TLS is on.
    pub fn ca_cert_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// Applies `fault` to the next `times` entropy requests that get past the token, size,
    /// rate-limit and quota checks (`None`: until cleared), replacing any armed fault.
    pub fn set_fault(&self, fault: Fault, times: Option<u32>) {
        self.state.gate.lock().fault.set(Some(fault), times);
    }

    pub fn clear_fault(&self) {
        self.state.gate.lock().fault.set(None, None);
    }

    /// The accepted tokens from now on; others get 401.
    pub fn set_tokens(&self, tokens: Vec<String>) {
        self.state.gate.lock().limits.set_tokens(tokens);
    }

    /// Sets the per-token quota and forgets what was used.
    pub fn set_quota(&self, quota_bytes: Option<u64>) {
        self.state.gate.lock().limits.set_quota(quota_bytes);
    }

    /// Sets the per-token rate limit and forgets past requests.
    pub fn set_rate_limit(&self, rl: Option<RateLimit>) {
        self.state.gate.lock().limits.set_rate_limit(rl);
    }

    /// Every API response so far, in the order answered (empty unless `record` was set).
    pub fn records(&self) -> Vec<ResponseRecord> {
        self.state.ledger.lock().records()
    }

    pub fn reset_records(&self) {
        self.state.ledger.lock().reset_records();
    }

    pub fn stats(&self) -> Stats {
        self.state.stats()
    }
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").field("url", &self.url).finish()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                // Inside async code, blocking is not allowed: the port closes moments later.
                rt.shutdown_background();
            } else {
                // Waits for the tasks to be dropped, so the port is closed on return.
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        }
    }
}
