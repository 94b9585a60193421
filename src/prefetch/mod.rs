//! The prefetch worker: keeps the pool topped up from the upstream, paced under the rate limit,
//! backing off on errors, and applying each HTTP status's policy.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::budget::{Budget, Grant, Refusal, human_bytes};
use crate::health::HealthTests;
use crate::pacer::{Pacer, RateLimit, Wait};
use crate::pool::Pool;
use crate::status::{Status, UpstreamState};
use crate::token::read_token_file;
use crate::upstream::{BLOCK_LEN, Entropy, EntropyClient, FetchError};
use adaptive::AdaptiveRate;
pub use request_size::FIRST_REQUEST_KIB;
use request_size::{Need, request_kib};

#[derive(Debug, Clone)]
pub struct PrefetchConfig {
    /// Requests at once; several hide the round trip when the reader is fast.
    pub max_in_flight: usize,
    /// Refilling starts when buffered + in-flight bytes fall below this.
    pub low_watermark: usize,
    pub rate_limit: Option<RateLimit>,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// How long to wait before asking again after a 403 (quota used up).
    pub quota_retry: Duration,
    /// XOR every byte with the OS CSPRNG before it enters the pool.
    pub mix_local: bool,
    /// Re-read on change after a 401 (and on SIGHUP).
    pub token_file: Option<PathBuf>,
    /// How often to look at the token file while the token is rejected.
    pub token_poll: Duration,
    /// What may be spent; every request is recorded in it before it is sent.
    pub budget: Arc<Budget>,
    /// How long to wait before trying again to record the budget after a write failed.
    pub budget_retry: Duration,
}

impl PrefetchConfig {
    pub fn for_capacity(capacity: usize) -> PrefetchConfig {
        PrefetchConfig {
            max_in_flight: 4,
            low_watermark: capacity / 2,
            rate_limit: Some(RateLimit::QRYPT),
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(60),
            quota_retry: Duration::from_secs(3600),
            mix_local: false,
            token_file: None,
            token_poll: Duration::from_secs(2),
            budget: Arc::new(Budget::unlimited()),
            budget_retry: Duration::from_secs(5),
        }
    }
}

#[derive(Debug)]
pub enum Control {
    /// SIGHUP: re-read the token file and retry at once, whatever the state.
    Reload,
}

/// Logs each failure class the first time it occurs in an outage, then at its 10th, 100th, ...
/// occurrence, so a long outage (even one alternating between classes) does not flood the log.
#[derive(Default)]
struct LogThrottle {
    repeats: std::collections::BTreeMap<String, u64>,
}

impl LogThrottle {
    fn should_log(&mut self, class: &str) -> Option<u64> {
        let r = self.repeats.entry(class.to_owned()).or_default();
        *r += 1;
        let r = *r;
        (r == 1
            || r.to_string()
                .trim_start_matches('1')
                .bytes()
                .all(|b| b == b'0'))
        .then_some(r)
    }

    /// The outage's failures by class, and forgets them.
    fn recovered(&mut self) -> Option<String> {
        let summary = std::mem::take(&mut self.repeats)
            .into_iter()
            .map(|(class, n)| format!("{class}={n}"))
            .collect::<Vec<_>>();
        (!summary.is_empty()).then(|| summary.join(" "))
    }
}

/// `now + d`, saturating instead of panicking far in the future.
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400))
}

pub struct Prefetcher<C: EntropyClient> {
    client: Arc<C>,
    pool: Arc<Pool>,
    status: Arc<Status>,
    cfg: PrefetchConfig,
    pacer: Pacer,
    /// The allowance under a rate limit shared with unknown others (None: no limit).
    rate: Option<AdaptiveRate>,
    /// When each of our requests the service accepted (any answer but 429) was sent, for the
    /// last window: our share of it.
    accepted: std::collections::VecDeque<Instant>,
    backoff: Backoff,
    health: HealthTests,
    /// Set in states that need an outside change (new token, SIGHUP) before asking again.
    halted: Option<UpstreamState>,
    next_attempt: Instant,
    next_token_check: Instant,
    token_digest: Option<[u8; 32]>,
    filling: bool,
    reserved: usize,
    in_flight: HashMap<tokio::task::Id, InFlight>,
    /// Why the budget stops requests, if it does: the refusal is logged once per episode.
    budget_block: Option<Refusal>,
    /// Advances whenever the upstream enters or leaves a stopped state (400, 401, 403), so
    /// the answer to a request sent before that cannot undo it: a 200 that was in flight when
    /// a 403 arrived still delivers its bytes, but does not declare the quota available again.
    epoch: u64,
    log: LogThrottle,
    /// Until the first success, one small request at a time: the first bytes are readable
    /// one short round trip after start, instead of after several 512 KiB bodies compete.
    started: bool,
}

