//! Ends waits that must end: a reader with a pending signal gets `EINTR`, one past
//! `--read-timeout` gets `EIO`.
//!
//! Why this exists: fuser answers the kernel's FUSE_INTERRUPT with ENOSYS, after which the kernel
//! stops forwarding interrupts and leaves the reader in state D until we answer. So we look at
//! the reader's pending signals ourselves.
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::pool::{Pool, ReadError};

/// How often waiting readers are looked at (cheaply, see waitwatch); with
/// `signals::FULL_CHECK_CATCHING` it keeps a Ctrl-C under half a second.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// True when thread `pid` has a signal pending that it does not block, or no longer exists.
/// When its status cannot be read for another reason (`/proc` mounted `hidepid=`, a reader
/// of another user), false: the reader keeps waiting (a read timeout still applies) instead
/// of getting a spurious `EINTR` on every read, which retrying programs would spin on.
pub fn signal_pending(pid: u32) -> bool {
    let text = match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(text) => text,
        // Gone, or only hidden (hidepid=2 answers ENOENT too): kill(0) tells them apart.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !alive(pid) => return true,
        Err(e) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "cannot read /proc/{pid}/status ({e}): waiting readers can only be \
                     interrupted by --read-timeout (is /proc mounted with hidepid=?)"
                );
            });
            return false;
        }
    };
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = field("SigPnd:") | field("ShdPnd:");
    pending & !field("SigBlk:") != 0
}

/// True unless no process or thread `pid` exists (`EPERM`: it exists, it is just not ours).
fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Starts the watchdog thread; it ends when the pool shuts down.
pub fn spawn(pool: Arc<Pool>) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("qrypt-watchdog".into())
        .spawn(move || {
            let mut watch = crate::waitwatch::WaitWatch::new();
            while !pool.is_shut_down() {
                let waiting = pool.waiting_reads();
                if waiting.is_empty() {
                    watch.retain(|_| false);
                    pool.wait_for_waiters(Duration::from_secs(1));
                    continue;
                }
                let now = Instant::now();
                let ids: std::collections::HashSet<u64> = waiting.iter().map(|w| w.id).collect();
                watch.retain(|id| ids.contains(&id));
                for w in waiting {
                    if w.deadline.is_some_and(|d| now >= d) {
                        pool.cancel(w.id, ReadError::TimedOut);
                    } else if watch.interrupted(w.id, w.pid, now) {
                        pool.cancel(w.id, ReadError::Interrupted);
                    }
                }
                thread::sleep(CHECK_EVERY);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_thread_has_nothing_pending_and_dead_pid_counts() {
        assert!(!signal_pending(std::process::id()));
        assert!(signal_pending(u32::MAX - 1));
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX - 1));
        // pid 1 exists whoever we are (EPERM for a non-root caller still means alive).
        assert!(alive(1));
    }
}
