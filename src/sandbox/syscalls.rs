//! The seccomp allow-list of each role: one table per role, any other system call kills.
//!
//! Found by tracing the daemon through the integration tests against the emulator
//! (`strace -f`, every thread: tokio, hyper, rustls, fuser, jemalloc's background thread,
//! glibc's resolver); `tests/integration/sandbox.rs` runs each role's real work under it.
use super::SandboxError;
use libc::{c_long, c_ulong};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// A system call and the argument checks that let it through (none: always).
type Entry = (c_long, Vec<SeccompRule>);

/// Both roles: what any thread of a Rust program on glibc does.
fn common() -> Vec<c_long> {
    let mut v = vec![
        // Memory: jemalloc (and its background thread's purging), thread stacks, the
        // mlocked pool. PR_SET_MDWE keeps writable memory from becoming executable.
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_mlock,
        libc::SYS_mlock2,
        libc::SYS_munlock,
        // Threads (clone's flags are checked apart) and waiting on each other.
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_set_tid_address,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_exit,
        libc::SYS_exit_group,
        // Signal handling (sending is checked apart).
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_restart_syscall,
        // Clocks and sleeping (the vDSO answers most clock reads without a system call).
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_gettimeofday,
        // Descriptors already open: data, flags, metadata, duplication.
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_close,
        libc::SYS_fcntl,
        libc::SYS_lseek,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_pipe2,
        // Opening by path: Landlock decides which paths.
        libc::SYS_openat,
        libc::SYS_faccessat,
        libc::SYS_faccessat2,
        libc::SYS_readlinkat,
        libc::SYS_getdents64,
        libc::SYS_statfs,
        libc::SYS_fstatfs,
        // Waiting for readiness: tokio's epoll, the eventfd that wakes it, poll(2).
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_eventfd2,
        libc::SYS_ppoll,
        // Sockets already open: the channel between the processes, syslog, HTTPS; a pair of
        // its own (unix sockets reach nothing outside the process).
        libc::SYS_socketpair,
        libc::SYS_sendto,
        libc::SYS_recvfrom,
        libc::SYS_sendmsg,
        libc::SYS_recvmsg,
        libc::SYS_shutdown,
        libc::SYS_getsockname,
        libc::SYS_getpeername,
        libc::SYS_getsockopt,
        libc::SYS_setsockopt,
        // Randomness, who we are, what the machine is.
        libc::SYS_getrandom,
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        libc::SYS_getresuid,
        libc::SYS_getresgid,
        libc::SYS_getgroups,
        libc::SYS_sysinfo,
        libc::SYS_uname,
        libc::SYS_getpriority,
        libc::SYS_capget,
    ];
    // x86_64's older names for the same calls (std and glibc still use some there).
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_open,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_access,
        libc::SYS_readlink,
        libc::SYS_poll,
        libc::SYS_epoll_wait,
        libc::SYS_dup2,
        libc::SYS_pipe,
        libc::SYS_arch_prctl,
    ]);
    v
}

/// The fetcher's own: sockets to the network and glibc's resolver.
fn fetcher_only() -> Vec<c_long> {
    vec![
        // TCP to the endpoint (Landlock picks the port), DNS over UDP, netlink's address
        // list (getaddrinfo's sorting binds a netlink socket); no listen, no accept.
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_sendmmsg,
        libc::SYS_recvmmsg,
    ]
}

