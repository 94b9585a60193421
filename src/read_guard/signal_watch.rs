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
//! - the full status is read when the counter moved, and otherwise every [`FULL_CHECK_PLAIN`]
//!   for a process without handlers (only SIGQUIT and other core-dumping signals need it);
//! - a caught signal wakes nothing, so for processes with handlers the kernel's count of queued
//!   signals decides: it is kept per user (real uid and user namespace: one `ucounts`) and
//!   every status file shows it (`SigQ`). A signal queued for a waiting reader stays counted
//!   until the reader returns. Each tick one waiter of each such group is read in full (the
//!   probe). While the count holds at its baseline (the value once every waiter had been read
//!   and none had a signal: often 0, or one per POSIX timer the user's processes hold) the
//!   group's waiters are read only every [`FULL_CHECK_PLAIN`]. When it moves, every waiter of
//!   the group is read at once and then every [`FULL_CHECK_CATCHING`] until it holds still
//!   again. A Ctrl-C is so seen within one tick plus one pass, and 1000 quiet waiters with
//!   handlers cost one status read a tick and one every 2 s each, instead of 2.2 a second.
//!   What the count misses waits for the [`FULL_CHECK_PLAIN`] read, at most 2 s: a SIGKILL
//!   (the switch count shows it first), a signal sent while the user is over
//!   RLIMIT_SIGPENDING or the kernel is out of memory, and a signal whose +1 lands in the
//!   same tick as an unrelated -1 of the same user (another process taking a signal that was
//!   already pending at the last probe, or ending with a timer);
//! - a probe pays only for a group of two or more waiters with handlers: a waiter alone in its
//!   group (each process in a user namespace of its own is) is read in full every
//!   [`FULL_CHECK_CATCHING`] instead, as one whose group is not known, and its switch count
//!   is not read at all (that full read sees a fatal signal within the same half second);
//! - all bookkeeping is O(waiters) per pass: groups are counted once a pass
//!   ([`WaitWatch::retain`]) and looked up by a small key, never compared with every waiter.
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use crate::read_guard::pending_signals::{FULL_CHECK_CATCHING, FULL_CHECK_PLAIN, SigState};

/// One status file is at most a few KiB (about 1.5 KiB on 6.18).
const STATUS_MAX: usize = 8192;

pub struct WaitWatch {
    readers: HashMap<u64, Reader>,
    /// Reads of `/proc` files so far, status and schedstat: what the watch's cost is made of.
    #[cfg(test)]
    proc_reads: std::cell::Cell<u64>,
    groups: HashMap<Group, GroupState>,
    /// The uid the kernel shows for one it cannot map (`/proc/sys/kernel/overflowuid`): such
    /// readers are grouped with no one.
    overflow_uid: Option<u32>,
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
    /// The pass of the last full check (`None`: not read yet).
    last_full: Option<Instant>,
    /// The process had a handler for some signal at the last full check.
    catches: bool,
    /// Whose queued signals it shares a count with (`None`: not looked up yet; `Some(None)`:
    /// unknown, so read on the catching cadence).
    group: Option<Option<Group>>,
}

/// Processes whose queued signals the kernel counts together: the same real uid in the same
/// user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Group {
    uid: u32,
    /// The user namespace's inode (`readlink /proc/<tid>/ns/user` is `user:[4026531837]`).
    userns: u64,
}

/// A group needs this many waiters with handlers for its probe to save reads.
const PROBE_MIN: usize = 2;

#[derive(Debug, Default)]
struct GroupState {
    /// At the start of the pass: waiters with handlers in the group, and how many of them
    /// were last read in full before the candidate count appeared (see [`WaitWatch::retain`]).
    catchers: usize,
    unread: usize,
    /// Waiters of any kind in the group at the start of the pass.
    members: usize,
    /// The pass in which the group was last probed (its first waiter read in full).
    probed: Option<Instant>,
    /// The count that holds no signal for any of the group's waiters: the one a probe saw
    /// after every waiter with handlers had been read since it first appeared. (A POSIX
    /// timer holds one queued signal for as long as it exists, so it is not always 0.)
    baseline: Option<u64>,
    /// The pass since which the count has differed from `baseline` (`None`: it has not).
    loud_since: Option<Instant>,
    /// The count while loud, and the pass that first saw it.
    candidate: Option<(u64, Instant)>,
}