/// Gives the allocator's free memory back to the system once a fill is done. Response bodies
/// and decode buffers (~1 MiB each, wiped before they are freed) otherwise stay in glibc's
/// per-thread arenas, and resident memory creeps above capacity + runtime.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A request in flight.
struct InFlight {
    kib: u32,
    slot: u64,
    epoch: u64,
    sent: Instant,
    /// What the budget recorded for it, given back if the service refuses it outright.
    grant: Grant,
}

type FetchResult = (u32, Result<Entropy, FetchError>);

fn file_digest(path: &std::path::Path) -> Option<[u8; 32]> {
    let data = zeroize::Zeroizing::new(std::fs::read(path).ok()?);
    Some(Sha256::digest(&*data).into())
}

impl<C: EntropyClient> Prefetcher<C> {
    pub fn new(client: Arc<C>, pool: Arc<Pool>, status: Arc<Status>, cfg: PrefetchConfig) -> Self {
        let now = Instant::now();
        let rate = cfg
            .rate_limit
            .map(|l| AdaptiveRate::new(l, crate::pacer::MARGIN));
        if let Some(r) = &rate {
            status.set_rate_allowance(r.current());
        }
        status.set_budget(cfg.budget.clone());
        Prefetcher {
            pacer: Pacer::new(cfg.rate_limit),
            rate,
            accepted: std::collections::VecDeque::new(),
            backoff: Backoff::new(cfg.backoff_base, cfg.backoff_cap),
            health: HealthTests::new(),
            token_digest: cfg.token_file.as_deref().and_then(file_digest),
            client,
            pool,
            status,
            cfg,
            halted: None,
            next_attempt: now,
            next_token_check: now,
            filling: false,
            reserved: 0,
            in_flight: HashMap::new(),
            budget_block: None,
            epoch: 0,
            log: LogThrottle::default(),
            started: false,
        }
    }

    /// Runs until `control` closes or the pool shuts down.
    pub async fn run(mut self, mut control: mpsc::UnboundedReceiver<Control>) {
        let space = self.pool.space_notify();
        let mut tasks: JoinSet<FetchResult> = JoinSet::new();
        loop {
            if self.pool.is_shut_down() {
                break;
            }
            let wake_at = self.launch(&mut tasks);
            let sleep = async {
                match wake_at {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    match joined {
                        Ok((id, (kib, result))) => {
                            // Late answers are set aside only while stopped: otherwise a
                            // fill in flight at a SIGHUP would leave the state at "starting".
                            let sent = self.finished(id, &result);
                            let current =
                                sent.is_some_and(|e| e == self.epoch) || !self.stopped();
                            self.complete(kib, result, current);
                        }
                        Err(e) => {
                            self.finished(e.id(), &Err(FetchError::Transport(String::new())));
                            error!("fetch task failed: {e}");
                        }
                    }
                }
                _ = space.notified() => {}
                _ = sleep => {}
                msg = control.recv() => match msg {
                    Some(Control::Reload) => self.reload(),
                    None => break,
                },
            }
        }
        tasks.abort_all();
    }

