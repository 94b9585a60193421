//! The program after argument parsing: check everything that can be checked on the terminal,
//! go to the background, set up logging and the HTTP client, then run a [`Session`].
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::budget::tenants::TenantBudget;
use crate::budget::{Budget, BudgetConfig, Legacy, TokenBytes, default_state_dir, system_clock};
use crate::fs::mount_options::FuseOptions;
use crate::privsep::client::{FetcherClient, FetcherConfig};
use crate::refill::PrefetchConfig;
use crate::refill::first_answer::FirstAnswerCell;
use crate::refill::health::journal::Place;
use crate::session::background::{self, Ready};
use crate::session::cli::Options;
use crate::session::logging::{self, LogTarget};
use crate::session::mount::{AfterMount, MountConfig, Session, StartupCheck};
use crate::session::start_io;
use crate::status::{Processes, StaticInfo};
use crate::tenant::{TenantBy, TenantConfig};
use crate::upstream::http::{
    HttpClient, HttpConfig, canonical_endpoint, mask_credentials, parse_endpoint, read_ca_file,
};
use crate::upstream::token;
use zeroize::Zeroizing;

/// Checks a mount point before anything else, so a stale mount gets a useful message.
pub fn check_mountpoint(path: &Path) -> anyhow::Result<PathBuf> {
    let stale = || {
        anyhow::anyhow!(
            "{} is a stale FUSE mount (the daemon that served it is gone). \
             Recover with `umount -l {}` (or `fusermount3 -uz {}`), then mount again",
            path.display(),
            path.display(),
            path.display()
        )
    };
    let context = || format!("mount point {}", path.display());
    let meta = match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Err(stale()),
        other => other.with_context(context)?,
    };
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", path.display());
    }
    let abs = std::fs::canonicalize(path).with_context(context)?;
    if let Some(why) = kernel_filesystem(&abs) {
        bail!(
            "mount point {} is {why}: refused (mount on an ordinary directory such as \
             /mnt/qrypt)",
            path.display()
        );
    }
    if is_fuse_mount(&abs) {
        // stat may be answered from the kernel's attribute cache; statfs always asks the
        // daemon, so it tells a dead one.
        if nix::sys::statfs::statfs(&abs).err() == Some(nix::errno::Errno::ENOTCONN) {
            return Err(stale());
        }
        bail!(
            "{} is already a FUSE mount point; unmount it first (umount {})",
            abs.display(),
            abs.display()
        );
    }
    Ok(abs)
}

/// Why `abs` (canonical) is no place for a mount: it lies under /proc or /sys, or on one of
/// the kernel's own filesystems wherever that is mounted (a mount there would hide or shadow
/// the kernel's interfaces that other programs rely on).
fn kernel_filesystem(abs: &Path) -> Option<String> {
    for root in ["/proc", "/sys"] {
        if abs.starts_with(root) {
            return Some(format!("under {root}"));
        }
    }
    // statfs(2) f_type magic numbers (linux/magic.h).
    const KERNEL_FS: [(i64, &str); 10] = [
        (0x9fa0, "proc"),
        (0x6265_6572, "sysfs"),
        (0x0027_e0eb, "cgroup"),
        (0x6367_7270, "cgroup2"),
        (0x6462_6720, "debugfs"),
        (0x7472_6163, "tracefs"),
        (0x7363_6673, "securityfs"),
        (0xcafe_4a11, "bpf"),
        (0x6265_6570, "configfs"),
        (0xde5e_81e4, "efivarfs"),
    ];
    let fs = nix::sys::statfs::statfs(abs).ok()?;
    let magic = fs.filesystem_type().0 as i64;
    KERNEL_FS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| format!("on the kernel's {name} filesystem"))
}

pub(crate) fn is_fuse_mount(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let target = path.to_string_lossy();
    mounts.lines().any(|l| {
        let mut f = l.split(' ');
        let (_, mp, ty) = (f.next(), f.next(), f.next());
        // /proc/mounts escapes spaces as \040.
        mp.map(|m| m.replace("\\040", " ")) == Some(target.to_string())
            && ty.is_some_and(|t| t == "fuse" || t.starts_with("fuse."))
    })
}

