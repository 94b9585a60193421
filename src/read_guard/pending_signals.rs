//! Which pending signals end a waiting read, decided the way the kernel decides for a task
//! sleeping in a device's interruptible wait (`/dev/random`).
//!
//! The reader's signal state comes from `/proc/<tid>/status` (FUSE gives the *thread* id):
//! `SigPnd` (pending on this thread), `ShdPnd` (pending on the process), `SigBlk` (this
//! thread's mask), `SigIgn` and `SigCgt` (process-wide dispositions). A signal ends the wait
//! when it is pending, not blocked, not ignored, and either caught (the handler runs, so the
//! read returns `EINTR`) or its default action ends the process (terminate or core dump).
//!
//! Not interrupting:
//! - default action *ignore* (SIGCHLD, SIGURG, SIGWINCH) or *continue* (SIGCONT) with no handler:
//!   the kernel would not even wake the reader;
//! - default action *stop* (SIGSTOP, and SIGTSTP/SIGTTIN/SIGTTOU without a handler): a device
//!   read would return `-ERESTARTSYS`, the process would stop and, after SIGCONT, the read would
//!   restart unseen. A FUSE reply cannot ask for a restart (the kernel refuses errors beyond
//!   -511), so an `EINTR` would surface after SIGCONT in a program with no handler at all. The
//!   stop is instead deferred until the read ends, exactly as for any task in a killable wait
//!   (NFS, disk I/O); SIGCONT clears a pending stop, SIGKILL still ends the wait.
use std::time::Duration;

/// Signal `sig` (1..=64) as its bit in a `/proc` mask.
pub const fn bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

const fn mask(sigs: &[i32]) -> u64 {
    let mut m = 0;
    let mut i = 0;
    while i < sigs.len() {
        m |= bit(sigs[i]);
        i += 1;
    }
    m
}

/// Default action: ignore (signal(7)).
pub const DEFAULT_IGNORE: u64 = mask(&[libc::SIGCHLD, libc::SIGURG, libc::SIGWINCH]);
/// Default action: continue.
pub const DEFAULT_CONTINUE: u64 = bit(libc::SIGCONT);
/// Default action: stop (SIGSTOP can be neither caught nor ignored).
pub const DEFAULT_STOP: u64 = mask(&[libc::SIGSTOP, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU]);
const UNBLOCKABLE: u64 = mask(&[libc::SIGKILL, libc::SIGSTOP]);

/// The signal fields of one `/proc/<tid>/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SigState {
    pub thread_pending: u64,
    pub shared_pending: u64,
    pub blocked: u64,
    pub ignored: u64,
    pub caught: u64,
}

impl SigState {
    /// Parses the five masks; `None` if any is missing (not a status file we understand:
    /// the caller then keeps the reader waiting rather than guess).
    pub fn parse(status: &[u8]) -> Option<SigState> {
        let mut s = SigState::default();
        let mut seen = 0u8;
        for line in status.split(|&b| b == b'\n') {
            let (field, slot): (&[u8], &mut u64) = match line.get(..7) {
                Some(b"SigPnd:") => (line, &mut s.thread_pending),
                Some(b"ShdPnd:") => (line, &mut s.shared_pending),
                Some(b"SigBlk:") => (line, &mut s.blocked),
                Some(b"SigIgn:") => (line, &mut s.ignored),
                Some(b"SigCgt:") => (line, &mut s.caught),
                _ => continue,
            };
            *slot = parse_hex(field[7..].trim_ascii())?;
            seen += 1;
        }
        (seen == 5).then_some(s)
    }

    /// Signals that end the wait now (a mask; 0 = keep waiting).
    pub fn interrupting(&self) -> u64 {
        let pending = (self.thread_pending | self.shared_pending) & !(self.blocked & !UNBLOCKABLE);
        let live = pending & !(self.ignored & !UNBLOCKABLE);
        let harmless_by_default = DEFAULT_IGNORE | DEFAULT_CONTINUE | DEFAULT_STOP;
        live & (self.caught | !harmless_by_default)
    }

    /// True when the process has a handler for some signal: then a signal can end the wait
    /// without waking the reader's thread, and only reading its status shows it.
    pub fn catches_any(&self) -> bool {
        self.caught != 0
    }
}

fn parse_hex(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 16 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &c| {
        let d = (c as char).to_digit(16)?;
        Some(acc << 4 | u64::from(d))
    })
}

