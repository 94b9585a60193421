//! The supervisor: the one process that keeps a privilege after the mount exists, and only to
//! undo the mount. It is forked before the server starts any thread, holds no network socket,
//! reads nothing from the upstream or the fetcher, and keeps at most `CAP_SYS_ADMIN`. It
//! unmounts when the server asks (its orderly stop) and when the server dies (its end of the
//! socketpair closes), so a killed server leaves no dead mount behind.
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, socketpair};
use nix::unistd::{ForkResult, fork};
use parking_lot::Mutex;

const UNMOUNT: u8 = b'U';
/// The answers: unmounted, or detached lazily / failed (the FUSE session ends later).
const DONE: u8 = b'D';
const PENDING: u8 = b'P';

/// The server's handle on its supervisor.
pub struct Supervisor {
    sock: Mutex<OwnedFd>,
}

impl Supervisor {
    /// Forks the supervisor of the mount at `mountpoint`. Must be called before the process
    /// starts any thread.
    pub fn fork(mountpoint: &Path) -> std::io::Result<Supervisor> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let server = nix::unistd::getpid();
        let mountpoint = mountpoint.to_owned();
        // SAFETY: called before any thread exists (see `super::start`), so the child may run
        // arbitrary code; it never returns into the caller's code.
        match unsafe { fork() }? {
            ForkResult::Parent { .. } => {
                drop(theirs);
                Ok(Supervisor {
                    sock: Mutex::new(ours),
                })
            }
            ForkResult::Child => {
                drop(ours);
                let fd = super::keep_only(theirs);
                let code = serve(fd, server, mountpoint);
                // SAFETY: ends the child without running the server's destructors.
                unsafe { libc::_exit(code) }
            }
        }
    }

    /// Unmounts (lazily if busy); true when the mount is gone at once.
    pub fn unmount(&self) -> bool {
        let sock = self.sock.lock();
        if nix::sys::socket::send(sock.as_raw_fd(), &[UNMOUNT], MsgFlags::empty()).is_err() {
            return false;
        }
        let mut buf = [0u8; 1];
        matches!(
            nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()),
            Ok(1) if buf[0] == DONE
        )
    }
}

/// The supervisor's life: wait for a request or the server's end, unmount, answer.
fn serve(sock: OwnedFd, server: nix::unistd::Pid, mountpoint: PathBuf) -> i32 {
    let _ = nix::sys::prctl::set_name(c"qrypt-superv");
    // The signals a terminal or a service manager sends the whole group are the server's to
    // act on; the supervisor stays until the server is gone and the mount with it.
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    if super::user::keep_only_sys_admin().is_err() {
        return 1;
    }
    if nix::unistd::getppid() != server {
        unmount_gone(&mountpoint);
        return 0;
    }
    let mut buf = [0u8; 8];
    loop {
        match nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(1) if buf[0] == UNMOUNT => {
                let done = crate::session::mount::unmount_here(&mountpoint)
                    == crate::session::mount::Unmounted::Done;
                let answer = if done { DONE } else { PENDING };
                let _ = nix::sys::socket::send(sock.as_raw_fd(), &[answer], MsgFlags::empty());
            }
            Err(nix::errno::Errno::EINTR) => {}
            // The server is gone (or broke the protocol): undo the mount and end.
            _ => {
                unmount_gone(&mountpoint);
                return 0;
            }
        }
    }
}

/// After the server's end: unmount if our filesystem is still mounted there (a dead FUSE
/// mount answers ENOTCONN to everyone until it is).
fn unmount_gone(mountpoint: &Path) {
    if crate::session::run::is_fuse_mount(mountpoint) {
        let _ = crate::session::mount::unmount_here(mountpoint);
    }
}
