//! Wiring: checks the configuration, goes to the background, mounts, and serves until a signal
//! or an unmount. [`run_mount`] takes the client, so it runs just as well on a mock.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use fuser::{MountOption, SessionACL};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

use crate::cli::Options;
use crate::daemon::{self, Ready};
use crate::fs::{EntropyFs, StatusFormat};
use crate::logging::{self, LogTarget};
use crate::pool::Pool;
use crate::prefetch::{Control, PrefetchConfig, Prefetcher};
use crate::status::{StaticInfo, Status};
use crate::token;
use crate::upstream::EntropyClient;
use crate::upstream::http::{HttpClient, HttpConfig, parse_endpoint, read_ca_file};

/// What [`run_mount`] needs, whatever the client.
pub struct MountConfig {
    pub mountpoint: PathBuf,
    pub fsname: String,
    pub acl: SessionACL,
    pub default_permissions: bool,
    pub buffer_size: usize,
    pub read_timeout: Option<Duration>,
    pub prefetch: PrefetchConfig,
    pub info: StaticInfo,
}

/// Worker threads for FUSE requests. Reads never block one (waiting reads are parked in the
/// pool), so a few suffice for concurrent readers plus `/status`.
const FUSE_THREADS: usize = 4;

/// Checks a mount point before anything else, so a stale mount gets a useful message.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, String> {
    let stale = || {
        format!(
            "{} is a stale FUSE mount (the daemon that served it is gone). \
             Recover with `umount -l {}` (or `fusermount3 -uz {}`), then mount again",
            path.display(),
            path.display(),
            path.display()
        )
    };
    match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(stale()),
        Err(e) => Err(format!("mount point {}: {e}", path.display())),
        Ok(m) if !m.is_dir() => Err(format!("mount point {} is not a directory", path.display())),
        Ok(_) => {
            let abs = std::fs::canonicalize(path)
                .map_err(|e| format!("mount point {}: {e}", path.display()))?;
            if is_fuse_mount(&abs) {
                // stat may be answered from the kernel's attribute cache; statfs always asks
                // the daemon, so it tells a dead one.
                if nix::sys::statfs::statfs(&abs).err() == Some(nix::errno::Errno::ENOTCONN) {
                    return Err(stale());
                }
                return Err(format!(
                    "{} is already a FUSE mount point; unmount it first (umount {})",
                    abs.display(),
                    abs.display()
                ));
            }
            Ok(abs)
        }
    }
}