/// The whole program after argument parsing.
pub fn main(opts: Options) -> anyhow::Result<()> {
    // Everything that can be checked is checked before going to the background, so mistakes
    // are reported on the terminal.
    // The environment first, before any thread exists (it changes the environment); every
    // file after it is reached from a thread of its own, bounded in time (`start_io`).
    let from_env = token::take_environment();
    let fuse_fd = crate::session::fd_store::take_fuse_fd()?;
    let (token, token_source) = match &opts.token_file {
        Some(p) => {
            let path = p.clone();
            let token = start_io::within("token file", p, start_io::TIMEOUT, move || {
                token::read_token_file(&path)
            })??;
            (token, token::TokenSource::File(p.clone()))
        }
        None => token::from_environment(from_env)?,
    };
    let endpoint = parse_endpoint(&opts.endpoint)?;
    let extra_ca_pem = match &opts.ca_cert {
        Some(p) => {
            let path = p.clone();
            Some(start_io::within(
                "CA file",
                p,
                start_io::TIMEOUT,
                move || read_ca_file(&path),
            )??)
        }
        None => None,
    };
    // A handed descriptor is mounted there already, and nobody serves it until we do: the
    // mount point is not looked at (any access would wait for ourselves), nor is the device.
    let handed = fuse_fd.is_some();
    let mountpoint = if handed {
        std::path::absolute(&opts.mountpoint)
            .with_context(|| format!("mount point {}", opts.mountpoint.display()))?
    } else {
        let path = opts.mountpoint.clone();
        start_io::within(
            "mount point",
            &opts.mountpoint,
            start_io::TIMEOUT,
            move || check_mountpoint(&path),
        )??
    };
    if !handed {
        start_io::within(
            "FUSE device",
            Path::new(crate::session::check_local::DEV_FUSE),
            start_io::TIMEOUT,
            || {
                crate::session::check_local::fuse_access(
                    nix::unistd::geteuid().is_root(),
                    Path::new(crate::session::check_local::DEV_FUSE),
                    std::env::var_os("PATH").as_deref(),
                )
            },
        )?
        .map_err(anyhow::Error::msg)?;
    }
    // Printed now, on the terminal that started us; also logged once logging is set up.
    let token_warning = match &opts.token_file {
        Some(p) => {
            let path = p.clone();
            start_io::within("token file", p, start_io::TIMEOUT, move || {
                crate::session::check_local::token_file_warning(&path)
            })?
        }
        None => None,
    };
    let mountpoint_warning = if handed {
        None
    } else {
        let path = mountpoint.clone();
        start_io::within("mount point", &mountpoint, start_io::TIMEOUT, move || {
            crate::session::check_local::mountpoint_warning(&path)
        })?
    };
    let mut warnings: Vec<String> = [token_warning, mountpoint_warning]
        .into_iter()
        .flatten()
        .collect();
    for w in &warnings {
        eprintln!("qrypt-fs: warning: {w}");
    }
    let token_file = match &opts.token_file {
        // Absolute (we change directory to /), but not canonical: a symlink in the path is
        // followed at each read, so pointing it elsewhere (a rotated secret) is seen.
        Some(p) => Some(std::path::absolute(p).with_context(|| p.display().to_string())?),
        None => None,
    };
    let log_file = match &opts.log_file {
        Some(p) => {
            let path = p.clone();
            let opened = start_io::within("log file", p, start_io::TIMEOUT, move || {
                logging::open_log_file(&path)
            })??;
            for n in &opened.notes {
                eprintln!("qrypt-fs: warning: {n}");
            }
            warnings.extend(opened.notes);
            Some(opened.file)
        }
        None => None,
    };
    // Who the processes become after the mount (started as root), checked on the terminal;
    // the state files are theirs (handed over at each start).
    let run_as = crate::privsep::user::resolve(opts.user.as_deref())?;
    // The fallback's note goes to the log when the drop happens (see `after_mount`).
    let (run_as, run_as_note) = match run_as {
        Some((ids, note)) => {
            crate::budget::set_state_owner(ids.uid.as_raw());
            (Some(ids), note)
        }
        None => (None, None),
    };
    let budget = open_budget(&opts, &endpoint, token_file.as_deref(), &token)?;
    let tenant_budget = open_tenant_budget(&opts)?;
    if matches!(opts.tenant_by, TenantBy::Cgroup { .. })
        && crate::tenant::cgroup::of_task(std::process::id(), None).is_none()
    {
        let w = "--tenant-by cgroup: no cgroup v2 here (/proc/self/cgroup has no 0:: line): \
                 every reader is the one tenant unknown";
        eprintln!("qrypt-fs: warning: {w}");
        warnings.push(w.to_owned());
    }
    // What the token file holds now, so a later look sees whether it changed.
    let watched = match &token_file {
        Some(p) => {
            let path = p.clone();
            Some(start_io::within(
                "token file",
                p,
                start_io::TIMEOUT,
                move || token::TokenFile::new(path),
            )?)
        }
        None => None,
    };
    // A spent budget sends nothing, so there is no first answer to wait for.
    let spent = budget.exhausted_now().map(|e| {
        let caps = e
            .caps
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" and ");
        let w = format!(
            "budget {caps} already spent: mounted, but reads that would wait get EIO until it \
             renews in {}s",
            e.renews_at.saturating_sub(budget.now())
        );
        eprintln!("qrypt-fs: warning: {w}");
        warnings.push(w);
    });

    let state_dir = match &opts.state_dir {
        Some(d) => Some(std::path::absolute(d).with_context(|| d.display().to_string())?),
        None => default_state_dir().ok(),
    };

    // In the background without --log-file: syslog, if anything listens there.
    let background_log = (!opts.foreground && log_file.is_none()).then(|| {
        let socket = Path::new(logging::SYSLOG_SOCKET);
        let choice = logging::Background::choose(socket);
        if let Some(note) = choice.note(socket) {
            eprintln!("qrypt-fs: warning: {note}");
            warnings.push(note);
        }
        choice
    });
    // The log is the stderr that also prints what the start says: say nothing twice.
    let target_is_stderr = log_file.is_none()
        && matches!(
            background_log,
            None | Some(logging::Background::JournalStderr)
        );
    let mut ready = if opts.foreground {
        Ready::foreground()
    } else {
        let keep_stderr = background_log == Some(logging::Background::JournalStderr);
        background::daemonize(keep_stderr).context("cannot go to the background")?
    };
    let result = (|| {
        // Forked while this process has one thread and before logging exists: the
        // supervisor and the spawner (which forks the fetchers) inherit no thread, no lock
        // and no log writer.
        let helpers = crate::privsep::start(
            (!handed).then_some(mountpoint.as_path()),
            token_file.as_deref(),
            run_as.as_ref(),
        )
        .context("cannot start the supervisor and the fetcher's spawner")?;
        // Registered before any other thread exists, so no thread dies of a default action.
        let signals =
            Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install signal handlers")?;
        let target = match (log_file, background_log) {
            (Some(p), _) => LogTarget::File(p),
            (None, None | Some(logging::Background::JournalStderr)) => LogTarget::Stderr,
            (None, Some(_)) => LogTarget::Syslog,
        };
        logging::init(target, opts.verbose)?;
        // Said on the terminal already; also in the log, unless the log is that terminal.
        if !target_is_stderr {
            for w in &warnings {
                tracing::warn!("{w}");
            }
        }
        if opts.reset_budget {
            if let Some(path) = budget.state_file() {
                tracing::warn!(
                    "--reset-budget: the spend recorded in {} starts again from zero",
                    path.display()
                );
            }
        }
        // Built here only to check the configuration (a bad CA file is reported now, on the
        // terminal) and to name the URL: it never sends. Each fetcher builds its own.
        let checked = HttpClient::new(
            &HttpConfig {
                endpoint: endpoint.clone(),
                extra_ca_pem: extra_ca_pem.clone(),
                connect_timeout: opts.connect_timeout,
                request_timeout: opts.request_timeout,
                max_idle_connections: opts.max_in_flight,
            },
            &token,
        )?;
        let api_url = mask_credentials(checked.url().as_str());
        drop(checked);
        let processes = Arc::new(Processes::default());
        let client = FetcherClient::new(
            FetcherConfig {
                endpoint: endpoint.as_str().to_owned(),
                connect_timeout: opts.connect_timeout,
                request_timeout: opts.request_timeout,
                max_idle_connections: u16::try_from(opts.max_in_flight).unwrap_or(u16::MAX),
                ca_pem: extra_ca_pem.map(Zeroizing::new),
            },
            token,
            helpers.spawner.clone(),
            processes.clone(),
        );
        let first_answer = Arc::new(FirstAnswerCell::default());
        let startup = opts
            .startup_timeout
            .filter(|_| spent.is_none())
            .map(|timeout| StartupCheck {
                first_answer: first_answer.clone(),
                timeout,
                endpoint: shown_endpoint(&endpoint).trim_end_matches('/').to_owned(),
                api_url,
                token_source: match &opts.token_file {
                    Some(p) => std::path::absolute(p)
                        .unwrap_or_else(|_| p.clone())
                        .display()
                        .to_string(),
                    None => token::TOKEN_ENV.to_owned(),
                },
            });
        let replay_history =
            replay_history_place(&opts, &canonical_endpoint(&endpoint), token_file.as_deref())?;
        let cfg = MountConfig {
            mountpoint,
            fuse_fd,
            fuse: FuseOptions {
                fsname: opts.source.clone().unwrap_or_else(|| "qrypt".into()),
                subtype: "qrypt-fs".into(),
                allow_other: opts.allow_other,
                allow_root: opts.allow_root,
                default_permissions: opts.default_permissions,
                // Each FUSE thread opens /dev/fuse once the uid changed: only if it may.
                clone_fd: run_as.as_ref().is_none_or(|ids| {
                    crate::privsep::user::may_read_write(
                        Path::new(crate::session::check_local::DEV_FUSE),
                        ids,
                    )
                }),
            },
            buffer_size: opts.buffer_size,
            read_timeout: opts.read_timeout,
            max_waiters_per_user: opts.max_waiters_per_user,
            tenants: TenantConfig {
                by: opts.tenant_by,
                budget: tenant_budget,
                exempt: opts.tenant_exempt.clone(),
            },
            info: StaticInfo {
                endpoint: shown_endpoint(&endpoint),
                token_source: token_source.to_string(),
                capacity: opts.buffer_size,
                mix_local: opts.mix_local,
                rate_limit: opts.rate_limit.map_or("off".into(), |r| {
                    format!("{}/{}s", r.requests, r.window.as_secs_f64())
                }),
            },
            prefetch: prefetch_config(&opts, watched, budget, first_answer.clone(), replay_history),
            startup,
            processes,
            after_mount: Some(after_mount(
                run_as.clone(),
                run_as_note.clone(),
                state_dir.clone(),
                opts.log_file
                    .as_deref()
                    .map(std::path::absolute)
                    .transpose()?,
                token_file
                    .iter()
                    .chain(opts.ca_cert.iter())
                    .cloned()
                    .collect(),
                opts.buffer_size,
            )),
        };
        Session::mount(cfg, Arc::new(client), &mut ready, signals)
    })();
    match result {
        Ok(session) => session.run(),
        Err(e) => {
            // Kept in the log too, unless the log is the terminal that prints it below.
            if !target_is_stderr {
                tracing::error!("{}", message(&e));
            }
            ready.failed(&message(&e));
            Err(e)
        }
    }
}

