//! Who sent a FUSE request: a user thread, a kernel thread, or a task the daemon cannot see.
//!
//! A kernel thread that reads `/random` does a direct read (it carries a lock owner like any
//! reader, see `origin`) but hands the bytes on to a cache many can read: the loop driver's
//! workers fill the block device's page cache, nfsd and ksmbd serve clients that cache pages,
//! cachefiles keeps them on disk. The kernel gives us only the requesting thread's id (pid 0
//! when that thread is outside the daemon's pid namespace, as every kernel thread is from a
//! container), so it is looked up here:
//! - `/proc/<tid>/stat`'s flags field has `PF_KTHREAD`: exact, and set for a task's whole life.
//!   io_uring workers (`iou-wrk-*`, `iou-sqp-*`) are threads of the user's process
//!   (`PF_IO_WORKER`, never `PF_KTHREAD`) reading into its memory: user threads.
//! - With `hidepid=` on /proc and an unprivileged daemon, another user's tasks (kernel threads
//!   are root's) are hidden. A pidfd still answers `PIDFD_GET_INFO` (6.13+): in the initial pid
//!   namespace a task whose parent is kthreadd (pid 2) is a kernel thread, or a user-mode helper
//!   the kernel started (refused too: rare, and failing safe). Anything else that stays hidden
//!   is taken for a user thread, so that `hidepid` never fails ordinary reads.
//!
//! Per READ this must cost no syscall for a reader already seen (32-byte reads run at the
//! FUSE ceiling), so each answer is kept with a pidfd of the thread (`PIDFD_THREAD`): a pidfd
//! pins its task, and polling it says whether that task has exited, so a reused thread id is
//! never mistaken for the one looked up. The poll is made at most once per [`RECHECK`] per
//! thread: a thread id is reused only after the kernel's cyclic allocator has handed out
//! every other id up to `pid_max` (at least 32768 task creations), which takes far longer
//! than that. Those of exited threads are dropped at the next look-up (a pidfd is a
//! descriptor: their count stays flat), and at most [`CACHE_MAX`] are kept.
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use parking_lot::RwLock;

/// `PF_KTHREAD` in `include/linux/sched.h`: the task is a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// kthreadd's pid in the initial pid namespace: the parent of every kernel thread.
const KTHREADD_PID: u32 = 2;

/// The inode number of the initial pid namespace (`PROC_PID_INIT_INO`), fixed by the kernel.
const INIT_PID_NS_INO: u64 = 0xEFFF_FFFC;

/// Thread answers kept at most: one pidfd each.
pub const CACHE_MAX: usize = 256;

/// How long a thread's answer is trusted without polling its pidfd again: far less than the
/// fastest wrap of the thread ids (32768 task creations in 10 ms would be 3 million a second).
pub const RECHECK: Duration = Duration::from_millis(10);

/// What kind of task sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// A thread of a user process (io_uring workers included), or one we cannot see into but
    /// have no reason to think is a kernel thread.
    User,
    /// A kernel thread: whatever it reads may reach a cache shared by many.
    Kernel,
    /// Pid 0 (outside the daemon's pid namespace), or a task gone before it could be looked
    /// at: nothing tells a kernel thread from a reader.
    Unattributed,
}

struct Known {
    pidfd: OwnedFd,
    kind: TaskKind,
    /// When the pidfd last said the thread lived, in nanoseconds from [`clock`]'s start.
    alive_at: AtomicU64,
}

/// Nanoseconds since the first call: a monotonic clock read without a syscall (vDSO).
fn clock() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Looks up, and remembers, what kind of task each requesting thread is.
#[derive(Default)]
pub struct Requesters {
    known: RwLock<HashMap<u32, Known>>,
}

impl Requesters {
    #[cfg(test)]
    pub fn new() -> Self {
        Self::default()
    }

