//! Answers refused page-cache fills of `/random` slowly, so that a kernel loop re-sending
//! them costs the daemon next to nothing.
//!
//! `mmap(MAP_POPULATE)`, `mlock(2)`, `MAP_LOCKED` and `mlockall(2)` on a private mapping make
//! the kernel fault the pages in a loop that re-sends the refused READ as soon as it fails, until
//! a fatal signal (ARCHITECTURE.md, "No pool byte in the page cache"). Answered at once, that
//! loop kept half a core busy. Here each reading thread gets at most one refusal per
//! [`INTERVAL`]: its reply waits in a deadline heap and one thread answers it when due. Real
//! reads never pass through here (they are served by the pool), so nothing queues behind these.
//! Memory is bounded: past [`MAX_DEFERRED`] waiting replies a refusal is answered at once.
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// At most one refusal per reading thread in this time (~10 a second).
pub const INTERVAL: Duration = Duration::from_millis(100);

/// Replies kept waiting at most; a few KiB of memory. Past it refusals are answered at once
/// (correct, only no longer cheap).
pub const MAX_DEFERRED: usize = 1024;

/// What answering a refusal does (sends EIO to the kernel).
pub type Answer = Box<dyn FnOnce() + Send>;

struct Due {
    at: Instant,
    seq: u64,
    answer: Answer,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<Due>>,
    /// When each thread's last refusal is (or was) answered.
    last: HashMap<u32, Instant>,
    seq: u64,
    started: bool,
    stopped: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// The refusals waiting to be answered, and the thread that answers them.
#[derive(Default)]
pub struct RefusalPacer {
    shared: Arc<Shared>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl RefusalPacer {
    #[cfg(test)]
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `answer` for a refusal to thread `pid`: at once if its last refusal is at least
    /// [`INTERVAL`] old, else that long after it.
    pub fn refuse(&self, pid: u32, answer: Answer) {
        let now = Instant::now();
        let mut st = self.shared.state.lock();
        let at = st.last.get(&pid).map_or(now, |&l| (l + INTERVAL).max(now));
        if st.stopped || at <= now || st.heap.len() >= MAX_DEFERRED || !self.start(&mut st) {
            if !st.stopped && st.heap.len() < MAX_DEFERRED {
                remember(&mut st.last, pid, now, now);
            }
            drop(st);
            answer();
            return;
        }
        remember(&mut st.last, pid, at, now);
        st.seq += 1;
        let seq = st.seq;
        st.heap.push(Reverse(Due { at, seq, answer }));
        drop(st);
        self.shared.wake.notify_one();
    }

    /// How many refusals wait.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.shared.state.lock().heap.len()
    }

    /// Answers every waiting refusal now, stops the thread and waits for it (it never blocks
    /// on anything but its own condition variable, so this returns promptly). Later refusals
    /// are answered at once.
    pub fn shutdown(&self) {
        let pending: Vec<Reverse<Due>> = {
            let mut st = self.shared.state.lock();
            st.stopped = true;
            st.heap.drain().collect()
        };
        self.shared.wake.notify_all();
        for Reverse(d) in pending {
            (d.answer)();
        }
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }

    /// Starts the answering thread on first use; false if it cannot be started.
    fn start(&self, st: &mut State) -> bool {
        if st.started {
            return true;
        }
        let shared = self.shared.clone();
        match thread::Builder::new()
            .name("qrypt-refusals".into())
            .spawn(move || run(&shared))
        {
            Ok(t) => {
                *self.thread.lock() = Some(t);
                st.started = true;
                true
            }
            Err(e) => {
                tracing::warn!("cannot start the refusal thread ({e}): refusing at once");
                false
            }
        }
    }
}

/// Notes when `pid`'s refusal is answered, keeping the map bounded: entries older than
/// [`INTERVAL`] delay no one and go first; if many threads refused within one interval, the
/// ones already answered go too (they lose their pacing, never their answer). What is left
/// are the waiting ones, at most [`MAX_DEFERRED`].
fn remember(last: &mut HashMap<u32, Instant>, pid: u32, at: Instant, now: Instant) {
    last.insert(pid, at);
    if last.len() > 2 * MAX_DEFERRED {
        last.retain(|_, l| *l + INTERVAL > now);
    }
    if last.len() > 2 * MAX_DEFERRED {
        last.retain(|_, l| *l > now);
    }
}

impl Drop for RefusalPacer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(shared: &Shared) {
    let mut st = shared.state.lock();
    loop {
        if st.stopped {
            return;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        while st.heap.peek().is_some_and(|Reverse(d)| d.at <= now) {
            if let Some(Reverse(d)) = st.heap.pop() {
                due.push(d.answer);
            }
        }
        if !due.is_empty() {
            // Answered without the lock: a reply is a write to /dev/fuse.
            drop(st);
            for answer in due {
                answer();
            }
            st = shared.state.lock();
            continue;
        }
        match st.heap.peek().map(|Reverse(d)| d.at) {
            Some(at) => {
                shared.wake.wait_until(&mut st, at);
            }
            None => shared.wake.wait(&mut st),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn stamp(tx: &mpsc::Sender<(u32, Instant)>, id: u32) -> Answer {
        let tx = tx.clone();
        Box::new(move || {
            let _ = tx.send((id, Instant::now()));
        })
    }

    #[test]
    fn the_first_refusal_is_at_once_and_the_next_ones_one_interval_apart() {
        let p = RefusalPacer::new();
        let (tx, rx) = mpsc::channel();
        let t0 = Instant::now();
        p.refuse(7, stamp(&tx, 0));
        let (_, first) = rx.try_recv().expect("answered at once");
        assert!(first - t0 < INTERVAL / 2);
        for i in 1..=3 {
            p.refuse(7, stamp(&tx, i));
        }
        // Never sooner than its slot (a loaded machine may answer later, never sooner).
        for i in 1..=3 {
            let (id, at) = rx.recv_timeout(Duration::from_secs(5)).expect("answered");
            assert_eq!(id, i);
            assert!(at - t0 >= INTERVAL * i, "{i}: {:?}", at - t0);
        }
        p.shutdown();
    }

    #[test]
    fn threads_are_paced_apart() {
        let p = RefusalPacer::new();
        let (tx, rx) = mpsc::channel();
        p.refuse(1, stamp(&tx, 1));
        p.refuse(2, stamp(&tx, 2));
        assert_eq!(
            rx.try_iter().count(),
            2,
            "two threads' first refusals are not delayed"
        );
        p.refuse(1, stamp(&tx, 1));
        assert_eq!(p.waiting(), 1);
        p.shutdown();
    }

    #[test]
    fn past_the_cap_refusals_are_answered_at_once() {
        let p = RefusalPacer::new();
        let (tx, rx) = mpsc::channel();
        p.refuse(9, stamp(&tx, 0));
        let _ = rx.try_recv();
        for i in 0..MAX_DEFERRED as u32 {
            p.refuse(9, stamp(&tx, i));
        }
        assert_eq!(p.waiting(), MAX_DEFERRED);
        p.refuse(9, stamp(&tx, 99));
        assert_eq!(rx.try_recv().expect("at once").0, 99);
        p.shutdown();
    }

    #[test]
    fn remembers_a_bounded_number_of_threads() {
        let p = RefusalPacer::new();
        for pid in 0..10 * MAX_DEFERRED as u32 {
            p.refuse(pid, Box::new(|| {}));
        }
        assert!(p.shared.state.lock().last.len() <= 2 * MAX_DEFERRED + 1);
    }

    #[test]
    fn dropping_it_answers_what_waits() {
        let (tx, rx) = mpsc::channel();
        {
            let p = RefusalPacer::new();
            p.refuse(4, stamp(&tx, 0));
            p.refuse(4, stamp(&tx, 1));
        }
        assert_eq!(rx.try_iter().count(), 2);
    }

    #[test]
    fn shutdown_answers_everything_waiting_and_later_refusals_at_once() {
        let p = RefusalPacer::new();
        let (tx, rx) = mpsc::channel();
        for i in 0..5 {
            p.refuse(3, stamp(&tx, i));
        }
        let _ = rx.try_recv();
        assert_eq!(p.waiting(), 4);
        p.shutdown();
        assert_eq!(rx.try_iter().count(), 4);
        p.refuse(3, stamp(&tx, 10));
        assert_eq!(rx.try_recv().expect("at once").0, 10);
    }
}
