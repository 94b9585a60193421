//! Reads the token file off the refill path. Each read runs on a thread of its own; the
//! prefetcher asks and later gets the answer as an event, so a file that is slow to read (a hung
//! network filesystem, a stopped FUSE daemon) delays nothing but the new token itself.
//!
//! A read can hang anywhere (lookup, open, fstat, read), and such a thread cannot be cancelled.
//! So a read that has not answered within [`READ_TIMEOUT`] is reported once as overdue, and the
//! next ask abandons it and starts a fresh read: a file put back, or a later SIGHUP, is never
//! stuck behind a read that may never return. An abandoned read's answer is dropped unseen, so
//! it can never undo what a newer read found. At most [`MAX_HUNG`] threads may be left in a
//! read at once; beyond that a read is refused (and says why) until one of them returns.
//!
//! The threads are plain threads, not tokio's blocking pool: a hung one holds no slot that DNS
//! lookups (which use that pool) need, and never holds up the runtime's shutdown.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::upstream::token::{Token, TokenError, TokenFile};

/// How long a token file read may take before it is reported (and a SIGHUP's retry goes
/// ahead with the token we have).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Most reads left hanging at once: each holds a thread (and whatever the kernel holds for it)
/// until the filesystem answers.
pub const MAX_HUNG: usize = 4;

/// Most reads left hanging by the polls while the token is rejected: the rest are kept for
/// SIGHUPs, so a file put back is read on the next SIGHUP even after many polls hung.
pub const MAX_HUNG_BY_POLLS: usize = 2;

/// What a read is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// While the token is rejected: a token only if the file changed.
    Changed,
    /// SIGHUP: the file's token, changed or not.
    Reload,
}

/// A read's outcome.
#[derive(Debug)]
pub enum Event {
    /// The read finished (or could not start): `Ok(None)` means unchanged.
    Done(Ask, Result<Option<Token>, TokenError>),
    /// The read has run for [`READ_TIMEOUT`]; the next ask starts afresh.
    Overdue(Ask),
}

type Outcome = Result<Option<Token>, TokenError>;

/// The blocking read itself; tests put in one that hangs when told.
type ReadFn = Arc<dyn Fn(&mut TokenFile, Ask) -> Outcome + Send + Sync>;

/// The newest read.
struct Reading {
    ask: Ask,
    answer: oneshot::Receiver<(TokenFile, Outcome)>,
    deadline: Instant,
    overdue: bool,
}

/// Counts a read's thread while it is in the read (panic included).
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct TokenReader {
    path: PathBuf,
    /// What the last finished read knew of the file (which contents were taken); every read
    /// starts from a copy, and only the newest read's copy comes back.
    file: TokenFile,
    reading: Option<Reading>,
    /// An answer given without a read (refused, or no thread), for the next `next()`.
    ready: Option<Event>,
    /// A SIGHUP that came while a read was under way: read again after it.
    reload_queued: bool,
    /// Threads still in a read, abandoned ones included.
    running: Arc<AtomicUsize>,
    read: ReadFn,
}

impl TokenReader {
    pub fn new(file: TokenFile) -> TokenReader {
        TokenReader::with_read(
            file,
            Arc::new(|file: &mut TokenFile, ask| match ask {
                Ask::Changed => file.changed(),
                Ask::Reload => file.reload().map(Some),
            }),
        )
    }