impl GroupState {
    /// Takes a probe's reading of the count. `settled`: every waiter with handlers of the
    /// group has been read in full since the candidate count first appeared, and none had a
    /// signal that ends its wait (it would be gone).
    fn probe(&mut self, queued: Option<u64>, now: Instant, settled: bool) {
        self.probed = Some(now);
        let Some(q) = queued else {
            // No count shown: never quiet.
            self.baseline = None;
            self.candidate = None;
            self.loud_since.get_or_insert(now);
            return;
        };
        match (self.loud_since, self.candidate) {
            (None, _) if self.baseline == Some(q) => {}
            // It moved: read everyone now, then on the catching cadence until it settles.
            (None, _) => {
                self.loud_since = Some(now);
                self.candidate = Some((q, now));
            }
            (Some(_), Some((c, _))) if c == q => {
                if settled {
                    self.baseline = Some(q);
                    self.loud_since = None;
                    self.candidate = None;
                }
            }
            (Some(_), _) => self.candidate = Some((q, now)),
        }
    }
}

/// What reading a thread's files showed.
enum Seen {
    Gone,
    Unreadable,
    State(Status),
}

/// The fields of one status file that the watch uses.
struct Status {
    signals: SigState,
    /// `SigQ`: signals queued for the process's user (`None`: not shown).
    queued: Option<u64>,
    /// The real uid (`Uid:`, first field).
    uid: Option<u32>,
}

impl WaitWatch {
    pub fn new() -> Self {
        WaitWatch {
            readers: HashMap::new(),
            #[cfg(test)]
            proc_reads: std::cell::Cell::new(0),
            groups: HashMap::new(),
            overflow_uid: std::fs::read_to_string("/proc/sys/kernel/overflowuid")
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            buf: vec![0; STATUS_MAX],
            fd_budget: fd_budget(),
            fds_open: 0,
        }
    }

    /// True when waiting read `id` by thread `tid` must end now with `EINTR` (a signal that
    /// would interrupt a device read is pending, or the thread is gone). `now` is the pass's:
    /// the same for every reader looked at in one pass.
    pub fn interrupted(&mut self, id: u64, tid: u32, now: Instant) -> bool {
        let reader = self.readers.entry(id).or_insert_with(|| {
            let keep = self.fds_open + 2 <= self.fd_budget;
            let r = Reader::open(tid, keep);
            self.fds_open += r.fds();
            r
        });
        // A group too small for its probe to pay is no group: the catching cadence.
        let group = reader
            .group
            .flatten()
            .and_then(|g| self.groups.get(&g))
            .filter(|s| s.catchers >= PROBE_MIN);
        // A fatal signal wakes the killable wait: the switch count moves. Not read for a
        // waiter read in full every other tick anyway.
        let woke = match (&reader.schedstat, reader.switches) {
            (Some(f), Some(before)) if !reader.catches || group.is_some() => {
                #[cfg(test)]
                self.proc_reads.set(self.proc_reads.get() + 1);
                read_switches(f, &mut self.buf) != Some(before)
            }
            _ => false,
        };
        if !woke && !due(reader.last_full, reader.catches, group, now) {
            return false;
        }
        let read_before = reader.last_full.filter(|_| reader.catches);
        #[cfg(test)]
        self.proc_reads.set(self.proc_reads.get() + 1);
        let status = match reader.full_check(&mut self.buf) {
            Seen::Gone => return true,
            Seen::Unreadable => {
                reader.last_full = Some(now);
                reader.catches = false;
                reader.switches = None;
                return false;
            }
            Seen::State(status) => status,
        };
        if status.signals.interrupting() != 0 {
            return true;
        }
        reader.last_full = Some(now);
        reader.catches = status.signals.catches_any();
        reader.switches = reader
            .schedstat
            .as_ref()
            .and_then(|f| read_switches(f, &mut self.buf));
        if reader.group.is_none() {
            reader.group = Some(group_of(reader.tid, status.uid, self.overflow_uid));
        }
        if let Some(g) = reader.group.flatten() {
            let state = self.groups.entry(g).or_default();
            if state.probed != Some(now) {
                // Every waiter with handlers was read since the candidate appeared: none
                // was unread at the pass's start, or only this one.
                let settled = state.candidate.is_some_and(|(_, since)| {
                    state.unread == 0
                        || (state.unread == 1 && read_before.is_some_and(|l| l < since))
                });
                state.probe(status.queued, now, settled);
            }
        }
        false
    }

