//! `/random` behaves like a device: waiting, interrupts, non-blocking readers, poll, timeouts,
//! and clean shutdown, each driven through a real mount.

use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::select::{FdSet, select};
use nix::sys::time::TimeVal;

/// A mount whose upstream fails with 503 until `emu.clear_fault()`; retries are quick.
fn poll_in(f: &std::fs::File, timeout_ms: u16) -> (i32, i16) {
    let mut pfd = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut pfd, PollTimeout::from(timeout_ms)).expect("poll");
    (n, pfd[0].revents().map_or(0, |r| r.bits()))
}

#[test]
fn nonblocking_read_gets_eagain_never_a_wait() {
    let emu = emulator();
    let m = failing_mount(&emu, &[]);
    let f = open_nonblocking(&m.random());
    for size in [1usize, 32, 4096] {
        let t = Instant::now();
        let err = read_once(&f, size).expect_err("empty buffer");
        assert_eq!(err.raw_os_error(), Some(libc::EAGAIN));
        assert!(t.elapsed() < Duration::from_millis(200));
    }
    emu.clear_fault();
    m.wait_full();
    assert_eq!(read_once(&f, 32).expect("data now").len(), 32);
}

#[test]
fn poll_sleeps_then_wakes_when_upstream_recovers() {
    let emu = emulator();
    let m = failing_mount(&emu, &[]);
    let f = open_random(&m);
    assert_eq!(poll_in(&f, 300), (0, 0), "not readable while empty");
    let (tx, rx) = mpsc::channel();
    let f2 = f.try_clone().expect("dup");
    thread::spawn(move || {
        let t = Instant::now();
        let r = poll_in(&f2, 10_000);
        let _ = tx.send((r, t.elapsed()));
    });
    thread::sleep(Duration::from_millis(500));
    assert!(rx.try_recv().is_err(), "poll returned before data");
    emu.clear_fault();
    let ((n, revents), waited) = rx.recv_timeout(Duration::from_secs(10)).expect("poll woke");
    assert_eq!(n, 1);
    assert!(revents & libc::POLLIN != 0);
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    // Readable means a read does not wait.
    let f3 = open_nonblocking(&m.random());
    assert_eq!(read_once(&f3, 256).expect("read").len(), 256);
}

#[test]
fn blocked_head_is_killed_by_sigint_within_half_a_second() {
    blocked_head_is_killed_within_half_a_second(nix::sys::signal::Signal::SIGINT);
}

#[test]
fn blocked_head_is_killed_by_sigterm_within_half_a_second() {
    blocked_head_is_killed_within_half_a_second(nix::sys::signal::Signal::SIGTERM);
}

fn blocked_head_is_killed_within_half_a_second(signal: nix::sys::signal::Signal) {
    let emu = emulator();
    let m = failing_mount(&emu, &[]);
    let mut head = Command::new("head")
        .args(["-c", "32"])
        .arg(m.random())
        .stdout(Stdio::piped())
        .spawn()
        .expect("head");
    thread::sleep(Duration::from_millis(500));
    assert!(
        head.try_wait().expect("wait").is_none(),
        "head should be waiting"
    );
    assert_eq!(m.status_u64("waiting_readers"), 1);
    let t = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(head.id() as i32), signal).expect("kill");
    let st = wait_timeout(&mut head, Duration::from_secs(2)).expect("head ended");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(signal as i32));
    m.wait_status("no waiting reader", Duration::from_secs(2), |s| {
        s["waiting_readers"] == "0"
    });
}

extern "C" fn noop(_: libc::c_int) {}

#[test]
fn handled_signal_ends_the_wait_with_eintr() {
    let emu = emulator();
    let m = failing_mount(&emu, &[]);
    // A handler (SA_RESTART even): the read must still end with EINTR, as on a device.
    // SAFETY: installing a no-op handler for SIGUSR1.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = noop as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let f = open_random(&m);
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let _ = tx.send(nix::unistd::gettid().as_raw());
        let t = Instant::now();
        (read_once(&f, 64), t)
    });
    let tid = rx.recv().expect("tid");
    thread::sleep(Duration::from_millis(400));
    let sent = Instant::now();
    // SAFETY: signalling our own thread.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) };
    let (result, _) = reader.join().expect("reader");
    assert_eq!(
        result.expect_err("interrupted").raw_os_error(),
        Some(libc::EINTR)
    );
    assert!(
        sent.elapsed() < Duration::from_millis(500),
        "{:?}",
        sent.elapsed()
    );
}

