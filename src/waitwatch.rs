//! Watches waiting readers for signals that must end their wait, cheaply enough for thousands.
//!
//! Reading `/proc/<tid>/status` costs ~13 µs of CPU (open, format ~55 lines, close); doing it for
//! every waiter every 50 ms made 1000 waiters cost a quarter of a core. Instead, per waiter:
//! - its status and schedstat files are opened once and re-read with `pread` at offset 0 (the
//!   kernel regenerates them; no path walk, no allocation), and the open files pin the thread:
//!   a reused thread id can never be mistaken for the reader;
//! - every tick only `schedstat` is read (~0.6 µs): a task in FUSE's killable wait runs again
//!   only when a fatal signal wakes it (every fatal signal without a handler except the
//!   core-dumping ones becomes a SIGKILL of each thread), so a changed switch count means
//!   "look now";
//! - the full status is read when the counter moved, and otherwise every
//!   [`FULL_CHECK_CATCHING`] for a process with handlers (a caught signal wakes nothing) or
//!   [`FULL_CHECK_PLAIN`] for one without (only SIGQUIT and other core-dumping signals need it).
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use crate::signals::{FULL_CHECK_CATCHING, FULL_CHECK_PLAIN, SigState};

/// One status file is at most a few KiB (about 1.5 KiB on 6.18).
const STATUS_MAX: usize = 8192;

pub struct WaitWatch {
    readers: HashMap<u64, Reader>,
    buf: Vec<u8>,
    /// Descriptors this watch may keep open: a quarter of RLIMIT_NOFILE, so that no number
    /// of waiting readers can starve the HTTP client or FUSE of descriptors. Readers beyond
    /// it are read by path (dearer, still correct).
    fd_budget: usize,
    fds_open: usize,
}

impl Default for WaitWatch {
    fn default() -> Self {
        Self::new()
    }
}

struct Reader {
    tid: u32,
    status: Option<File>,
    schedstat: Option<File>,
    /// Times the thread was scheduled, at the last full check.
    switches: Option<u64>,
    next_full: Instant,
}

/// What reading a thread's files showed.
enum Seen {
    Gone,
    Unreadable,
    State(SigState),
}

impl WaitWatch {
    pub fn new() -> Self {
        WaitWatch {
            readers: HashMap::new(),
            buf: vec![0; STATUS_MAX],
            fd_budget: fd_budget(),
            fds_open: 0,
        }
    }

    /// True when waiting read `id` by thread `tid` must end now with `EINTR` (a signal that
    /// would interrupt a device read is pending, or the thread is gone).
    pub fn interrupted(&mut self, id: u64, tid: u32, now: Instant) -> bool {
        let reader = self.readers.entry(id).or_insert_with(|| {
            let keep = self.fds_open + 2 <= self.fd_budget;
            let r = Reader::open(tid, now, keep);
            self.fds_open += r.fds();
            r
        });
        let due = now >= reader.next_full
            || match (&reader.schedstat, reader.switches) {
                (Some(f), Some(before)) => read_switches(f, &mut self.buf) != Some(before),
                _ => false,
            };
        if !due {
            return false;
        }
        match reader.full_check(&mut self.buf) {
            Seen::Gone => true,
            Seen::Unreadable => {
                reader.next_full = now + FULL_CHECK_PLAIN;
                false
            }
            Seen::State(s) => {
                if s.interrupting() != 0 {
                    return true;
                }
                // With handlers the switch count proves nothing: full checks only. Without a
                // switch count every fatal signal waits for the full check too.
                reader.switches = match &reader.schedstat {
                    Some(f) if !s.catches_any() => read_switches(f, &mut self.buf),
                    _ => None,
                };
                reader.next_full = now
                    + if reader.switches.is_some() {
                        FULL_CHECK_PLAIN
                    } else {
                        FULL_CHECK_CATCHING
                    };
                false
            }
        }
    }

    /// Drops what is kept for reads that no longer wait (answered, cancelled).
    pub fn retain(&mut self, mut waiting: impl FnMut(u64) -> bool) {
        let fds_open = &mut self.fds_open;
        self.readers.retain(|id, r| {
            let keep = waiting(*id);
            if !keep {
                *fds_open -= r.fds();
            }
            keep
        });
    }

    pub fn len(&self) -> usize {
        self.readers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.readers.is_empty()
    }
}

