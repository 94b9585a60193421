//! The supervisor: the one process that keeps a privilege after the mount exists, to undo the
//! mount. It is forked before the server starts any thread, holds no network socket, reads
//! nothing from the upstream or the fetcher, and keeps at most `CAP_SYS_ADMIN`. It unmounts
//! when the server asks (its orderly stop) and when the server dies (its end of the socketpair
//! closes), so a killed server leaves no dead mount behind. It also reads the one token file
//! named at start for the server, which runs as a user that may not (`--token-file` rotation):
//! the server cannot name another file.
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, socketpair};
use parking_lot::Mutex;
use zeroize::Zeroizing;

use crate::session::mount::{Unmounted, unmount_here};
use crate::upstream::token::{KINDS, MAX_TOKEN_FILE_BYTES, TokenError, read_file_here};

const UNMOUNT: u8 = b'U';
const TOKEN: u8 = b'T';
/// A token read's answers: the bytes follow; an I/O error (errno follows); a refusal.
const TOKEN_OK: u8 = 0;
const TOKEN_IO: u8 = 1;
const TOKEN_NOT_REGULAR: u8 = 2;
const TOKEN_TOO_LARGE: u8 = 3;
const TOKEN_SYMLINKS: u8 = 4;
/// The answers: unmounted, or detached lazily / failed (the FUSE session ends later).
const DONE: u8 = b'D';
const PENDING: u8 = b'P';

/// The server's handle on its supervisor.
pub struct Supervisor {
    sock: Mutex<OwnedFd>,
}

impl Supervisor {
    /// Forks the supervisor of the mount at `mountpoint`; `None` when the mount is not ours to
    /// undo (a descriptor the service manager handed over: its `ExecStopPost` unmounts), so
    /// the supervisor keeps no capability and only reads the token file. Must be called
    /// before the process starts any thread.
    pub fn fork(
        mountpoint: Option<&Path>,
        token_file: Option<&Path>,
    ) -> std::io::Result<Supervisor> {
        let mountpoint = mountpoint.map(Path::to_owned);
        let token_file = token_file.map(Path::to_owned);
        let sock = super::fork_helper(move |fd, server| serve(fd, server, mountpoint, token_file))?;
        Ok(Supervisor {
            sock: Mutex::new(sock),
        })
    }

    /// The token file's bytes, as the supervisor read them (see the module's documentation).
    /// Each read has a socketpair of its own, answered by a thread of the supervisor's, so a
    /// read stuck on a hung filesystem holds up neither the next read nor the unmount.
    pub fn read_token(&self, path: &Path) -> Result<Zeroizing<Vec<u8>>, TokenError> {
        let gone = || TokenError::Read {
            path: path.to_owned(),
            source: std::io::Error::other("the supervisor is gone"),
        };
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|_| gone())?;
        {
            let sock = self.sock.lock();
            super::send_with_fd(&sock, &[TOKEN], &theirs).map_err(|_| gone())?;
        }
        drop(theirs);
        let mut buf = Zeroizing::new(vec![0u8; MAX_TOKEN_FILE_BYTES + 2]);
        let n = nix::sys::socket::recv(ours.as_raw_fd(), &mut buf, MsgFlags::empty())
            .map_err(|_| gone())?;
        let path = path.to_owned();
        match buf[..n].split_first() {
            Some((&TOKEN_OK, text)) => Ok(Zeroizing::new(text.to_vec())),
            Some((&TOKEN_IO, errno)) if errno.len() == 4 => Err(TokenError::Read {
                path,
                source: std::io::Error::from_raw_os_error(i32::from_le_bytes([
                    errno[0], errno[1], errno[2], errno[3],
                ])),
            }),
            Some((&TOKEN_NOT_REGULAR, [k])) => Err(TokenError::NotRegular {
                path,
                kind: KINDS
                    .get(usize::from(*k))
                    .copied()
                    .unwrap_or("not a regular file"),
            }),
            Some((&TOKEN_TOO_LARGE, _)) => Err(TokenError::TooLarge { path }),
            Some((&TOKEN_SYMLINKS, _)) => Err(TokenError::SymlinkChain { path }),
            _ => Err(gone()),
        }
    }

    /// Unmounts (lazily if busy): whether the mount is gone at once, and the lines for the
    /// log of what the supervisor did.
    pub fn unmount(&self) -> (Unmounted, Vec<String>) {
        let failed = |why: &str| {
            (
                Unmounted::Pending,
                vec![format!("unmount failed: the supervisor {why}")],
            )
        };
        let sock = self.sock.lock();
        if nix::sys::socket::send(sock.as_raw_fd(), &[UNMOUNT], MsgFlags::empty()).is_err() {
            return failed("is gone");
        }
        let mut buf = [0u8; 4096];
        match nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) if n >= 1 && matches!(buf[0], DONE | PENDING) => {
                let how = if buf[0] == DONE {
                    Unmounted::Done
                } else {
                    Unmounted::Pending
                };
                let notes = String::from_utf8_lossy(&buf[1..n])
                    .lines()
                    .map(str::to_owned)
                    .collect();
                (how, notes)
            }
            _ => failed("did not answer"),
        }
    }
}

