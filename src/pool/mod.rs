//! The entropy pool: a ring of validated bytes and the queue of readers waiting for them.
//!
//! Every byte leaves through exactly one [`ReadSink`] and is wiped as it leaves. Reads of one
//! tenant are served in FIFO order, tenants fairly ([`fair`]). The pool knows nothing of FUSE:
//! the adapter hands it sinks and an opaque tenant key.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
mod fair;
mod ring;
pub use ring::{LockedBuf, Ring};

/// Reads up to this size are never short: key generators read 16–64 bytes once and trust the
/// count, as `getrandom(2)` promises for up to 256 bytes. Larger reads take what is buffered
/// once at least this much is.
pub const SMALL_READ_MAX: usize = 256;

/// The most one read is served at once: the largest FUSE READ (1 MiB on Linux). Larger reads
/// get this much (a short read), so the scratch buffer for reads that wrap the ring has a
/// fixed size and is never reallocated.
pub const MAX_READ: usize = 1 << 20;

/// Why a read got no bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// Non-blocking read and nothing servable now (`EAGAIN`).
    WouldBlock,
    /// The reader has a signal pending (`EINTR`).
    Interrupted,
    /// The upstream cannot recover by itself (token rejected, quota used up) (`EIO`).
    Unavailable,
    /// `--read-timeout` passed (`EIO`).
    TimedOut,
    /// The filesystem is shutting down (`EIO`).
    ShuttingDown,
    /// The reader's tenant already has as many reads waiting as it may (`EBUSY`).
    TooManyWaiters,
}

/// Whom a read belongs to: bytes are shared fairly between tenants, and the cap on waiting
/// reads ([`Pool::set_max_waiters`]) is per tenant. Opaque to the pool (the tenant module
/// says whose key it is: a uid, a cgroup, everyone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tenant(u64);

impl Tenant {
    pub const fn new(key: u64) -> Tenant {
        Tenant(key)
    }

    /// The key of the tenant of one uid (the tenant module's keys for uids are these).
    pub const fn uid(uid: u32) -> Tenant {
        Tenant(uid as u64)
    }

    pub const fn key(self) -> u64 {
        self.0
    }
}

/// Where a read's answer goes. Called exactly once, possibly from another thread, possibly
/// with the pool locked: implementations must only hand the bytes on.
pub trait ReadSink: Send + 'static {
    fn deliver(self, data: &[u8]);
    fn fail(self, err: ReadError);
}

/// A sink parked in the queue. Reads answered at once never box their sink.
trait QueuedSink: Send {
    fn deliver_boxed(self: Box<Self>, data: &[u8]);
    fn fail_boxed(self: Box<Self>, err: ReadError);
}

impl<T: ReadSink> QueuedSink for T {
    fn deliver_boxed(self: Box<Self>, data: &[u8]) {
        ReadSink::deliver(*self, data);
    }
    fn fail_boxed(self: Box<Self>, err: ReadError) {
        ReadSink::fail(*self, err);
    }
}

/// A read as the pool sees it.
#[derive(Debug, Clone, Copy)]
pub struct ReadRequest {
    pub len: usize,
    pub nonblocking: bool,
    /// The reading thread, checked for pending signals while it waits.
    pub pid: u32,
    /// Whom the read is charged to while it waits.
    pub tenant: Tenant,
    pub deadline: Option<Instant>,
}

/// What `poll` would report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub readable: bool,
    /// A read would fail at once (upstream unavailable with nothing buffered, or shutdown).
    pub error: bool,
}

/// A waiting read, as the wait limits see it.
#[derive(Debug, Clone, Copy)]
pub struct WaitingRead {
    pub id: u64,
    pub pid: u32,
    pub deadline: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Availability {
    Open,
    Unavailable,
    Shutdown,
}

struct Waiter {
    id: u64,
    /// When it started waiting.
    since: Instant,
    req: ReadRequest,
    sink: Box<dyn QueuedSink>,
}

type Waker = Box<dyn FnOnce() + Send>;

struct Inner {
    ring: Ring,
    /// Where reads that wrap around the ring's end are gathered: [`MAX_READ`] bytes (or the
    /// capacity if smaller), allocated and locked once, wiped after each delivery.
    scratch: LockedBuf,
    waiters: fair::Queues,
    /// What the buffer keeps for each recently active tenant.
    shares: fair::Shares,
    /// One waker per open file that polled while nothing was ready: a program that polls in
    /// a loop replaces its waker instead of piling up new ones.
    pollers: HashMap<u64, Waker>,
    availability: Availability,
    next_id: u64,
    /// The most reads one tenant may have waiting (0: no limit).
    max_waiters: usize,
}

impl Inner {
    /// Takes every waiter out of the queue.
    fn take_waiters(&mut self) -> Vec<Waiter> {
        self.waiters.drain()
    }