/// What runs once the mount exists, while the process has one thread (see [`AfterMount`]).
/// Started as root: the state directory is handed over, the locking limit raised, and the
/// uid, gid and every capability set become `run_as`'s. Then the sandbox (which a user mount
/// gets too), and the allocator's background thread.
fn after_mount(
    run_as: Option<crate::privsep::user::Ids>,
    note: Option<String>,
    state_dir: Option<PathBuf>,
    log_file: Option<PathBuf>,
    read_only: Vec<PathBuf>,
    buffer_size: usize,
) -> AfterMount {
    use crate::privsep::user;
    Box::new(move |lock_whole: &dyn Fn()| {
        if let Some(ids) = &run_as {
            // Room to lock the buffer as it fills after the drop (and the scratch space, page
            // rounding). Without it (no CAP_SYS_RESOURCE to raise the hard limit), the whole
            // buffer is locked now, while CAP_IPC_LOCK is still there: locked pages stay
            // locked after it is gone.
            let want = buffer_size as u64 + (4 << 20);
            match user::allow_locking(want) {
                Ok(got) if got >= want => {}
                Ok(got) => {
                    tracing::info!(
                        "RLIMIT_MEMLOCK stays at {got} bytes after the privilege drop: the whole \
                         buffer is locked now rather than as it fills"
                    );
                    lock_whole();
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot raise RLIMIT_MEMLOCK ({e}): the whole buffer is locked now \
                         rather than as it fills"
                    );
                    lock_whole();
                }
            }
            if let Some(note) = &note {
                tracing::info!("{note}");
            }
            if let Some(dir) = &state_dir {
                // Not fatal: the budget then finds its state unwritable (and says so), the
                // replay history stays in memory.
                if let Err(e) = user::hand_over_state_dir(dir, ids) {
                    tracing::warn!("{e:#}");
                }
            }
            user::drop_now(ids).context("cannot drop privileges")?;
            tracing::info!(
                "privileges dropped: running as {} (uid {}, gid {})",
                ids.name,
                ids.uid,
                ids.gid
            );
        }
        crate::read_guard::signal_watch::raise_descriptor_limit();
        let report = crate::privsep::sandbox_server(state_dir, log_file, read_only)
            .context("cannot apply the sandbox")?;
        tracing::info!("sandbox: {report}");
        background::serving();
        Ok(report)
    })
}

