//! Who the processes run as once privileges are dropped, and the dropping itself: uid and gid,
//! supplementary groups, every capability set, `no_new_privs`.
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid, User};

/// The system user the package creates, used when `--user` is not given.
pub const DEFAULT_USER: &str = "qrypt-fs";
/// The fallback when that user does not exist.
pub const FALLBACK_USER: &str = "nobody";

/// An unprivileged user to become.
#[derive(Debug, Clone)]
pub struct Ids {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

/// Who to become: `None` when not started as root (nothing to drop, and no uid to change to).
/// Without `--user`, the package's user, else `nobody` (the second value says so, for the log).
pub fn resolve(user: Option<&str>) -> anyhow::Result<Option<(Ids, Option<String>)>> {
    if !nix::unistd::geteuid().is_root() {
        if let Some(u) = user {
            anyhow::bail!(
                "--user {u} needs root: started as a user, qrypt-fs already runs as that user"
            );
        }
        return Ok(None);
    }
    let lookup = |name: &str| -> anyhow::Result<Option<Ids>> {
        Ok(User::from_name(name)
            .map_err(|e| anyhow::anyhow!("cannot look up user {name}: {e}"))?
            .map(|u| Ids {
                name: name.to_owned(),
                uid: u.uid,
                gid: u.gid,
            }))
    };
    let (ids, note) = match user {
        Some(name) => (
            lookup(name)?.ok_or_else(|| anyhow::anyhow!("--user {name}: no such user"))?,
            None,
        ),
        None => match lookup(DEFAULT_USER)? {
            Some(ids) => (ids, None),
            None => (
                lookup(FALLBACK_USER)?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "neither user {DEFAULT_USER} nor {FALLBACK_USER} exists to drop \
                         privileges to: create one, or choose one with --user NAME"
                    )
                })?,
                Some(format!(
                    "no user {DEFAULT_USER}: running as {FALLBACK_USER} after the mount (create \
                     the system user {DEFAULT_USER}, or choose one with --user NAME)"
                )),
            ),
        },
    };
    if ids.uid.is_root() {
        anyhow::bail!("--user {}: refusing to run as uid 0", ids.name);
    }
    Ok(Some((ids, note)))
}

/// What must go before a process starts threads, since each thread keeps its own: the
/// capability bounding set (emptied while `CAP_SETPCAP` is still there) and `no_new_privs`.
pub fn before_threads() -> std::io::Result<()> {
    drop_bounding(|_| true)?;
    no_new_privs()
}

/// Drops each capability `which` names from the bounding set. Without `CAP_SETPCAP` (a unit
/// that left it out) the set stays as the service manager made it: harmless with
/// `no_new_privs` and nothing permitted.
fn drop_bounding(which: impl Fn(Capability) -> bool) -> std::io::Result<()> {
    let may = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(std::io::Error::other)?;
    if !may {
        return Ok(());
    }
    for cap in caps::all().into_iter().filter(|c| which(*c)) {
        caps::drop(None, CapSet::Bounding, cap).map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// Becomes `ids` for good: groups, gid and uid (real, effective and saved; glibc changes them
/// in every thread, and the kernel clears each thread's permitted, effective and ambient
/// capabilities as its uids leave 0), then clears this thread's sets outright. Call
/// [`before_threads`] first.
pub fn drop_to(ids: &Ids) -> std::io::Result<()> {
    nix::unistd::setgroups(&[ids.gid])?;
    nix::unistd::setresgid(ids.gid, ids.gid, ids.gid)?;
    nix::unistd::setresuid(ids.uid, ids.uid, ids.uid)?;
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(std::io::Error::other)?;
    }
    // Back to uid 0 must be impossible: checked, not assumed.
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() || nix::unistd::getuid() != ids.uid {
        return Err(std::io::Error::other("the uid did not change for good"));
    }
    // A uid change makes the process dumpable again; it must not be (secrets, ptrace).
    nix::sys::prctl::set_dumpable(false)?;
    Ok(())
}

/// Whether `ids` may open `path` for reading and writing, by its mode bits.
pub fn may_read_write(path: &Path, ids: &Ids) -> bool {
    let Ok(m) = std::fs::metadata(path) else {
        return false;
    };
    let mode = m.mode();
    if m.uid() == ids.uid.as_raw() {
        mode & 0o600 == 0o600
    } else if m.gid() == ids.gid.as_raw() {
        mode & 0o060 == 0o060
    } else {
        mode & 0o006 == 0o006
    }
}

/// Both steps at once, for a process with one thread (the spawner).
pub fn drop_now(ids: &Ids) -> std::io::Result<()> {
    before_threads()?;
    drop_to(ids)
}

/// No exec may ever grant privileges again (setuid binaries, file capabilities).
pub fn no_new_privs() -> std::io::Result<()> {
    nix::sys::prctl::set_no_new_privs()?;
    // A uid change makes the process dumpable again; it must not be (secrets, ptrace).
    nix::sys::prctl::set_dumpable(false)?;
    Ok(())
}

/// The supervisor's privileges: `CAP_SYS_ADMIN` (to unmount) and nothing else, in every set;
/// nothing at all when it has no mount to undo (`unmounts` false: the service manager mounted).
/// Without root there is nothing to keep, and no `no_new_privs` either: it unmounts through
/// the setuid `fusermount3`, which that would disarm.
pub fn keep_only_sys_admin(unmounts: bool) -> std::io::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        nix::sys::prctl::set_dumpable(false)?;
        return Ok(());
    }
    let keep = |c: Capability| unmounts && c == Capability::CAP_SYS_ADMIN;
    drop_bounding(|c| !keep(c))?;
    let only: CapsHashSet = caps::all().into_iter().filter(|c| keep(*c)).collect();
    caps::clear(None, CapSet::Ambient).map_err(std::io::Error::other)?;
    caps::clear(None, CapSet::Inheritable).map_err(std::io::Error::other)?;
    caps::set(None, CapSet::Effective, &only).map_err(std::io::Error::other)?;
    caps::set(None, CapSet::Permitted, &only).map_err(std::io::Error::other)?;
    no_new_privs()
}

