//! The prefetch worker: keeps the pool topped up from the upstream. This module only schedules:
//! when to ask and how much, under the [`pacer`], and where each answer goes. An answer's bytes
//! pass the `intake` (health tests, `--mix-local`); what the answer means for the upstream's
//! state (each HTTP status's policy, backoff, epochs) is decided by the state machine in
//! [`state`], which the worker then publishes to `/status` and the pool.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::budget::{Budget, Grant, Refusal, human_bytes};
use crate::pool::Pool;
use crate::refill::health::{HealthFailure, Prechecked};
use crate::state_machine::{Decision, Epoch, Gate, Machine, Outcome, Policy, after};
use crate::status::view::UpstreamState;
use crate::status::{Status, bounded, time_text};
use crate::upstream::token::{Token, TokenError, TokenFile};
use crate::upstream::{BLOCK_LEN, Entropy, EntropyClient, FetchError};
use first_answer::{FirstAnswer, FirstAnswerCell};
use intake::{Intake, Refused};
use outage_log::OutageLog;
use pacer::pacing::{Answer, Pacing, Ticket};
use pacer::{RateLimit, Wait};
use request_size::{Need, request_kib};
use token_reader::{Ask, TokenReader};

pub use request_size::FIRST_REQUEST_KIB;

pub mod first_answer;
pub mod health;
mod intake;
mod outage_log;
pub mod pacer;
mod request_size;
mod token_reader;

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
    /// Re-read on change after a 401 (and on SIGHUP); made (and read once) at start-up, in
    /// its time bound.
    pub token_file: Option<TokenFile>,
    /// How often to look at the token file while the token is rejected.
    pub token_poll: Duration,
    /// What may be spent; every request is recorded in it before it is sent.
    pub budget: Arc<Budget>,
    /// How long to wait before trying again to record the budget after a write failed.
    pub budget_retry: Duration,
    /// Where the first finished request's fate goes (the start's check waits for it): told
    /// after the health tests, so a first answer they discard is not "delivered".
    pub first_answer: Option<Arc<FirstAnswerCell>>,
    /// Where the replay history is kept across restarts (`None`: in this process only).
    pub replay_history: Option<health::journal::Place>,
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
            first_answer: None,
            replay_history: None,
        }
    }

    fn policy(&self) -> Policy {
        Policy {
            backoff_base: self.backoff_base,
            backoff_cap: self.backoff_cap,
            quota_retry: self.quota_retry,
        }
    }
}

#[derive(Debug)]
pub enum Control {
    /// SIGHUP: re-read the token file and retry at once, whatever the state.
    Reload,
}

/// A request in flight: its size, its pacer slot and the epoch it was sent in.
struct InFlight {
    kib: u32,
    /// Its pacing ticket (holds when it was sent).
    ticket: Ticket,
    sent: Epoch,
    /// What the budget recorded for it, given back if the service refuses it outright.
    grant: Grant,
}

/// A request's size, its answer, and what the health tests that need no history found in it
/// (run in the request's task, see [`crate::refill::health::Precheck`]).
type FetchResult = (
    u32,
    Result<Entropy, FetchError>,
    Option<Result<Prechecked, HealthFailure>>,
);

/// The runtime's clock as a std `Instant` (the same as `Instant::now()`, except in tests that
/// pause tokio's clock).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

pub struct Prefetcher<C: EntropyClient> {
    client: Arc<C>,
    pool: Arc<Pool>,
    status: Arc<Status>,
    cfg: PrefetchConfig,
    /// When a request may start, under a rate limit that unknown others may share.
    pacing: Pacing,
    /// Why the budget stops requests, if it does: each refusal is logged once per episode.
    budget_block: Option<Refusal>,
    /// No request before this, by the budget's word. The state says so only once nothing is
    /// in flight: until the last granted bytes land, readers wait for them.
    budget_until: Option<Instant>,
    intake: Intake,
    upstream: Machine,
    token: Option<TokenReader>,
    /// The last token file refusal logged, so a file that stays bad is logged once.
    token_complaint: Option<String>,
    next_token_check: Instant,
    filling: bool,
    reserved: usize,
    in_flight: HashMap<tokio::task::Id, InFlight>,
    log: OutageLog,
    /// Until the first success, one small request at a time: the first bytes are readable
    /// one short round trip after start, instead of after several 512 KiB bodies compete.
    started: bool,
}