    /// Starts whatever requests are due; returns when to look again (None: on an event).
    fn launch(&mut self, tasks: &mut JoinSet<FetchResult>) -> Option<Instant> {
        let now = Instant::now();
        if let Some(state) = self.halted {
            if self.cfg.token_file.is_some() && state == UpstreamState::Unauthorized {
                if now >= self.next_token_check {
                    self.next_token_check = now + self.cfg.token_poll;
                    self.check_token_file(false);
                }
                if self.halted.is_some() {
                    return Some(self.next_token_check);
                }
            } else {
                return None;
            }
        }
        if now < self.next_attempt {
            return Some(self.next_attempt);
        }
        let capacity = self.pool.capacity();
        let (buffered, _, waiting) = self.pool.counts();
        if buffered + self.reserved < self.cfg.low_watermark || waiting > 0 {
            self.filling = true;
        }
        while self.filling {
            let free = capacity.saturating_sub(buffered + self.reserved);
            if free < BLOCK_LEN {
                self.filling = false;
                release_freed_memory();
                break;
            }
            let max_in_flight = if self.started {
                self.cfg.max_in_flight
            } else {
                1
            };
            if tasks.len() >= max_in_flight {
                break;
            }
            let Some(kib) = request_kib(Need {
                free,
                capacity,
                reader_waiting: waiting > 0,
                in_flight: tasks.len(),
                started: self.started,
                paced: self.cfg.rate_limit.is_some(),
            }) else {
                // Less room than a whole request: wait until a reader makes room (or waits).
                self.filling = false;
                break;
            };
            let slot = match self.pacer.try_acquire(now) {
                Ok(slot) => slot,
                Err(wait) => {
                    if self.rate.as_mut().is_some_and(|r| r.on_held_back(now)) {
                        self.allowance_changed();
                        continue;
                    }
                    if let Wait::Until(at) = wait {
                        self.status.pacing_hold(now, at);
                        return Some(at);
                    }
                    break;
                }
            };
            let grant = match self.cfg.budget.reserve(u64::from(kib) * 1024, 1024) {
                Ok(grant) => grant,
                Err(refusal) => {
                    self.pacer.cancel(slot);
                    return Some(self.budget_refused(refusal, now));
                }
            };
            self.status.pacing_release(now, self.pool.waiting_since());
            if self.budget_block.is_some() {
                self.budget_allows();
            }
            let kib = (grant.bytes / 1024) as u32;
            self.reserved += kib as usize * BLOCK_LEN;
            let client = self.client.clone();
            let handle = tasks.spawn(async move { (kib, client.fetch(kib).await) });
            self.in_flight.insert(
                handle.id(),
                InFlight {
                    kib,
                    slot,
                    epoch: self.epoch,
                    sent: now,
                    grant,
                },
            );
        }
        if !self.filling
            && self.reserved == 0
            && self.pool.notify_space_below(self.cfg.low_watermark)
        {
            // Fell below the watermark between our look and the request: look again now.
            return Some(now);
        }
        None
    }

    /// The budget refused a request: stop requesting until it renews (or can be written),
    /// and say so once.
    fn budget_refused(&mut self, refusal: Refusal, now: Instant) -> Instant {
        let first = self.budget_block.as_ref().map(std::mem::discriminant)
            != Some(std::mem::discriminant(&refusal));
        let (state, retry) = match &refusal {
            Refusal::Exhausted(e) => {
                let wall = self.cfg.budget.now();
                let wait = Duration::from_secs(e.renews_at.saturating_sub(wall));
                if first {
                    let caps = e
                        .caps
                        .iter()
                        .map(|c| format!("budget {}/{} reached", human_bytes(c.limit), c.period))
                        .collect::<Vec<_>>()
                        .join(", ");
                    warn!(
                        "{caps}: no request until it renews in {}s (buffered bytes are still \
                         served; reads that would wait get EIO)",
                        wait.as_secs()
                    );
                }
                (UpstreamState::BudgetExhausted, after(now, wait))
            }
            Refusal::Unwritable(why) => {
                if first {
                    warn!(
                        "cannot record the budget ({why}); stopped requesting (an unrecorded \
                         request could exceed it), retrying every {}s",
                        self.cfg.budget_retry.as_secs()
                    );
                }
                (
                    UpstreamState::BudgetUnwritable,
                    after(now, self.cfg.budget_retry),
                )
            }
        };
        if first {
            // Answers to requests sent before this do not end it.
            self.epoch += 1;
        }
        self.budget_block = Some(refusal);
        self.next_attempt = retry;
        self.status.pacing_release(now, self.pool.waiting_since());
        self.status.set_state(state, Some(retry));
        self.pool.set_unavailable(state.is_unrecoverable());
        retry
    }

    /// The budget allowed a request again after refusing.
    fn budget_allows(&mut self) {
        match self.budget_block.take() {
            Some(Refusal::Exhausted(_)) => info!("budget renewed: requesting again"),
            Some(Refusal::Unwritable(_)) => info!("budget state writable again: requesting again"),
            None => return,
        }
        self.epoch += 1;
        self.status.set_state(UpstreamState::Starting, None);
        self.pool.set_unavailable(false);
    }

