//! Shared pieces of the integration tests: an emulator, a mounted `qrypt-fs` that unmounts on
//! drop, the usual ways to mount it, raw reads through the kernel, `/status` parsing, and a
//! provenance check of served bytes against what the emulator recorded.
#![allow(dead_code, unused_imports)]

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use qrypt_emulator::{Emulator, EmulatorConfig, Fault, RateLimit};

pub const TOKEN: &str = "emulator-token";
pub const BIN: &str = env!("CARGO_BIN_EXE_qrypt-fs");

/// The directory this test run's directly started mounts keep their state in (replay
/// history, budget): as root the default is /var/lib/qrypt-fs, which a test run must not
/// fill. It outlives every mount of the run (a daemon outlives the command that started it);
/// `cargo clean` removes it.
pub fn run_state_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the run's state directory");
        dir
    })
}

/// `qrypt-fs --state-dir` [`run_state_dir`]: the binary run directly, as a user would.
pub fn qrypt_fs() -> Command {
    let mut c = Command::new(BIN);
    c.arg("--state-dir").arg(run_state_dir());
    c
}

/// A benchmark's or a trace's setting from the environment, parsed; `None` when unset or not
/// a `T`.
pub fn env_setting<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

pub fn emulator() -> Emulator {
    default_signal_dispositions();
    Emulator::start(EmulatorConfig {
        record: true,
        ..EmulatorConfig::default()
    })
    .expect("start emulator")
}

/// Gives every signal its default action in the test process, once, so the readers the tests
/// start inherit defaults. A test run started in the background by a shell (SIGINT and SIGQUIT
/// ignored) or under nohup (SIGHUP ignored) would otherwise pass those ignored dispositions on
/// through exec, and a reader that ignores a signal rightly keeps waiting when it gets one.
pub fn default_signal_dispositions() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use nix::sys::signal::{SigHandler, Signal, signal};
        for sig in [
            Signal::SIGHUP,
            Signal::SIGINT,
            Signal::SIGQUIT,
            Signal::SIGTERM,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
        ] {
            // SAFETY: SIG_DFL installs no handler code; only an ignored disposition is reset
            // (the test harness installs no handlers for these).
            let _ = unsafe { signal(sig, SigHandler::SigDfl) };
        }
    });
}

/// A running `qrypt-fs -f` on a temporary directory. Drop stops it and makes sure nothing stays
/// mounted, even when the test failed half-way.
pub struct Mount {
    dir: PathBuf,
    /// The mount point when the test gave none.
    _own_dir: Option<tempfile::TempDir>,
    pub child: Option<Child>,
    pub log: PathBuf,
    _logdir: tempfile::TempDir,
    /// The `--state-dir` given when the test gave none: the replay history a test leaves
    /// goes with it, never into the user's default state directory.
    _state_dir: Option<tempfile::TempDir>,
}

pub struct MountBuilder {
    args: Vec<String>,
    env_token: Option<String>,
    rate_limit: String,
    /// A program (and its arguments) that execs qrypt-fs, e.g. to change its privileges.
    wrapper: Vec<String>,
    /// Mount here instead of on a fresh temporary directory.
    at: Option<PathBuf>,
}

impl MountBuilder {
    pub fn new(emu: &Emulator) -> MountBuilder {
        default_signal_dispositions();
        MountBuilder {
            args: vec!["--endpoint".into(), emu.url()],
            env_token: Some(TOKEN.into()),
            rate_limit: "off".into(),
            wrapper: Vec::new(),
            at: None,
        }
    }

    /// Mounts on `dir` (an empty directory the test keeps), e.g. to mount the same place
    /// again after a restart.
    pub fn at(mut self, dir: &Path) -> Self {
        self.at = Some(dir.to_owned());
        self
    }

