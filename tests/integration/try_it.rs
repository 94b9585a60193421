//! `scripts/try-it.sh` as a new user runs it (on the debug binaries cargo built for the tests,
//! through `TRY_IT_BIN_DIR`): it serves at the emulator's full speed, a second copy on the same
//! mount point is refused with qrypt-fs's own message and touches nothing of the first, a stale
//! mount point is refused and left as it was, and stopping removes exactly its own mount and
//! processes, with nothing logged at WARN or ERROR on a clean run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/try-it.sh");

/// Where qrypt-fs was built; the emulator's binary (another crate of the workspace, which
/// cargo does not build for this crate's tests) is built there too if it is not yet.
fn bin_dir() -> PathBuf {
    let dir = Path::new(BIN).parent().expect("bin dir").to_path_buf();
    if !dir.join("qrypt-emulator").exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args([
                "build",
                "--locked",
                "-p",
                "qrypt-emulator",
                "--bin",
                "qrypt-emulator",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.ends_with("release") {
            build.arg("--release");
        }
        assert!(build.status().expect("cargo build").success());
    }
    assert!(
        dir.join("qrypt-emulator").exists(),
        "no qrypt-emulator next to {BIN}"
    );
    dir
}

fn try_it(mountpoint: &Path) -> Command {
    let mut c = Command::new(SCRIPT);
    c.arg(mountpoint)
        .env("TRY_IT_BIN_DIR", bin_dir())
        .env_remove("RUST_LOG")
        .env_remove("QRYPT_TOKEN")
        .stdin(Stdio::null());
    c
}

/// A running try-it.sh; its stdout lines arrive on `lines`. Drop stops it (SIGTERM).
struct TryIt {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl TryIt {
    fn start(mountpoint: &Path) -> TryIt {
        let mut child = try_it(mountpoint)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run try-it.sh");
        let (tx, lines) = mpsc::channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        TryIt {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line starting with `prefix`; panics with everything seen so far if none comes.
    fn wait_line(&mut self, prefix: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.starts_with(prefix);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line {prefix:?} from try-it.sh; output:\n{}",
            self.seen.join("\n")
        );
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM (what Ctrl-C amounts to) and the exit status; the rest of the output is in `seen`.
    fn stop(&mut self) -> std::process::ExitStatus {
        signal(self.pid(), nix::sys::signal::Signal::SIGTERM);
        let st = wait_timeout(&mut self.child, Duration::from_secs(10)).expect("try-it.sh exits");
        // The readers end when the pipes close.
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
        st
    }
}

impl Drop for TryIt {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.pid(), nix::sys::signal::Signal::SIGTERM);
            if wait_timeout(&mut self.child, Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

fn alive(pid: i32) -> bool {
    // A zombie is gone for our purposes; the script reaps its children.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn a_second_copy_on_the_same_mount_point_leaves_the_first_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("qrypt");
    let mut first = TryIt::start(&mnt);
    first.wait_line("--- serving on", Duration::from_secs(60));
    assert!(is_mounted(&mnt));
    let mut kids: Vec<(i32, String)> = children_of(first.pid())
        .into_iter()
        .map(|p| (p, comm(p)))
        .collect();
    kids.sort_by(|a, b| a.1.cmp(&b.1));
    let names: Vec<&str> = kids.iter().map(|k| k.1.as_str()).collect();
    assert_eq!(names, ["qrypt-emulator", "qrypt-fs"], "{kids:?}");
    // Full speed: the emulator is not rate-limited, so neither is the client.
    let status = parse_status(&std::fs::read_to_string(mnt.join("status")).expect("status"));
    assert_eq!(status["rate_limit"], "off");

    let second = try_it(&mnt).output().expect("second try-it.sh");
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "qrypt-fs: {} is already a FUSE mount point; unmount it first",
            mnt.display()
        )),
        "{err}"
    );
    // The first is untouched: same mount, same processes, still serving.
    assert!(is_mounted(&mnt));
    for (pid, name) in &kids {
        assert!(alive(*pid), "{name} ({pid}) of the first copy died");
    }
    assert_eq!(read_exact(&mnt.join("random"), 64).len(), 64);

    let st = first.stop();
    let out = first.seen.join("\n");
    assert_eq!(st.code(), Some(0), "{out}");
    assert!(!is_mounted(&mnt), "mount left behind");
    for (pid, name) in &kids {
        assert!(!alive(*pid), "{name} ({pid}) left running");
    }
    assert!(
        out.contains("--- no warning or error logged"),
        "a clean run logged warnings:\n{out}"
    );
}

#[test]
fn a_stale_mount_point_is_refused_and_left_as_it_was() {
    let emu = emulator();
    let mut m = MountBuilder::new(&emu).mount();
    // SIGKILL of everything (the supervisor first): no unmount, so the mount point is stale.
    kill_supervisor(&m);
    let mut child = m.child.take().expect("child");
    child.kill().expect("kill");
    child.wait().expect("wait");
    // statfs always asks the daemon (stat may be answered from the attribute cache).
    assert_eq!(
        nix::sys::statfs::statfs(m.path()).err(),
        Some(nix::errno::Errno::ENOTCONN)
    );

    let out = try_it(m.path()).output().expect("try-it.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "qrypt-fs: {} is a stale FUSE mount (the daemon that served it is gone). Recover \
             with `umount -l {}`",
            m.path().display(),
            m.path().display()
        )),
        "{stderr}"
    );
    // Still there, still stale: not ours to remove (the guard detaches it).
    assert!(is_mounted(m.path()));
}