impl Reader {
    fn open(tid: u32, now: Instant, keep_files: bool) -> Reader {
        // Failing to open (EMFILE, hidepid) is not fatal: status is then read by path.
        let open = |name: &str| {
            keep_files
                .then(|| File::open(format!("/proc/{tid}/{name}")).ok())
                .flatten()
        };
        Reader {
            tid,
            status: open("status"),
            schedstat: open("schedstat"),
            switches: None,
            next_full: now,
        }
    }

    fn fds(&self) -> usize {
        usize::from(self.status.is_some()) + usize::from(self.schedstat.is_some())
    }

    fn full_check(&mut self, buf: &mut [u8]) -> Seen {
        let read = match &self.status {
            Some(f) => f.read_at(buf, 0),
            None => {
                File::open(format!("/proc/{}/status", self.tid)).and_then(|f| f.read_at(buf, 0))
            }
        };
        match read {
            Ok(n) => match SigState::parse(&buf[..n]) {
                Some(s) => Seen::State(s),
                None => Seen::Unreadable,
            },
            // The pinned thread exited (ESRCH), or by path: gone, unless only hidden
            // (hidepid=2 answers ENOENT for a live thread too).
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Seen::Gone,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !alive(self.tid) => Seen::Gone,
            Err(e) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        "cannot read /proc/{}/status ({e}): waiting readers can only be \
                         interrupted by --read-timeout (is /proc mounted with hidepid=?)",
                        self.tid
                    );
                });
                Seen::Unreadable
            }
        }
    }
}

/// A quarter of the soft RLIMIT_NOFILE, after raising it to the hard limit (as Go's runtime
/// does; nothing here uses `select(2)`, which would care).
fn fd_budget() -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    usize::try_from(soft / 4).unwrap_or(usize::MAX)
}

/// True unless no thread `tid` exists (`EPERM`: it exists, it is just not ours).
fn alive(tid: u32) -> bool {
    let Ok(tid) = i32::try_from(tid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(tid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// The third field of `/proc/<tid>/schedstat`: how many times the thread got a CPU.
fn read_switches(f: &File, buf: &mut [u8]) -> Option<u64> {
    let n = f.read_at(&mut buf[..128], 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    text.split_ascii_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tid() -> u32 {
        nix::unistd::gettid().as_raw() as u32
    }

    #[test]
    fn a_quiet_thread_is_not_interrupted_and_is_read_in_full_only_when_due() {
        let mut w = WaitWatch::new();
        let now = Instant::now();
        assert!(!w.interrupted(1, tid(), now));
        let r = &w.readers[&1];
        assert!(r.status.is_some() && r.schedstat.is_some());
        // The test harness catches no signal: the slow cadence applies.
        assert!(r.next_full >= now + FULL_CHECK_PLAIN || r.next_full >= now + FULL_CHECK_CATCHING);
        w.retain(|id| id != 1);
        assert!(w.is_empty());
    }

    #[test]
    fn a_thread_that_exited_counts_as_interrupted() {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _ = tx.send(tid());
        });
        let gone = rx.recv().expect("tid");
        let mut w = WaitWatch::new();
        // Opened while it lives: pinned. Then it exits.
        w.readers
            .insert(7, Reader::open(gone, Instant::now(), true));
        t.join().expect("join");
        std::thread::sleep(Duration::from_millis(20));
        assert!(w.interrupted(7, gone, Instant::now()));
        // Never seen and no such thread at all.
        assert!(w.interrupted(8, u32::MAX - 1, Instant::now()));
    }

    #[test]
    fn keeps_no_more_descriptors_than_its_budget() {
        let mut w = WaitWatch::new();
        w.fd_budget = 5;
        let now = Instant::now();
        for id in 0..4 {
            assert!(!w.interrupted(id, tid(), now));
        }
        assert_eq!(w.fds_open, 4, "two readers with two files each, then none");
        assert_eq!(w.readers[&3].fds(), 0);
        w.retain(|id| id >= 2);
        assert_eq!(w.fds_open, 0);
        assert!(!w.interrupted(9, tid(), now));
        assert_eq!(w.fds_open, 2);
    }

    #[test]
    fn alive_tells_a_missing_thread_from_someone_elses() {
        assert!(alive(tid()));
        assert!(!alive(u32::MAX - 1));
        // pid 1 exists whoever we are (EPERM for a non-root caller still means alive).
        assert!(alive(1));
    }

    #[test]
    fn reads_the_switch_count() {
        let f = File::open(format!("/proc/{}/schedstat", tid())).expect("schedstat");
        let mut buf = vec![0; STATUS_MAX];
        assert!(read_switches(&f, &mut buf).is_some_and(|n| n > 0));
    }
}