    fn allowance_changed(&mut self) {
        if let Some(r) = &self.rate {
            self.pacer.set_allowance(r.current());
            self.status.set_rate_allowance(r.current());
        }
    }

    /// Releases what a finished request held: its reservation and, from now (plus jitter once
    /// the token is shared), its pacer slot; feeds a 429 to the allowance, and gives a refused
    /// request's bytes back to the budget. Returns the epoch it was sent in.
    fn finished(
        &mut self,
        id: tokio::task::Id,
        result: &Result<Entropy, FetchError>,
    ) -> Option<u64> {
        let r = self.in_flight.remove(&id)?;
        let now = Instant::now();
        self.reserved -= r.kib as usize * BLOCK_LEN;
        let jitter = self
            .rate
            .as_ref()
            .map_or(Duration::ZERO, |a| a.jitter(rand::random::<f64>()));
        self.pacer.complete(r.slot, now + jitter);
        let code = match result {
            Err(FetchError::Status { code, .. }) => Some(*code),
            _ => None,
        };
        if code == Some(429) {
            if let Some(window) = self.cfg.rate_limit.map(|l| l.window) {
                while self
                    .accepted
                    .front()
                    .is_some_and(|&t| now.saturating_duration_since(t) >= window)
                {
                    self.accepted.pop_front();
                }
            }
            let share = self.accepted.len() as u32;
            if self
                .rate
                .as_mut()
                .is_some_and(|a| a.on_rate_limited(r.sent, share, now))
            {
                self.allowance_changed();
            }
        } else if self.rate.is_some() {
            self.accepted.push_back(r.sent);
        }
        if matches!(code, Some(400 | 401 | 403 | 429)) {
            // Refused before any entropy was served: Qrypt bills nothing for it.
            if let Err(e) = self.cfg.budget.refund(r.grant) {
                warn!("could not give a refused request back to the budget: {e}");
            }
        }
        Some(r.epoch)
    }

    /// Handles a finished request. `current`: sent in this epoch, so its answer may change
    /// the state; older answers are counted (and good bytes kept) but change nothing else.
    fn complete(&mut self, kib: u32, result: Result<Entropy, FetchError>, current: bool) {
        let entropy = match result {
            Ok(e) => e,
            Err(e) => return self.failed(e, 0, current),
        };
        if let Err(h) = self.health.check(entropy.bytes()) {
            return self.failed(
                FetchError::Health(h.to_string()),
                entropy.bytes().len(),
                current,
            );
        }
        let mut bytes = entropy.0;
        if self.cfg.mix_local {
            let mut local = zeroize::Zeroizing::new(vec![0u8; bytes.len()]);
            if let Err(e) = getrandom::getrandom(&mut local) {
                // Without the hedge the user asked for, serve nothing rather than less.
                return self.failed(
                    FetchError::Transport(format!("getrandom: {e}")),
                    bytes.len(),
                    current,
                );
            }
            bytes
                .iter_mut()
                .zip(local.iter())
                .for_each(|(b, l)| *b ^= l);
        }
        debug_assert_eq!(bytes.len(), kib as usize * BLOCK_LEN);
        // Counted before the push, so a snapshot never sees served + buffered > fetched.
        self.status.record_success(bytes.len(), current);
        self.pool.push(&bytes);
        self.started = true;
        if !current {
            return;
        }
        self.backoff.reset();
        self.next_attempt = Instant::now();
        if let Some(summary) = self.log.recovered() {
            info!("upstream recovered after failures ({summary})");
        }
        if self.stopped() {
            self.halted = None;
            self.epoch += 1;
            self.status.set_state(UpstreamState::Ok, None);
        }
        self.pool.set_unavailable(false);
    }

