//! The server's side of the fetch channel: an [`EntropyClient`] whose requests a fetcher
//! process carries out, and the task that keeps one fetcher running (restarted with backoff).
//!
//! Everything a fetcher sends is untrusted: each frame's header is checked before its payload
//! is read ([`protocol::parse_header`]), an answer must name a request that waits and hold
//! exactly the KiB it asked for, a failure's status must be an HTTP error status. Any breach
//! ends that fetcher (its channel is closed and it is killed) and a new one is started. The
//! bytes it delivers then go through the same health tests as before (the prefetcher's
//! intake), like any upstream answer.
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::fetcher::{invalid, read_frame, read_header};
use super::protocol::{self, Failure, FailureKind, Hello, Kind, ProtocolError};
use super::spawner::Spawner;
use crate::status::Processes;
use crate::upstream::buffers::{Buffers, CAPACITY};
use crate::upstream::token::Token;
use crate::upstream::validate::ValidationError;
use crate::upstream::{BLOCK_LEN, Entropy, EntropyClient, FetchError, MAX_KIB_PER_REQUEST};

/// A fetcher that lived at least this long was not crash-looping: the next one starts at once.
const STABLE: Duration = Duration::from_secs(5);
/// The longest wait before starting a fetcher again while they keep dying young.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// How long a new fetcher may take to say it is ready.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for a fetcher to be running before it fails.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// What every fetcher is told at start (the token lives on in the server, wiped on drop).
pub struct FetcherConfig {
    pub endpoint: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_idle_connections: u16,
    pub ca_pem: Option<Zeroizing<Vec<u8>>>,
}

/// Fetches through fetcher processes; see the module's documentation.
pub struct FetcherClient {
    shared: Arc<Shared>,
    started: std::sync::Once,
}

struct Shared {
    cfg: FetcherConfig,
    token: Mutex<Token>,
    spawner: Arc<Spawner>,
    processes: Arc<Processes>,
    writer: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    /// A new token's frame not yet written: whoever next holds `writer` writes it first, so
    /// no request asked for after the token changed reaches the fetcher before it.
    token_frame: Mutex<Option<Zeroizing<Vec<u8>>>>,
    /// True while a fetcher is ready for requests.
    up: watch::Sender<bool>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    buffers: Arc<Buffers>,
}

struct Pending {
    kib: u32,
    answer: oneshot::Sender<Result<Entropy, FetchError>>,
}

impl FetcherClient {
    pub fn new(
        cfg: FetcherConfig,
        token: Token,
        spawner: Arc<Spawner>,
        processes: Arc<Processes>,
    ) -> FetcherClient {
        FetcherClient {
            shared: Arc::new(Shared {
                cfg,
                token: Mutex::new(token),
                spawner,
                processes,
                writer: tokio::sync::Mutex::new(None),
                token_frame: Mutex::new(None),
                up: watch::channel(false).0,
                pending: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                // One per answer in flight: the prefetcher keeps at most a few.
                buffers: Buffers::new(CAPACITY, 8),
            }),
            started: std::sync::Once::new(),
        }
    }

    /// Starts the task that keeps a fetcher running (once, from inside the runtime).
    fn start(&self) {
        self.started.call_once(|| {
            tokio::spawn(keep_running(self.shared.clone()));
        });
    }
}