/// `dd` (which catches SIGINT) reading 32 bytes under `timeout(1)`, which holds a POSIX timer:
/// one queued signal counted for the user all along (`SigQ`, what the watchdog judges).
fn dd_under_timeout(m: &Mount) -> std::process::Child {
    Command::new("timeout")
        .args([
            "30",
            "dd",
            "bs=32",
            "count=1",
            "status=none",
            "of=/dev/null",
        ])
        .arg(format!("if={}", m.random().display()))
        .spawn()
        .expect("timeout dd")
}

#[test]
fn ctrl_c_frees_a_reader_with_handlers_within_half_a_second_while_its_user_holds_a_timer() {
    let emu = emulator();
    let m = failing_mount(&emu, &[]);
    for round in 0..3 {
        // Round 0 is the mount's first interrupted request: the kernel then stops sending
        // interrupts (fuser answers ENOSYS), and later waits wake nothing on a caught signal.
        let mut waiting: Vec<_> = (0..5).map(|_| dd_under_timeout(&m)).collect();
        m.wait_status("5 waiting readers", Duration::from_secs(5), |s| {
            s["waiting_readers"] == "5"
        });
        // Long enough for the watchdog to settle on a quiet count.
        thread::sleep(Duration::from_millis(1500));
        let mut first = waiting.remove(0);
        let dd = children_of(first.id() as i32);
        assert_eq!(dd.len(), 1, "{dd:?}");
        let t = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(dd[0]),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("kill");
        let st = wait_timeout(&mut first, Duration::from_secs(3)).expect("dd ended");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "round {round}: {:?}",
            t.elapsed()
        );
        assert!(!st.success());
        // The others still wait: nothing but the signalled one was answered.
        assert_eq!(m.status_u64("waiting_readers"), 4);
        // The readers first: once `timeout` is gone they are no longer its children.
        for mut c in waiting {
            for p in children_of(c.id() as i32) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = c.wait();
        }
        m.wait_status("no waiting reader", Duration::from_secs(5), |s| {
            s["waiting_readers"] == "0"
        });
    }
}

#[test]
fn status_and_ls_answer_while_a_reader_waits() {
    let emu = emulator();
    let m = failing_mount(&emu, &[]);
    let path = m.random();
    let reader = thread::spawn(move || read_exact(&path, 100));
    // The reader may wait before the first 503 is back: both, then.
    m.wait_status(
        "a waiting reader, backing off",
        Duration::from_secs(5),
        |s| s["waiting_readers"] == "1" && s["state"] == "backing off",
    );
    for _ in 0..20 {
        let t = Instant::now();
        let s = m.status();
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "/status slow: {:?}",
            t.elapsed()
        );
        assert_eq!(s["waiting_readers"], "1");
        assert_eq!(s["state"], "backing off", "{s:?}");
        assert!(s["failures"].contains("http_503"));
        assert!(std::fs::read_dir(m.path()).expect("ls").count() == 4);
        assert!(std::fs::metadata(m.random()).is_ok());
    }
    emu.clear_fault();
    // The waiting read completes after recovery, with its full count.
    let got = reader.join().expect("reader");
    assert_eq!(got.len(), 100);
    Provenance::from(&emu).check_run(&got);
}

/// Starts a blocking read of `len` bytes on its own open of `/random` once `waiting` readers
/// are queued, and waits until it is queued too, so the queue order is the start order.
fn queue_reader(m: &Mount, len: usize, waiting: u64) -> thread::JoinHandle<(Vec<u8>, Instant)> {
    let f = open_random(m);
    let reader = thread::spawn(move || {
        let got = read_once(&f, len).expect("read");
        (got, Instant::now())
    });
    m.wait_status("the reader queued", Duration::from_secs(3), |s| {
        s["waiting_readers"] == (waiting + 1).to_string()
    });
    reader
}

#[test]
fn waiting_readers_are_served_first_come_first_served() {
    let emu = emulator();
    let m = failing_mount(&emu, &[]);
    let readers: Vec<_> = (0..3).map(|i| queue_reader(&m, 32, i)).collect();
    emu.clear_fault();
    let got: Vec<Vec<u8>> = readers
        .into_iter()
        .map(|r| r.join().expect("reader").0)
        .collect();
    assert!(got.iter().all(|g| g.len() == 32));
    // In queue order, the three reads are consecutive bytes of what the emulator sent.
    Provenance::from(&emu).check_run(&got.concat());
}