/// The server's own: its files, the readers it watches, the FUSE threads' priority.
fn server_only() -> Vec<c_long> {
    let mut v = vec![
        // The budget's and the journal's files: locked, written, synced, renamed into place.
        libc::SYS_flock,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_ftruncate,
        libc::SYS_fchmod,
        libc::SYS_linkat,
        libc::SYS_renameat,
        libc::SYS_renameat2,
        libc::SYS_unlinkat,
        libc::SYS_mkdirat,
        // A waiting reader's task, pinned by a pidfd.
        libc::SYS_pidfd_open,
        // The FUSE threads' priority (LimitNICE), the fetcher it starts and reaps.
        libc::SYS_setpriority,
        libc::SYS_kill,
        libc::SYS_tgkill,
        libc::SYS_tkill,
        libc::SYS_wait4,
        libc::SYS_waitid,
        // syslog's /dev/log (socket() itself only for AF_UNIX).
        libc::SYS_connect,
        // Unmounting: refused without CAP_SYS_ADMIN, and said so, rather than a kill.
        libc::SYS_umount2,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([libc::SYS_rename, libc::SYS_unlink, libc::SYS_mkdir]);
    v
}

/// `prctl` options: thread names, and reading what was set.
const PRCTL_OPTIONS: &[c_ulong] = &[
    libc::PR_SET_NAME as c_ulong,
    libc::PR_GET_NAME as c_ulong,
    libc::PR_GET_DUMPABLE as c_ulong,
    libc::PR_GET_NO_NEW_PRIVS as c_ulong,
    libc::PR_CAPBSET_READ as c_ulong,
    libc::PR_SET_VMA as c_ulong,
];

/// `ioctl` requests: is this a terminal (logging), non-blocking and close-on-exec flags.
const IOCTL_COMMON: &[c_ulong] = &[
    libc::TCGETS as c_ulong,
    libc::FIONBIO as c_ulong,
    libc::FIOCLEX as c_ulong,
    libc::FIONCLEX as c_ulong,
    libc::FIONREAD as c_ulong,
];

/// The server's extra `ioctl`s: each FUSE thread clones its `/dev/fuse` descriptor; a
/// reader's parent from its pidfd.
const IOCTL_SERVER: &[c_ulong] = &[
    0x8004_e500, // FUSE_DEV_IOC_CLONE: _IOR(229, 0, uint32_t)
    0xc050_4b0b, // PIDFD_GET_INFO: _IOWR(0xFF, 11, struct pidfd_info)
];

/// Namespaces and tracing: `clone` may start threads and plain children, nothing else.
const CLONE_FORBIDDEN: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_PTRACE
    | libc::CLONE_UNTRACED) as u64;

/// The fetcher's filter: signals only to itself.
pub(super) fn fetcher_filter() -> Result<Filters, SandboxError> {
    let own = c_ulong::from(std::process::id());
    let mut entries = fetcher_entries()?;
    for call in [
        libc::SYS_kill,
        libc::SYS_tgkill,
        libc::SYS_rt_tgsigqueueinfo,
    ] {
        push_rule(&mut entries, call, vec![eq32(0, own)?])?;
    }
    // glibc's nscd lookup tries a unix socket first: refused, it resolves by itself.
    let refused = vec![(
        libc::SYS_socket,
        vec![rule(vec![eq32(0, libc::AF_UNIX as c_ulong)?])?],
    )];
    Filters::build(entries, refused)
}

/// The fetcher's allow-list but for sending signals.
fn fetcher_entries() -> Result<Vec<Entry>, SandboxError> {
    let mut entries = plain(common());
    entries.extend(plain(fetcher_only()));
    entries.extend(shared_checked(IOCTL_COMMON)?);
    // Netlink only for the routing family (the address list), not audit, not uevents.
    push_rule(
        &mut entries,
        libc::SYS_socket,
        vec![
            eq32(0, libc::AF_NETLINK as c_ulong)?,
            eq32(2, libc::NETLINK_ROUTE as c_ulong)?,
        ],
    )?;
    for family in [libc::AF_INET, libc::AF_INET6, libc::AF_UNIX] {
        push_rule(
            &mut entries,
            libc::SYS_socket,
            vec![eq32(0, family as c_ulong)?],
        )?;
    }
    Ok(entries)
}

/// What the spawner adds to the fetcher's list: forking and reaping fetchers, and what each
/// new fetcher calls to close its own sandbox before that narrows this filter to its own.
/// Those calls can only take away (add a filter or a Landlock domain, drop a capability, lower
/// a limit), so the spawner holds nothing a fetcher may not.
fn spawner_only() -> Vec<c_long> {
    vec![
        libc::SYS_wait4,
        libc::SYS_waitid,
        libc::SYS_getppid,
        libc::SYS_close_range,
        libc::SYS_capset,
        libc::SYS_seccomp,
        libc::SYS_landlock_create_ruleset,
        libc::SYS_landlock_add_rule,
        libc::SYS_landlock_restrict_self,
    ]
}