    fn with_read(file: TokenFile, read: ReadFn) -> TokenReader {
        TokenReader {
            path: file.path().to_owned(),
            file,
            reading: None,
            ready: None,
            reload_queued: false,
            running: Arc::new(AtomicUsize::new(0)),
            read,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Threads still in a read of the file, abandoned ones included.
    pub fn hung(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Starts a read. A read still in time is waited for (a reload is queued behind it); an
    /// overdue one is abandoned for a fresh read, unless too many reads hang already: then a
    /// reload is refused with the reason, and a poll is skipped (the overdue read's report
    /// stands). An overdue read not replaced is kept: its answer still counts.
    pub fn ask(&mut self, ask: Ask, now: Instant) {
        if self.reading.as_ref().is_some_and(|r| !r.overdue) {
            self.reload_queued |= ask == Ask::Reload;
            return;
        }
        let hung = self.hung();
        match ask {
            Ask::Reload if hung >= MAX_HUNG => {
                let path = self.path.clone();
                return self.answer_now(ask, TokenError::ReadsHung { path, hung });
            }
            Ask::Changed if hung >= MAX_HUNG_BY_POLLS => return,
            _ => {}
        }
        let (tx, answer) = oneshot::channel();
        let mut file = self.file.clone();
        let read = self.read.clone();
        self.running.fetch_add(1, Ordering::SeqCst);
        let running = Running(self.running.clone());
        let spawned = std::thread::Builder::new()
            .name("qrypt-token".into())
            .spawn(move || {
                let outcome = {
                    let _running = running;
                    read(&mut file, ask)
                };
                // Fails only for an abandoned read: its answer is dropped unseen.
                let _ = tx.send((file, outcome));
            });
        match spawned {
            Ok(_) => {
                // Dropping the old receiver is what abandons an overdue read.
                self.reading = Some(Reading {
                    ask,
                    answer,
                    deadline: now + READ_TIMEOUT,
                    overdue: false,
                });
            }
            Err(source) => {
                // The closure (and its count) was dropped with the failed spawn.
                let path = self.path.clone();
                self.answer_now(ask, TokenError::Read { path, source });
            }
        }
    }

    /// Answers `ask` without a read. A SIGHUP's answer is never replaced by a poll's: the
    /// prefetcher owes that SIGHUP a retry.
    fn answer_now(&mut self, ask: Ask, e: TokenError) {
        if ask == Ask::Reload || !matches!(self.ready, Some(Event::Done(Ask::Reload, _))) {
            self.ready = Some(Event::Done(ask, Err(e)));
        }
    }

    /// The next event; pending forever when there is none. Cancel-safe.
    pub async fn next(&mut self) -> Event {
        if let Some(event) = self.ready.take() {
            return event;
        }
        let Some(reading) = &mut self.reading else {
            return std::future::pending().await;
        };
        let ask = reading.ask;
        let answer = if reading.overdue {
            (&mut reading.answer).await
        } else {
            tokio::select! {
                answer = &mut reading.answer => answer,
                _ = tokio::time::sleep_until(reading.deadline.into()) => {
                    reading.overdue = true;
                    return Event::Overdue(ask);
                }
            }
        };
        self.reading = None;
        let outcome = match answer {
            Ok((file, outcome)) => {
                self.file = file;
                outcome
            }
            // The thread panicked; the file's state before the read stays.
            Err(_) => Err(TokenError::Read {
                path: self.path.clone(),
                source: std::io::Error::other("the reading thread ended without an answer"),
            }),
        };
        Event::Done(ask, outcome)
    }

    /// A reload asked for during the last read, if any (taken).
    pub fn take_queued_reload(&mut self) -> bool {
        std::mem::take(&mut self.reload_queued)
    }

    /// What an overdue read is reported as.
    pub fn timeout_error(&self) -> TokenError {
        TokenError::TimedOut {
            path: self.path.clone(),
            secs: READ_TIMEOUT.as_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::mpsc;

    use super::*;

    #[tokio::test]
    async fn reads_off_the_task_one_at_a_time_and_queues_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").expect("write");
        let mut reader = TokenReader::new(TokenFile::new(path.clone()));
        std::fs::write(&path, "second\n").expect("write");
        reader.ask(Ask::Changed, Instant::now());
        // A SIGHUP while the read is under way: queued, not a second thread.
        reader.ask(Ask::Reload, Instant::now());
        match reader.next().await {
            Event::Done(Ask::Changed, Ok(Some(t))) => assert_eq!(t.expose(), "second"),
            other => panic!("{other:?}"),
        }
        assert!(reader.take_queued_reload());
        assert!(!reader.take_queued_reload(), "taken once");

        // A FIFO swapped in: refused at once (never waits for a writer), the file kept.
        std::fs::remove_file(&path).expect("remove");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
        reader.ask(Ask::Reload, Instant::now());
        match reader.next().await {
            Event::Done(Ask::Reload, Err(TokenError::NotRegular { kind, .. })) => {
                assert_eq!(kind, "a FIFO");
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(&path).expect("remove");
        std::fs::write(&path, "third\n").expect("write");
        reader.ask(Ask::Reload, Instant::now());
        match reader.next().await {
            Event::Done(Ask::Reload, Ok(Some(t))) => assert_eq!(t.expose(), "third"),
            other => panic!("{other:?}"),
        }
        assert_eq!(reader.hung(), 0);
    }

    /// A reader whose reads each take the next gate pushed (if any) and wait until it is
    /// released (or dropped) before reading the real file.
    struct Gated {
        reader: TokenReader,
        gates: Arc<Mutex<VecDeque<mpsc::Receiver<()>>>>,
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    impl Gated {
        fn new(first: &str) -> Gated {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("token");
            std::fs::write(&path, first).expect("write");
            let gates: Arc<Mutex<VecDeque<mpsc::Receiver<()>>>> = Arc::default();
            let g = gates.clone();
            let read: ReadFn = Arc::new(move |file: &mut TokenFile, ask| {
                let gate = g.lock().expect("gates").pop_front();
                if let Some(gate) = gate {
                    let _ = gate.recv();
                }
                match ask {
                    Ask::Changed => file.changed(),
                    Ask::Reload => file.reload().map(Some),
                }
            });
            Gated {
                reader: TokenReader::with_read(TokenFile::new(path.clone()), read),
                gates,
                _dir: dir,
                path,
            }
        }

        /// The next read hangs until the returned sender is used or dropped.
        fn hang_next(&self) -> mpsc::Sender<()> {
            let (tx, rx) = mpsc::channel();
            self.gates.lock().expect("gates").push_back(rx);
            tx
        }

        fn write(&self, text: &str) {
            std::fs::write(&self.path, text).expect("write");
        }

        /// Starts a read that is overdue at once, and sees it reported. Returns once its
        /// thread has taken its gate: a later read's thread, started first on a busy machine,
        /// would take it instead.
        async fn ask_overdue(&mut self, ask: Ask) {
            let long_ago = Instant::now() - READ_TIMEOUT;
            let gates = self.gates.lock().expect("gates").len();
            self.reader.ask(ask, long_ago);
            match self.reader.next().await {
                Event::Overdue(a) => assert_eq!(a, ask),
                other => panic!("{other:?}"),
            }
            for _ in 0..1000 {
                if self.gates.lock().expect("gates").len() < gates {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("the read never took its gate");
        }

        async fn wait_hung(&self, n: usize) {
            for _ in 0..500 {
                if self.reader.hung() == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{} hung, not {n}", self.reader.hung());
        }

        async fn assert_no_event(&mut self) {
            let waited = tokio::time::timeout(Duration::from_millis(200), self.reader.next()).await;
            assert!(waited.is_err(), "{waited:?}");
        }
    }

    async fn token(reader: &mut TokenReader, ask: Ask) -> Option<String> {
        match reader.next().await {
            Event::Done(a, Ok(t)) => {
                assert_eq!(a, ask);
                t.map(|t| t.expose().to_owned())
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_overdue_read_is_abandoned_and_its_late_answer_never_counts() {
        let mut g = Gated::new("first\n");
        g.write("second\n");
        let hung = g.hang_next();
        g.ask_overdue(Ask::Changed).await;
        assert_eq!(g.reader.hung(), 1);

        // A SIGHUP now is not queued behind the hung read: a fresh read answers.
        g.reader.ask(Ask::Reload, Instant::now());
        assert_eq!(
            token(&mut g.reader, Ask::Reload).await.as_deref(),
            Some("second")
        );

        // The hung read returns late, with what would be news to its stale copy ("first"
        // taken): dropped unseen, and the newer read's state stands.
        drop(hung);
        g.wait_hung(0).await;
        g.assert_no_event().await;
        g.reader.ask(Ask::Changed, Instant::now());
        assert_eq!(token(&mut g.reader, Ask::Changed).await, None, "unchanged");
        g.write("third\n");
        g.reader.ask(Ask::Changed, Instant::now());
        assert_eq!(
            token(&mut g.reader, Ask::Changed).await.as_deref(),
            Some("third")
        );
    }

    #[tokio::test]
    async fn an_overdue_read_that_is_not_replaced_still_counts() {
        let mut g = Gated::new("first\n");
        g.write("second\n");
        let hung = g.hang_next();
        g.ask_overdue(Ask::Reload).await;
        drop(hung);
        assert_eq!(
            token(&mut g.reader, Ask::Reload).await.as_deref(),
            Some("second")
        );
    }

    #[tokio::test]
    async fn at_most_max_hung_reads_hang_then_reads_are_refused_until_one_returns() {
        let mut g = Gated::new("first\n");
        let mut gates = Vec::new();
        for n in 1..=MAX_HUNG_BY_POLLS {
            gates.push(g.hang_next());
            g.ask_overdue(Ask::Changed).await;
            assert_eq!(g.reader.hung(), n);
        }
        // Polls stop there, quietly: the overdue read's report stands.
        g.reader.ask(Ask::Changed, Instant::now());
        assert_eq!(g.reader.hung(), MAX_HUNG_BY_POLLS, "no thread started");
        g.assert_no_event().await;
        // SIGHUPs have the rest.
        for n in MAX_HUNG_BY_POLLS + 1..=MAX_HUNG {
            gates.push(g.hang_next());
            g.ask_overdue(Ask::Reload).await;
            assert_eq!(g.reader.hung(), n);
        }
        for _ in 0..2 {
            g.reader.ask(Ask::Reload, Instant::now());
            match g.reader.next().await {
                Event::Done(Ask::Reload, Err(e @ TokenError::ReadsHung { hung, .. })) => {
                    assert_eq!(hung, MAX_HUNG);
                    assert!(
                        e.to_string().contains(&format!(
                            "{}: 4 earlier reads still hang (a hung filesystem?); not read \
                             again until one of them returns",
                            g.path.display()
                        )),
                        "{e}"
                    );
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(g.reader.hung(), MAX_HUNG, "no thread started");
        }

        // One abandoned read returns: room for one fresh read.
        drop(gates.remove(0));
        g.wait_hung(MAX_HUNG - 1).await;
        g.assert_no_event().await;
        g.write("second\n");
        g.reader.ask(Ask::Reload, Instant::now());
        assert_eq!(
            token(&mut g.reader, Ask::Reload).await.as_deref(),
            Some("second")
        );
        drop(gates);
        g.wait_hung(0).await;
        g.assert_no_event().await;
    }

    #[tokio::test]
    async fn a_read_still_in_time_is_waited_for_not_duplicated() {
        let mut g = Gated::new("first\n");
        g.write("second\n");
        let slow = g.hang_next();
        g.reader.ask(Ask::Changed, Instant::now());
        g.reader.ask(Ask::Changed, Instant::now());
        g.reader.ask(Ask::Reload, Instant::now());
        assert_eq!(g.reader.hung(), 1, "one thread");
        drop(slow);
        assert_eq!(
            token(&mut g.reader, Ask::Changed).await.as_deref(),
            Some("second")
        );
        assert!(g.reader.take_queued_reload());
    }
}