    /// Bytes `tenant` may take now: the buffer less what is kept for other active tenants.
    fn available(&self, tenant: Tenant) -> usize {
        self.shares.available(tenant, self.ring.len())
    }
}

pub struct Pool {
    inner: Mutex<Inner>,
    /// Wakes the prefetcher once the buffer falls below `space_below` (0: nobody asked), so
    /// a stream of small reads does not wake it on every read.
    space: Arc<tokio::sync::Notify>,
    space_below: AtomicUsize,
    /// Wakes the wait-limits thread when a reader starts waiting.
    waiting: Condvar,
    served: AtomicU64,
    /// Reads refused because their tenant had too many waiting.
    refused_waiters: AtomicU64,
}

/// Said once, when a chunk of a buffer that was locked so far cannot be locked.
fn locking_failed() {
    tracing::warn!(
        "could not lock more of the buffer in memory (RLIMIT_MEMLOCK too low?): entropy may \
         reach swap; /status shows memory_locked: no"
    );
}

/// Bytes a read needs buffered before it is answered.
fn need(len: usize) -> usize {
    len.min(SMALL_READ_MAX)
}

impl Pool {
    pub fn new(capacity: usize) -> Pool {
        Pool {
            inner: Mutex::new(Inner {
                ring: Ring::new(capacity),
                scratch: LockedBuf::new(capacity.min(MAX_READ)),
                waiters: fair::Queues::default(),
                shares: fair::Shares::default(),
                pollers: HashMap::new(),
                availability: Availability::Open,
                next_id: 0,
                max_waiters: 0,
            }),
            space: Arc::new(tokio::sync::Notify::new()),
            space_below: AtomicUsize::new(0),
            waiting: Condvar::new(),
            served: AtomicU64::new(0),
            refused_waiters: AtomicU64::new(0),
        }
    }

    /// At most `max` reads of one tenant may wait at once (0: no limit); beyond it a read
    /// that would wait fails at once with [`ReadError::TooManyWaiters`].
    pub fn set_max_waiters(&self, max: usize) {
        self.inner.lock().max_waiters = max;
    }

    /// Reads refused so far because their tenant had the most reads waiting that it may.
    pub fn refused_waiters(&self) -> u64 {
        self.refused_waiters.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.inner.lock().ring.capacity()
    }

    pub fn buffered(&self) -> usize {
        self.inner.lock().ring.len()
    }

    pub fn memory_locked(&self) -> bool {
        let g = self.inner.lock();
        g.ring.is_locked() && g.scratch.is_locked()
    }

    /// Bytes of the buffer locked in RAM now: it is locked as it fills.
    pub fn locked_bytes(&self) -> usize {
        let g = self.inner.lock();
        g.ring.locked_bytes() + g.scratch.locked_bytes()
    }

    /// Locks the part of the buffer that `incoming` more bytes will land in, ahead of their
    /// arrival (the prefetcher calls this as it sends a request). A chunk's mlock also faults
    /// it in, about 0.1 ms per MiB with the lock held, once per MiB of the buffer's life.
    pub fn prepare(&self, incoming: usize) {
        let mut g = self.inner.lock();
        if !g.ring.prepare_for(incoming) {
            drop(g);
            locking_failed();
        }
    }

