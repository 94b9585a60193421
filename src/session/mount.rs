//! The life of one mount: what runs while it is mounted, and the order things stop in.
//!
//! [`Session::mount`] starts the network runtime with the prefetcher, the watchdog, the FUSE
//! session and the threads that turn signals and an outside unmount into events;
//! [`Session::run`] waits for the first event and shuts down in a fixed order: status says
//! stopping; the pool answers waiting readers (EIO) and wipes the buffer; the filesystem is
//! unmounted (unless that was the event); the runtime, and with it the prefetcher, stops; the
//! session's threads are joined (bounded: see `Threads::join`).
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use anyhow::{Context, anyhow};
use signal_hook::consts::SIGHUP;
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

use crate::fs::fuse_adapter::FuseAdapter;
use crate::fs::mount_options::{FuseOptions, fuse_config};
use crate::fs::{EntropyFs, StatusFormat};
use crate::pool::Pool;
use crate::read_guard::slow_refusal::RefusalPacer;
use crate::refill::{Control, PrefetchConfig, Prefetcher};
use crate::session::background::Ready;
use crate::session::check_upstream::{self, FirstAnswerCell, Verdict};
use crate::status::{Processes, StaticInfo, Status};
use crate::tenant::{TenantConfig, Tenants};
use crate::upstream::EntropyClient;

/// What a mount needs, whatever the client.
pub struct MountConfig {
    pub mountpoint: PathBuf,
    /// A `/dev/fuse` descriptor already mounted on `mountpoint` by `qrypt-fs-mount` (from
    /// systemd's fd store): served as it is, and its unmount left to the service manager.
    pub fuse_fd: Option<std::os::fd::OwnedFd>,
    pub fuse: FuseOptions,
    pub buffer_size: usize,
    pub read_timeout: Option<Duration>,
    /// The most reads one tenant may have waiting (0: no limit).
    pub max_waiters_per_user: usize,
    /// How readers are told apart and capped.
    pub tenants: TenantConfig,
    pub prefetch: PrefetchConfig,
    pub info: StaticInfo,
    /// Wait for the upstream's first answer before reporting ready (None: don't).
    pub startup: Option<StartupCheck>,
    /// Where the fetch channel and the sandbox report, for `/status`.
    pub processes: Arc<Processes>,
    /// Runs once the mount exists, before any thread starts: drops privileges and applies
    /// the sandbox; returns the sandbox's report for `/status`.
    pub after_mount: Option<AfterMount>,
}

/// What [`MountConfig::after_mount`] runs. Its argument locks the whole buffer at once, for
/// when the process will not be allowed to lock it as it fills once privileges are gone.
pub type AfterMount = Box<dyn FnOnce(&dyn Fn()) -> anyhow::Result<String> + Send>;

/// What the start waits for (see [`crate::session::check_upstream`]), and what its messages name.
pub struct StartupCheck {
    pub first_answer: Arc<FirstAnswerCell>,
    pub timeout: Duration,
    /// The base URL, without credentials.
    pub endpoint: String,
    pub api_url: String,
    /// The token file's path, or the environment variable's name.
    pub token_source: String,
}

impl StartupCheck {
    /// Waits for the first answer (the first fill) and judges it.
    fn verdict(&self) -> Verdict {
        let answer = self.first_answer.wait(self.timeout);
        check_upstream::verdict(
            answer.as_ref(),
            &check_upstream::Context {
                endpoint: &self.endpoint,
                api_url: &self.api_url,
                token_source: &self.token_source,
                waited: self.timeout,
            },
        )
    }
}

/// Why the session ends.
enum Event {
    Signal(i32),
    Unmounted,
    /// The prefetch worker stopped on its own (a bug): nothing would refill the buffer, so
    /// stop with an error (and let a supervisor restart us) rather than hang readers.
    WorkerDied(String),
}

/// A live mount. Dropping it without [`Session::run`] leaves the mount to the kernel (it
/// fails with ENOTCONN once the process exits); `run` is the orderly way out.
pub struct Session {
    mountpoint: PathBuf,
    /// Mounted by `qrypt-fs-mount`, not by us (see [`MountConfig::fuse_fd`]).
    handed: bool,
    /// fuser's handle of the mount, forgotten in [`Session::run`] (see [`Session::mount`]).
    fuse: fuser::BackgroundSession,
    runtime: tokio::runtime::Runtime,
    pool: Arc<Pool>,
    status: Arc<Status>,
    refusals: Arc<RefusalPacer>,
    events: mpsc::Receiver<Event>,
    threads: Threads,
}