/// The error and its causes on one line, `outer: inner: ...`, each said once: a library error
/// whose message already includes its source's is not followed by that source again.
pub fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Opens the budget's state (an unusable one is an error now, on the terminal), in the state
/// directory's time bound. Keyed by the account: the canonical endpoint and a keyed digest of
/// the token itself, so every spelling of one account shares one count (see `budget/store.rs`).
fn open_budget(
    opts: &Options,
    endpoint: &url::Url,
    token_file: Option<&Path>,
    token: &token::Token,
) -> anyhow::Result<Arc<Budget>> {
    if opts.budget.is_empty() {
        return Ok(Arc::new(Budget::unlimited()));
    }
    let state_dir = match &opts.state_dir {
        Some(d) => std::path::absolute(d).with_context(|| d.display().to_string())?,
        None => default_state_dir().map_err(anyhow::Error::msg)?,
    };
    // How a release that keyed state by spelling named this mount's record.
    let token_source = match token_file {
        Some(p) => format!("file {}", p.display()),
        None => token::TokenSource::Environment.to_string(),
    };
    let cfg = BudgetConfig {
        caps: opts.budget.clone(),
        state_dir: state_dir.clone(),
        endpoint: canonical_endpoint(endpoint),
        token: TokenBytes::new(token.expose()),
        legacy: Some(Legacy {
            endpoint: shown_endpoint(endpoint),
            token_source,
        }),
        reset: opts.reset_budget,
    };
    let budget = start_io::within(
        "budget state directory",
        &state_dir,
        start_io::TIMEOUT,
        move || Budget::open(&cfg, system_clock()),
    )?
    .map_err(anyhow::Error::msg)?;
    Ok(Arc::new(budget))
}