    #[cfg(test)]
    pub fn served_bytes(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    /// Buffered and served bytes and waiting readers, read together (one consistent picture).
    pub fn counts(&self) -> (usize, u64, usize) {
        let g = self.inner.lock();
        (
            g.ring.len(),
            self.served.load(Ordering::SeqCst),
            g.waiters.len(),
        )
    }

    pub fn space_notify(&self) -> Arc<tokio::sync::Notify> {
        self.space.clone()
    }

    /// Asks for one wake-up (through [`Pool::space_notify`]) when fewer than `threshold` bytes
    /// are buffered. Returns true if that is already so (no wake-up will come for it).
    pub fn notify_space_below(&self, threshold: usize) -> bool {
        self.space_below.store(threshold, Ordering::SeqCst);
        self.buffered() < threshold
    }

    /// Answers a read now, or queues it behind its tenant's earlier waiting reads. Reads of
    /// other tenants that wait cannot use what this one may take: after every change they
    /// were served as far as the buffer allowed.
    pub fn read<S: ReadSink>(&self, req: ReadRequest, sink: S) {
        if req.len == 0 {
            sink.deliver(&[]);
            return;
        }
        let mut g = self.inner.lock();
        let capacity = g.ring.capacity();
        if g.shares.arrived(req.tenant, Instant::now(), capacity) {
            // A reserve shrank: a waiting read may fit now.
            self.serve_waiters(&mut g);
        }
        let avail = g.available(req.tenant);
        match g.availability {
            Availability::Shutdown => return sink.fail(ReadError::ShuttingDown),
            Availability::Unavailable if avail < need(req.len) => {
                return sink.fail(ReadError::Unavailable);
            }
            _ => {}
        }
        if g.waiters.waiting_of(req.tenant) == 0 && avail >= need(req.len) {
            let n = req.len.min(avail).min(MAX_READ);
            self.serve(&mut g, req.tenant, n, |bytes| sink.deliver(bytes));
            return;
        }
        if req.nonblocking {
            return sink.fail(ReadError::WouldBlock);
        }
        if g.max_waiters > 0 && g.waiters.waiting_of(req.tenant) >= g.max_waiters {
            drop(g);
            self.refused_waiters.fetch_add(1, Ordering::Relaxed);
            return sink.fail(ReadError::TooManyWaiters);
        }
        let id = g.next_id;
        g.next_id += 1;
        g.waiters.push(Waiter {
            id,
            since: Instant::now(),
            req,
            sink: Box::new(sink),
        });
        drop(g);
        self.waiting.notify_all();
    }

    /// Hands the oldest `n` bytes (no more than are buffered) to `deliver` for `tenant`, then
    /// wipes them.
    fn serve(&self, g: &mut Inner, tenant: Tenant, n: usize, deliver: impl FnOnce(&[u8])) {
        let n = n.min(g.ring.len());
        g.shares.served(tenant, n);
        let Inner { ring, scratch, .. } = g;
        ring.consume(n, scratch, deliver);
        self.served.fetch_add(n as u64, Ordering::SeqCst);
        let below = self.space_below.load(Ordering::Relaxed);
        if below > 0 && ring.len() < below && self.space_below.swap(0, Ordering::SeqCst) > 0 {
            self.space.notify_one();
        }
    }

    /// Serves waiting reads, tenants in turn, while any can be served.
    fn serve_waiters(&self, g: &mut Inner) {
        if g.waiters.is_empty() {
            return;
        }
        let mut waiters = std::mem::take(&mut g.waiters);
        waiters.serve(
            g,
            (SMALL_READ_MAX, MAX_READ),
            |g, tenant| g.available(tenant),
            |g, w, n| {
                let sink = w.sink;
                self.serve(g, w.req.tenant, n, |bytes| sink.deliver_boxed(bytes));
            },
        );
        g.waiters = waiters;
    }

    fn take_pollers_if_ready(g: &mut Inner) -> Vec<Waker> {
        let r = Self::readiness_locked(g);
        if r.readable || r.error {
            Self::take_pollers(g)
        } else {
            Vec::new()
        }
    }

    fn take_pollers(g: &mut Inner) -> Vec<Waker> {
        g.pollers.drain().map(|(_, w)| w).collect()
    }

    /// Adds validated bytes; returns how many fit. Serves waiting reads and wakes pollers.
    pub fn push(&self, data: &[u8]) -> usize {
        let mut g = self.inner.lock();
        if g.availability == Availability::Shutdown {
            return 0;
        }
        let was_locked = g.ring.is_locked();
        let n = g.ring.push(data);
        if was_locked && !g.ring.is_locked() {
            locking_failed();
        }
        self.serve_waiters(&mut g);
        let wake = Self::take_pollers_if_ready(&mut g);
        drop(g);
        wake.into_iter().for_each(|w| w());
        n
    }

    /// Marks the upstream as unable to recover by itself: waiting reads fail with `EIO`, and so
    /// do later reads that would wait. Buffered bytes are still served.
    pub fn set_unavailable(&self, unavailable: bool) {
        let mut g = self.inner.lock();
        match (g.availability, unavailable) {
            (Availability::Open, true) => {
                g.availability = Availability::Unavailable;
                for w in g.take_waiters() {
                    w.sink.fail_boxed(ReadError::Unavailable);
                }
                let wake = Self::take_pollers_if_ready(&mut g);
                drop(g);
                wake.into_iter().for_each(|w| w());
            }
            (Availability::Unavailable, false) => g.availability = Availability::Open,
            _ => {}
        }
    }

    /// Fails every waiting read, wipes the buffer and refuses everything from now on.
    pub fn shutdown(&self) {
        let mut g = self.inner.lock();
        g.availability = Availability::Shutdown;
        for w in g.take_waiters() {
            w.sink.fail_boxed(ReadError::ShuttingDown);
        }
        g.ring.wipe();
        let wake = Self::take_pollers(&mut g);
        drop(g);
        wake.into_iter().for_each(|w| w());
        self.waiting.notify_all();
        self.space.notify_one();
    }

    pub fn is_shut_down(&self) -> bool {
        self.inner.lock().availability == Availability::Shutdown
    }

    /// Readable when a read of any tenant would be served at once: past every reserve, as
    /// the poller's tenant is not known here.
    fn readiness_locked(g: &Inner) -> Readiness {
        let readable = g.waiters.is_empty()
            && g.ring.len() >= need(g.ring.capacity()).saturating_add(g.shares.total());
        let error = match g.availability {
            Availability::Open => false,
            Availability::Unavailable => !readable,
            Availability::Shutdown => true,
        };
        Readiness { readable, error }
    }

    /// What `poll` reports now; when neither readable nor failing, `waker` is kept (the
    /// newest one per `file`) and called once that changes.
    pub fn poll(&self, file: u64, waker: Option<Waker>) -> Readiness {
        let mut g = self.inner.lock();
        let r = Self::readiness_locked(&g);
        if !r.readable && !r.error {
            if let Some(w) = waker {
                g.pollers.insert(file, w);
            }
        }
        r
    }

    /// Forgets `file`'s waker: it was closed.
    pub fn forget_poller(&self, file: u64) {
        self.inner.lock().pollers.remove(&file);
    }

    #[cfg(test)]
    fn pollers(&self) -> usize {
        self.inner.lock().pollers.len()
    }

    /// When the longest-waiting read now waiting started to wait, or `None` if no read waits.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.inner.lock().waiters.oldest()
    }