    /// Runs qrypt-fs through `wrapper`, which must exec it (so the pid stays the daemon's).
    pub fn wrapped_in(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Client pacing; tests default to `off` so they run at loopback speed.
    pub fn rate_limit(mut self, r: &str) -> Self {
        self.rate_limit = r.into();
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    pub fn token(mut self, t: Option<&str>) -> Self {
        self.env_token = t.map(str::to_owned);
        self
    }

    /// Starts it in the foreground and waits until the mount answers.
    pub fn mount(self) -> Mount {
        let (dir, own_dir) = match self.at {
            Some(p) => (p, None),
            None => {
                let d = tempfile::tempdir().expect("tempdir");
                (d.path().to_owned(), Some(d))
            }
        };
        let logdir = tempfile::tempdir().expect("tempdir");
        let log = logdir.path().join("qrypt-fs.log");
        let gives_state_dir = self
            .args
            .iter()
            .any(|a| a == "--state-dir" || a.contains("state_dir="));
        let state_dir = (!gives_state_dir).then(|| tempfile::tempdir().expect("tempdir"));
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("-f")
            .args(["--rate-limit", &self.rate_limit])
            .args(&self.args)
            .args(
                state_dir
                    .iter()
                    .flat_map(|d| [OsStr::new("--state-dir"), d.path().as_os_str()]),
            )
            .arg(&dir)
            .env_remove("QRYPT_TOKEN")
            .env("RUST_LOG", "qrypt_fs=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"));
        if let Some(t) = &self.env_token {
            cmd.env("QRYPT_TOKEN", t);
        }
        let child = cmd.spawn().expect("spawn qrypt-fs");
        let mut m = Mount {
            dir,
            _own_dir: own_dir,
            child: Some(child),
            log,
            _logdir: logdir,
            _state_dir: state_dir,
        };
        m.wait_mounted();
        m
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = path.to_string_lossy();
    mounts.lines().any(|l| {
        l.split(' ')
            .nth(1)
            .map(|m| m.replace("\\040", " "))
            .as_deref()
            == Some(&p)
    })
}

impl Mount {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn random(&self) -> PathBuf {
        self.path().join("random")
    }

    fn wait_mounted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if is_mounted(self.path()) && self.path().join("status").exists() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "qrypt-fs exited ({st}) before mounting: {}",
                        self.log_text()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("mount did not come up: {}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    pub fn status(&self) -> HashMap<String, String> {
        parse_status(&std::fs::read_to_string(self.path().join("status")).expect("read status"))
    }

    pub fn status_u64(&self, key: &str) -> u64 {
        let s = self.status();
        s.get(key)
            .unwrap_or_else(|| panic!("no {key} in status: {s:?}"))
            .parse()
            .unwrap_or_else(|_| panic!("{key} not a number: {s:?}"))
    }

    /// Waits until `/status` satisfies `f`, or panics with the last status seen.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&HashMap<String, String>) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if f(&s) {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; status: {s:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the buffer is full, i.e. less than one request's unit (1 KiB) is free.
    pub fn wait_full(&self) {
        self.wait_status("a full buffer", Duration::from_secs(20), |s| {
            let num = |k: &str| s.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            num("capacity_bytes") - num("buffered_bytes") < 1024
        });
    }

    /// Waits until at least `n` bytes are buffered.
    pub fn wait_buffered(&self, n: u64) {
        self.wait_status(
            &format!("{n} buffered bytes"),
            Duration::from_secs(20),
            |s| {
                s.get("buffered_bytes")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    >= n
            },
        );
    }

    /// One of the status files (`status`, `status.json`, `metrics`) as text.
    pub fn read_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name))
            .unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    pub fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.read_file("status.json")).expect("status.json is JSON")
    }

    /// Asks the daemon to reread its token and retry at once.
    pub fn sighup(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
    }

    /// SIGTERM and wait for exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        wait_timeout(&mut child, Duration::from_secs(5))
            .expect("qrypt-fs did not exit after SIGTERM")
    }
}