    /// Drops what is kept for reads that no longer wait (answered, cancelled), and counts
    /// each group's waiters for the pass that follows. Called once at the start of every pass.
    pub fn retain(&mut self, mut waiting: impl FnMut(u64) -> bool) {
        let fds_open = &mut self.fds_open;
        self.readers.retain(|id, r| {
            let keep = waiting(*id);
            if !keep {
                *fds_open -= r.fds();
            }
            keep
        });
        for state in self.groups.values_mut() {
            (state.members, state.catchers, state.unread) = (0, 0, 0);
        }
        for r in self.readers.values() {
            let Some(state) = r.group.flatten().and_then(|g| self.groups.get_mut(&g)) else {
                continue;
            };
            state.members += 1;
            if r.catches {
                state.catchers += 1;
                if let Some((_, since)) = state.candidate {
                    state.unread += usize::from(r.last_full.is_none_or(|l| l < since));
                }
            }
        }
        self.groups.retain(|_, state| state.members > 0);
    }

    #[cfg(test)]
    fn proc_reads(&self) -> u64 {
        self.proc_reads.get()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.readers.is_empty()
    }
}

impl Reader {
    fn open(tid: u32, keep_files: bool) -> Reader {
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
            last_full: None,
            catches: false,
            group: None,
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
                Some(signals) => Seen::State(Status {
                    signals,
                    queued: first_number(&buf[..n], b"SigQ:"),
                    uid: first_number(&buf[..n], b"Uid:").and_then(|u| u32::try_from(u).ok()),
                }),
                None => Seen::Unreadable,
            },
            // The pinned thread exited (ESRCH), or by path: gone, unless only hidden
            // (hidepid=2 answers ENOENT for a live thread too).
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Seen::Gone,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && !crate::sys::task_exists(self.tid) =>
            {
                Seen::Gone
            }
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

/// Raises the soft RLIMIT_NOFILE to the hard limit (as Go's runtime does; nothing here uses
/// `select(2)`, which would care). Called at start: the sandbox forbids setting limits later.
pub fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// A quarter of the soft RLIMIT_NOFILE (see [`raise_descriptor_limit`]).
fn fd_budget() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    usize::try_from(soft / 4).unwrap_or(usize::MAX)
}

/// Whether a reader that did not wake must be read in full in the pass at `now`: never read;
/// or the cadence of its kind is up (see the module documentation); or it is the first of its
/// group this pass (the probe); or its group's count rose since its last read.
fn due(
    last_full: Option<Instant>,
    catches: bool,
    group: Option<&GroupState>,
    now: Instant,
) -> bool {
    let Some(last) = last_full else {
        return true;
    };
    if !catches {
        return now >= last + FULL_CHECK_PLAIN;
    }
    let Some(group) = group else {
        return now >= last + FULL_CHECK_CATCHING;
    };
    match (group.probed == Some(now), group.loud_since) {
        (false, _) => true,
        (true, None) => now >= last + FULL_CHECK_PLAIN,
        (true, Some(since)) => last < since || now >= last + FULL_CHECK_CATCHING,
    }
}