impl EntropyClient for FetcherClient {
    async fn fetch(&self, kib: u32) -> Result<Entropy, FetchError> {
        if !(1..=MAX_KIB_PER_REQUEST).contains(&kib) {
            return Err(FetchError::SizeOutOfRange(kib));
        }
        self.start();
        let s = &self.shared;
        let mut up = s.up.subscribe();
        if tokio::time::timeout(CONNECT_WAIT, up.wait_for(|u| *u))
            .await
            .map_or(true, |r| r.is_err())
        {
            return Err(FetchError::FetcherLost("no fetcher is running".into()));
        }
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        s.pending.lock().insert(id, Pending { kib, answer: tx });
        let sent = match s.writer.lock().await.as_mut() {
            Some(w) => {
                write_new_token(s, w).await.is_ok()
                    && w.write_all(&protocol::fetch(id, kib)).await.is_ok()
            }
            None => false,
        };
        if !sent {
            s.pending.lock().remove(&id);
            return Err(FetchError::FetcherLost(
                "the fetcher's channel is closed".into(),
            ));
        }
        // The fetcher's own client ends a request after `request_timeout`; a fetcher that
        // says nothing for much longer is stuck, and this request is given up.
        let limit = s.cfg.request_timeout + Duration::from_secs(10);
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(FetchError::FetcherLost("the fetcher ended".into())),
            Err(_) => {
                s.pending.lock().remove(&id);
                Err(FetchError::Transport(format!(
                    "the fetcher did not answer within {}s",
                    limit.as_secs()
                )))
            }
        }
    }

    fn replace_token(&self, token: Token) {
        let frame = protocol::frame(Kind::Token, token.expose().as_bytes());
        // The next fetcher's hello carries it; the running one gets the frame before any
        // later request (see `Shared::token_frame`), and at once if no request comes.
        *self.shared.token.lock() = token;
        *self.shared.token_frame.lock() = Some(frame);
        let shared = self.shared.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Some(w) = shared.writer.lock().await.as_mut() {
                    let _ = write_new_token(&shared, w).await;
                }
            });
        }
    }
}

/// Writes a new token's frame, if one waits (see `Shared::token_frame`). Called with the
/// writer held, so nothing else is written between the look and the write.
async fn write_new_token(s: &Shared, w: &mut OwnedWriteHalf) -> std::io::Result<()> {
    let frame = s.token_frame.lock().take();
    match frame {
        Some(frame) => w.write_all(&frame).await,
        None => Ok(()),
    }
}

/// Keeps one fetcher running: starts it, serves its answers until it ends, then counts the
/// restart, says why it ended, and starts the next (at once, or with backoff while they keep
/// dying young).
async fn keep_running(s: Arc<Shared>) {
    let mut young = 0u32;
    loop {
        let began = Instant::now();
        let ended = match start_one(&s).await {
            Ok((pid, rd)) => {
                s.up.send_replace(true);
                let breach = read_answers(&s, rd).await;
                s.up.send_replace(false);
                // Closing our end makes a fetcher that is still alive see EOF; the spawner
                // kills it if it does not go.
                *s.writer.lock().await = None;
                let exit = {
                    let spawner = s.spawner.clone();
                    tokio::task::spawn_blocking(move || spawner.reap(pid))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                        .unwrap_or_else(|e| format!("unknown ({e})"))
                };
                let why = match breach {
                    Some(b) => format!("{exit}; it had sent {b}"),
                    None => exit,
                };
                fail_pending(&s, &format!("the fetcher ended ({why})"));
                format!("pid {pid} {why}")
            }
            Err(e) => {
                fail_pending(&s, &e);
                format!("could not start: {e}")
            }
        };
        if began.elapsed() >= STABLE {
            young = 0;
        }
        young += 1;
        let delay = restart_delay(young);
        warn!(
            "the fetcher {ended}; starting a new one{}",
            if delay.is_zero() {
                String::new()
            } else {
                format!(" in {:.1}s (it keeps ending)", delay.as_secs_f64())
            }
        );
        s.processes.fetcher_ended(ended);
        tokio::time::sleep(delay).await;
    }
}

/// The wait before the next start after `young` fetchers in a row lived less than [`STABLE`]:
/// none after the first, then 0.25 s doubling up to [`MAX_RESTART_DELAY`].
pub fn restart_delay(young: u32) -> Duration {
    if young <= 1 {
        return Duration::ZERO;
    }
    let exp = (young - 2).min(16);
    (Duration::from_millis(250) * (1u32 << exp)).min(MAX_RESTART_DELAY)
}