/// The session's own threads, joined on the way out (see [`Threads::join`]).
struct Threads {
    /// Ends once the pool is shut down (within one tick, 225 ms).
    watchdog: thread::JoinHandle<()>,
    /// Ends after the first SIGINT/SIGTERM; woken by the session itself otherwise.
    signals: thread::JoinHandle<()>,
    signals_handle: signal_hook::iterator::Handle,
    /// Ends when the FUSE session ends, i.e. after the unmount.
    session: thread::JoinHandle<()>,
}

impl Session {
    /// Starts everything, mounts, and reports readiness through `ready`. SIGINT and SIGTERM
    /// (from `signals`) end the session; SIGHUP reloads the token.
    pub fn mount<C: EntropyClient>(
        cfg: MountConfig,
        client: Arc<C>,
        ready: &mut Ready,
        signals: Signals,
    ) -> anyhow::Result<Session> {
        let pool = Arc::new(Pool::new(cfg.buffer_size));
        pool.set_max_waiters(cfg.max_waiters_per_user);
        if !pool.memory_locked() {
            warn!(
                "could not lock the {} byte buffer in memory (RLIMIT_MEMLOCK too low?): entropy \
                 may reach swap; /status shows memory_locked: no",
                cfg.buffer_size
            );
        }
        let status = Arc::new(Status::new(cfg.info).with_processes(cfg.processes.clone()));
        let tenants = Arc::new(Tenants::new(cfg.tenants, crate::budget::system_clock()));
        {
            let view = tenants.clone();
            status.set_tenants(Box::new(move || view.view()));
            let status = status.clone();
            tenants.on_refused(Box::new(move |m| status.record_error(m)));
        }
        let fs = EntropyFs::new(pool.clone(), renderer(&pool, &status), cfg.read_timeout)
            .with_tenants(tenants);
        let refusals = fs.refusals();
        let handed = cfg.fuse_fd.is_some();
        let fuse = match cfg.fuse_fd {
            Some(fd) => {
                let acl = crate::fs::mount_options::acl(cfg.fuse.allow_other, cfg.fuse.allow_root);
                fuser::Session::from_fd(FuseAdapter(fs), fd, acl, fuse_config(&cfg.fuse))
                    .context("cannot serve the FUSE descriptor systemd passed")?
            }
            None => fuser::Session::new(FuseAdapter(fs), &cfg.mountpoint, &fuse_config(&cfg.fuse))
                .with_context(|| format!("cannot mount on {}", cfg.mountpoint.display()))?,
        };
        // The mount exists: privileges go now, and the sandbox closes, while the process has
        // one thread (ids, capabilities and Landlock are each thread's own): every thread
        // started after (FUSE, runtime, watchdog) inherits them.
        if let Some(after) = cfg.after_mount {
            let lock_whole = || pool.prepare(cfg.buffer_size);
            match after(&lock_whole) {
                Ok(report) => cfg.processes.set_sandbox(report),
                Err(e) => {
                    std::mem::forget(fuse);
                    if !handed {
                        let _ = unmount(&cfg.mountpoint);
                    }
                    return Err(e);
                }
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("qrypt-net")
            .enable_all()
            .build()
            .context("runtime")?;
        // Built before the first FUSE request is served: it tells `/status` the budget, the
        // allowance and the replay history, which a read right after mounting must see.
        let prefetcher = Prefetcher::new(client, pool.clone(), status.clone(), cfg.prefetch);
        let mut fuse = fuse.spawn().context("cannot start the FUSE session")?;
        let (control, control_rx) = tokio::sync::mpsc::unbounded_channel();
        let (events, event_rx) = mpsc::channel();
        let worker = runtime.spawn(prefetcher.run(control_rx));
        {
            let (events, pool) = (events.clone(), pool.clone());
            runtime.spawn(async move {
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
        let watchdog =
            crate::read_guard::wait_limits::spawn(pool.clone()).context("watchdog thread")?;
        // We unmount, never fuser: its handle unmounts again when dropped and warns
        // ("Unmount failed: Invalid argument") after our unmount or an outside `umount`. So
        // only the session's thread is watched; the handle is kept and never dropped (its
        // /dev/fuse descriptor closes with the process).
        let fuse_thread = std::mem::replace(&mut fuse.guard, thread::spawn(|| Ok(())));
        let warnings = match cfg.startup.as_ref().map(StartupCheck::verdict) {
            None | Some(Verdict::Ready) => Vec::new(),
            Some(Verdict::Warn(w)) => {
                warn!("{w}");
                vec![w]
            }
            Some(Verdict::Fatal(why)) => {
                // The caller logs it (for syslog or a log file), reports it on the terminal and
                // exits 1.
                status.set_stopping();
                pool.shutdown();
                refusals.shutdown();
                if !handed {
                    let _ = unmount(&cfg.mountpoint);
                }
                std::mem::forget(fuse);
                runtime.shutdown_timeout(Duration::from_millis(500));
                return Err(anyhow!(why));
            }
        };
        ready.succeeded(&warnings);
        info!("mounted on {}", cfg.mountpoint.display());
        let session = {
            let events = events.clone();
            thread::Builder::new()
                .name("qrypt-session".into())
                .spawn(move || {
                    match fuse_thread.join() {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => warn!("FUSE session ended with an error: {e}"),
                        Err(_) => warn!("the FUSE session thread panicked"),
                    }
                    let _ = events.send(Event::Unmounted);
                })
                .context("session thread")?
        };
        let signals_handle = signals.handle();
        let signals = spawn_signal_thread(signals, control, events)?;
        Ok(Session {
            mountpoint: cfg.mountpoint,
            handed,
            fuse,
            runtime,
            pool,
            status,
            refusals,
            events: event_rx,
            threads: Threads {
                watchdog,
                signals,
                signals_handle,
                session,
            },
        })
    }

    /// Unmounts, unless the mount is the service manager's to undo (a handed descriptor: this
    /// process has no privilege to, and its exit ends the FUSE session).
    fn unmount(&self) -> Unmounted {
        if self.handed {
            info!(
                "{} is left to the service manager to unmount",
                self.mountpoint.display()
            );
            return Unmounted::Pending;
        }
        unmount(&self.mountpoint)
    }

    /// Serves until SIGINT/SIGTERM, an outside unmount or the prefetch worker's death, then
    /// answers waiting readers, wipes the buffer and unmounts.
    pub fn run(self) -> anyhow::Result<()> {
        let event = self.events.recv().unwrap_or(Event::Unmounted);
        self.status.set_stopping();
        self.pool.shutdown();
        self.refusals.shutdown();
        let (outcome, unmounted) = match event {
            Event::Signal(sig) => {
                info!("signal {sig}: unmounting {}", self.mountpoint.display());
                (Ok(()), self.unmount())
            }
            Event::Unmounted => {
                info!("{} was unmounted", self.mountpoint.display());
                (Ok(()), Unmounted::Done)
            }
            Event::WorkerDied(why) => {
                error!(
                    "{why}: unmounting {} and exiting",
                    self.mountpoint.display()
                );
                let unmounted = self.unmount();
                (Err(anyhow!(why)), unmounted)
            }
        };
        self.runtime.shutdown_timeout(Duration::from_millis(500));
        std::mem::forget(self.fuse);
        self.threads.join(unmounted);
        info!("stopped");
        outcome
    }
}

/// How long the exit waits for the session's threads in all. Each of them ends on its own
/// once the pool is shut down and the filesystem unmounted; the bound is there only so that a
/// thread stuck in the kernel (a lazy unmount whose FUSE session never ends while a reader
/// holds the file open) cannot hold the exit: such a thread is left to end with the process.
const JOIN_WITHIN: Duration = Duration::from_secs(2);

impl Threads {
    fn join(self, unmounted: Unmounted) {
        // The signal thread waits for signals forever unless told to stop.
        self.signals_handle.close();
        let deadline = std::time::Instant::now() + JOIN_WITHIN;
        // After a lazy or failed unmount the FUSE session (and the thread watching it) ends
        // only when a reader closes its file, maybe never: not waited for; the exit ends it.
        let session = (unmounted == Unmounted::Done).then_some(self.session);
        let named = [
            ("watchdog", Some(self.watchdog)),
            ("signals", Some(self.signals)),
            ("session", session),
        ];
        for (name, handle) in named {
            let Some(handle) = handle else { continue };
            while !handle.is_finished() && std::time::Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if !handle.is_finished() {
                warn!("the {name} thread did not end within {JOIN_WITHIN:?}; exiting without it");
                continue;
            }
            if handle.join().is_err() {
                warn!("the {name} thread panicked");
            }
        }
    }
}

/// Renders a fresh snapshot of the status in each format.
fn renderer(pool: &Arc<Pool>, status: &Arc<Status>) -> crate::fs::StatusRenderer {
    let (pool, status) = (pool.clone(), status.clone());
    Box::new(move |format: StatusFormat| {
        let snap = status.snapshot(&pool);
        match format {
            StatusFormat::Text => snap.to_text(),
            StatusFormat::Json => snap.to_json(),
            StatusFormat::Prometheus => snap.to_prometheus(),
        }
    })
}

/// SIGHUP asks the prefetcher to reload the token; any other signal ends the session.
fn spawn_signal_thread(
    mut signals: Signals,
    control: tokio::sync::mpsc::UnboundedSender<Control>,
    events: mpsc::Sender<Event>,
) -> anyhow::Result<thread::JoinHandle<()>> {
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
        .context("signal thread")
}

/// How an unmount ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unmounted {
    /// Gone: the FUSE session ends now.
    Done,
    /// Detached lazily (the FUSE session ends only when the last open file is closed), or
    /// failed (logged; it ends when the process exits).
    Pending,
}

/// Unmounts; lazily if a reader still holds a file open (the kernel finishes the job when the
/// last file is closed, and our exit makes any later read fail with ENOTCONN). Without
/// privilege, `umount2` gets EPERM for a mount made through fusermount: fusermount unmounts it.
/// A server that started a supervisor (and dropped its privileges) asks the supervisor.
pub(crate) fn unmount(path: &Path) -> Unmounted {
    let (how, notes) = match crate::privsep::supervisor() {
        Some(sup) => sup.unmount(),
        None => unmount_here(path),
    };
    for n in notes {
        if n.contains("failed") {
            warn!("{n}");
        } else {
            info!("{n}");
        }
    }
    how
}

/// Unmounts from this process (the supervisor's way, or a server without one); returns what
/// happened and the lines for the log (the supervisor has no log: the server writes them).
pub(crate) fn unmount_here(path: &Path) -> (Unmounted, Vec<String>) {
    use nix::mount::{MntFlags, umount2};
    match umount2(path, MntFlags::empty()) {
        Ok(()) => (Unmounted::Done, Vec::new()),
        Err(nix::errno::Errno::EBUSY) => {
            let mut notes = vec!["mount busy: detaching lazily".to_owned()];
            if let Err(e) = umount2(path, MntFlags::MNT_DETACH) {
                notes.push(format!("lazy unmount of {} failed: {e}", path.display()));
            }
            (Unmounted::Pending, notes)
        }
        Err(nix::errno::Errno::EPERM) => fusermount_unmount(path),
        Err(e) => (
            Unmounted::Pending,
            vec![format!("unmount of {} failed: {e}", path.display())],
        ),
    }
}

/// Unmounts through the setuid helper, the way an unprivileged mount is undone: `fusermount3
/// -u`, then the older `fusermount -u`; lazily (`-z`) if the mount is busy.
fn fusermount_unmount(path: &Path) -> (Unmounted, Vec<String>) {
    let mut notes = vec!["unmount not permitted: asking fusermount".to_owned()];
    let mut failures = Vec::new();
    for helper in ["fusermount3", "fusermount"] {
        for (flags, how) in [("-u", Unmounted::Done), ("-uz", Unmounted::Pending)] {
            match std::process::Command::new(helper)
                .arg(flags)
                .arg("--")
                .arg(path)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .output()
            {
                Ok(out) if out.status.success() => return (how, notes),
                Ok(out) => failures.push(format!(
                    "{helper} {flags}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                // Not installed: try the next helper.
                Err(e) => {
                    failures.push(format!("{helper}: {e}"));
                    break;
                }
            }
        }
    }
    notes.push(format!(
        "unmount of {} failed: not permitted, and fusermount failed too ({})",
        path.display(),
        failures.join("; ")
    ));
    (Unmounted::Pending, notes)
}