/// The group of a reader with real uid `uid`: `None` when the uid or the user namespace is not
/// known, or the uid is the overflow uid (several real uids may show as it).
fn group_of(tid: u32, uid: Option<u32>, overflow_uid: Option<u32>) -> Option<Group> {
    let uid = uid.filter(|&u| Some(u) != overflow_uid)?;
    let link = std::fs::read_link(format!("/proc/{tid}/ns/user")).ok()?;
    let userns = link
        .to_str()?
        .strip_prefix("user:[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    Some(Group { uid, userns })
}

/// The first number after `field` at the start of a line of a status file (`SigQ:\t0/94744`
/// gives 0, `Uid:\t1000\t1000...` gives 1000).
fn first_number(status: &[u8], field: &[u8]) -> Option<u64> {
    let line = status
        .split(|&b| b == b'\n')
        .find(|l| l.starts_with(field))?;
    let rest = line[field.len()..].trim_ascii_start();
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    rest[..digits].iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
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
        assert_eq!(r.last_full, Some(now));
        let me = nix::unistd::getuid().as_raw();
        assert!(
            matches!(&r.group, Some(Some(g)) if g.uid == me),
            "{:?}",
            r.group
        );
        assert_eq!(w.groups.len(), 1);
        // (Whether it is read again is `due`'s, tested below: this thread runs, so its switch
        // count moves, which for a waiting reader means a fatal signal woke it.)
        w.retain(|id| id != 1);
        assert!(w.is_empty());
        assert!(w.groups.is_empty(), "a group goes with its last reader");
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
        w.readers.insert(7, Reader::open(gone, true));
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
    fn readers_with_handlers_are_read_by_the_probe_and_when_their_group_s_count_rises() {
        let t0 = Instant::now();
        let tick = crate::read_guard::wait_limits::CHECK_EVERY;
        let at = |n: u32| t0 + tick * n;
        let quiet = |pass| GroupState {
            probed: Some(pass),
            baseline: Some(1),
            ..GroupState::default()
        };
        let loud = |pass, since| GroupState {
            probed: Some(pass),
            loud_since: Some(since),
            ..GroupState::default()
        };
        let unprobed = GroupState::default();
        // Never read: read now, whatever its kind.
        assert!(due(None, true, Some(&quiet(at(1))), at(1)));
        assert!(due(None, false, None, at(1)));
        // The first of its group in a pass probes the count.
        assert!(due(Some(at(1)), true, Some(&unprobed), at(2)));
        assert!(due(Some(at(1)), true, Some(&quiet(at(1))), at(2)));
        // The group is quiet: its others wait for the slow cadence.
        assert!(!due(Some(at(1)), true, Some(&quiet(at(2))), at(2)));
        assert!(!due(Some(at(1)), true, Some(&quiet(at(8))), at(8)));
        assert!(due(Some(at(1)), true, Some(&quiet(at(10))), at(10)), "2 s");
        // The count rose this pass: everyone not read since is read now, then every ~450 ms.
        assert!(due(Some(at(1)), true, Some(&loud(at(2), at(2))), at(2)));
        assert!(!due(Some(at(2)), true, Some(&loud(at(2), at(2))), at(2)));
        assert!(!due(Some(at(2)), true, Some(&loud(at(3), at(2))), at(3)));
        assert!(due(Some(at(2)), true, Some(&loud(at(4), at(2))), at(4)));
        // No group known: the catching cadence; no handlers: the slow one (a fatal signal
        // shows in the switch count instead).
        assert!(!due(Some(at(1)), true, None, at(2)));
        assert!(due(Some(at(1)), true, None, at(3)));
        assert!(!due(Some(at(1)), false, Some(&unprobed), at(9)));
        assert!(due(Some(at(1)), false, None, at(10)));
    }

    #[test]
    fn a_group_is_quiet_once_its_count_holds_still_after_everyone_was_read() {
        let t0 = Instant::now();
        let at = |n: u32| t0 + crate::read_guard::wait_limits::CHECK_EVERY * n;
        let mut g = GroupState::default();
        // First reading (1: a `timeout` process's timer, say): loud until all were read.
        g.probe(Some(1), at(1), false);
        assert_eq!((g.loud_since, g.baseline), (Some(at(1)), None));
        g.probe(Some(1), at(2), false);
        assert!(g.loud_since.is_some(), "not everyone read yet");
        g.probe(Some(1), at(3), true);
        assert_eq!((g.loud_since, g.baseline), (None, Some(1)));
        // Quiet while it holds.
        g.probe(Some(1), at(4), false);
        assert_eq!((g.loud_since, g.baseline), (None, Some(1)));
        // A Ctrl-C queues one more: loud at once.
        g.probe(Some(2), at(5), false);
        assert_eq!(g.loud_since, Some(at(5)));
        // It moves again while loud: a new candidate, the same loud pass.
        g.probe(Some(3), at(6), true);
        assert_eq!((g.loud_since, g.candidate), (Some(at(5)), Some((3, at(6)))));
        // Settled: a waiter's own blocked signal, say, is part of the quiet count now.
        g.probe(Some(3), at(8), true);
        assert_eq!((g.loud_since, g.baseline), (None, Some(3)));
        // Down is a move too (the signal's process dequeued it, or a timer went).
        g.probe(Some(2), at(9), true);
        assert_eq!(g.loud_since, Some(at(9)));
        // No count shown: never quiet.
        let mut h = GroupState::default();
        h.probe(None, at(1), true);
        h.probe(None, at(2), true);
        assert!(h.loud_since.is_some() && h.baseline.is_none());
    }

    #[test]
    fn reads_the_queued_count_and_the_real_uid() {
        let status = b"Name:\tdd\nUid:\t1000\t0\t0\t0\nSigQ:\t3/94744\nSigPnd:\t0\n";
        assert_eq!(first_number(status, b"SigQ:"), Some(3));
        assert_eq!(first_number(status, b"Uid:"), Some(1000));
        assert_eq!(first_number(status, b"Gid:"), None);
        assert_eq!(first_number(b"SigQ:\t/1\n", b"SigQ:"), None);
        let own = std::fs::read(format!("/proc/{}/status", tid())).expect("status");
        assert_eq!(
            first_number(&own, b"Uid:"),
            Some(u64::from(nix::unistd::getuid().as_raw()))
        );
        assert!(first_number(&own, b"SigQ:").is_some());
    }

    /// A waiter alone in its group (each in a user namespace of its own, say) costs at most
    /// one `/proc` read every other tick, and a pass's work grows with the waiters, not with
    /// waiters times groups.
    #[test]
    fn waiters_each_in_a_group_of_their_own_cost_one_read_every_other_tick() {
        // The watch reads this thread's status for every reader: give the process a handler
        // (SIGWINCH's default is to ignore it, so nothing else here notices).
        extern "C" fn ignore(_: libc::c_int) {}
        let handler = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(ignore),
            nix::sys::signal::SaFlags::SA_RESTART,
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler does nothing, so it is async-signal-safe.
        unsafe { nix::sys::signal::sigaction(nix::sys::signal::SIGWINCH, &handler) }
            .expect("sigaction");
        let t0 = Instant::now();
        let at = |n: u32| t0 + crate::read_guard::wait_limits::CHECK_EVERY * n;
        let passes = 16;
        let mut per_waiter = Vec::new();
        for n in [100u64, 800] {
            let mut w = WaitWatch::new();
            w.fd_budget = usize::MAX;
            w.retain(|_| true);
            for id in 0..n {
                assert!(!w.interrupted(id, tid(), at(0)));
            }
            // What the kernel shows for processes that each made a user namespace.
            for (id, r) in &mut w.readers {
                assert!(r.catches, "the handler shows");
                r.group = Some(Some(Group {
                    uid: 1000,
                    userns: 4_026_531_837 + id,
                }));
            }
            let before = w.proc_reads();
            for pass in 1..=passes {
                w.retain(|_| true);
                for id in 0..n {
                    assert!(!w.interrupted(id, tid(), at(pass)));
                }
            }
            assert_eq!(w.groups.len(), n as usize, "a group per namespace");
            let reads = w.proc_reads() - before;
            // Read in full every second tick (400 ms, within the half second), nothing more.
            assert!(
                reads <= n * u64::from(passes) / 2,
                "{reads} /proc reads for {n} waiters over {passes} passes"
            );
            per_waiter.push(reads as f64 / n as f64);
        }
        assert!(
            (per_waiter[0] - per_waiter[1]).abs() < 0.5,
            "reads per waiter {per_waiter:?}"
        );
    }

    #[test]
    fn reads_the_switch_count() {
        let f = File::open(format!("/proc/{}/schedstat", tid())).expect("schedstat");
        let mut buf = vec![0; STATUS_MAX];
        assert!(read_switches(&f, &mut buf).is_some_and(|n| n > 0));
    }
}