/// Starts a fetcher and says hello; returns its pid and the channel's reading half once it
/// is ready.
async fn start_one(s: &Arc<Shared>) -> Result<(i32, OwnedReadHalf), String> {
    let spawner = s.spawner.clone();
    let (pid, fd): (i32, OwnedFd) = tokio::task::spawn_blocking(move || spawner.spawn())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the spawner failed: {e}"))?;
    let std = std::os::unix::net::UnixStream::from(fd);
    let stream = std
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(std))
        .map_err(|e| e.to_string())?;
    let (mut rd, mut wr) = stream.into_split();
    let hello = {
        let token = s.token.lock();
        Hello {
            endpoint: s.cfg.endpoint.clone(),
            connect_timeout: s.cfg.connect_timeout,
            request_timeout: s.cfg.request_timeout,
            max_idle_connections: s.cfg.max_idle_connections,
            token: Zeroizing::new(token.expose().as_bytes().to_vec()),
            ca_pem: s.cfg.ca_pem.clone(),
        }
        .encode()
    };
    let greet = async {
        wr.write_all(&hello).await?;
        drop(hello);
        read_frame(&mut rd).await
    };
    let reply = tokio::time::timeout(HELLO_TIMEOUT, greet).await;
    let ended = |what: String| {
        let spawner = s.spawner.clone();
        // Reaped so it is no zombie; its exit is part of the message.
        std::thread::spawn(move || spawner.reap(pid));
        what
    };
    match reply {
        Ok(Ok(Some((Kind::Ready, payload)))) => {
            let sandbox = protocol::decode_text(Kind::Ready, &payload)
                .map_err(|e| ended(format!("pid {pid}: {e}")))?;
            *s.writer.lock().await = Some(wr);
            info!("fetcher started (pid {pid}), sandbox: {sandbox}");
            s.processes.set_fetcher_sandbox(sandbox);
            Ok((pid, rd))
        }
        Ok(Ok(Some((Kind::Fatal, payload)))) => Err(ended(format!(
            "pid {pid}: {}",
            protocol::decode_fatal(&payload).unwrap_or_else(|e| e.to_string())
        ))),
        Ok(Ok(Some((kind, _)))) => Err(ended(format!(
            "pid {pid}: {}",
            ProtocolError::Unexpected(kind)
        ))),
        Ok(Ok(None)) => Err(ended(format!("pid {pid} closed its channel at start"))),
        Ok(Err(e)) => Err(ended(format!("pid {pid}: {e}"))),
        Err(_) => Err(ended(format!(
            "pid {pid} was not ready within {}s",
            HELLO_TIMEOUT.as_secs()
        ))),
    }
}

/// Serves a fetcher's answers until its channel ends; returns the breach of the protocol
/// that ended it, if one did.
async fn read_answers(s: &Shared, mut rd: OwnedReadHalf) -> Option<String> {
    loop {
        match read_answer(s, &mut rd).await {
            Ok(true) => {}
            Ok(false) => return None,
            // Cut off mid-frame: the fetcher died while it wrote, no breach.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => return Some(e.to_string()),
        }
    }
}

/// One answer; `Ok(false)` at the channel's end.
async fn read_answer(s: &Shared, rd: &mut OwnedReadHalf) -> std::io::Result<bool> {
    let Some(h) = read_header(rd).await? else {
        return Ok(false);
    };
    match h.kind {
        Kind::Blocks => {
            let mut id = [0u8; 8];
            rd.read_exact(&mut id).await?;
            let id = u64::from_le_bytes(id);
            let pending = s
                .pending
                .lock()
                .remove(&id)
                .ok_or_else(|| invalid(ProtocolError::UnknownRequest(id)))?;
            let got = h.len - 8;
            if got != pending.kib as usize * BLOCK_LEN {
                let e = ProtocolError::WrongAmount {
                    id,
                    asked: pending.kib,
                    got,
                };
                let _ = pending
                    .answer
                    .send(Err(FetchError::FetcherLost(e.to_string())));
                return Err(invalid(e));
            }
            let mut buf = s.buffers.take(got);
            buf.resize(got, 0);
            rd.read_exact(&mut buf).await?;
            // The request may have given up waiting: its bytes are then wiped unused.
            let _ = pending.answer.send(Ok(Entropy(buf)));
        }
        Kind::Failed => {
            let mut payload = Zeroizing::new(vec![0u8; h.len]);
            rd.read_exact(&mut payload).await?;
            let f = Failure::decode(&payload).map_err(invalid)?;
            let pending = s
                .pending
                .lock()
                .remove(&f.id)
                .ok_or_else(|| invalid(ProtocolError::UnknownRequest(f.id)))?;
            let error = failure(&f, pending.kib).map_err(invalid)?;
            let _ = pending.answer.send(Err(error));
        }
        Kind::Fatal => {
            let mut payload = Zeroizing::new(vec![0u8; h.len]);
            rd.read_exact(&mut payload).await?;
            let why = protocol::decode_fatal(&payload).map_err(invalid)?;
            return Err(std::io::Error::other(format!("a fatal error: {why}")));
        }
        other => return Err(invalid(ProtocolError::Unexpected(other))),
    }
    Ok(true)
}