impl Mount {
    /// SIGKILL, as a crash or the OOM killer would: nothing is flushed or closed in order.
    /// The dead filesystem is detached, so its mount point can be mounted again.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
        let _ = nix::mount::umount2(self.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

pub fn wait_timeout(child: &mut Child, t: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + t;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            // A test may have stopped it (a hung filesystem): a stopped daemon would keep
            // SIGTERM pending and leave its mount hanging.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if wait_timeout(&mut child, Duration::from_secs(3)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if is_mounted(self.path()) {
            let _ = nix::mount::umount2(self.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A mount with a 64 KiB buffer (so the first fill is one request) and quick retries.
pub fn quick_retries(emu: &Emulator) -> MountBuilder {
    MountBuilder::new(emu).args([
        "--buffer-size",
        "64K",
        "--max-backoff",
        "0.3",
        "--request-timeout",
        "2",
    ])
}

/// A 64 KiB mount whose buffer is full; nothing moves `served_bytes` but reads.
pub fn full_mount(emu: &Emulator) -> Mount {
    let m = MountBuilder::new(emu)
        .args(["--buffer-size", "64K"])
        .mount();
    m.wait_full();
    m
}

/// A 64 KiB mount on an upstream that answers every request with 503, retrying quickly:
/// readers of the empty buffer wait.
pub fn failing_mount(emu: &Emulator, extra: &[&str]) -> Mount {
    emu.set_fault(Fault::Status(503), None);
    MountBuilder::new(emu)
        .args(["--max-backoff", "0.3", "--buffer-size", "64K"])
        .args(extra.iter().copied())
        .mount()
}

/// Lazily unmounts whatever is mounted on its path when dropped, so that a test that fails
/// half-way leaves nothing mounted.
pub struct DetachOnDrop<P: AsRef<Path>>(pub P);

impl<P: AsRef<Path>> DetachOnDrop<P> {
    pub fn path(&self) -> &Path {
        self.0.as_ref()
    }
}

impl<P: AsRef<Path>> Drop for DetachOnDrop<P> {
    fn drop(&mut self) {
        if is_mounted(self.path()) {
            let _ = nix::mount::umount2(self.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A temporary directory to mount on; unmounted on drop, whatever the test did.
pub fn mount_point() -> DetachOnDrop<tempfile::TempDir> {
    DetachOnDrop(tempfile::tempdir().expect("tempdir"))
}

/// Mounts a tmpfs with `options` (e.g. `size=64k`) on the existing directory `dir`, until the
/// guard is dropped.
pub fn mount_tmpfs(dir: &Path, options: &str) -> DetachOnDrop<PathBuf> {
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some(options),
    )
    .expect("mount tmpfs");
    DetachOnDrop(dir.to_owned())
}

/// Waits for `state`, then checks that a read on the empty buffer fails with EIO at once
/// (the states in which the upstream cannot recover by itself). Returns the open file.
pub fn assert_fails_fast(m: &Mount, state: &str) -> File {
    m.wait_status(state, Duration::from_secs(5), |s| s["state"] == state);
    let f = open_random(m);
    let t = Instant::now();
    assert_eq!(
        read_once(&f, 32).expect_err("EIO").raw_os_error(),
        Some(libc::EIO)
    );
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    f
}

pub fn parse_status(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The value of `key` in a parsed `/status`, as a number.
pub fn status_num<T: std::str::FromStr>(s: &HashMap<String, String>, key: &str) -> T {
    s.get(key)
        .unwrap_or_else(|| panic!("no {key} in status: {s:#?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{key} not a number: {s:#?}"))
}

/// One `read(2)` of up to `len` bytes.
pub fn read_once(f: &File, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    // std's File::read is one read(2), EINTR included (no retry).
    let n = std::io::Read::read(&mut &*f, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

pub fn open_random(m: &Mount) -> File {
    File::open(m.random()).expect("open random")
}

pub fn open_nonblocking(path: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("open O_NONBLOCK")
}

/// Reads at least `n` bytes from the mount's `/random` in reads of 4 KiB, keeping each read
/// apart (provenance checks take them one by one).
pub fn read_in_4k(m: &Mount, n: usize) -> Vec<Vec<u8>> {
    let f = open_random(m);
    let mut reads = Vec::new();
    let mut total = 0;
    while total < n {
        let r = read_once(&f, 4096).expect("read");
        total += r.len();
        reads.push(r);
    }
    reads
}

/// Reads at least `n` bytes in reads of 4 KiB, checking that every read is a run of good
/// blocks the emulator sent and that no byte was handed out twice.
pub fn read_checked(emu: &Emulator, m: &Mount, n: usize) -> Vec<Vec<u8>> {
    let reads = read_in_4k(m, n);
    let prov = Provenance::from(emu);
    reads.iter().for_each(|r| prov.check_run(r));
    assert_disjoint(&reads);
    reads
}

/// Reads exactly `n` bytes with as many reads as it takes.
pub fn read_exact(path: &Path, n: usize) -> Vec<u8> {
    let mut f = File::open(path).expect("open");
    let mut buf = vec![0u8; n];
    f.read_exact(&mut buf).expect("read_exact");
    buf
}

/// Knows every block the emulator sent in correct responses, and checks that served bytes are
/// runs of those blocks, and that no byte was served twice.
pub struct Provenance {
    /// First 16 bytes of each good block -> (record index, block index).
    heads: HashMap<[u8; 16], Vec<u8>>,
    /// Any 16-byte window of a good block -> the block's head, for reads that start mid-block.
    windows: HashMap<[u8; 16], ([u8; 16], usize)>,
    bad: HashSet<[u8; 16]>,
}

impl Provenance {
    pub fn from(emu: &Emulator) -> Provenance {
        let mut p = Provenance {
            heads: HashMap::new(),
            windows: HashMap::new(),
            bad: HashSet::new(),
        };
        for r in emu.records() {
            for block in r.blocks.chunks(1024) {
                if block.len() < 16 {
                    continue;
                }
                let head: [u8; 16] = block[..16].try_into().expect("16");
                if r.status == 200 && r.fault.is_none() && block.len() == 1024 {
                    for off in 0..=(1024 - 16) {
                        let w: [u8; 16] = block[off..off + 16].try_into().expect("16");
                        p.windows.insert(w, (head, off));
                    }
                    p.heads.insert(head, block.to_vec());
                } else {
                    for off in 0..=(block.len() - 16) {
                        p.bad.insert(block[off..off + 16].try_into().expect("16"));
                    }
                }
            }
        }
        p
    }

    /// A read too short for `check_run`: inside one good block, or across two.
    fn check_short(&self, data: &[u8]) {
        let blocks: Vec<&Vec<u8>> = self.heads.values().collect();
        let inside = blocks
            .iter()
            .any(|b| b.windows(data.len()).any(|w| w == data));
        let across = (1..data.len()).any(|k| {
            blocks.iter().any(|b| b.ends_with(&data[..k]))
                && blocks.iter().any(|b| b.starts_with(&data[k..]))
        });
        assert!(inside || across, "a short read matches no good block");
    }

    /// True if `data` contains any 16-byte run the emulator sent, good or bad.
    pub fn knows_any(&self, data: &[u8]) -> bool {
        data.windows(16).any(|w| {
            let k: [u8; 16] = w.try_into().expect("16");
            self.windows.contains_key(&k) || self.bad.contains(&k)
        })
    }

    /// Panics unless `data` (one read's bytes, >= 32 long) is a run of good blocks: it starts
    /// somewhere inside a good block and continues through whole good blocks.
    pub fn check_run(&self, data: &[u8]) {
        if data.len() < 32 {
            return self.check_short(data);
        }
        // The first window wholly inside one block: a read may start in the last 15 bytes of a
        // block, so its first 16 bytes may span two blocks.
        let found = (0..16).find_map(|k| {
            let w: [u8; 16] = data[k..k + 16].try_into().expect("16");
            assert!(
                !self.bad.contains(&w),
                "served bytes from a rejected response"
            );
            self.windows.get(&w).map(|&(head, off)| (k, head, off))
        });
        let Some((k, head, off)) = found else {
            panic!(
                "served bytes that the emulator never sent in a good response: a read of {} \
                 bytes starting {:02x?}",
                data.len(),
                &data[..16]
            );
        };
        let (mut block, mut rest) = if off >= k {
            (&self.heads[&head][off - k..], data)
        } else {
            // The first k bytes end some good block, and `head` starts right after them.
            assert_eq!(off, 0, "run does not line up with block boundaries");
            assert!(
                self.heads.values().any(|b| b.ends_with(&data[..k])),
                "first bytes of a read end no good block"
            );
            (&self.heads[&head][..], &data[k..])
        };
        loop {
            let n = rest.len().min(block.len());
            assert_eq!(
                &rest[..n],
                &block[..n],
                "served bytes differ from the block sent"
            );
            rest = &rest[n..];
            if rest.is_empty() {
                return;
            }
            if rest.len() >= 16 {
                let h: [u8; 16] = rest[..16].try_into().expect("16");
                block = self
                    .heads
                    .get(&h)
                    .expect("run continues into bytes that do not start a good block");
            } else {
                assert!(
                    self.heads.keys().any(|k| k.starts_with(rest)),
                    "tail of a read matches no good block"
                );
                return;
            }
        }
    }
}

/// Panics if any 16-byte run appears twice, at any offset, across all `reads` (random data
/// never repeats a 16-byte run, so a repeat means bytes were handed out twice).
pub fn assert_disjoint(reads: &[Vec<u8>]) {
    let mut seen = HashSet::new();
    for r in reads {
        for w in r.windows(16) {
            let k: [u8; 16] = w.try_into().expect("16");
            assert!(seen.insert(k), "a 16-byte run was handed out twice");
        }
    }
}

pub fn run_cmd(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd).args(args).output().expect("run command")
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Fails (never skips) when a program the tests need is missing.
pub fn require_program(program: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{program} is missing: run scripts/install-test-deps.sh"
    );
}

/// The live child processes of `pid` (from its main thread's `children` list).
pub fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A FUSE daemon stopped with SIGSTOP: a lookup, open or read of a file in its mount hangs
/// until it is continued. Drop continues it, so a failing test never leaves a hung mount (the
/// mount's own Drop then ends the daemon).
pub struct Stopped(nix::unistd::Pid);

impl Stopped {
    pub fn stop(m: &Mount) -> Stopped {
        let pid = nix::unistd::Pid::from_raw(m.pid());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        let stopped = Stopped(pid);
        let state = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the command name's closing parenthesis.
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while state() != Some('T') {
            assert!(
                std::time::Instant::now() < deadline,
                "not stopped: {:?}",
                state()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// SIGKILLs a mount's supervisor (which unmounts when its server dies) and waits until it is
/// dead: a SIGKILL of the server after it leaves a stale mount, as a crash of everything would.
pub fn kill_supervisor(m: &Mount) {
    kill_supervisor_of(m.pid());
}

/// [`kill_supervisor`] for a server started by other means than [`Mount`].
pub fn kill_supervisor_of(server: i32) {
    for pid in children_of(server) {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "qrypt-superv" {
            continue;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        // A zombie until the server goes.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
        {
            assert!(Instant::now() < deadline, "supervisor still alive");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A python3 that other users may run (not one under root's home).
pub fn shared_python() -> &'static str {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a python3 in /usr/bin or /usr/local/bin: run scripts/install-test-deps.sh")
}

/// The next line a reader process printed, trimmed.
pub fn next_line(out: &mut std::io::BufReader<std::process::ChildStdout>) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    out.read_line(&mut line).expect("a line from the reader");
    line.trim().to_owned()
}