/// How often a waiting reader's status is read in full. A process with handlers may get a
/// signal that wakes nothing: while its user has a signal queued it is read often enough for a
/// Ctrl-C to end the wait within half a second (every second tick of the wait limits: see
/// `wait_limits::CHECK_EVERY`), otherwise on the slow cadence (see `signal_watch`). A process
/// without handlers is woken by any fatal signal (seen at once through its scheduler
/// counters), so only core-dumping signals (SIGQUIT…) wait for the slow one.
pub const FULL_CHECK_CATCHING: Duration = Duration::from_millis(400);
pub const FULL_CHECK_PLAIN: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pending: &[i32]) -> SigState {
        SigState {
            shared_pending: mask(pending),
            ..SigState::default()
        }
    }

    #[test]
    fn parses_a_real_status_file() {
        let text = std::fs::read("/proc/self/status").expect("status");
        let s = SigState::parse(&text).expect("five masks");
        assert_eq!(s.interrupting(), 0);
        let fake = b"Name:\tx\nSigQ:\t0/1\nSigPnd:\t0000000000000100\nShdPnd:\t0000000000004002\n\
                     SigBlk:\t0000000000000002\nSigIgn:\t0000000000001000\nSigCgt:\t0000000180000000\n";
        let s = SigState::parse(fake).expect("parse");
        assert_eq!(s.thread_pending, bit(libc::SIGKILL));
        assert_eq!(s.shared_pending, bit(libc::SIGINT) | bit(libc::SIGTERM));
        assert_eq!(s.blocked, bit(libc::SIGINT));
        assert_eq!(s.ignored, bit(libc::SIGPIPE));
        assert_eq!(s.caught, 0x1_8000_0000);
        assert_eq!(s.interrupting(), bit(libc::SIGKILL) | bit(libc::SIGTERM));
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        assert_eq!(SigState::parse(b"SigPnd:\t0\n"), None);
        assert_eq!(
            SigState::parse(b"SigPnd:\tzz\nShdPnd:\t0\nSigBlk:\t0\nSigIgn:\t0\nSigCgt:\t0\n"),
            None
        );
        assert_eq!(
            SigState::parse(
                b"SigPnd:\t00000000000000000\nShdPnd:\t0\nSigBlk:\t0\nSigIgn:\t0\nSigCgt:\t0\n"
            ),
            None
        );
    }

    #[test]
    fn default_ignore_continue_and_stop_do_not_interrupt() {
        for sig in [
            libc::SIGCHLD,
            libc::SIGURG,
            libc::SIGWINCH,
            libc::SIGCONT,
            libc::SIGSTOP,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
        ] {
            assert_eq!(state(&[sig]).interrupting(), 0, "signal {sig}");
        }
    }

    #[test]
    fn fatal_by_default_interrupts() {
        for sig in
            (1..=64).filter(|s| bit(*s) & (DEFAULT_IGNORE | DEFAULT_CONTINUE | DEFAULT_STOP) == 0)
        {
            assert_eq!(state(&[sig]).interrupting(), bit(sig), "signal {sig}");
        }
    }

    #[test]
    fn caught_interrupts_even_when_harmless_by_default() {
        for sig in [libc::SIGCHLD, libc::SIGWINCH, libc::SIGCONT, libc::SIGTSTP] {
            let s = SigState {
                caught: bit(sig),
                ..state(&[sig])
            };
            assert_eq!(s.interrupting(), bit(sig), "signal {sig}");
        }
    }

    #[test]
    fn ignored_or_blocked_does_not_interrupt_but_sigkill_always_does() {
        let ignored = SigState {
            ignored: bit(libc::SIGUSR1),
            ..state(&[libc::SIGUSR1])
        };
        assert_eq!(ignored.interrupting(), 0);
        let blocked = SigState {
            blocked: bit(libc::SIGINT),
            ..state(&[libc::SIGINT])
        };
        assert_eq!(blocked.interrupting(), 0);
        let kill = SigState {
            thread_pending: bit(libc::SIGKILL),
            blocked: !0,
            ignored: !0,
            ..SigState::default()
        };
        assert_eq!(kill.interrupting(), bit(libc::SIGKILL));
        // A stop next to a pending SIGKILL: the kill wins.
        assert_eq!(
            state(&[libc::SIGSTOP, libc::SIGKILL]).interrupting(),
            bit(libc::SIGKILL)
        );
    }
}