/// The server's error for a failure a fetcher reported, checked: a status must be an HTTP
/// error status (not 200, not made up).
fn failure(f: &Failure, kib: u32) -> Result<FetchError, ProtocolError> {
    Ok(match f.kind {
        FailureKind::Status if (300..=599).contains(&f.code) => FetchError::Status {
            code: f.code,
            retry_after: f.retry_after,
        },
        FailureKind::Status => return Err(ProtocolError::Malformed(Kind::Failed)),
        FailureKind::Transport => FetchError::Transport(f.message.clone()),
        FailureKind::Certificate => FetchError::Certificate(f.message.clone()),
        FailureKind::Validation => {
            FetchError::Validation(ValidationError::Reported(f.message.clone()))
        }
        FailureKind::SizeOutOfRange => FetchError::SizeOutOfRange(kib),
        FailureKind::NoSuchHost => FetchError::NoSuchHost(f.message.clone()),
        FailureKind::NotTls => FetchError::NotTls(f.message.clone()),
    })
}

/// Ends every waiting request with the fetcher's loss.
fn fail_pending(s: &Shared, why: &str) {
    let pending: Vec<Pending> = s.pending.lock().drain().map(|(_, p)| p).collect();
    for p in pending {
        let _ = p.answer.send(Err(FetchError::FetcherLost(why.to_owned())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privsep::protocol::HEADER_LEN;

    #[test]
    fn restarts_back_off_only_while_fetchers_die_young() {
        assert_eq!(restart_delay(1), Duration::ZERO);
        assert_eq!(restart_delay(2), Duration::from_millis(250));
        assert_eq!(restart_delay(3), Duration::from_millis(500));
        assert_eq!(restart_delay(5), Duration::from_secs(2));
        assert_eq!(restart_delay(40), MAX_RESTART_DELAY);
    }

    #[test]
    fn a_reported_failure_is_checked() {
        let f = |kind, code| Failure {
            id: 1,
            kind,
            code,
            retry_after: None,
            message: "m".into(),
        };
        assert_eq!(
            failure(&f(FailureKind::Status, 429), 4),
            Ok(FetchError::Status {
                code: 429,
                retry_after: None
            })
        );
        assert!(failure(&f(FailureKind::Status, 200), 4).is_err());
        assert!(failure(&f(FailureKind::Status, 9999), 4).is_err());
        assert_eq!(
            failure(&f(FailureKind::SizeOutOfRange, 0), 4),
            Ok(FetchError::SizeOutOfRange(4))
        );
        // The start tells a typo from a transient failure by these two.
        assert_eq!(
            failure(&f(FailureKind::NoSuchHost, 0), 4),
            Ok(FetchError::NoSuchHost("m".into()))
        );
        assert_eq!(
            failure(&f(FailureKind::NotTls, 0), 4),
            Ok(FetchError::NotTls("m".into()))
        );
        let framed = f(FailureKind::NotTls, 0).encode();
        let back = Failure::decode(&framed[HEADER_LEN..]).expect("decodes");
        assert_eq!(back.kind, FailureKind::NotTls);
    }
}