    fn failed(&mut self, err: FetchError, discarded: usize, current: bool) {
        let class = err.class();
        let message = crate::status::bounded(err.to_string());
        self.status
            .record_failure(&class, message.clone(), discarded, current);
        if !current {
            // Sent before the upstream stopped us (or before we resumed): already handled.
            return;
        }
        let now = Instant::now();
        let (state, action) = match &err {
            FetchError::Status { code: 400, .. } => {
                self.halted = Some(UpstreamState::BadRequest);
                (
                    UpstreamState::BadRequest,
                    "stopped requesting; check --endpoint and the configuration, then send SIGHUP"
                        .to_owned(),
                )
            }
            FetchError::Status { code: 401, .. } => {
                self.halted = Some(UpstreamState::Unauthorized);
                self.next_token_check = now + self.cfg.token_poll;
                let how = match &self.cfg.token_file {
                    Some(p) => format!(
                        "put a valid token in {} (picked up automatically) or send SIGHUP",
                        p.display()
                    ),
                    None => "a token from the environment can only be replaced by restarting \
                             qrypt-fs with a new QRYPT_TOKEN (or use --token-file)"
                        .to_owned(),
                };
                (
                    UpstreamState::Unauthorized,
                    format!("token rejected; stopped requesting: {how}"),
                )
            }
            FetchError::Status { code: 403, .. } => {
                self.backoff.note_failure();
                self.next_attempt = after(now, self.cfg.quota_retry);
                (
                    UpstreamState::QuotaExhausted,
                    format!(
                        "monthly quota used up; next try in {}s (SIGHUP retries now)",
                        self.cfg.quota_retry.as_secs()
                    ),
                )
            }
            FetchError::Status {
                code: 429,
                retry_after: Some(asked),
            } => {
                self.backoff.note_failure();
                // Honoured within bounds: "0" must not turn into a tight loop, and a huge
                // value (a broken or hostile server) must not park the mount for years.
                let wait = (*asked)
                    .max(self.cfg.backoff_base)
                    .min(self.retry_after_cap());
                self.next_attempt = self.next_attempt.max(after(now, wait));
                (
                    UpstreamState::BackingOff,
                    format!(
                        "rate limited; retrying after {:.1}s (asked: {}s)",
                        wait.as_secs_f64(),
                        asked.as_secs()
                    ),
                )
            }
            _ => {
                let delay = self.backoff.next_delay();
                // Several requests fail together in an outage: the latest retry time wins.
                self.next_attempt = self.next_attempt.max(after(now, delay));
                let delay = self.next_attempt.saturating_duration_since(now);
                (
                    UpstreamState::BackingOff,
                    format!("retrying in {:.1}s", delay.as_secs_f64()),
                )
            }
        };
        let next = (self.halted.is_none()).then_some(self.next_attempt);
        if state.is_unrecoverable() {
            self.epoch += 1;
        }
        self.status.set_state(state, next);
        // Readers fail fast only in a stop; while backing off (even after a stop whose retry
        // now fails another way) they wait, as the README's state table says.
        self.pool.set_unavailable(state.is_unrecoverable());
        if let Some(n) = self.log.should_log(&class) {
            if n == 1 {
                warn!("upstream failure ({class}): {message}; {action}");
            } else {
                warn!("upstream failure ({class}) repeated {n} times: {message}; {action}");
            }
        }
    }

    /// Picks up a changed token file. With `force`, re-reads it even if unchanged.
    fn check_token_file(&mut self, force: bool) {
        let Some(path) = self.cfg.token_file.clone() else {
            return;
        };
        let digest = file_digest(&path);
        if !force && (digest.is_none() || digest == self.token_digest) {
            return;
        }
        match read_token_file(&path) {
            Ok(token) => {
                self.token_digest = digest;
                self.client.replace_token(token);
                info!("token reloaded from {}", path.display());
                if self.halted == Some(UpstreamState::Unauthorized) {
                    self.resume();
                }
            }
            Err(e) => warn!("token reload failed: {e}"),
        }
    }

    /// Retries at once after an outside change (a new token, SIGHUP). Readers wait for the
    /// answer again instead of failing; a new refusal fails them again.
    fn resume(&mut self) {
        self.halted = None;
        self.epoch += 1;
        self.next_attempt = Instant::now();
        self.backoff.reset();
        self.status.set_state(UpstreamState::Starting, None);
        self.pool.set_unavailable(false);
    }

    /// In a state only an outside change, a long wait or the budget ends (400, 401, 403, a
    /// spent or unrecordable budget).
    fn stopped(&self) -> bool {
        self.halted.is_some() || self.status.state().holds()
    }

    /// The longest `Retry-After` honoured as given: the backoff cap, so one 429 cannot hold
    /// back readers longer than an outage would.
    fn retry_after_cap(&self) -> Duration {
        self.cfg.backoff_cap
    }

    fn reload(&mut self) {
        info!("SIGHUP: reloading the token and retrying");
        self.check_token_file(true);
        self.resume();
    }
}

#[cfg(test)]
mod tests;

pub mod adaptive;
#[cfg(test)]
mod fleet_model;
pub mod request_size;
