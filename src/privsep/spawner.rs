//! The spawner: a small single-threaded process, forked before the server starts any thread,
//! that forks a fresh fetcher whenever the server asks and reports how the last one ended.
//!
//! The server cannot start processes itself (its sandbox forbids `execve`, and `fork` in a
//! process with threads may copy a lock held by another thread). The spawner drops to the
//! unprivileged user at once and closes its own seccomp sandbox (the fetcher's list plus
//! forking and reaping), reads nothing but one-byte requests from the server, and each
//! fetcher it forks shares nothing with the server but its own end of a new socketpair, sent
//! back to the server with `SCM_RIGHTS`.
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, socketpair};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use parking_lot::Mutex;

use super::user::Ids;

const SPAWN: u8 = b'S';
const REAP: u8 = b'R';
/// How long a fetcher that closed its channel may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// The server's handle on its spawner.
pub struct Spawner {
    sock: Mutex<OwnedFd>,
}

impl Spawner {
    /// Forks the spawner. Must be called before the process starts any thread. `ids`: the
    /// unprivileged user it (and every fetcher) runs as when started as root.
    pub fn fork(ids: Option<&Ids>) -> std::io::Result<Spawner> {
        let sock = super::fork_helper(|fd, server| {
            match super::become_child(c"qrypt-spawner", server, ids)
                .and_then(|()| crate::sandbox::apply_spawner().map_err(std::io::Error::other))
            {
                Ok(_) => serve(fd),
                Err(_) => 1,
            }
        })?;
        Ok(Spawner {
            sock: Mutex::new(sock),
        })
    }

    /// Asks for a new fetcher: its pid and the server's end of its channel (blocking, brief).
    pub fn spawn(&self) -> std::io::Result<(i32, OwnedFd)> {
        let sock = self.sock.lock();
        nix::sys::socket::send(sock.as_raw_fd(), &[SPAWN], MsgFlags::empty())?;
        let mut buf = [0u8; 5];
        let (n, fd) = super::recv_with_fd(&sock, &mut buf)?;
        match (n, buf[0], fd) {
            (5, SPAWN, Some(fd)) => {
                let pid = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
                Ok((pid, fd))
            }
            (0, ..) => Err(std::io::Error::other("the spawner is gone")),
            _ => Err(std::io::Error::other(
                "the spawner could not fork a fetcher",
            )),
        }
    }

    /// Waits for fetcher `pid` to end (killing it if it does not go within a moment) and says
    /// how it ended.
    pub fn reap(&self, pid: i32) -> std::io::Result<String> {
        let sock = self.sock.lock();
        let mut req = [REAP, 0, 0, 0, 0];
        req[1..].copy_from_slice(&pid.to_le_bytes());
        nix::sys::socket::send(sock.as_raw_fd(), &req, MsgFlags::empty())?;
        let mut buf = [0u8; 256];
        let n = nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        match buf[..n].split_first() {
            Some((&REAP, text)) => Ok(super::protocol::printable(text)),
            _ => Err(std::io::Error::other("the spawner is gone")),
        }
    }
}

/// The spawner's loop: one request at a time until the server's end closes.
fn serve(sock: OwnedFd) -> i32 {
    let mut buf = [0u8; 16];
    loop {
        let n = match nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => return 0,
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        };
        let reply = match (buf[0], n) {
            (SPAWN, 1) => match spawn_fetcher(&sock) {
                Ok(()) => continue,
                Err(e) => format!("E{e}").into_bytes(),
            },
            (REAP, 5) => {
                let pid = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
                let mut r = vec![REAP];
                r.extend_from_slice(reap(Pid::from_raw(pid)).as_bytes());
                r
            }
            _ => return 1,
        };
        if nix::sys::socket::send(sock.as_raw_fd(), &reply, MsgFlags::empty()).is_err() {
            return 1;
        }
    }
}

/// Forks a fetcher and sends the server its pid and its channel.
fn spawn_fetcher(sock: &OwnedFd) -> nix::Result<()> {
    let (server_end, fetcher_end) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // Room for a whole 512 KiB answer in flight between the two (the kernel caps it at
    // net.core.wmem_max / rmem_max), so the fetcher's write rarely waits for the server's read.
    for fd in [&server_end, &fetcher_end] {
        let _ = nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::SndBuf, &(2 << 20));
        let _ = nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::RcvBuf, &(2 << 20));
    }
    let spawner = nix::unistd::getpid();
    // SAFETY: the spawner is single-threaded, so the child may run arbitrary code; it never
    // returns into the spawner's loop.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(fetcher_end);
            let mut msg = [SPAWN, 0, 0, 0, 0];
            msg[1..].copy_from_slice(&child.as_raw().to_le_bytes());
            super::send_with_fd(sock, &msg, &server_end)
        }
        ForkResult::Child => {
            drop(server_end);
            let fd = super::keep_only(fetcher_end);
            // Already unprivileged (the spawner dropped before forking): only the name and
            // the tie to the parent are set again.
            let code = match super::become_child(c"qrypt-fetcher", spawner, None) {
                Ok(()) => super::fetcher::main(fd),
                Err(_) => 1,
            };
            // SAFETY: ends the child without running destructors of the spawner's state.
            unsafe { libc::_exit(code) }
        }
    }
}

/// Waits for `pid` (up to [`EXIT_GRACE`], then kills it) and describes its end.
fn reap(pid: Pid) -> String {
    let deadline = Instant::now() + EXIT_GRACE;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(WaitStatus::StillAlive) => {
                let _ = kill(pid, Signal::SIGKILL);
                return match waitpid(pid, None) {
                    Ok(s) => format!("{} after it closed its channel", describe(s)),
                    Err(e) => format!("not reaped: {e}"),
                };
            }
            Ok(s) => return describe(s),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return format!("not reaped: {e}"),
        }
    }
}

/// How a process ended, e.g. `exited with status 1` or `killed by signal 9 (SIGKILL)`.
pub fn describe(s: WaitStatus) -> String {
    match s {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, _) => {
            format!("killed by signal {} ({})", sig as i32, sig.as_str())
        }
        other => format!("ended ({other:?})"),
    }
}