impl<C: EntropyClient> Prefetcher<C> {
    pub fn new(client: Arc<C>, pool: Arc<Pool>, status: Arc<Status>, cfg: PrefetchConfig) -> Self {
        let now = now();
        let pacing = Pacing::new(cfg.rate_limit);
        if let Some(a) = pacing.allowance() {
            status.set_rate_allowance(a);
        }
        status.set_budget(cfg.budget.clone());
        let intake = Intake::new(cfg.mix_local, cfg.replay_history.clone());
        let (history, saved) = intake.history();
        status.set_replay_history(history, saved);
        Prefetcher {
            pacing,
            budget_block: None,
            budget_until: None,
            intake,
            upstream: Machine::new(cfg.policy(), now),
            token: cfg.token_file.clone().map(TokenReader::new),
            token_complaint: None,
            client,
            pool,
            status,
            cfg,
            next_token_check: now,
            filling: false,
            reserved: 0,
            in_flight: HashMap::new(),
            log: OutageLog::default(),
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
                        Ok((id, (kib, result, pre))) => {
                            let (code, retry_after) = match &result {
                                Err(FetchError::Status { code, retry_after }) => {
                                    (Some(*code), *retry_after)
                                }
                                _ => (None, None),
                            };
                            match self.finished(id, code, retry_after) {
                                Some(sent) => self.complete(kib, result, pre, sent),
                                None => error!("an unknown fetch task finished"),
                            }
                            self.show_budget_block();
                        }
                        Err(e) => {
                            self.finished(e.id(), None, None);
                            error!("fetch task failed: {e}");
                            self.show_budget_block();
                        }
                    }
                }
                _ = space.notified() => {}
                _ = sleep => {}
                msg = control.recv() => match msg {
                    Some(Control::Reload) => self.reload(),
                    None => break,
                },
                event = async {
                    match &mut self.token {
                        Some(reader) => reader.next().await,
                        None => std::future::pending().await,
                    }
                } => self.token_event(event),
            }
        }
        tasks.abort_all();
    }

    /// Starts whatever requests are due; returns when to look again (None: on an event).
    fn launch(&mut self, tasks: &mut JoinSet<FetchResult>) -> Option<Instant> {
        let now = now();
        match self.upstream.gate(now) {
            Gate::Open => {}
            Gate::At(t) => return Some(t),
            Gate::Halted if self.watches_token_file() => {
                if now < self.next_token_check {
                    return Some(self.next_token_check);
                }
                self.next_token_check = now + self.cfg.token_poll;
                self.check_token_file();
                if self.upstream.gate(now) == Gate::Halted {
                    return Some(self.next_token_check);
                }
            }
            Gate::Halted => return None,
        }
        if let Some(t) = self.budget_until.filter(|t| now < *t) {
            return Some(t);
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
                // Less room than a whole request: a slot is worth more than a partial one.
                // A request in flight wakes us when it lands; below the watermark, the pool.
                self.filling = false;
                break;
            };
            let ticket = self.pacing.try_start(now, crate::sys::random_unit());
            self.allowance_changed();
            let ticket = match ticket {
                Ok(ticket) => ticket,
                Err(wait) => match wait {
                    Wait::Until(at) => {
                        self.status.pacing_hold(now, at);
                        return Some(at);
                    }
                    Wait::ForCompletion => break,
                },
            };
            // Recorded before it is sent: a crash can only over-count. With a cap this is a
            // locked write and two fsyncs on this task, at most once per request (3/s under
            // Qrypt's limit); readers never wait on it, only the next request does.
            let grant = match self.cfg.budget.reserve(u64::from(kib) * 1024, 1024) {
                Ok(grant) => grant,
                Err(refusal) => {
                    self.pacing.cancel(ticket);
                    return Some(self.budget_refused(refusal, now));
                }
            };
            self.status.pacing_release(now, self.pool.waiting_since());
            if self.budget_block.is_some() {
                self.budget_allows(now);
            }
            // The budget may grant less than asked: what is left of a cap.
            let kib = (grant.bytes / 1024) as u32;
            self.reserved += kib as usize * BLOCK_LEN;
            let client = self.client.clone();
            let precheck = self.intake.precheck();
            let handle = tasks.spawn(async move {
                let result = client.fetch(kib).await;
                let pre = result.as_ref().ok().map(|e| precheck.run(e.bytes()));
                (kib, result, pre)
            });
            let sent = self.upstream.epoch();
            self.in_flight.insert(
                handle.id(),
                InFlight {
                    kib,
                    ticket,
                    sent,
                    grant,
                },
            );
            // While the request travels: lock the memory its bytes will land in.
            self.pool.prepare(self.reserved);
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

    /// The budget refused a request: no request until it renews (or can be recorded), and
    /// the log says so once per episode. Returns when to try again.
    fn budget_refused(&mut self, refusal: Refusal, now: Instant) -> Instant {
        let first = self.budget_block.as_ref().map(std::mem::discriminant)
            != Some(std::mem::discriminant(&refusal));
        let until = match &refusal {
            Refusal::Exhausted(e) => {
                // Whole seconds of the wall clock: waking up to a second late is fine, early
                // would only be refused again.
                let wait = Duration::from_secs(e.renews_at.saturating_sub(self.cfg.budget.now()));
                if first {
                    let caps = e
                        .caps
                        .iter()
                        .map(|c| format!("budget {}/{} reached", human_bytes(c.limit), c.period))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let renews = std::time::UNIX_EPOCH + Duration::from_secs(e.renews_at);
                    let stop = self.status.record_stop(
                        &format!(
                            "{caps}: no requests, buffered bytes are still served, reads that \
                             would wait get EIO"
                        ),
                        &format!(
                            "it renews at {} (in {}s)",
                            time_text(renews),
                            wait.as_secs()
                        ),
                    );
                    warn!("{stop}");
                }
                after(now, wait)
            }
            Refusal::Unwritable(why) => {
                if first {
                    warn!(
                        "cannot record the budget ({why}); stopped requesting (a request must \
                         be recorded before it is sent), retrying every {}s",
                        self.cfg.budget_retry.as_secs()
                    );
                }
                // The reason stays visible in `/status` (the state says only that it failed).
                self.status
                    .record_error(bounded(format!("cannot record the budget: {why}")));
                after(now, self.cfg.budget_retry)
            }
        };
        self.budget_block = Some(refusal);
        self.budget_until = Some(until);
        self.status.pacing_release(now, self.pool.waiting_since());
        self.show_budget_block();
        until
    }

    /// Puts the budget's refusal into the state once nothing is in flight any more.
    fn show_budget_block(&mut self) {
        let (Some(block), Some(until)) = (&self.budget_block, self.budget_until) else {
            return;
        };
        if !self.in_flight.is_empty() {
            return;
        }
        let exhausted = matches!(block, Refusal::Exhausted(_));
        if self.upstream.budget_refused(exhausted, until) {
            self.publish();
        }
    }

    /// The budget allowed a request again after refusing.
    fn budget_allows(&mut self, now: Instant) {
        self.budget_until = None;
        match self.budget_block.take() {
            Some(Refusal::Exhausted(_)) => info!("budget renewed: requesting again"),
            Some(Refusal::Unwritable(_)) => info!("budget state recorded again: requesting again"),
            None => return,
        }
        if self.upstream.budget_allows(now) {
            self.publish();
        }
    }

    fn allowance_changed(&self) {
        if let Some(a) = self.pacing.allowance() {
            self.status.set_rate_allowance(a);
        }
    }

    /// Releases what a finished request held: its reservation and its pacing ticket. A 429
    /// (`code`, with its `Retry-After`) lowers the allowance; a request the service refused
    /// outright is given back to the budget. Returns the epoch it was sent in.
    fn finished(
        &mut self,
        id: tokio::task::Id,
        code: Option<u16>,
        retry_after: Option<Duration>,
    ) -> Option<Epoch> {
        let r = self.in_flight.remove(&id)?;
        let now = now();
        self.reserved -= r.kib as usize * BLOCK_LEN;
        let answer = match code {
            Some(429) => Answer::RateLimited(retry_after),
            _ => Answer::Accepted,
        };
        if self.pacing.finished(r.ticket, answer, now) {
            self.allowance_changed();
        }
        if matches!(code, Some(400 | 401 | 403 | 429)) {
            // Refused before any entropy was served: Qrypt bills nothing for it.
            if let Err(e) = self.cfg.budget.refund(r.grant) {
                warn!("could not give a refused request back to the budget: {e}");
            }
        }
        Some(r.sent)
    }

    /// Handles a finished request sent in epoch `sent`: good bytes always go to the pool; the
    /// state machine decides whether the answer changes the state.
    fn complete(
        &mut self,
        kib: u32,
        result: Result<Entropy, FetchError>,
        pre: Option<Result<Prechecked, HealthFailure>>,
        sent: Epoch,
    ) {
        let accepted = self.intake.accept_prechecked(result, pre);
        let (history, saved) = self.intake.history();
        self.status.set_replay_history(history, saved);
        if let Some(cell) = &self.cfg.first_answer {
            cell.record(match &accepted {
                Ok(_) => FirstAnswer::Delivered,
                Err((Refused::Fetch(e), _)) => FirstAnswer::Failed(e.clone()),
                Err((local, _)) => FirstAnswer::LocalFailure(local.to_string()),
            });
        }
        let bytes = match accepted {
            Ok(bytes) => bytes,
            Err((refused, discarded)) => return self.failed(refused, discarded, sent),
        };
        debug_assert_eq!(bytes.len(), kib as usize * BLOCK_LEN);
        // Counted before the push, so a snapshot never sees served + buffered > fetched.
        self.status.record_success(bytes.len());
        let (current, _) = self.upstream.on_outcome(sent, Outcome::Delivered, now());
        if current {
            self.log.recovered();
            self.publish();
        }
        self.pool.push(&bytes);
        self.started = true;
    }

    fn failed(&mut self, refused: Refused, discarded: usize, sent: Epoch) {
        let class = refused.class();
        let message = bounded(refused.to_string());
        self.status
            .record_failure(&class, message.clone(), discarded);
        if matches!(refused, Refused::Fetch(FetchError::FetcherLost(_))) {
            // Nothing was learnt about the upstream: no backoff, the next request goes to
            // the fetcher that replaces the lost one. The budget keeps what it recorded.
            warn!("{message}");
            return;
        }
        let now = now();
        let (_, decision) = self.upstream.on_outcome(sent, refused.outcome(), now);
        // None: sent before the upstream stopped us (or before we resumed): already handled.
        let Some(decision) = decision else {
            return;
        };
        if decision == Decision::StopUnauthorized {
            self.next_token_check = now + self.cfg.token_poll;
        }
        self.publish();
        let token_file = self.token.as_ref().map(TokenReader::path);
        self.log.failure(&class, &message, decision, token_file);
        // A stop says in `last_error` why and until when (the log line above said it too).
        if let Some((reason, until)) = outage_log::stop(decision, token_file) {
            self.status.record_stop(&reason, &until);
        }
    }

    /// Tells `/status` and the pool what the state machine now says.
    fn publish(&self) {
        let view = self.upstream.view();
        self.status.publish(view);
        self.pool.set_unavailable(view.readers_fail_fast());
    }

    /// Retries at once after an outside change (a new token, SIGHUP).
    fn resume(&mut self) {
        // Asks the budget again at once too (it says the same until it renews: SIGHUP never
        // resets it).
        self.budget_until = None;
        self.upstream.resume(now());
        self.publish();
    }

    /// While the token is rejected, a token file is looked at every `token_poll`.
    fn watches_token_file(&self) -> bool {
        self.token.is_some() && self.upstream.state() == UpstreamState::Unauthorized
    }

    /// Looks at the token file for a new token (off this task; the answer is an event).
    fn check_token_file(&mut self) {
        if let Some(reader) = &mut self.token {
            reader.ask(Ask::Changed, now());
        }
    }

    /// SIGHUP: retries with the token file's token once it is read, or with the token in use
    /// once the read fails, is refused or is overdue (the read never holds up the refill, and
    /// a hung earlier read never holds up this one: see `token_reader`).
    fn reload(&mut self) {
        info!("SIGHUP: reloading the token and retrying");
        match &mut self.token {
            Some(reader) => reader.ask(Ask::Reload, now()),
            None => self.resume(),
        }
    }

    fn token_event(&mut self, event: token_reader::Event) {
        match event {
            token_reader::Event::Done(ask, result) => {
                self.token_read(ask, result);
                if let Some(reader) = &mut self.token {
                    if reader.take_queued_reload() {
                        reader.ask(Ask::Reload, now());
                    }
                }
            }
            token_reader::Event::Overdue(ask) => {
                if let Some(reader) = &mut self.token {
                    let err = reader.timeout_error();
                    // A SIGHUP that waited for this read gets a read of its own, started
                    // after it (the file may have been put back since).
                    if reader.take_queued_reload() {
                        reader.ask(Ask::Reload, now());
                    }
                    self.token_refused(&err);
                }
                if ask == Ask::Reload {
                    self.resume();
                }
            }
        }
    }

    fn token_read(&mut self, ask: Ask, result: Result<Option<Token>, TokenError>) {
        match result {
            Ok(Some(token)) => {
                // The spend follows the token: counted from now on in its account's record.
                match self.cfg.budget.rekey(token.expose()) {
                    Ok(true) => info!("new token: the budget now counts in its account's record"),
                    Ok(false) => {}
                    Err(e) => warn!("new token: its budget record is not usable yet: {e}"),
                }
                self.client.replace_token(token);
                if let Some(reader) = &self.token {
                    info!("token reloaded from {}", reader.path().display());
                }
                self.token_complaint = None;
                self.status.clear_token_error();
                self.resume();
            }
            Ok(None) => {}
            Err(e) => {
                self.token_refused(&e);
                if ask == Ask::Reload {
                    // The retry a SIGHUP promises, with the token we have.
                    self.resume();
                }
            }
        }
    }

    /// A token file read failed or was refused: the token in use stays; `/status` says why,
    /// and the log says it once for as long as the reason stays the same.
    fn token_refused(&mut self, e: &TokenError) {
        let message = bounded(format!("{e}; keeping the token in use"));
        if self.token_complaint.as_deref() != Some(message.as_str()) {
            warn!("{message}");
            self.token_complaint = Some(message.clone());
        }
        self.status.record_token_error(message);
    }
}

#[cfg(test)]
mod tests;
