//! Dropping what a process holds by identity: capabilities, core dumps, new privileges.
use super::{SandboxError, SandboxReport};
use caps::CapSet;
use std::io;

/// Secure bits: root's uid grants no capability (`NOROOT`), none can be raised into the
/// ambient set, and both are locked.
const SECUREBITS: libc::c_ulong = (1 << 0) | (1 << 1) | (1 << 6) | (1 << 7);

/// Core dumps off, no capability left, `no_new_privs`, no memory made executable later.
pub(super) fn drop_all(report: &mut SandboxReport) -> Result<(), SandboxError> {
    one_thread()?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
        .map_err(|e| privilege("core dumps", e.into()))?;
    // Not dumpable: no core file, /proc/PID files owned by root, and no ptrace by the same uid.
    nix::sys::prctl::set_dumpable(false).map_err(|e| privilege("dumpable", e.into()))?;
    drop_capabilities(report)?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| privilege("new privileges", e.into()))?;
    deny_exec_gain(report);
    Ok(())
}

/// Fails unless the process has exactly one thread.
fn one_thread() -> Result<(), SandboxError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(SandboxError::ThreadCount)?;
    let n = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| SandboxError::ThreadCount(io::Error::other("no Threads: line")))?;
    if n == 1 {
        Ok(())
    } else {
        Err(SandboxError::Threads(n))
    }
}

/// Empties every capability set. The bounding set can only shrink with `CAP_SETPCAP`; without
/// it (an unprivileged start) the set stays, harmless: with `no_new_privs` and nothing
/// permitted, no `execve` can raise a capability from it.
fn drop_capabilities(report: &mut SandboxReport) -> Result<(), SandboxError> {
    let can_setpcap = caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP)
        .map_err(|e| privilege("capabilities", io::Error::other(e.to_string())))?;
    if can_setpcap {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0) };
        if r != 0 {
            report
                .missing
                .push(format!("secure bits ({})", io::Error::last_os_error()));
        }
        caps::clear(None, CapSet::Bounding)
            .map_err(|e| privilege("the bounding set", io::Error::other(e.to_string())))?;
    }
    for (set, what) in [
        (CapSet::Ambient, "ambient capabilities"),
        (CapSet::Inheritable, "inheritable capabilities"),
        (CapSet::Effective, "effective capabilities"),
        (CapSet::Permitted, "permitted capabilities"),
    ] {
        caps::clear(None, set).map_err(|e| privilege(what, io::Error::other(e.to_string())))?;
    }
    Ok(())
}

/// `PR_SET_MDWE` (Linux 6.3+): no mapping may become executable after it was writable.
fn deny_exec_gain(report: &mut SandboxReport) {
    const PR_SET_MDWE: libc::c_int = 65;
    const PR_MDWE_REFUSE_EXEC_GAIN: libc::c_ulong = 1;
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) };
    if r != 0 {
        report.missing.push(format!(
            "memory write-execute denial ({})",
            io::Error::last_os_error()
        ));
    }
}

fn privilege(what: &'static str, source: io::Error) -> SandboxError {
    SandboxError::Privilege { what, source }
}