/// Opens the `--tenant-budget` record in the state directory (an unusable one is an error
/// now, on the terminal); `None` without per-tenant caps.
fn open_tenant_budget(opts: &Options) -> anyhow::Result<Option<TenantBudget>> {
    if opts.tenant_budget.is_empty() {
        return Ok(None);
    }
    let state_dir = match &opts.state_dir {
        Some(d) => std::path::absolute(d).with_context(|| d.display().to_string())?,
        None => default_state_dir().map_err(anyhow::Error::msg)?,
    };
    let (caps, max, dir) = (
        opts.tenant_budget.clone(),
        opts.tenant_max,
        state_dir.clone(),
    );
    let budget = start_io::within(
        "tenant budget state directory",
        &state_dir,
        start_io::TIMEOUT,
        move || TenantBudget::open(caps, &dir, max, system_clock()),
    )?
    .map_err(anyhow::Error::msg)?;
    Ok(Some(budget))
}

/// Where the replay history is kept: `--state-dir` (or its default), named after the
/// canonical endpoint and the token file's real path (or the environment), so every spelling
/// of one mount's account finds the same history. Without a usable directory the history
/// stays in memory, and the log says so.
fn replay_history_place(
    opts: &Options,
    endpoint: &str,
    token_file: Option<&Path>,
) -> anyhow::Result<Option<Place>> {
    let dir = match &opts.state_dir {
        Some(d) => std::path::absolute(d).map_err(|e| format!("{}: {e}", d.display())),
        None => default_state_dir(),
    };
    let token_source = match token_file {
        Some(p) => {
            let path = p.to_owned();
            let real = start_io::within("token file", p, start_io::TIMEOUT, move || {
                std::fs::canonicalize(&path).unwrap_or(path)
            })?;
            format!("file {}", real.display())
        }
        None => token::TokenSource::Environment.to_string(),
    };
    Ok(match dir {
        Ok(dir) => Some(Place::new(&dir, &format!("{endpoint}\0{token_source}"))),
        Err(e) => {
            tracing::warn!(
                "replay history kept in memory only ({e}): after a restart, bytes served before \
                 it are not recognised if the upstream sends them again"
            );
            None
        }
    })
}