#[test]
fn a_large_waiting_read_does_not_starve_a_small_one() {
    let emu = emulator();
    let m = failing_mount(&emu, &[]);
    let large = queue_reader(&m, 1 << 20, 0);
    let small = queue_reader(&m, 32, 1);
    let recovered = Instant::now();
    emu.clear_fault();
    let (large, large_at) = large.join().expect("large");
    let (small, small_at) = small.join().expect("small");
    // The large read takes what is there (at least 256 bytes) instead of holding the queue
    // until a whole MiB has arrived; the small one follows at once.
    assert!(
        large.len() >= 256 && large.len() < 1 << 20,
        "{}",
        large.len()
    );
    assert_eq!(small.len(), 32);
    assert!(large_at <= small_at);
    assert!(small_at - recovered < Duration::from_secs(3));
    Provenance::from(&emu).check_run(&[large, small].concat());
}

#[test]
fn a_read_the_buffer_can_satisfy_is_answered_at_once() {
    let emu = emulator();
    let m = MountBuilder::new(&emu)
        .args(["--buffer-size", "4M"])
        .mount();
    m.wait_full();
    let f = open_random(&m);
    let mut slowest = Duration::ZERO;
    for size in [1usize, 32, 256, 4096, 65536].iter().cycle().take(200) {
        let t = Instant::now();
        assert_eq!(read_once(&f, *size).expect("read").len(), *size);
        slowest = slowest.max(t.elapsed());
    }
    // A loose bound (a FUSE round trip is tens of microseconds): no read waited for a fetch.
    assert!(slowest < Duration::from_millis(100), "{slowest:?}");
}

fn select_readable(f: &std::fs::File, timeout: Duration) -> bool {
    let mut set = FdSet::new();
    set.insert(f.as_fd());
    let mut tv = TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _);
    let n = select(None, &mut set, None, None, &mut tv).expect("select");
    n == 1 && set.contains(f.as_fd())
}

#[test]
fn select_and_epoll_sleep_then_wake_like_poll() {
    let emu = emulator();
    let m = failing_mount(&emu, &[]);
    let f = open_random(&m);
    assert!(!select_readable(&f, Duration::from_millis(300)));
    let epoll = Arc::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll_create1"));
    epoll
        .add(&f, EpollEvent::new(EpollFlags::EPOLLIN, 7))
        .expect("epoll_ctl");
    let epoll_wait = move |ms: u16| -> usize {
        let mut out = [EpollEvent::empty()];
        epoll.wait(&mut out, ms).expect("epoll_wait")
    };
    assert_eq!(epoll_wait(300), 0, "not readable while empty");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(epoll_wait(10_000));
    });
    thread::sleep(Duration::from_millis(300));
    assert!(rx.try_recv().is_err(), "epoll returned before data");
    emu.clear_fault();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).expect("woke"), 1);
    assert!(select_readable(&f, Duration::from_secs(5)));
    assert_eq!(read_once(&f, 256).expect("read").len(), 256);
}

#[test]
fn waiting_small_read_completes_with_full_count_after_recovery() {
    let emu = emulator();
    let m = failing_mount(&emu, &[]);
    let f = open_random(&m);
    let reader = thread::spawn(move || read_once(&f, 200));
    thread::sleep(Duration::from_millis(700));
    emu.clear_fault();
    let got = reader.join().expect("join").expect("read");
    assert_eq!(got.len(), 200, "a read of <= 256 bytes is never short");
}

#[test]
fn rejected_token_gives_eio_at_once() {
    let emu = Emulator::start(EmulatorConfig {
        tokens: vec!["some-other-token".into()],
        ..EmulatorConfig::default()
    })
    .expect("emulator");
    // Past the start's check (which would end the mount: first_contact.rs).
    let m = MountBuilder::new(&emu)
        .args(["--startup-timeout", "0"])
        .mount();
    let f = assert_fails_fast(&m, "unauthorized");
    let (n, revents) = poll_in(&f, 1000);
    assert_eq!(n, 1, "poll reports the error state at once");
    assert!(revents & libc::POLLERR != 0);
}

#[test]
fn read_timeout_turns_a_long_wait_into_eio() {
    let emu = emulator();
    let m = failing_mount(&emu, &["--read-timeout", "0.6"]);
    let f = open_random(&m);
    let t = Instant::now();
    let err = read_once(&f, 32).expect_err("timeout");
    let waited = t.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
}

#[test]
fn sigterm_answers_waiting_readers_unmounts_and_exits_zero() {
    let emu = emulator();
    let mut m = failing_mount(&emu, &[]);
    let f = open_random(&m);
    let reader = thread::spawn(move || {
        let r = read_once(&f, 32);
        (r, f)
    });
    m.wait_status("a waiting reader", Duration::from_secs(3), |s| {
        s["waiting_readers"] == "1"
    });
    let t = Instant::now();
    let st = m.stop();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(st.code(), Some(0));
    let (r, f) = reader.join().expect("reader");
    assert_eq!(r.expect_err("EIO").raw_os_error(), Some(libc::EIO));
    // Unmounted (lazily: our file was still open), and the open file is dead.
    assert!(!is_mounted(m.path()));
    assert!(read_once(&f, 32).is_err());
}