/// Names of the files qrypt-fs keeps in a state directory (the budget's, the replay
/// history's, the per-tenant budget's): the only entries handed over.
const STATE_PREFIXES: [&str; 3] = ["budget", "replay", "tenant-budget"];

/// Makes the state directory usable by `ids` after the drop. Its files of qrypt-fs's (by name,
/// regular files owned by root) change owner. The directory itself changes owner only when it
/// looks like a state directory: root's, writable by root alone, holding nothing but such
/// files (so never `/etc` or `/var/lib` given by mistake); a sticky, world-writable directory
/// (a tmpfs) is usable as it is. Any other must already belong to `ids`.
pub fn hand_over_state_dir(dir: &Path, ids: &Ids) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        // Created later by the user it runs as.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("state directory {}: {e}", dir.display()),
    };
    if !meta.is_dir() {
        anyhow::bail!("state directory {} is not a directory", dir.display());
    }
    let chown = |p: &Path| {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            p,
            Some(ids.uid),
            Some(ids.gid),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| anyhow::anyhow!("cannot hand {} to {}: {e}", p.display(), ids.name))
    };
    let mut ours = Vec::new();
    let mut only_ours = true;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let m = entry.metadata()?;
        let name = entry.file_name();
        let named = STATE_PREFIXES
            .iter()
            .any(|p| name.as_encoded_bytes().starts_with(p.as_bytes()));
        if named && m.file_type().is_file() {
            if m.uid() == 0 {
                ours.push(entry.path());
            }
        } else {
            only_ours = false;
        }
    }
    for f in &ours {
        chown(f)?;
    }
    let mode = meta.mode();
    let shared_tmp = mode & 0o1002 == 0o1002;
    if meta.uid() == ids.uid.as_raw() || shared_tmp {
        return Ok(());
    }
    if meta.uid() == 0 && mode & 0o022 == 0 && only_ours {
        return chown(dir);
    }
    anyhow::bail!(
        "state directory {} belongs to uid {} (mode {:o}){}: after the mount qrypt-fs runs as \
         {} (uid {}), which must own it. chown it to {}, or give a directory of its own",
        dir.display(),
        meta.uid(),
        mode & 0o7777,
        if only_ours {
            ""
        } else {
            " and holds other files"
        },
        ids.name,
        ids.uid,
        ids.name
    )
}

/// Lets the unprivileged server go on locking memory (it loses `CAP_IPC_LOCK`): the soft
/// `RLIMIT_MEMLOCK` raised towards `bytes`, as far as the hard limit allows (a process
/// without `CAP_SYS_RESOURCE` cannot raise that). Returns the soft limit in force.
pub fn allow_locking(bytes: u64) -> std::io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_MEMLOCK)?;
    if soft >= bytes {
        return Ok(soft);
    }
    if setrlimit(Resource::RLIMIT_MEMLOCK, bytes, hard.max(bytes)).is_ok() {
        return Ok(bytes);
    }
    let soft = bytes.min(hard);
    setrlimit(Resource::RLIMIT_MEMLOCK, soft, hard)?;
    Ok(soft)
}