/// `prctl` options a new fetcher sets on itself (see [`spawner_only`]).
const PRCTL_SPAWNER: &[c_ulong] = &[
    libc::PR_SET_PDEATHSIG as c_ulong,
    libc::PR_SET_DUMPABLE as c_ulong,
    libc::PR_SET_NO_NEW_PRIVS as c_ulong,
    libc::PR_CAP_AMBIENT as c_ulong,
    65, // PR_SET_MDWE
];

/// The spawner's filter: the fetcher's, plus [`spawner_only`]; signals only `SIGKILL` (a
/// fetcher that does not exit) and `SIGABRT` (a fetcher's own abort), limits may be set.
pub(super) fn spawner_filter() -> Result<Filters, SandboxError> {
    let mut entries = fetcher_entries()?;
    entries.extend(plain(spawner_only()));
    for &option in PRCTL_SPAWNER {
        push_rule(&mut entries, libc::SYS_prctl, vec![eq32(0, option)?])?;
    }
    for signal in [libc::SIGKILL, libc::SIGABRT] {
        let signal = signal as c_ulong;
        push_rule(&mut entries, libc::SYS_kill, vec![eq32(1, signal)?])?;
        push_rule(&mut entries, libc::SYS_tgkill, vec![eq32(2, signal)?])?;
    }
    entries.extend(plain(vec![libc::SYS_prlimit64]));
    Filters::build(entries, Vec::new())
}

/// The server's filter: unix sockets only; `execve` only if it starts a program.
pub(super) fn server_filter(may_exec: bool) -> Result<Filters, SandboxError> {
    let mut entries = plain(common());
    entries.extend(plain(server_only()));
    entries.extend(shared_checked(IOCTL_COMMON)?);
    for &request in IOCTL_SERVER {
        push_rule(&mut entries, libc::SYS_ioctl, vec![eq32(1, request)?])?;
    }
    push_rule(
        &mut entries,
        libc::SYS_socket,
        vec![eq32(0, libc::AF_UNIX as c_ulong)?],
    )?;
    if may_exec {
        entries.extend(plain(vec![libc::SYS_execve]));
    }
    Filters::build(entries, Vec::new())
}

/// Entries of both roles that check arguments: prctl, ioctl, clone, prlimit64.
fn shared_checked(ioctls: &[c_ulong]) -> Result<Vec<Entry>, SandboxError> {
    let mut entries = Vec::new();
    for &option in PRCTL_OPTIONS {
        push_rule(&mut entries, libc::SYS_prctl, vec![eq32(0, option)?])?;
    }
    for &request in ioctls {
        push_rule(&mut entries, libc::SYS_ioctl, vec![eq32(1, request)?])?;
    }
    push_rule(
        &mut entries,
        libc::SYS_clone,
        vec![cond(0, SeccompCmpOp::MaskedEq(CLONE_FORBIDDEN), 0)?],
    )?;
    // Reading a limit (new limit NULL), never setting one.
    push_rule(&mut entries, libc::SYS_prlimit64, vec![eq(2, 0)?])?;
    // Answered ENOSYS by a soft filter first (see `Filters::build`).
    entries.extend(plain(vec![libc::SYS_clone3]));
    Ok(entries)
}

/// The filters of one role: those answering some calls with an error instead of a kill, then
/// the allow-list that kills on anything else.
pub(super) struct Filters {
    soft: Vec<BpfProgram>,
    allow: BpfProgram,
    /// How many system calls the allow-list names.
    pub(super) allowed: usize,
}

impl Filters {
    /// `eacces`: calls answered `EACCES` although the allow-list lets them through.
    fn build(entries: Vec<Entry>, eacces: Vec<Entry>) -> Result<Self, SandboxError> {
        let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(seccomp_err)?;
        let allow = merge(entries);
        let allowed = allow.len();
        let mut soft = vec![program(
            // clone3 is answered ENOSYS (its flags are out of the filter's reach, in memory);
            // glibc then falls back to clone, whose flags the allow-list checks.
            merge(plain(vec![libc::SYS_clone3])),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )?];
        if !eacces.is_empty() {
            soft.push(program(
                merge(eacces),
                SeccompAction::Allow,
                SeccompAction::Errno(libc::EACCES as u32),
                arch,
            )?);
        }
        let allow = program(
            allow,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            arch,
        )?;
        Ok(Filters {
            soft,
            allow,
            allowed,
        })
    }
}

