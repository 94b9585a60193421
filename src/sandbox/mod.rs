//! The sandbox each process of qrypt-fs locks itself into: what it may still do, per role.
//!
//! Two roles: the fetcher (the only process that talks to the network and parses what comes
//! back) and the server (serves FUSE, owns pool, budget and state; no network). Each call
//! applies, in this order and irreversibly for the calling process and everything it starts:
//!
//! 1. core dumps off (`RLIMIT_CORE` 0, not dumpable: also no same-uid `ptrace`), no
//!    write-then-execute memory (`PR_SET_MDWE`);
//! 2. no capability in any set (bounding set too, where `CAP_SETPCAP` allows), `no_new_privs`;
//! 3. Landlock: the files it may read or write, the TCP ports it may connect to, and no signal
//!    or abstract unix socket outside its own domain;
//! 4. a seccomp allow-list: any other system call kills the whole process (`SIGSYS`).
//!
//! Landlock and capabilities hold per thread, so both calls refuse to run once the process has
//! a second thread: call them before the tokio runtime, the FUSE session's threads or the
//! allocator's background thread exist (jemalloc: `background_thread:false` in its
//! `malloc_conf`, turned on after the sandbox), and after any uid change, which they forbid.
//! What the kernel lacks is skipped and named in the [`SandboxReport`].
//!
//! Everything applied is inherited by every child, across `execve` too: a process started
//! by the server runs under the server's filter (no network sockets), so the fetcher must be
//! started by a parent that applied neither (forked before [`apply_server`], or a supervisor),
//! and then apply [`apply_fetcher`] itself.
mod landlock_rules;
mod privileges;
mod syscalls;

use std::fmt;
use std::path::PathBuf;

/// What the fetcher may do besides computing and talking over descriptors it holds.
#[derive(Debug, Clone)]
pub struct FetcherPolicy {
    /// The only TCP ports it may connect to (the endpoint's; a proxy's if one is used).
    pub tcp_ports: Vec<u16>,
    /// Files it may read: what name resolution reads. Missing ones are skipped.
    pub read_files: Vec<PathBuf>,
}

impl FetcherPolicy {
    /// Connects only to `port`; reads only what glibc's name resolution reads
    /// ([`RESOLVER_FILES`] and the NSS modules installed).
    pub fn new(port: u16) -> Self {
        let mut read_files: Vec<PathBuf> = RESOLVER_FILES.iter().map(PathBuf::from).collect();
        read_files.extend(landlock_rules::nss_modules());
        FetcherPolicy {
            tcp_ports: vec![port],
            read_files,
        }
    }
}

/// What glibc's `getaddrinfo` reads. DNS itself goes over UDP to the servers named in
/// resolv.conf (Landlock has no UDP rules); a reply too large for UDP would retry over TCP
/// port 53, which a fetcher may connect to only if its policy lists that port.
pub const RESOLVER_FILES: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
];

/// What the server may touch on the file system after start.
#[derive(Debug, Clone, Default)]
pub struct ServerPolicy {
    /// `--state-dir`: read, write, create, rename and remove beneath it.
    pub state_dir: Option<PathBuf>,
    /// `--log-file`: append to it (already open; the rule keeps a re-open working).
    pub log_file: Option<PathBuf>,
    /// Read only: the token file, the CA file. A directory grants everything beneath it (a
    /// token replaced by rename stays readable only if its directory is listed).
    pub read_only: Vec<PathBuf>,
    /// `/proc`, read only: waiting readers' signals and what kind of task each reader is.
    pub proc: bool,
    /// `/dev/fuse`: read, write and its clone ioctl, for the FUSE threads' own descriptors.
    pub fuse_device: bool,
    /// A program the server may start: `execve` is then allowed, and Landlock lets it execute
    /// this one file only. The program inherits this sandbox (so it cannot be the fetcher,
    /// which needs network sockets). None: no `execve` at all.
    pub exec: Option<PathBuf>,
    /// Signals only to processes started after the sandbox (Landlock scoping): the fetcher it
    /// starts itself stays in reach, any other process does not.
    pub scope_signals: bool,
}