    /// The reads waiting now. The wait-limits thread asks every round while reads wait, so
    /// this is also where reserves of tenants gone quiet lapse and what then fits is served.
    pub fn waiting_reads(&self) -> Vec<WaitingRead> {
        let mut g = self.inner.lock();
        let capacity = g.ring.capacity();
        if !g.waiters.is_empty() && g.shares.maybe_recompute(Instant::now(), capacity) {
            self.serve_waiters(&mut g);
        }
        let mut reads: Vec<WaitingRead> = g
            .waiters
            .iter()
            .map(|w| WaitingRead {
                id: w.id,
                pid: w.req.pid,
                deadline: w.req.deadline,
            })
            .collect();
        // Oldest first, whatever tenant.
        reads.sort_unstable_by_key(|w| w.id);
        reads
    }

    /// Blocks until some read is waiting (or shutdown, or `timeout`).
    pub fn wait_for_waiters(&self, timeout: std::time::Duration) {
        let mut g = self.inner.lock();
        if g.waiters.is_empty() && g.availability != Availability::Shutdown {
            self.waiting.wait_for(&mut g, timeout);
        }
    }

    /// Ends one waiting read with `err` (a signal arrived, or its deadline passed).
    pub fn cancel(&self, id: u64, err: ReadError) {
        let mut g = self.inner.lock();
        if let Some(w) = g.waiters.remove(id) {
            w.sink.fail_boxed(err);
            // The next in line may be servable now that a bigger read left the head.
            self.serve_waiters(&mut g);
            let wake = Self::take_pollers_if_ready(&mut g);
            drop(g);
            wake.into_iter().for_each(|w| w());
        }
    }
}

#[cfg(test)]
mod tests;
