//! The entropy pool: a ring of validated bytes and the queue of readers waiting for them.
//!
//! Every byte leaves through exactly one [`ReadSink`], in FIFO order of the reads that asked,
//! and is wiped as it leaves. The pool knows nothing of FUSE: the adapter hands it sinks.
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
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

/// Whom a waiting read is charged to: the cap on waiting reads ([`Pool::set_max_waiters`])
/// is per tenant. Today a tenant is the reading process's uid, as the FUSE request carries it;
/// the key is opaque to the pool, so another (a cgroup, say) can replace it here alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tenant {
    uid: u32,
}

impl Tenant {
    pub const fn uid(uid: u32) -> Tenant {
        Tenant { uid }
    }
}

impl std::fmt::Display for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uid {}", self.uid)
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
    waiters: VecDeque<Waiter>,
    /// One waker per open file that polled while nothing was ready: a program that polls in
    /// a loop replaces its waker instead of piling up new ones.
    pollers: HashMap<u64, Waker>,
    availability: Availability,
    next_id: u64,
    /// Waiting reads per tenant (no entry: none), kept with `waiters`.
    per_tenant: HashMap<Tenant, usize>,
    /// The most reads one tenant may have waiting (0: no limit).
    max_waiters: usize,
}

impl Inner {
    /// Queues a waiter, counting it against its tenant.
    fn enqueue(&mut self, w: Waiter) {
        *self.per_tenant.entry(w.req.tenant).or_default() += 1;
        self.waiters.push_back(w);
    }

    /// Uncounts a waiter that left the queue.
    fn left(&mut self, tenant: Tenant) {
        if let std::collections::hash_map::Entry::Occupied(mut e) = self.per_tenant.entry(tenant) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// Takes every waiter out of the queue.
    fn take_waiters(&mut self) -> VecDeque<Waiter> {
        self.per_tenant.clear();
        std::mem::take(&mut self.waiters)
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
                waiters: VecDeque::new(),
                pollers: HashMap::new(),
                availability: Availability::Open,
                next_id: 0,
                per_tenant: HashMap::new(),
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

    /// Answers a read now, or queues it behind earlier waiting reads.
    pub fn read<S: ReadSink>(&self, req: ReadRequest, sink: S) {
        if req.len == 0 {
            sink.deliver(&[]);
            return;
        }
        let mut g = self.inner.lock();
        match g.availability {
            Availability::Shutdown => return sink.fail(ReadError::ShuttingDown),
            Availability::Unavailable if g.ring.len() < need(req.len) => {
                return sink.fail(ReadError::Unavailable);
            }
            _ => {}
        }
        if g.waiters.is_empty() && g.ring.len() >= need(req.len) {
            self.serve(&mut g, req.len, |bytes| sink.deliver(bytes));
            return;
        }
        if req.nonblocking {
            return sink.fail(ReadError::WouldBlock);
        }
        if g.max_waiters > 0 && g.per_tenant.get(&req.tenant).copied().unwrap_or(0) >= g.max_waiters
        {
            drop(g);
            self.refused_waiters.fetch_add(1, Ordering::Relaxed);
            return sink.fail(ReadError::TooManyWaiters);
        }
        let id = g.next_id;
        g.next_id += 1;
        g.enqueue(Waiter {
            id,
            since: Instant::now(),
            req,
            sink: Box::new(sink),
        });
        drop(g);
        self.waiting.notify_all();
    }

    /// Hands the oldest `min(len, buffered, MAX_READ)` bytes to `deliver`, then wipes them.
    fn serve(&self, g: &mut Inner, len: usize, deliver: impl FnOnce(&[u8])) {
        let n = len.min(g.ring.len()).min(MAX_READ);
        let Inner { ring, scratch, .. } = g;
        ring.consume(n, scratch, deliver);
        self.served.fetch_add(n as u64, Ordering::SeqCst);
        let below = self.space_below.load(Ordering::Relaxed);
        if below > 0 && ring.len() < below && self.space_below.swap(0, Ordering::SeqCst) > 0 {
            self.space.notify_one();
        }
    }

    /// Serves waiting reads, oldest first, while the oldest can be served.
    fn serve_waiters(&self, g: &mut Inner) {
        while g
            .waiters
            .front()
            .is_some_and(|w| g.ring.len() >= need(w.req.len))
        {
            if let Some(w) = g.waiters.pop_front() {
                g.left(w.req.tenant);
                let sink = w.sink;
                self.serve(g, w.req.len, |bytes| sink.deliver_boxed(bytes));
            }
        }
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

    fn readiness_locked(g: &Inner) -> Readiness {
        let readable = g.waiters.is_empty() && g.ring.len() >= need(g.ring.capacity());
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

    /// When the longest-waiting read now waiting started to wait (reads are served in order,
    /// so it is the oldest), or `None` if no read waits.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.inner.lock().waiters.front().map(|w| w.since)
    }

    /// The reads waiting now.
    pub fn waiting_reads(&self) -> Vec<WaitingRead> {
        let g = self.inner.lock();
        g.waiters
            .iter()
            .map(|w| WaitingRead {
                id: w.id,
                pid: w.req.pid,
                deadline: w.req.deadline,
            })
            .collect()
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
        if let Some(pos) = g.waiters.iter().position(|w| w.id == id) {
            if let Some(w) = g.waiters.remove(pos) {
                g.left(w.req.tenant);
                w.sink.fail_boxed(err);
            }
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
