//! The Landlock rules of each role: which files, which TCP ports, which signals.
use super::{FetcherPolicy, SandboxError, SandboxReport, ServerPolicy};
use landlock::{
    ABI, Access, AccessFs, AccessNet, LandlockStatus, NetPort, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetError, RulesetStatus, Scope,
    path_beneath_rules,
};
use std::path::PathBuf;

/// The newest ABI these rules use: 6 scopes signals and abstract unix sockets. On an older
/// kernel the crate enforces what the kernel knows (best effort) and the report says the rest.
const ABI_WANTED: ABI = ABI::V6;

/// Where glibc looks for NSS modules (`getaddrinfo` loads the ones nsswitch.conf names).
const NSS_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// The NSS modules installed (`libnss_*.so*`): the fetcher may read these, and nothing else
/// beneath the library directories.
pub(super) fn nss_modules() -> Vec<PathBuf> {
    NSS_DIRS
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("libnss_"))
        })
        .map(|e| e.path())
        .collect()
}

/// Fetcher: read the resolver's files, connect to its TCP ports, nothing else.
pub(super) fn apply_fetcher(
    policy: &FetcherPolicy,
    report: &mut SandboxReport,
) -> Result<(), SandboxError> {
    let abi = ABI_WANTED;
    let ruleset = base(abi, true)?
        .add_rules(path_beneath_rules(&policy.read_files, AccessFs::ReadFile))
        .map_err(err)?
        .add_rules(
            policy
                .tcp_ports
                .iter()
                .map(|&p| Ok::<_, RulesetError>(NetPort::new(p, AccessNet::ConnectTcp))),
        )
        .map_err(err)?;
    restrict(ruleset, report)
}

/// Server: its state dir and log file, the files it reads, `/proc`, `/dev/fuse`; no TCP.
pub(super) fn apply_server(
    policy: &ServerPolicy,
    report: &mut SandboxReport,
) -> Result<(), SandboxError> {
    let abi = ABI_WANTED;
    // Everything but execute and device ioctls: create, remove, rename, truncate the budget's
    // and the journal's files.
    let read_write = AccessFs::from_all(abi) & !(AccessFs::Execute | AccessFs::IoctlDev);
    let mut ruleset = base(abi, policy.scope_signals)?
        .add_rules(path_beneath_rules(&policy.state_dir, read_write))
        .map_err(err)?
        .add_rules(path_beneath_rules(
            &policy.log_file,
            AccessFs::ReadFile | AccessFs::WriteFile,
        ))
        .map_err(err)?
        .add_rules(path_beneath_rules(
            &policy.read_only,
            AccessFs::from_read(abi),
        ))
        .map_err(err)?;
    if policy.proc {
        ruleset = ruleset
            .add_rules(path_beneath_rules(["/proc"], AccessFs::from_read(abi)))
            .map_err(err)?;
    }
    if policy.fuse_device {
        ruleset = ruleset
            .add_rules(path_beneath_rules(
                ["/dev/fuse"],
                AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev,
            ))
            .map_err(err)?;
    }
    if let Some(exe) = &policy.exec {
        ruleset = ruleset
            .add_rule(PathBeneath::new(
                PathFd::new(exe).map_err(|e| SandboxError::Landlock(format!("{exe:?}: {e}")))?,
                AccessFs::Execute | AccessFs::ReadFile,
            ))
            .map_err(err)?;
    }
    restrict(ruleset, report)
}

/// A ruleset that handles every file access, TCP bind and connect, and (optionally) scopes
/// signals; abstract unix sockets are always scoped (neither role uses one).
fn base(abi: ABI, scope_signals: bool) -> Result<RulesetCreated, SandboxError> {
    let scopes = if scope_signals {
        Scope::AbstractUnixSocket | Scope::Signal
    } else {
        Scope::AbstractUnixSocket.into()
    };
    Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(scopes))
        .and_then(|r| r.create())
        .map_err(err)
}

/// Enforces the rules and names in the report what this kernel's Landlock leaves out.
fn restrict(ruleset: RulesetCreated, report: &mut SandboxReport) -> Result<(), SandboxError> {
    let status = ruleset.restrict_self().map_err(err)?;
    let abi = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => effective_abi as u32,
        LandlockStatus::NotEnabled => {
            report.missing.push("landlock (not enabled)".into());
            return Ok(());
        }
        LandlockStatus::NotImplemented => {
            report.missing.push("landlock (not in this kernel)".into());
            return Ok(());
        }
    };
    report.landlock_abi = abi;
    if status.ruleset == RulesetStatus::NotEnforced {
        report.missing.push("landlock (not enforced)".into());
        return Ok(());
    }
    for (needs, what) in [
        (3, "landlock truncation"),
        (4, "landlock TCP rules"),
        (5, "landlock device ioctls"),
        (6, "landlock signal and abstract socket scoping"),
    ] {
        if abi < needs {
            report
                .missing
                .push(format!("{what} (ABI {needs}, kernel has {abi})"));
        }
    }
    Ok(())
}

fn err(e: RulesetError) -> SandboxError {
    SandboxError::Landlock(e.to_string())
}
