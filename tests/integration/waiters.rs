//! Many waiting readers: one user's cap on waiting reads (`--max-waiters-per-user`, `EBUSY`
//! beyond it) and signals for readers in user namespaces of their own, each driven through a
//! real `allow_other` mount by processes of other uids.

use std::io::BufReader;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// One blocking `read(fd, 32)` through libc (Python's own `os.read` would retry after
/// EINTR), with a SIGUSR1 handler; in a user namespace of its own when asked. Prints `ready`
/// once the file is open, then the read's result: a byte count or `-errno`.
const READER: &str = r#"
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
if sys.argv[2] == "userns" and libc.unshare(0x10000000) != 0:
    print("unshare failed", ctypes.get_errno(), flush=True)
    sys.exit(2)
signal.signal(signal.SIGUSR1, lambda *a: None)
fd = os.open(sys.argv[1], os.O_RDONLY)
print("ready", flush=True)
buf = ctypes.create_string_buffer(32)
r = libc.read(fd, buf, 32)
print(r if r >= 0 else -ctypes.get_errno(), flush=True)
"#;

struct Reader {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Reader {
    /// Starts a reader of `m`'s `/random` as `uid` and waits until its file is open.
    fn start(m: &Mount, uid: u32, userns: bool) -> Reader {
        let mut child = Command::new(shared_python())
            .args(["-c", READER])
            .arg(m.random())
            .arg(if userns { "userns" } else { "plain" })
            .uid(uid)
            .gid(uid)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        assert_eq!(next_line(&mut out), "ready");
        Reader { child, out }
    }

    /// The read's result line, which must come within `within`.
    fn result(&mut self, within: Duration) -> String {
        if self.out.buffer().is_empty() {
            let mut fds = [PollFd::new(self.out.get_ref().as_fd(), PollFlags::POLLIN)];
            let ms = u16::try_from(within.as_millis()).unwrap_or(u16::MAX);
            let ready = poll(&mut fds, PollTimeout::from(ms)).expect("poll");
            assert_eq!(ready, 1, "no answer to the read within {within:?}");
        }
        next_line(&mut self.out)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("kill");
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_waiting(m: &Mount, n: u64) {
    m.wait_status(
        &format!("{n} waiting readers"),
        Duration::from_secs(20),
        |s| s["waiting_readers"] == n.to_string(),
    );
}

#[test]
fn one_user_may_park_only_so_many_waiters_and_namespaced_readers_still_get_eintr() {
    let emu = emulator();
    let m = failing_mount(&emu, &["--allow-other", "--max-waiters-per-user", "2"]);
    let (capped, other) = (4242, 4243);
    let _first = Reader::start(&m, capped, false);
    let _second = Reader::start(&m, capped, true);
    wait_waiting(&m, 2);
    assert_eq!(m.status_u64("refused_waiters"), 0);

    // The third of the same uid is refused at once, user namespace or not.
    for userns in [false, true] {
        let mut third = Reader::start(&m, capped, userns);
        assert_eq!(
            third.result(Duration::from_secs(5)),
            format!("-{}", libc::EBUSY),
            "userns {userns}"
        );
    }
    assert_eq!(m.status_u64("refused_waiters"), 2);
    assert_eq!(
        m.status_json()["refused_waiters"].as_u64(),
        Some(2),
        "/status.json"
    );
    assert!(
        m.read_file("metrics")
            .contains("qrypt_fs_refused_waiters_total 2"),
        "/metrics"
    );
    let log = m.log_text();
    assert!(
        log.contains("uid:4242") && log.contains("--max-waiters-per-user"),
        "{log}"
    );

    // Another uid still waits, each reader in a user namespace of its own, and a caught
    // signal still ends its wait with EINTR. A reader alone in its group is read every second
    // tick: two ticks (450 ms) plus the pass and the reader's reply.
    let mut a = Reader::start(&m, other, true);
    let _b = Reader::start(&m, other, true);
    wait_waiting(&m, 4);
    std::thread::sleep(Duration::from_millis(1000));
    let sent = Instant::now();
    a.signal(nix::sys::signal::Signal::SIGUSR1);
    assert_eq!(
        a.result(Duration::from_secs(5)),
        format!("-{}", libc::EINTR)
    );
    assert!(
        sent.elapsed() < Duration::from_millis(600),
        "{:?}",
        sent.elapsed()
    );
    wait_waiting(&m, 3);
    assert_eq!(m.status_u64("refused_waiters"), 2);
}