#[test]
fn sigint_with_a_full_buffer_exits_zero_and_unmounts() {
    let emu = emulator();
    let mut m = MountBuilder::new(&emu).mount();
    m.wait_full();
    let mut child = m.child.take().expect("child");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("kill");
    let st = wait_timeout(&mut child, Duration::from_secs(2)).expect("exited");
    assert_eq!(st.code(), Some(0));
    assert!(!is_mounted(m.path()));
}

#[test]
fn umount_from_outside_ends_the_daemon_cleanly() {
    let emu = emulator();
    let mut m = MountBuilder::new(&emu).mount();
    let st = Command::new("umount")
        .arg(m.path())
        .status()
        .expect("umount");
    assert!(st.success());
    let mut child = m.child.take().expect("child");
    let st = wait_timeout(&mut child, Duration::from_secs(2)).expect("daemon exited");
    assert_eq!(st.code(), Some(0), "{}", m.log_text());
}

#[test]
fn stale_mount_point_gets_a_useful_message() {
    let emu = emulator();
    let mut m = MountBuilder::new(&emu).mount();
    // Its supervisor first (it would unmount when the server dies), then the server: what a
    // crash of everything leaves.
    kill_supervisor(&m);
    let mut child = m.child.take().expect("child");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let out = Command::new(BIN)
        .args(["-f", "--endpoint", &emu.url()])
        .arg(m.path())
        .env("QRYPT_TOKEN", TOKEN)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("stale") && err.contains("umount -l"), "{err}");
    // The documented recovery works.
    assert!(
        Command::new("umount")
            .arg("-l")
            .arg(m.path())
            .status()
            .expect("umount")
            .success()
    );
    assert!(!is_mounted(m.path()));
}

#[test]
fn sixteen_concurrent_readers_of_mixed_sizes_never_share_a_byte() {
    let emu = emulator();
    // A small buffer, so readers really queue and wait for refills.
    let m = MountBuilder::new(&emu)
        .args(["--buffer-size", "32K"])
        .mount();
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let path = m.random();
            thread::spawn(move || {
                let f = std::fs::File::open(&path).expect("open");
                let sizes = [16usize, 32, 64, 256, 1000, 4096, 65_536, 1 << 20];
                (0..12)
                    .map(|k| {
                        let size = sizes[(t * 3 + k) % sizes.len()];
                        let r = read_once(&f, size).expect("read");
                        if size <= 256 {
                            assert_eq!(r.len(), size, "small read short");
                        } else {
                            assert!(r.len() >= 256, "large read returned {}", r.len());
                        }
                        r
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let reads: Vec<Vec<u8>> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("reader"))
        .collect();
    assert_eq!(reads.len(), 16 * 12);
    assert_disjoint(&reads);
    let prov = Provenance::from(&emu);
    reads.iter().for_each(|r| prov.check_run(r));
}

fn locked_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmLck:"))
        .expect("VmLck");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmLck kB")
}

#[test]
fn buffer_is_locked_in_memory() {
    let emu = emulator();
    let m = MountBuilder::new(&emu).arg("--buffer-size=4M").mount();
    assert_eq!(m.status()["memory_locked"], "yes");
    // Locked as it fills.
    m.wait_full();
    assert!(
        locked_kib(m.pid()) >= 4096,
        "VmLck {} kB",
        locked_kib(m.pid())
    );
    assert!(!m.log_text().contains("could not lock"));
}

#[test]
fn a_buffer_that_cannot_be_locked_is_reported_once_and_still_served() {
    require_program("setpriv");
    let emu = emulator();
    // Without CAP_IPC_LOCK and with a 64 KiB RLIMIT_MEMLOCK, a 4 MiB buffer cannot be locked.
    let m = MountBuilder::new(&emu)
        .arg("--buffer-size=4M")
        .wrapped_in(&[
            "setpriv",
            "--bounding-set",
            "-ipc_lock",
            "prlimit",
            "--memlock=65536",
        ])
        .mount();
    assert_eq!(m.status()["memory_locked"], "no");
    assert_eq!(locked_kib(m.pid()), 0);
    // Records taken after the read: the response it came from may still be in flight at mount.
    let got = read_exact(&m.random(), 4096);
    Provenance::from(&emu).check_run(&got);
    assert_eq!(m.status()["memory_locked"], "no");
    assert_eq!(
        m.log_text().matches("could not lock").count(),
        1,
        "{}",
        m.log_text()
    );
}
