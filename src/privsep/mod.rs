//! Privilege separation: the processes a mount runs as, and how they are started and tied.
//!
//! - the **server** (the process started) serves FUSE and owns the pool, the budget, the health
//!   tests, the upstream's state machine and the pacer. After the mount exists it becomes an
//!   unprivileged user ([`user`]) and opens no network socket;
//! - the **fetcher** ([`fetcher`]) is the only process that talks to the network (TLS, HTTP,
//!   JSON, base64). It gets the token and CA certificates over its channel ([`protocol`]) and
//!   needs no file; the server's [`client::FetcherClient`] treats all it sends as untrusted and
//!   starts a new one when it dies;
//! - the **spawner** ([`spawner`]) forks fetchers on request (the server forks nothing once it
//!   has threads); unprivileged from its start;
//! - the **supervisor** ([`supervisor`]) keeps `CAP_SYS_ADMIN` only, to unmount when the server
//!   ends, however it ends.
//!
//! The spawner and the supervisor are forked by [`start`] before the server starts any thread,
//! and each forked process keeps only its own socket.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, OnceLock};

pub mod client;
pub mod fetcher;
pub mod protocol;
pub mod spawner;
pub mod supervisor;
pub mod user;

use spawner::Spawner;
use supervisor::Supervisor;
use user::Ids;

/// The helper processes of one mount, seen from the server.
pub struct Helpers {
    pub spawner: Arc<Spawner>,
}

/// The mount's supervisor, once started: `session::mount` unmounts through it.
static SUPERVISOR: OnceLock<Supervisor> = OnceLock::new();

/// The supervisor, if this process started one.
pub fn supervisor() -> Option<&'static Supervisor> {
    SUPERVISOR.get()
}

/// Forks the supervisor (for `mountpoint`, if the mount is ours to undo) and the spawner (which drops to `ids` at once).
/// Must be called before the process starts any thread, and before logging is set up (the
/// children log nothing: the fetcher has no descriptor to log to).
///
/// When the processes change user, `token_file` (if any) is from then on read through the
/// supervisor, which may still open it.
pub fn start(
    mountpoint: Option<&Path>,
    token_file: Option<&Path>,
    ids: Option<&Ids>,
) -> std::io::Result<Helpers> {
    let sup = Supervisor::fork(mountpoint, token_file)?;
    let _ = SUPERVISOR.set(sup);
    if let (Some(path), Some(_)) = (token_file, ids) {
        let owned = path.to_owned();
        crate::upstream::token::set_file_reader(
            path.to_owned(),
            Box::new(move || match supervisor() {
                Some(s) => s.read_token(&owned),
                None => crate::upstream::token::read_file_here(&owned),
            }),
        );
    }
    let spawner = Spawner::fork(ids)?;
    Ok(Helpers {
        spawner: Arc::new(spawner),
    })
}

/// Sends `bytes` on a SEQPACKET socket with `fd` attached (`SCM_RIGHTS`).
fn send_with_fd(sock: &OwnedFd, bytes: &[u8], fd: &OwnedFd) -> nix::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let fds = [fd.as_raw_fd()];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[std::io::IoSlice::new(bytes)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// Receives one message into `buf`, and the descriptor sent with it, if one was (any further
/// ones are closed).
fn recv_with_fd(sock: &OwnedFd, buf: &mut [u8]) -> nix::Result<(usize, Option<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for f in fds {
                // SAFETY: the kernel just installed this descriptor for us; nothing else owns
                // it.
                let owned = unsafe { OwnedFd::from_raw_fd(f) };
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
        }
    }
    Ok((msg.bytes, fd))
}

/// Forks a helper joined to this process by a `SOCK_SEQPACKET` socketpair and returns this
/// side's end. The child keeps only its own end (as descriptor 3), runs `child` with it and
/// this process's pid, and exits with what `child` returns. Must be called before the process
/// starts any thread.
fn fork_helper(child: impl FnOnce(OwnedFd, nix::unistd::Pid) -> i32) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let parent = nix::unistd::getpid();
    // SAFETY: called before any thread exists (see `start`), so the child may run arbitrary
    // code; it never returns into the caller's code.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(theirs);
            Ok(ours)
        }
        nix::unistd::ForkResult::Child => {
            drop(ours);
            let code = child(keep_only(theirs), parent);
            // SAFETY: ends the child without running the parent's atexit handlers or the
            // destructors of state it copied.
            unsafe { libc::_exit(code) }
        }
    }
}

/// In a forked child: moves `fd` to descriptor 3 and closes every other one above 2, so the
/// child holds nothing of its parent's (budget files, the log, the FUSE device, other
/// channels). Returns the moved descriptor.
fn keep_only(fd: OwnedFd) -> OwnedFd {
    let raw = fd.as_raw_fd();
    let fd = if raw == 3 {
        fd
    } else {
        // SAFETY: dup2 onto descriptor 3 replaces whatever was there; nothing in this freshly
        // forked child uses descriptor 3 except through the OwnedFd created here.
        let r = unsafe { libc::dup2(raw, 3) };
        drop(fd);
        if r != 3 {
            // SAFETY: ends the child at once; it has nothing to clean up.
            unsafe { libc::_exit(1) }
        }
        // SAFETY: descriptor 3 was just made a copy of our socket and nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(3) }
    };
    // SAFETY: closes every descriptor above 3; in this child no Rust object owns any of them
    // (they are the parent's, copied by fork), so no OwnedFd or File is invalidated.
    unsafe {
        libc::syscall(libc::SYS_close_range, 4u32, libc::c_uint::MAX, 0u32);
    }
    fd
}

/// In a forked spawner or fetcher: its name in `ps`, the user it becomes (if `ids`), stdio
/// pointed at /dev/null (a fetcher must not write into the server's terminal or log), and
/// death with its parent.
fn become_child(
    name: &std::ffi::CStr,
    parent: nix::unistd::Pid,
    ids: Option<&Ids>,
) -> std::io::Result<()> {
    let _ = nix::sys::prctl::set_name(name);
    // A terminal's Ctrl-C or hang-up is for the server to act on; these die with it.
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn) };
    }
    null_stdio()?;
    match ids {
        Some(ids) => user::drop_now(ids)?,
        None => user::no_new_privs()?,
    }
    // Set after the uid change, which clears it; then the parent's death is checked once,
    // in case it came first.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    if nix::unistd::getppid() != parent {
        return Err(std::io::Error::other("parent gone"));
    }
    Ok(())
}

fn null_stdio() -> std::io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&null)?;
    Ok(())
}

/// The fetcher's sandbox (see [`crate::sandbox`]): TCP only to the endpoint's `port`, files
/// only what name resolution reads, no `execve`, signals only within. Applied before the
/// fetcher reads anything from the network; returns its report.
pub(crate) fn sandbox_fetcher(port: u16) -> anyhow::Result<String> {
    let report = crate::sandbox::apply_fetcher(&crate::sandbox::FetcherPolicy::new(port))?;
    Ok(report.to_string())
}

/// The server's sandbox, applied right after the privilege drop, before any thread starts:
/// no network socket, writes only in `state_dir` and the log file, reads only `read_only`
/// (the token file, the CA file), `/proc` and `/dev/fuse`. Returns its report for `/status`.
pub fn sandbox_server(
    state_dir: Option<std::path::PathBuf>,
    log_file: Option<std::path::PathBuf>,
    read_only: Vec<std::path::PathBuf>,
) -> anyhow::Result<String> {
    let policy = crate::sandbox::ServerPolicy::new(state_dir, log_file, read_only);
    let report = crate::sandbox::apply_server(&policy)?;
    Ok(report.to_string())
}