/// The prefetcher's settings from the command line.
fn prefetch_config(
    opts: &Options,
    token_file: Option<token::TokenFile>,
    budget: Arc<Budget>,
    first_answer: Arc<FirstAnswerCell>,
    replay_history: Option<Place>,
) -> PrefetchConfig {
    let mut prefetch = PrefetchConfig::for_capacity(opts.buffer_size);
    prefetch.rate_limit = opts.rate_limit;
    prefetch.max_in_flight = opts.max_in_flight;
    prefetch.quota_retry = opts.quota_retry;
    prefetch.backoff_cap = opts.max_backoff;
    prefetch.backoff_base = prefetch.backoff_base.min(opts.max_backoff);
    prefetch.mix_local = opts.mix_local;
    prefetch.token_file = token_file;
    prefetch.budget = budget;
    prefetch.first_answer = Some(first_answer);
    prefetch.replay_history = replay_history;
    prefetch
}

/// The endpoint as `/status` and messages show it: without any user or password in the URL
/// (none gets this far; the one masking function says so again).
fn shown_endpoint(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    mask_credentials(shown.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_says_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let e = anyhow::Error::new(token::TokenError::Read {
            path: "/t".into(),
            source: io,
        })
        .context("outer");
        assert_eq!(
            message(&e),
            "outer: cannot read token file /t: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn status_never_shows_url_credentials() {
        let url = url::Url::parse("https://user:secret@api.example/x").expect("url");
        assert_eq!(shown_endpoint(&url), "https://api.example/x");
    }
}