fn is_fuse_mount(path: &Path) -> bool {
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
pub fn main(opts: Options) -> Result<(), String> {
    // Everything that can be checked is checked before going to the background, so mistakes
    // are reported on the terminal.
    let (token, token_source) =
        token::load(opts.token_file.as_deref()).map_err(|e| e.to_string())?;
    let endpoint = parse_endpoint(&opts.endpoint).map_err(|e| e.to_string())?;
    let extra_ca_pem = match &opts.ca_cert {
        Some(p) => Some(read_ca_file(p).map_err(|e| e.to_string())?),
        None => None,
    };
    let mountpoint = check_mountpoint(&opts.mountpoint)?;
    let token_file = match &opts.token_file {
        // Absolute (we change directory to /), but not canonical: a symlink in the path is
        // followed at each read, so pointing it elsewhere (a rotated secret) is seen.
        Some(p) => Some(std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let log_file = match &opts.log_file {
        Some(p) => Some(std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };

    let mut ready = if opts.foreground {
        Ready::foreground()
    } else {
        daemon::daemonize().map_err(|e| format!("cannot go to the background: {e}"))?
    };
    let result = (|| {
        // Registered before any other thread exists, so no thread dies of a default action.
        let signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        let target = match (&log_file, opts.foreground) {
            (Some(p), _) => LogTarget::File(p),
            (None, true) => LogTarget::Stderr,
            (None, false) => LogTarget::Syslog,
        };
        logging::init(target, opts.verbose).map_err(|e| format!("log file: {e}"))?;
        let client = HttpClient::new(
            &HttpConfig {
                endpoint: endpoint.clone(),
                extra_ca_pem,
                connect_timeout: opts.connect_timeout,
                request_timeout: opts.request_timeout,
            },
            &token,
        )
        .map_err(|e| e.to_string())?;
        drop(token);
        let mut prefetch = PrefetchConfig::for_capacity(opts.buffer_size);
        prefetch.rate_limit = opts.rate_limit;
        prefetch.max_in_flight = opts.max_in_flight;
        prefetch.quota_retry = opts.quota_retry;
        prefetch.backoff_cap = opts.max_backoff;
        prefetch.backoff_base = prefetch.backoff_base.min(opts.max_backoff);
        prefetch.mix_local = opts.mix_local;
        prefetch.token_file = token_file.clone();
        let cfg = MountConfig {
            mountpoint: mountpoint.clone(),
            fsname: opts.source.clone().unwrap_or_else(|| "qrypt".into()),
            acl: if opts.allow_other {
                SessionACL::All
            } else if opts.allow_root {
                SessionACL::RootAndOwner
            } else {
                SessionACL::Owner
            },
            default_permissions: opts.default_permissions,
            buffer_size: opts.buffer_size,
            read_timeout: opts.read_timeout,
            info: StaticInfo {
                endpoint: shown_endpoint(&endpoint),
                token_source: token_source.to_string(),
                capacity: opts.buffer_size,
                mix_local: opts.mix_local,
                rate_limit: opts.rate_limit.map_or("off".into(), |r| {
                    format!("{}/{}s", r.requests, r.window.as_secs_f64())
                }),
            },
            prefetch,
        };
        run_mount(cfg, Arc::new(client), &mut ready, signals)
    })();
    if let Err(e) = &result {
        ready.failed(e);
    }
    result
}

/// The endpoint as `/status` shows it: without any user or password in the URL.
fn shown_endpoint(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.to_string()
}

enum Event {
    Signal(i32),
    Unmounted,
    /// The prefetch worker stopped on its own (a bug): nothing would refill the buffer, so
    /// stop with an error (and let a supervisor restart us) rather than hang readers.
    WorkerDied(String),
}

/// Mounts, reports readiness, serves until SIGINT/SIGTERM or an outside unmount, then
/// answers waiting readers, wipes the buffer and unmounts.
pub fn run_mount<C: EntropyClient>(
    cfg: MountConfig,
    client: Arc<C>,
    ready: &mut Ready,
    mut signals: Signals,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("qrypt-net")
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let pool = Arc::new(Pool::new(cfg.buffer_size));
    if !pool.memory_locked() {
        warn!(
            "could not lock the {} byte buffer in memory (RLIMIT_MEMLOCK too low?): entropy may \
             reach swap; /status shows memory_locked: no",
            cfg.buffer_size
        );
    }
    let status = Arc::new(Status::new(cfg.info));
    let (control, control_rx) = tokio::sync::mpsc::unbounded_channel();
    let (events, event_rx) = mpsc::channel();
    let worker = rt
        .spawn(Prefetcher::new(client, pool.clone(), status.clone(), cfg.prefetch).run(control_rx));
    {
        let (events, pool) = (events.clone(), pool.clone());
        rt.spawn(async move {
            let outcome = worker.await;
            if !pool.is_shut_down() {
                let why = match outcome {
                    Err(e) if e.is_panic() => "the prefetch worker panicked".to_owned(),
                    Err(e) => format!("the prefetch worker failed: {e}"),
                    Ok(()) => "the prefetch worker stopped".to_owned(),
                };
                let _ = events.send(Event::WorkerDied(why));
            }
        });
    }
    crate::watchdog::spawn(pool.clone()).map_err(|e| format!("watchdog thread: {e}"))?;

    let render = {
        let (pool, status) = (pool.clone(), status.clone());
        Box::new(move |format: StatusFormat| {
            let snap = status.snapshot(&pool);
            match format {
                StatusFormat::Text => snap.to_text(),
                StatusFormat::Json => snap.to_json(),
                StatusFormat::Prometheus => snap.to_prometheus(),
            }
        })
    };
    let fs = EntropyFs::new(pool.clone(), render, cfg.read_timeout);
    let mut fuse_cfg = fuser::Config::default();
    fuse_cfg.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(cfg.fsname.clone()),
        // fuser passes Subtype only to fusermount; as a kernel option it also works for the
        // direct mount, so /proc/mounts says fuse.qrypt-fs.
        MountOption::CUSTOM("subtype=qrypt-fs".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
        MountOption::NoAtime,
    ];
    if cfg.default_permissions {
        fuse_cfg.mount_options.push(MountOption::DefaultPermissions);
    }
    fuse_cfg.acl = cfg.acl;
    fuse_cfg.n_threads = Some(FUSE_THREADS);
    fuse_cfg.clone_fd = true;
    let session = fuser::Session::new(fs, &cfg.mountpoint, &fuse_cfg)
        .map_err(|e| format!("cannot mount on {}: {e}", cfg.mountpoint.display()))?;
    let session = session
        .spawn()
        .map_err(|e| format!("cannot start the FUSE session: {e}"))?;
    ready.succeeded();
    info!("mounted on {}", cfg.mountpoint.display());

    {
        let events = events.clone();
        thread::Builder::new()
            .name("qrypt-session".into())
            .spawn(move || {
                if let Err(e) = session.join() {
                    warn!("FUSE session ended with an error: {e}");
                }
                let _ = events.send(Event::Unmounted);
            })
            .map_err(|e| e.to_string())?;
    }
    thread::Builder::new()
        .name("qrypt-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    let _ = control.send(Control::Reload);
                } else {
                    let _ = events.send(Event::Signal(sig));
                    break;
                }
            }
        })
        .map_err(|e| e.to_string())?;

    let event = event_rx.recv().unwrap_or(Event::Unmounted);
    status.set_stopping();
    pool.shutdown();
    let outcome = match event {
        Event::Signal(sig) => {
            info!("signal {sig}: unmounting {}", cfg.mountpoint.display());
            unmount(&cfg.mountpoint);
            Ok(())
        }
        Event::Unmounted => {
            info!("{} was unmounted", cfg.mountpoint.display());
            Ok(())
        }
        Event::WorkerDied(why) => {
            error!("{why}: unmounting {} and exiting", cfg.mountpoint.display());
            unmount(&cfg.mountpoint);
            Err(why)
        }
    };
    rt.shutdown_timeout(Duration::from_millis(500));
    info!("stopped");
    outcome
}

/// Unmounts; lazily if a reader still holds a file open (the kernel finishes the job when the
/// last file is closed, and our exit makes any later read fail with ENOTCONN).
fn unmount(path: &Path) {
    use nix::mount::{MntFlags, umount2};
    match umount2(path, MntFlags::empty()) {
        Ok(()) => {}
        Err(nix::errno::Errno::EBUSY) => {
            info!("mount busy: detaching lazily");
            if let Err(e) = umount2(path, MntFlags::MNT_DETACH) {
                warn!("lazy unmount of {} failed: {e}", path.display());
            }
        }
        Err(e) => warn!("unmount of {} failed: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_never_shows_url_credentials() {
        let url = url::Url::parse("https://user:secret@api.example/x").expect("url");
        assert_eq!(shown_endpoint(&url), "https://api.example/x");
    }
}
