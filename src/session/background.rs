//! Going to the background the way FUSE filesystems do: the command returns only once the mount
//! is live (exit 0), or with the daemon's error message (exit 1).
use std::fs::File;
use std::io::{Read, Write};

use nix::unistd::{ForkResult, fork, setsid};

/// The daemon's side of the readiness report.
pub struct Ready {
    pipe: Option<File>,
    /// systemd's notification socket, connected while the process may still reach it (it
    /// runs as another user by the time it is ready).
    notify: Option<std::os::unix::net::UnixDatagram>,
}

/// A datagram socket connected to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
/// namespace), if it is set and reachable.
fn notify_socket() -> Option<std::os::unix::net::UnixDatagram> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let path = std::env::var_os("NOTIFY_SOCKET")?;
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name).ok()?,
        None => SocketAddr::from_pathname(&path).ok()?,
    };
    let sock = UnixDatagram::unbound().ok()?;
    sock.connect_addr(&addr).ok()?;
    Some(sock)
}

impl Ready {
    /// Nothing to report to but systemd, if it watches: we are in the foreground.
    pub fn foreground() -> Ready {
        Ready {
            pipe: None,
            notify: notify_socket(),
        }
    }

    /// The mount is live: release the waiting parent, which prints `warnings` (one a line)
    /// on the terminal it was started from, and tell systemd if it is watching.
    pub fn succeeded(&mut self, warnings: &[String]) {
        if let Some(mut p) = self.pipe.take() {
            let mut report = vec![0u8];
            for w in warnings {
                report.extend_from_slice(w.replace('\n', " ").as_bytes());
                report.push(b'\n');
            }
            let _ = p.write_all(&report);
        }
        match &self.notify {
            Some(sock) => {
                let _ = sock.send(b"READY=1\n");
            }
            None => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
            }
        }
    }

    /// Mounting failed: the parent prints `message` and exits 1.
    pub fn failed(&mut self, message: &str) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(message.as_bytes());
        }
    }
}

/// What the binary runs once this process is the one that serves: after the fork in daemon
/// mode, at once with `-f` (see [`on_serving`]).
static ON_SERVING: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what runs once this process is the one that serves. The binary starts its allocator's
/// background thread there: a thread started before `daemonize` forks would not exist in
/// the child, and the fork is meant to happen before any thread exists.
pub fn on_serving(f: fn()) {
    let _ = ON_SERVING.set(f);
}

/// Runs what [`on_serving`] set, if anything.
pub(crate) fn serving() {
    if let Some(f) = ON_SERVING.get() {
        f();
    }
}

/// Forks. The parent waits for the child's report and exits; only the child returns.
/// Must be called before any thread is started. `keep_stderr`: the child keeps the caller's
/// stderr (the journal's stream, which it logs to) instead of /dev/null.
pub fn daemonize(keep_stderr: bool) -> std::io::Result<Ready> {
    let (read_end, write_end) = nix::unistd::pipe()?;
    // SAFETY: called before any thread is started (app::main forks before it creates the
    // runtime, the signal thread or the FUSE threads), so the child may run arbitrary code.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut msg = Vec::new();
            let _ = File::from(read_end).read_to_end(&mut msg);
            match msg.as_slice() {
                [0, warnings @ ..] => {
                    for w in String::from_utf8_lossy(warnings).lines() {
                        eprintln!("qrypt-fs: warning: {w}");
                    }
                    std::process::exit(0)
                }
                [] => {
                    let _ = nix::sys::wait::waitpid(child, None);
                    eprintln!(
                        "qrypt-fs: the daemon exited before the mount was ready (see its log)"
                    );
                    std::process::exit(1)
                }
                m => {
                    eprintln!("qrypt-fs: {}", String::from_utf8_lossy(m));
                    std::process::exit(1)
                }
            }
        }
        ForkResult::Child => {
            drop(read_end);
            let _ = setsid();
            detach_stdio(keep_stderr);
            Ok(Ready {
                pipe: Some(File::from(write_end)),
                notify: notify_socket(),
            })
        }
    }
}

/// Points stdin/stdout/stderr at /dev/null, so a caller capturing our output sees EOF when the
/// parent exits instead of waiting on the daemon.
fn detach_stdio(keep_stderr: bool) {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        if !keep_stderr {
            let _ = nix::unistd::dup2_stderr(&null);
        }
    }
}

/// Keeps secrets out of core dumps and ptrace by other users: no core files at all.
pub fn harden_process() {
    let _ = nix::sys::prctl::set_dumpable(false);
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    // Like any daemon (daemon(7)): hold nothing the caller opened besides stdio. A listening
    // socket or a pipe someone waits on for EOF must not live on in us. The raw syscall: nix,
    // glibc < 2.34 and musl have no wrapper. ENOSYS (Linux < 5.9): skip.
    // Descriptors systemd passed (LISTEN_FDS, from 3 on: the FUSE descriptor of
    // `qrypt-fs-mount`) are ours, not the caller's: kept.
    let first = 3u32.saturating_add(crate::session::fd_store::passed_count());
    // SAFETY: runs first thing in main, before anything in this process opened a descriptor
    // above 2 that Rust code owns, so closing them all invalidates no OwnedFd or File.
    unsafe {
        libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0u32);
    }
}