/// The supervisor's life: wait for a request or the server's end, unmount, answer.
fn serve(
    sock: OwnedFd,
    server: nix::unistd::Pid,
    mountpoint: Option<PathBuf>,
    token_file: Option<PathBuf>,
) -> i32 {
    let _ = nix::sys::prctl::set_name(c"qrypt-superv");
    // The signals a terminal or a service manager sends the whole group are the server's to
    // act on; the supervisor stays until the server is gone and the mount with it.
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    if super::user::keep_only_sys_admin(mountpoint.is_some()).is_err() {
        return 1;
    }
    if nix::unistd::getppid() != server {
        unmount_gone(&mountpoint);
        return 0;
    }
    let token_file = std::sync::Arc::new(token_file);
    let mut buf = [0u8; 8];
    loop {
        let (n, fd) = match super::recv_with_fd(&sock, &mut buf) {
            Ok(got) => got,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => (0, None),
        };
        match (n, fd) {
            (1, Some(reply)) if buf[0] == TOKEN => {
                let path = token_file.clone();
                // A thread per read: a hung filesystem holds up only that read.
                let _ = std::thread::Builder::new().spawn(move || {
                    let answer = read_token(path.as_deref());
                    let _ = nix::sys::socket::send(reply.as_raw_fd(), &answer, MsgFlags::empty());
                });
            }
            (1, None) if buf[0] == UNMOUNT => {
                let (how, notes) = match &mountpoint {
                    Some(m) => unmount_here(m),
                    None => (Unmounted::Pending, Vec::new()),
                };
                let mut answer = vec![if how == Unmounted::Done {
                    DONE
                } else {
                    PENDING
                }];
                answer.extend_from_slice(notes.join("\n").as_bytes());
                answer.truncate(4096);
                let _ = nix::sys::socket::send(sock.as_raw_fd(), &answer, MsgFlags::empty());
            }
            // The server is gone (or broke the protocol): undo the mount and end.
            _ => {
                unmount_gone(&mountpoint);
                return 0;
            }
        }
    }
}

/// The answer to a token request: the file named at start, read with the usual checks.
fn read_token(path: Option<&Path>) -> Zeroizing<Vec<u8>> {
    let Some(path) = path else {
        return Zeroizing::new(vec![TOKEN_IO, 0, 0, 0, 0]);
    };
    match read_file_here(path) {
        Ok(text) => {
            let mut out = Zeroizing::new(Vec::with_capacity(text.len() + 1));
            out.push(TOKEN_OK);
            out.extend_from_slice(&text);
            out
        }
        Err(TokenError::Read { source, .. }) => {
            let mut out = vec![TOKEN_IO];
            out.extend_from_slice(&source.raw_os_error().unwrap_or(libc::EIO).to_le_bytes());
            Zeroizing::new(out)
        }
        Err(TokenError::NotRegular { kind, .. }) => {
            let k = KINDS
                .iter()
                .position(|x| *x == kind)
                .unwrap_or(KINDS.len() - 1);
            Zeroizing::new(vec![TOKEN_NOT_REGULAR, k as u8])
        }
        Err(TokenError::TooLarge { .. }) => Zeroizing::new(vec![TOKEN_TOO_LARGE]),
        Err(_) => Zeroizing::new(vec![TOKEN_SYMLINKS]),
    }
}

/// After the server's end: unmount if our filesystem is still mounted there (a dead FUSE
/// mount answers ENOTCONN to everyone until it is).
fn unmount_gone(mountpoint: &Option<PathBuf>) {
    if let Some(mountpoint) = mountpoint.as_deref()
        && crate::session::run::is_fuse_mount(mountpoint)
    {
        let _ = unmount_here(mountpoint);
    }
}
