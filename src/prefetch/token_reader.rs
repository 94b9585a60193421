//! Reads the token file off the refill path. Each read runs on a blocking thread, one at a
//! time; the prefetcher asks and later gets the answer as an event, so a file that is slow to
//! read (a hung network filesystem) delays nothing but the new token itself. A read that has
//! not answered within [`READ_TIMEOUT`] is reported once as overdue; its answer, if it ever
//! comes, still counts.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::token::{Token, TokenError, TokenFile};

/// How long a token file read may take before it is reported (and a SIGHUP's retry goes
/// ahead with the token we have).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The read finished: `Ok(None)` means unchanged.
    Done(Ask, Result<Option<Token>, TokenError>),
    /// The read has run for [`READ_TIMEOUT`] and goes on.
    Overdue(Ask),
}

type Reading = JoinHandle<(TokenFile, Result<Option<Token>, TokenError>)>;

struct Busy {
    ask: Ask,
    handle: Reading,
    deadline: Instant,
    overdue: bool,
}

pub struct TokenReader {
    path: PathBuf,
    /// The file, while no read has it.
    idle: Option<TokenFile>,
    busy: Option<Busy>,
    /// A SIGHUP that came while a read was under way: read again after it.
    reload_queued: bool,
}

impl TokenReader {
    pub fn new(file: TokenFile) -> TokenReader {
        TokenReader {
            path: file.path().to_owned(),
            idle: Some(file),
            busy: None,
            reload_queued: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a read unless one is under way (then a reload is queued behind it).
    pub fn ask(&mut self, ask: Ask, now: Instant) {
        let Some(mut file) = self.idle.take() else {
            self.reload_queued |= ask == Ask::Reload;
            return;
        };
        let handle = tokio::task::spawn_blocking(move || {
            let result = match ask {
                Ask::Changed => file.changed(),
                Ask::Reload => file.reload().map(Some),
            };
            (file, result)
        });
        self.busy = Some(Busy {
            ask,
            handle,
            deadline: now + READ_TIMEOUT,
            overdue: false,
        });
    }

    /// The next event of the read under way; pending forever when there is none.
    pub async fn next(&mut self) -> Event {
        let Some(busy) = &mut self.busy else {
            return std::future::pending().await;
        };
        let ask = busy.ask;
        if !busy.overdue {
            tokio::select! {
                joined = &mut busy.handle => return self.done(ask, joined),
                _ = tokio::time::sleep_until(busy.deadline.into()) => {
                    busy.overdue = true;
                    return Event::Overdue(ask);
                }
            }
        }
        let joined = (&mut busy.handle).await;
        self.done(ask, joined)
    }

    fn done(
        &mut self,
        ask: Ask,
        joined: Result<(TokenFile, Result<Option<Token>, TokenError>), tokio::task::JoinError>,
    ) -> Event {
        self.busy = None;
        let result = match joined {
            Ok((file, result)) => {
                self.idle = Some(file);
                result
            }
            Err(e) => {
                // The reading thread panicked: start over with a fresh watch of the path.
                self.idle = Some(TokenFile::unread(self.path.clone()));
                Err(TokenError::Read {
                    path: self.path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            }
        };
        Event::Done(ask, result)
    }

    /// A reload asked for during the last read, if any (taken).
    pub fn take_queued_reload(&mut self) -> bool {
        std::mem::take(&mut self.reload_queued)
    }

    /// The deadline of the read under way, for the timeout's message.
    pub fn timeout_error(&self) -> TokenError {
        TokenError::TimedOut {
            path: self.path.clone(),
            secs: READ_TIMEOUT.as_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
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
    }
}