impl ServerPolicy {
    /// The server's usual policy: its state dir and log file, the token and CA files read
    /// only, `/proc`, `/dev/fuse`, no program to start, signals scoped.
    pub fn new(
        state_dir: Option<PathBuf>,
        log_file: Option<PathBuf>,
        read_only: Vec<PathBuf>,
    ) -> Self {
        ServerPolicy {
            state_dir,
            log_file,
            read_only,
            proc: true,
            fuse_device: true,
            exec: None,
            scope_signals: true,
        }
    }
}

/// What the sandbox enforces: `full`, or `partial (what is missing)` for `/status` and the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxReport {
    /// Each mechanism the kernel (or the process's privileges) did not allow, in words.
    pub missing: Vec<String>,
    /// The Landlock ABI in use (0: none).
    pub landlock_abi: u32,
    /// How many system calls the seccomp allow-list names.
    pub allowed_syscalls: usize,
}

impl SandboxReport {
    /// Everything asked for is enforced.
    pub fn is_full(&self) -> bool {
        self.missing.is_empty()
    }
}

impl fmt::Display for SandboxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.missing.is_empty() {
            f.write_str("full")
        } else {
            write!(f, "partial ({})", self.missing.join(", "))
        }
    }
}

/// Why a sandbox could not be applied; the process must then not go on.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Landlock and capabilities would cover only the calling thread.
    #[error("the sandbox must be applied while the process has one thread (it has {0})")]
    Threads(usize),
    /// The thread count could not be read.
    #[error("cannot count the process's threads: {0}")]
    ThreadCount(std::io::Error),
    /// A privilege could not be dropped.
    #[error("cannot drop {what}: {source}")]
    Privilege {
        /// What was being dropped.
        what: &'static str,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// Landlock refused the rules (not: Landlock missing, which the report names).
    #[error("landlock: {0}")]
    Landlock(String),
    /// The seccomp filter could not be built or loaded.
    #[error("seccomp: {0}")]
    Seccomp(String),
}

/// Locks the calling (single-threaded) process into the fetcher's sandbox.
pub fn apply_fetcher(policy: &FetcherPolicy) -> Result<SandboxReport, SandboxError> {
    let mut report = SandboxReport::default();
    privileges::drop_all(&mut report)?;
    landlock_rules::apply_fetcher(policy, &mut report)?;
    let filters = syscalls::fetcher_filter()?;
    report.allowed_syscalls = filters.allowed;
    syscalls::apply(&filters)?;
    Ok(report)
}

/// Locks the calling (single-threaded) spawner: the fetcher's allow-list plus forking,
/// reaping, and what a new fetcher needs to close its own sandbox (see
/// `syscalls::spawner_filter`). No Landlock of its own: its fetchers add theirs.
pub fn apply_spawner() -> Result<SandboxReport, SandboxError> {
    let mut report = SandboxReport::default();
    privileges::drop_all(&mut report)?;
    let filters = syscalls::spawner_filter()?;
    report.allowed_syscalls = filters.allowed;
    syscalls::apply(&filters)?;
    Ok(report)
}

/// Locks the calling (single-threaded) process into the server's sandbox.
pub fn apply_server(policy: &ServerPolicy) -> Result<SandboxReport, SandboxError> {
    let mut report = SandboxReport::default();
    privileges::drop_all(&mut report)?;
    landlock_rules::apply_server(policy, &mut report)?;
    let filters = syscalls::server_filter(policy.exec.is_some())?;
    report.allowed_syscalls = filters.allowed;
    syscalls::apply(&filters)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_says_full_or_names_what_is_missing() {
        let mut r = SandboxReport::default();
        assert_eq!(r.to_string(), "full");
        r.missing.push("landlock (not enabled)".into());
        r.missing.push("mdwe".into());
        assert_eq!(r.to_string(), "partial (landlock (not enabled), mdwe)");
        assert!(!r.is_full());
    }
}