    /// What kind of task thread `pid` (as the kernel reports it in a request) is.
    pub fn kind(&self, pid: u32) -> TaskKind {
        if pid == 0 {
            return TaskKind::Unattributed;
        }
        if let Some(k) = self.known.read().get(&pid) {
            let now = clock();
            if now.saturating_sub(k.alive_at.load(Ordering::Relaxed)) < RECHECK.as_nanos() as u64 {
                return k.kind;
            }
            if alive(&k.pidfd) {
                k.alive_at.store(now, Ordering::Relaxed);
                return k.kind;
            }
        }
        let Ok(pidfd) = pidfd_open(pid) else {
            // ESRCH: gone, or not in our pid namespace. Anything else (EMFILE; EINVAL before
            // 6.9, which has no PIDFD_THREAD): look without pinning, and remember nothing.
            return match Errno::last() {
                Errno::ESRCH => TaskKind::Unattributed,
                _ => look_up(pid, None),
            };
        };
        let kind = look_up(pid, Some(&pidfd));
        // Still alive after the look-up: what was read was this task's, not a successor's.
        // Not knowing (a transient failure) is not remembered either.
        if !alive(&pidfd) || kind == TaskKind::Unattributed {
            return TaskKind::Unattributed;
        }
        // Exited threads go at once, not when the cache is full: their pidfds are descriptors
        // (the daemon's descriptor count stays flat however many short-lived readers come).
        let mut known = self.known.write();
        known.retain(|_, k| alive(&k.pidfd));
        if known.len() >= CACHE_MAX {
            known.clear();
        }
        let alive_at = AtomicU64::new(clock());
        known.insert(
            pid,
            Known {
                pidfd,
                kind,
                alive_at,
            },
        );
        kind
    }

    /// How many threads are remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.known.read().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.known.read().is_empty()
    }
}

/// The kind of task `pid`, from `/proc`, or from its pidfd when `/proc` hides it.
fn look_up(pid: u32, pidfd: Option<&OwnedFd>) -> TaskKind {
    match stat_flags(pid) {
        Ok(flags) if flags & PF_KTHREAD != 0 => TaskKind::Kernel,
        Ok(_) => TaskKind::User,
        // Hidden (hidepid=, or /proc not mounted), or gone.
        Err(Errno::ENOENT | Errno::EACCES | Errno::EPERM | Errno::ESRCH) => match pidfd {
            Some(fd) => hidden_kind(fd),
            // No pidfd: a live task we may not see, or a gone one.
            None if crate::sys::task_exists(pid) => TaskKind::User,
            None => TaskKind::Unattributed,
        },
        // A stat we cannot parse: no reason to think it a kernel thread.
        Err(Errno::EINVAL) => TaskKind::User,
        // Out of descriptors or memory, an I/O error: we do not know, so it is not served
        // (and not remembered: the next read looks again).
        Err(_) => TaskKind::Unattributed,
    }
}

/// A task `/proc` hides from us (`hidepid=`): a kernel thread if its parent is kthreadd.
fn hidden_kind(pidfd: &OwnedFd) -> TaskKind {
    if !in_initial_pid_ns() {
        // Kernel threads are seen from the initial pid namespace only (elsewhere: pid 0).
        return TaskKind::User;
    }
    match pidfd_ppid(pidfd) {
        Some(KTHREADD_PID) => TaskKind::Kernel,
        _ => TaskKind::User,
    }
}

/// The `flags` field (the 9th) of `/proc/<pid>/stat`.
fn stat_flags(pid: u32) -> Result<u64, Errno> {
    let mut buf = [0u8; 1024];
    let n = File::open(format!("/proc/{pid}/stat"))
        .and_then(|mut f| f.read(&mut buf))
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    parse_stat_flags(&buf[..n]).ok_or(Errno::EINVAL)
}

/// `pid (comm) state ppid pgrp session tty_nr tpgid flags ...`: comm may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat_flags(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    rest.split_ascii_whitespace().nth(6)?.parse().ok()
}

/// The thread's name, for a log line; empty if it cannot be read.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default()
}