/// One map per filter: a call entered without checks is allowed whatever else was entered
/// for it; checked entries of one call are alternatives.
fn merge(entries: Vec<Entry>) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut unchecked = Vec::new();
    for (call, rules) in entries {
        if rules.is_empty() {
            unchecked.push(call);
        }
        map.entry(call).or_default().extend(rules);
    }
    for call in unchecked {
        map.insert(call, Vec::new());
    }
    map
}

fn program(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram, SandboxError> {
    SeccompFilter::new(rules, mismatch, matched, arch)
        .map_err(seccomp_err)?
        .try_into()
        .map_err(seccomp_err)
}

/// Installs the filters: the soft ones first (they let `seccomp` itself through), the kill
/// list last. Each holds for this thread and every thread and child it starts.
pub(super) fn apply(filters: &Filters) -> Result<(), SandboxError> {
    for soft in &filters.soft {
        seccompiler::apply_filter(soft).map_err(seccomp_err)?;
    }
    seccompiler::apply_filter(&filters.allow).map_err(seccomp_err)
}

fn plain(calls: Vec<c_long>) -> Vec<Entry> {
    calls.into_iter().map(|c| (c, Vec::new())).collect()
}

fn push_rule(
    entries: &mut Vec<Entry>,
    call: c_long,
    conditions: Vec<SeccompCondition>,
) -> Result<(), SandboxError> {
    entries.push((call, vec![rule(conditions)?]));
    Ok(())
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    SeccompRule::new(conditions).map_err(seccomp_err)
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(seccomp_err)
}

fn eq(arg: u8, value: u64) -> Result<SeccompCondition, SandboxError> {
    cond(arg, SeccompCmpOp::Eq, value)
}

/// An `int`/`unsigned int` argument: only its low 32 bits are defined.
fn eq32(arg: u8, value: c_ulong) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .map_err(seccomp_err)
}

fn seccomp_err(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Seccomp(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What neither role may ever call, whatever is added to the tables later.
    const NEVER: &[c_long] = &[
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_setresuid,
        libc::SYS_setresgid,
        libc::SYS_setgroups,
        libc::SYS_capset,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_mount,
        libc::SYS_bpf,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_io_uring_setup,
        libc::SYS_listen,
        libc::SYS_accept4,
        libc::SYS_seccomp,
    ];

    #[test]
    fn no_role_may_execute_trace_listen_or_change_identity() {
        for (role, calls) in [
            ("common", common()),
            ("fetcher", fetcher_only()),
            ("server", server_only()),
        ] {
            for call in NEVER {
                assert!(!calls.contains(call), "{role} allows system call {call}");
            }
        }
    }

    #[test]
    fn the_spawner_may_only_narrow_what_its_fetchers_may_do() {
        let spawner = spawner_only();
        for call in NEVER {
            if [libc::SYS_capset, libc::SYS_seccomp].contains(call) {
                continue;
            }
            assert!(!spawner.contains(call), "spawner allows system call {call}");
        }
        let filter = spawner_filter().expect("spawner filter");
        let fetcher = fetcher_filter().expect("fetcher filter");
        assert!(filter.allowed > fetcher.allowed);
        assert_eq!(filter.soft.len(), 1);
    }

    #[test]
    fn the_server_has_no_call_that_only_network_clients_need() {
        let server = server_only();
        for call in [libc::SYS_bind, libc::SYS_sendmmsg, libc::SYS_recvmmsg] {
            assert!(!server.contains(&call), "server allows {call}");
        }
    }

    #[test]
    fn both_filters_build_and_name_what_they_allow() {
        let fetcher = fetcher_filter().expect("fetcher filter");
        let server = server_filter(false).expect("server filter");
        let server_exec = server_filter(true).expect("server filter with exec");
        assert_eq!(server_exec.allowed, server.allowed + 1);
        assert!(fetcher.allowed > 90 && server.allowed > fetcher.allowed);
        // clone3 answered ENOSYS; the fetcher's unix sockets EACCES.
        assert_eq!(fetcher.soft.len(), 2);
        assert_eq!(server.soft.len(), 1);
    }
}