/// A pidfd of thread `pid`; on failure `Errno::last()` says why.
fn pidfd_open(pid: u32) -> Result<OwnedFd, ()> {
    // SAFETY: pidfd_open takes two integers and touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, libc::PIDFD_THREAD) };
    if fd < 0 {
        return Err(());
    }
    // SAFETY: a descriptor the kernel just opened for us and nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// The thread the pidfd pins has not exited (a pidfd polls readable once it has).
fn alive(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

/// The parent's pid (in our pid namespace) of the task behind `pidfd`, by `PIDFD_GET_INFO`
/// (Linux 6.13+), which needs no access to `/proc`.
fn pidfd_ppid(pidfd: &OwnedFd) -> Option<u32> {
    // SAFETY: pidfd_info is plain integers; all zero is a valid value (mask 0: the basics).
    let mut info: libc::pidfd_info = unsafe { std::mem::zeroed() };
    // SAFETY: the ioctl writes at most size_of::<pidfd_info>() (encoded in the request) into
    // `info`, which lives across the call.
    let r = unsafe { libc::ioctl(pidfd.as_raw_fd(), libc::PIDFD_GET_INFO, &mut info) };
    (r == 0).then_some(info.ppid)
}

/// The daemon is in the initial pid namespace, where kernel threads have pids.
fn in_initial_pid_ns() -> bool {
    static INIT: OnceLock<bool> = OnceLock::new();
    *INIT.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == INIT_PID_NS_INO)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel thread we can see other than kthreadd, if any (none outside the initial pid
    /// namespace).
    fn some_kernel_thread() -> Option<u32> {
        std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != KTHREADD_PID)
            .find(|&pid| stat_flags(pid).is_ok_and(|f| f & PF_KTHREAD != 0))
    }

    #[test]
    fn parses_the_flags_field_whatever_the_name() {
        let s = b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 1 0 0 20 0 1 0 25\n";
        assert_eq!(parse_stat_flags(s), Some(2_129_984));
        let s = b"77 (a) b) S 1 (x) R 5 77 77 0 -1 4194560 12 0 0 0\n";
        assert_eq!(parse_stat_flags(s), Some(4_194_560));
        assert_eq!(parse_stat_flags(b"77 (cut"), None);
        assert_eq!(parse_stat_flags(b"77 (x) S 1 2 3 4 5"), None);
    }

    #[test]
    fn this_process_and_another_of_its_threads_are_user_threads() {
        let r = Requesters::new();
        assert_eq!(r.kind(std::process::id()), TaskKind::User);
        // A thread's own id (what the kernel puts in a request), not its process's.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let _ = tx.send(nix::unistd::gettid().as_raw() as u32);
            let _ = done_rx.recv();
        });
        let other = rx.recv().expect("tid");
        assert_eq!(r.kind(other), TaskKind::User);
        assert_eq!(r.len(), 2);
        let _ = done_tx.send(());
        t.join().expect("join");
    }

    #[test]
    fn a_kernel_thread_is_a_kernel_thread() {
        let Some(pid) = some_kernel_thread() else {
            eprintln!("no kernel thread visible here (a pid namespace?): nothing to check");
            return;
        };
        let r = Requesters::new();
        assert_eq!(r.kind(pid), TaskKind::Kernel, "pid {pid}");
        // Remembered: the same answer from the cache.
        assert_eq!(r.kind(pid), TaskKind::Kernel);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn when_proc_hides_a_task_its_parent_tells_a_kernel_thread() {
        let me = pidfd_open(std::process::id()).expect("pidfd of self");
        assert_eq!(hidden_kind(&me), TaskKind::User);
        let Some(pid) = some_kernel_thread() else {
            eprintln!("no kernel thread visible here: nothing more to check");
            return;
        };
        let kthread = pidfd_open(pid).expect("pidfd of a kernel thread");
        assert!(in_initial_pid_ns());
        assert_eq!(pidfd_ppid(&kthread), Some(KTHREADD_PID));
        assert_eq!(hidden_kind(&kthread), TaskKind::Kernel, "pid {pid}");
    }

    #[test]
    fn pid_0_and_a_gone_thread_are_unattributed() {
        let r = Requesters::new();
        assert_eq!(r.kind(0), TaskKind::Unattributed);
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        assert_eq!(r.kind(pid), TaskKind::Unattributed);
        assert!(r.is_empty());
    }

    #[test]
    fn an_exited_thread_is_forgotten_and_looked_up_again() {
        let r = Requesters::new();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn");
        let pid = child.id();
        assert_eq!(r.kind(pid), TaskKind::User);
        assert_eq!(r.len(), 1);
        child.kill().expect("kill");
        child.wait().expect("wait");
        // Once the answer is due a recheck, the pidfd shows the exit: the cached answer is not
        // used for a successor.
        std::thread::sleep(RECHECK * 2);
        assert_eq!(r.kind(pid), TaskKind::Unattributed);
        // And the exited thread's pidfd is closed at the next look-up, not kept until the
        // cache is full.
        assert_eq!(r.kind(std::process::id()), TaskKind::User);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let r = Requesters::new();
        let me = std::process::id();
        for _ in 0..3 {
            assert_eq!(r.kind(me), TaskKind::User);
        }
        assert_eq!(r.len(), 1);
        // Filled with live entries past the bound, it starts over rather than grow.
        let mut children: Vec<_> = (0..CACHE_MAX + 1)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        for c in &children {
            assert_eq!(r.kind(c.id()), TaskKind::User);
            assert!(r.len() <= CACHE_MAX);
        }
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
