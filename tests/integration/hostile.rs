//! Hostile readers: every way a local program can get at `/random` other than `read(2)`, log
//! floods, signals a device would not let end a read, and many waiting readers. Each test drives
//! a real mount and asserts the exact outcome.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, Flock, FlockArg, OFlag};
use nix::fcntl::{PosixFadviseAdvice, SpliceFFlags, copy_file_range, splice};
use nix::sys::sendfile::sendfile;
use nix::sys::signal::{self, Signal};
use nix::sys::stat::{FchmodatFlags, Mode, fchmodat};
use nix::unistd::{self, AccessFlags, Pid, Whence};

/// Maps `/random` MAP_PRIVATE, says `mapped`, waits for a line on stdin, then touches the page
/// and prints it.
const MAPPER: &str = "
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ)
sys.stdout.write('mapped\\n')
sys.stdout.flush()
sys.stdin.readline()
sys.stdout.buffer.write(m[:4096])
sys.stdout.flush()
sys.exit(3)
";

/// A mapper that has mapped the file and waits for [`touch`].
fn spawn_mapper(m: &Mount) -> std::process::Child {
    let mut child = Command::new("python3")
        .args(["-c", MAPPER])
        .arg(m.random())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let mut said = [0u8; 7];
    std::io::Read::read_exact(child.stdout.as_mut().expect("stdout"), &mut said)
        .expect("mapper output");
    assert_eq!(&said, b"mapped\n");
    child
}

/// Lets a mapper touch its page; returns what it printed and how it ended.
fn touch(mut mapper: std::process::Child) -> (Vec<u8>, std::process::ExitStatus) {
    mapper
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("write");
    let out = mapper.wait_with_output().expect("wait");
    (out.stdout, out.status)
}

fn assert_sigbus(out: &[u8], st: std::process::ExitStatus) {
    assert_eq!(st.signal(), Some(libc::SIGBUS), "mapper ended with {st:?}");
    assert!(out.is_empty(), "a mapper saw {} bytes", out.len());
}

#[test]
fn two_mappers_both_get_sigbus_and_no_byte_leaves_the_pool() {
    require_program("python3");
    let emu = emulator();
    let m = full_mount(&emu);
    let served = m.status_u64("served_bytes");
    // Both map before either touches: before the fix both saw the same 4096 pool bytes.
    let (a, b) = (spawn_mapper(&m), spawn_mapper(&m));
    let (out_a, st_a) = touch(a);
    let (out_b, st_b) = touch(b);
    assert_sigbus(&out_a, st_a);
    assert_sigbus(&out_b, st_b);
    assert_eq!(m.status_u64("served_bytes"), served);
    assert!(m.log_text().contains("refused a page-cache fill"));
}

#[test]
fn a_reader_after_a_mapper_gets_fresh_bytes_of_its_own() {
    require_program("python3");
    let emu = emulator();
    let m = full_mount(&emu);
    let served = m.status_u64("served_bytes");
    let mapper = spawn_mapper(&m);
    let (out, st) = touch(mapper);
    assert_sigbus(&out, st);
    let f = open_random(&m);
    let data = read_once(&f, 4096).expect("read");
    assert_eq!(data.len(), 4096);
    Provenance::from(&emu).check_run(&data);
    assert_eq!(m.status_u64("served_bytes"), served + 4096);
}

#[test]
fn readahead_and_fadvise_put_nothing_in_the_page_cache() {
    require_program("python3");
    let emu = emulator();
    let m = full_mount(&emu);
    let served = m.status_u64("served_bytes");
    let f = open_random(&m);
    // SAFETY: plain syscalls on an open descriptor.
    let ra = unsafe { libc::readahead(f.as_raw_fd(), 0, 4096) };
    assert_eq!(
        ra, 0,
        "readahead itself reports no error (fills are asynchronous)"
    );
    let fa = nix::fcntl::posix_fadvise(&f, 0, 4096, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
    assert_eq!(fa, Ok(()));
    thread::sleep(Duration::from_millis(200));
    // The kernel may keep the failed folio, but never up to date: it holds no pool byte
    // (none was served) and a mapping still faults.
    assert_eq!(m.status_u64("served_bytes"), served);
    let (out, st) = touch(spawn_mapper(&m));
    assert_sigbus(&out, st);
    // The descriptor still reads fresh bytes directly.
    let data = read_once(&f, 1024).expect("read");
    Provenance::from(&emu).check_run(&data);
    assert_eq!(m.status_u64("served_bytes"), served + 1024);
}

fn errno_of(r: isize) -> Option<i32> {
    (r < 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

#[test]
fn splice_sendfile_and_copy_file_range_fail_cleanly_and_serve_nothing() {
    let emu = emulator();
    let m = full_mount(&emu);
    let served = m.status_u64("served_bytes");
    let f = open_random(&m);
    let tmp = tempfile::tempfile().expect("tempfile");
    let (_pipe_r, pipe_w) = nix::unistd::pipe().expect("pipe");
    // splice and sendfile go through the page cache (filemap_splice_read): refused.
    let r = splice(&f, None, &pipe_w, None, 4096, SpliceFFlags::empty());
    assert_eq!(r.err(), Some(Errno::EIO), "splice");
    let r = sendfile(&pipe_w, &f, None, 4096);
    assert_eq!(r.err(), Some(Errno::EIO), "sendfile to a pipe");
    // To a regular file the kernel refuses before asking us; across filesystems
    // copy_file_range is EXDEV (callers fall back to read(2)).
    let r = sendfile(&tmp, &f, None, 4096);
    assert_eq!(r.err(), Some(Errno::EINVAL), "sendfile to a file");
    let r = copy_file_range(&f, None, &tmp, None, 4096);
    assert_eq!(r.err(), Some(Errno::EXDEV), "copy_file_range");
    assert_eq!(tmp.metadata().expect("stat").len(), 0);
    assert_eq!(m.status_u64("served_bytes"), served);
}

#[test]
fn o_direct_and_large_reads_are_still_served() {
    let emu = emulator();
    let m = full_mount(&emu);
    let served = m.status_u64("served_bytes");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.random())
        .expect("open O_DIRECT");
    let a = read_once(&f, 4096).expect("O_DIRECT read");
    let b = read_once(&open_random(&m), 2048).expect("read");
    let p = Provenance::from(&emu);
    p.check_run(&a);
    p.check_run(&b);
    assert_disjoint(&[a.clone(), b.clone()]);
    assert_eq!(
        m.status_u64("served_bytes"),
        served + (a.len() + b.len()) as u64
    );
}

/// A read-only loop device on a file (`losetup -r`), detached on drop.
struct LoopDevice(std::path::PathBuf);

impl LoopDevice {
    /// `None` (and why, on stderr) where loop devices cannot be had: no `/dev/loop-control`
    /// (a container), or `losetup` could not attach.
    fn attach(file: &std::path::Path) -> Option<LoopDevice> {
        if !std::path::Path::new("/dev/loop-control").exists() {
            eprintln!("SKIPPED: no /dev/loop-control here, so no loop device to test with");
            return None;
        }
        require_program("losetup");
        let out = Command::new("losetup")
            .args(["-r", "-f", "--show"])
            .arg(file)
            .output()
            .expect("losetup");
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || dev.is_empty() {
            eprintln!(
                "SKIPPED: losetup could not attach a loop device: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(LoopDevice(dev.into()))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        // The device lets go of the file (and so the mount) once it is detached.
        let backing = std::path::Path::new("/sys/block")
            .join(self.0.file_name().unwrap_or_default())
            .join("loop/backing_file");
        let deadline = Instant::now() + Duration::from_secs(5);
        while backing.exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One read of a page from the block device, opened anew (as `dd` does), with `flags`.
fn read_device(dev: &std::path::Path, flags: i32) -> std::io::Result<Vec<u8>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(dev)?;
    // O_DIRECT wants an aligned buffer: a page-aligned page inside a larger one.
    let mut buf = vec![0u8; 2 * 4096];
    let at = buf.as_ptr().align_offset(4096);
    let n = std::io::Read::read(&mut &f, &mut buf[at..at + 4096])?;
    Ok(buf[at..at + n].to_vec())
}

#[test]
fn a_loop_device_on_random_gets_eio_and_never_pool_bytes() {
    let emu = emulator();
    let m = full_mount(&emu);
    let served = m.status_u64("served_bytes");
    // Declared after the mount: detached before it unmounts.
    let Some(dev) = LoopDevice::attach(&m.random()) else {
        return;
    };
    // While someone holds the device open its page cache stays: before the fix two readers
    // both got the same 4096 pool bytes from it, and served_bytes rose by 4096 only.
    let _holder = File::open(&dev.0).expect("open the loop device");
    let reads: Vec<_> = [0, 0, libc::O_DIRECT, 0]
        .into_iter()
        .map(|flags| read_device(&dev.0, flags))
        .collect();
    let got: Vec<&Vec<u8>> = reads.iter().filter_map(|r| r.as_ref().ok()).collect();
    let provenance = Provenance::from(&emu);
    for (i, a) in got.iter().enumerate() {
        assert!(
            !provenance.knows_any(a),
            "the loop device showed pool bytes (read {i})"
        );
        for b in &got[i + 1..] {
            assert!(
                a.is_empty() || a != b,
                "two reads of the loop device saw the same bytes"
            );
        }
    }
    for r in &reads {
        assert_eq!(
            r.as_ref().map(Vec::len).map_err(|e| e.raw_os_error()),
            Err(Some(libc::EIO))
        );
    }
    assert_eq!(m.status_u64("served_bytes"), served);
    assert!(
        m.log_text()
            .contains("refused a read of /random by kernel thread"),
        "{}",
        m.log_text()
    );
    // A reader's own read is still served.
    let data = read_once(&open_random(&m), 512).expect("read");
    provenance.check_run(&data);
    assert_eq!(m.status_u64("served_bytes"), served + 512);
}

/// A mount that logs as shipped (the tests' `RUST_LOG=qrypt_fs=debug` would hide fuser's own
/// warnings, which is what a flood was made of).
fn mount_with_default_logging(emu: &Emulator) -> Mount {
    let m = MountBuilder::new(emu)
        .args(["--buffer-size", "64K"])
        .wrapped_in(&["env", "-u", "RUST_LOG"])
        .mount();
    m.wait_full();
    m
}

fn log_lines(m: &Mount) -> usize {
    m.log_text().lines().count()
}

/// `ioctl(fd, cmd, &mut int)`, returning errno or 0.
fn ioctl_errno(f: &std::fs::File, cmd: libc::c_ulong) -> i32 {
    let mut v: libc::c_int = 0;
    // SAFETY: every command used here reads or writes at most one int.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), cmd, &mut v as *mut libc::c_int) };
    if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    }
}

/// `_IOR('R', 0x00, int)`: /dev/random's RNDGETENTCNT, well-formed, so the kernel forwards it.
const RNDGETENTCNT: libc::c_ulong = 0x8004_5200;

#[test]
fn ten_thousand_ioctls_are_refused_quietly() {
    let emu = emulator();
    let m = mount_with_default_logging(&emu);
    let before = log_lines(&m);
    for path in [m.random(), m.path().join("status")] {
        let f = File::open(&path).expect("open");
        for _ in 0..5_000 {
            assert_eq!(ioctl_errno(&f, RNDGETENTCNT), libc::ENOTTY);
        }
    }
    thread::sleep(Duration::from_millis(200));
    let log = m.log_text();
    assert!(!log.contains("Not Implemented"), "{log}");
    assert_eq!(log_lines(&m), before, "new log lines: {log}");
}

fn errno_of_int(r: libc::c_int) -> i32 {
    if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    }
}

fn cstr(p: &std::path::Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL")
}

#[test]
fn every_unsupported_operation_gets_its_errno_and_no_log_line() {
    let emu = emulator();
    let m = mount_with_default_logging(&emu);
    let before = log_lines(&m);
    let random = cstr(&m.random());
    let status = m.path().join("status");
    let newdir = cstr(&m.path().join("d"));
    let name = c"user.qrypt";
    for _ in 0..100 {
        let f = File::open(m.random()).expect("open");
        let mut buf = [0u8; 64];
        // nix has no xattr calls.
        // SAFETY: valid NUL-terminated paths and buffers of the stated sizes.
        unsafe {
            let xattr = |r: isize| errno_of(r);
            assert_eq!(
                xattr(libc::getxattr(
                    random.as_ptr(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    64
                )),
                Some(libc::EOPNOTSUPP),
                "getxattr"
            );
            assert_eq!(
                xattr(libc::listxattr(
                    random.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    64
                )),
                Some(libc::EOPNOTSUPP),
                "listxattr"
            );
            assert_eq!(
                errno_of_int(libc::setxattr(
                    random.as_ptr(),
                    name.as_ptr(),
                    buf.as_ptr().cast(),
                    1,
                    0
                )),
                libc::EROFS,
                "setxattr"
            );
        }
        assert_eq!(unistd::fsync(&f), Ok(()), "fsync");
        assert_eq!(unistd::fdatasync(&f), Ok(()), "fdatasync");
        let f = match Flock::lock(f, FlockArg::LockShared) {
            Ok(locked) => locked.unlock().map_err(|(_, e)| e),
            Err((_, e)) => Err(e),
        }
        .expect("flock");
        assert_eq!(unistd::access(random.as_c_str(), AccessFlags::R_OK), Ok(()));
        assert_eq!(
            unistd::access(random.as_c_str(), AccessFlags::W_OK),
            Err(Errno::EROFS)
        );
        assert_eq!(
            unistd::mkdir(newdir.as_c_str(), Mode::from_bits_truncate(0o700)),
            Err(Errno::EROFS)
        );
        assert_eq!(unistd::unlink(random.as_c_str()), Err(Errno::EROFS));
        assert_eq!(
            fchmodat(
                AT_FDCWD,
                random.as_c_str(),
                Mode::from_bits_truncate(0o666),
                FchmodatFlags::FollowSymlink
            ),
            Err(Errno::EROFS)
        );
        assert_eq!(unistd::truncate(random.as_c_str(), 0), Err(Errno::EROFS));
        assert_eq!(
            nix::fcntl::open(random.as_c_str(), OFlag::O_WRONLY, Mode::empty()).err(),
            Some(Errno::EROFS)
        );
        assert_eq!(
            unistd::lseek(&f, 0, Whence::SeekData),
            Err(Errno::ESPIPE),
            "SEEK_DATA on /random"
        );
        let s = File::open(&status).expect("open status");
        assert_eq!(
            unistd::lseek(&s, 0, Whence::SeekData),
            Err(Errno::ENXIO),
            "SEEK_DATA on /status"
        );
    }
    thread::sleep(Duration::from_millis(200));
    let log = m.log_text();
    assert!(!log.contains("Not Implemented"), "{log}");
    assert_eq!(log_lines(&m), before, "new log lines: {log}");
}

/// A mount whose upstream answers 503 until `emu.clear_fault()`, so reads wait.
fn wait_waiting(m: &Mount, n: u64) {
    m.wait_status(
        &format!("{n} waiting readers"),
        Duration::from_secs(20),
        |s| s["waiting_readers"] == n.to_string(),
    );
}

fn kill(pid: u32, sig: i32) {
    let sig = Signal::try_from(sig).expect("a signal");
    assert_eq!(signal::kill(Pid::from_raw(pid as i32), sig), Ok(()));
}

/// A reader thread that unblocks `SIGS` and calls libc `read(fd, 32)` (no retry on EINTR, as
/// in C), while every other thread blocks them: a signal sent to the process is then queued
/// even when ignored, and can only go to the reader, as in a program with a reader thread.
/// MODE: `default` (SIG_DFL), `ignore` (SIG_IGN) or `catch` (a handler). Prints `ready`, then
/// read's result (byte count or -errno).
const THREADED_READER: &str = r#"
import ctypes, os, signal, sys, threading
path, mode = sys.argv[1], sys.argv[2]
sigs = [getattr(signal, n) for n in sys.argv[3].split(",")]
for s in sigs:
    if mode == "ignore":
        signal.signal(s, signal.SIG_IGN)
    elif mode == "catch":
        signal.signal(s, lambda *a: None)
signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(path, os.O_RDONLY)
res = {}
def reader():
    signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)
    buf = ctypes.create_string_buffer(32)
    n = libc.read(fd, buf, 32)
    res["r"] = n if n >= 0 else -ctypes.get_errno()
t = threading.Thread(target=reader)
t.start()
print("ready", flush=True)
t.join()
print(res["r"], flush=True)
"#;

struct Reader {
    child: std::process::Child,
    out: Option<std::io::BufReader<std::process::ChildStdout>>,
}

impl Reader {
    fn start(m: &Mount, mode: &str, sigs: &str) -> Reader {
        let mut child = Command::new("python3")
            .args(["-c", THREADED_READER])
            .arg(m.random())
            .args([mode, sigs])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        assert_eq!(line(&mut out), "ready");
        Reader {
            child,
            out: Some(out),
        }
    }

    /// The reader's result, or panics if it does not come within `t`.
    fn result(mut self, t: Duration) -> i64 {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut out = self.out.take().expect("stdout");
        thread::spawn(move || {
            let _ = tx.send(line(&mut out));
        });
        let r = rx.recv_timeout(t).expect("reader result in time");
        let _ = wait_timeout(&mut self.child, Duration::from_secs(5));
        r.parse().expect("a number")
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn line(r: &mut impl std::io::BufRead) -> String {
    let mut s = String::new();
    r.read_line(&mut s).expect("read line");
    s.trim().to_owned()
}

/// Sends `sigs` to a waiting reader, checks it still waits after more than a full check, and
/// that it then reads its 32 bytes once the upstream recovers.
fn signals_do_not_interrupt(mode: &str, sigs: &[i32], names: &str) {
    require_program("python3");
    let emu = emulator();
    let m = failing_mount(&emu, &[]);
    let r = Reader::start(&m, mode, names);
    wait_waiting(&m, 1);
    for &s in sigs {
        kill(r.child.id(), s);
    }
    // Longer than the slowest full check (2 s without handlers) and a few ticks.
    thread::sleep(Duration::from_millis(2600));
    assert_eq!(m.status_u64("waiting_readers"), 1, "the wait was ended");
    emu.clear_fault();
    assert_eq!(r.result(Duration::from_secs(10)), 32);
}

#[test]
fn default_ignore_and_continue_signals_do_not_interrupt() {
    signals_do_not_interrupt(
        "default",
        &[libc::SIGCHLD, libc::SIGURG, libc::SIGWINCH, libc::SIGCONT],
        "SIGCHLD,SIGURG,SIGWINCH,SIGCONT",
    );
}

#[test]
fn an_ignored_signal_does_not_interrupt() {
    signals_do_not_interrupt("ignore", &[libc::SIGUSR1, libc::SIGINT], "SIGUSR1,SIGINT");
}

#[test]
fn a_caught_signal_interrupts_with_eintr() {
    require_program("python3");
    let emu = emulator();
    let m = failing_mount(&emu, &[]);
    let r = Reader::start(&m, "catch", "SIGINT");
    wait_waiting(&m, 1);
    let sent = Instant::now();
    kill(r.child.id(), libc::SIGINT);
    assert_eq!(r.result(Duration::from_secs(5)), -i64::from(libc::EINTR));
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    wait_waiting(&m, 0);
}

fn spawn_head(m: &Mount) -> std::process::Child {
    // Default dispositions for every signal: a test run under nohup (SIGHUP ignored, and
    // inherited through exec) must not make SIGHUP a signal that rightly ends no wait.
    Command::new("env")
        .args(["--default-signal", "head", "-c", "32"])
        .arg(m.random())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("head")
}

#[test]
fn sigstop_then_sigcont_does_not_fail_a_plain_read() {
    // Not `head`: coreutils retries a read that failed with EINTR, which would hide the bug.
    require_program("python3");
    let emu = emulator();
    let m = failing_mount(&emu, &[]);
    let r = Reader::start(&m, "default", "SIGCONT");
    wait_waiting(&m, 1);
    kill(r.child.id(), libc::SIGSTOP);
    // Pending for many watchdog rounds: a stop is deferred, as in any killable wait.
    thread::sleep(Duration::from_millis(1000));
    kill(r.child.id(), libc::SIGCONT);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(m.status_u64("waiting_readers"), 1, "the wait was ended");
    emu.clear_fault();
    assert_eq!(r.result(Duration::from_secs(10)), 32);
}

#[test]
fn sigkill_always_ends_the_wait() {
    let emu = emulator();
    let m = failing_mount(&emu, &[]);
    let mut head = spawn_head(&m);
    wait_waiting(&m, 1);
    kill(head.id(), libc::SIGSTOP);
    let sent = Instant::now();
    kill(head.id(), libc::SIGKILL);
    let st = wait_timeout(&mut head, Duration::from_secs(5)).expect("head died");
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    wait_waiting(&m, 0);
}

#[test]
fn two_hundred_waiters_are_all_freed_by_their_signals() {
    let emu = emulator();
    let m = failing_mount(&emu, &[]);
    let heads: Vec<_> = (0..200).map(|_| spawn_head(&m)).collect();
    wait_waiting(&m, 200);
    let sigs = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];
    let sent = Instant::now();
    for (i, h) in heads.iter().enumerate() {
        kill(h.id(), sigs[i % sigs.len()]);
    }
    for (i, mut h) in heads.into_iter().enumerate() {
        let st = wait_timeout(&mut h, Duration::from_secs(10)).expect("head ended");
        assert_eq!(st.signal(), Some(sigs[i % sigs.len()]), "head {i}: {st:?}");
    }
    // Generous: functional, not a timing goal (bench-waiters.sh measures those).
    assert!(
        sent.elapsed() < Duration::from_secs(8),
        "{:?}",
        sent.elapsed()
    );
    wait_waiting(&m, 0);
}

/// N reader threads in one process, each calling libc `read(fd, 32)` with a SIGUSR1 handler
/// installed; prints the thread ids, then each read's result (bytes or -errno), sorted.
const MANY_THREADS: &str = r#"
import ctypes, os, signal, sys, threading
path, n = sys.argv[1], int(sys.argv[2])
signal.signal(signal.SIGUSR1, lambda *a: None)
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(path, os.O_RDONLY)
tids, results, lock = [], [], threading.Lock()
started = threading.Barrier(n + 1)
def reader():
    with lock:
        tids.append(threading.get_native_id())
    started.wait()
    buf = ctypes.create_string_buffer(32)
    r = libc.read(fd, buf, 32)
    with lock:
        results.append(r if r >= 0 else -ctypes.get_errno())
threads = [threading.Thread(target=reader) for _ in range(n)]
for t in threads:
    t.start()
started.wait()
print(" ".join(map(str, tids)), flush=True)
for t in threads:
    t.join()
print(" ".join(map(str, sorted(results))), flush=True)
"#;

#[test]
fn two_hundred_waiting_threads_each_get_eintr_from_their_own_caught_signal() {
    require_program("python3");
    let emu = emulator();
    let m = failing_mount(&emu, &[]);
    let mut child = Command::new("python3")
        .args(["-c", MANY_THREADS])
        .arg(m.random())
        .arg("200")
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let tids: Vec<i32> = line(&mut out)
        .split(' ')
        .map(|t| t.parse().expect("tid"))
        .collect();
    assert_eq!(tids.len(), 200);
    wait_waiting(&m, 200);
    // One thread at a time, by tgkill: its own pending set, not the process's.
    for (i, &tid) in tids.iter().enumerate() {
        // SAFETY: signalling a thread of a child we spawned.
        let r = unsafe {
            libc::syscall(
                libc::SYS_tgkill,
                child.id() as libc::c_int,
                tid,
                libc::SIGUSR1,
            )
        };
        assert_eq!(r, 0, "tgkill thread {i}");
    }
    m.wait_status("every waiter freed", Duration::from_secs(20), |s| {
        s["waiting_readers"] == "0"
    });
    let results = line(&mut out);
    assert_eq!(
        results,
        vec![(-libc::EINTR).to_string(); 200].join(" "),
        "every read ends with EINTR"
    );
    assert!(wait_timeout(&mut child, Duration::from_secs(10)).is_some_and(|s| s.success()));
}

/// Maps 4 pages of `/random` MAP_PRIVATE with `MAP_POPULATE` (argv[2] `populate`) or maps
/// them and `mlock`s them (`mlock`), catching SIGINT as an interactive program would; says
/// `start` before and `returned` after the call.
const POPULATOR: &str = "
import ctypes, mmap, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
signal.signal(signal.SIGINT, lambda *a: None)
fd = os.open(sys.argv[1], os.O_RDONLY)
populate = mmap.MAP_POPULATE if sys.argv[2] == 'populate' else 0
sys.stdout.write('start\\n')
sys.stdout.flush()
addr = libc.mmap(None, 16384, mmap.PROT_READ, mmap.MAP_PRIVATE | populate, fd, 0)
if sys.argv[2] == 'mlock':
    libc.mlock(addr, 16384)
sys.stdout.write('returned\\n')
sys.stdout.flush()
";

/// utime + stime of process `pid`, in seconds.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// MAP_POPULATE and mlock make the kernel fault a private mapping in a loop that re-sends
/// each refused page-cache fill as soon as it fails; only a fatal signal ends it (a caught
/// SIGINT does not). The loop must cost the daemon almost nothing, serve nothing, log almost
/// nothing, and leave real readers served promptly.
fn a_faulting_loop_costs_the_daemon_nothing(mode: &str) {
    require_program("python3");
    let emu = emulator();
    let m = mount_with_default_logging(&emu);
    let served = m.status_u64("served_bytes");
    let lines = log_lines(&m);
    let mut child = Command::new("python3")
        .args(["-c", POPULATOR])
        .arg(m.random())
        .arg(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    assert_eq!(line(&mut out), "start");
    let cpu0 = cpu_seconds(m.pid());
    let t0 = Instant::now();
    // A reader meanwhile: its bytes come as promptly as ever.
    let f = open_random(&m);
    let mut read = 0;
    let mut slowest = Duration::ZERO;
    let mut interrupted = false;
    while t0.elapsed() < Duration::from_secs(2) {
        let t = Instant::now();
        let data = read_once(&f, 32).expect("read");
        slowest = slowest.max(t.elapsed());
        assert_eq!(data.len(), 32);
        read += 32;
        if !interrupted && t0.elapsed() >= Duration::from_secs(1) {
            // A caught signal does not end the kernel's loop.
            kill(child.id(), libc::SIGINT);
            interrupted = true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let cpu = (cpu_seconds(m.pid()) - cpu0) / t0.elapsed().as_secs_f64();
    assert!(
        wait_timeout(&mut child, Duration::ZERO).is_none(),
        "{mode}: the call returned on its own"
    );
    kill(child.id(), libc::SIGKILL);
    let st = wait_timeout(&mut child, Duration::from_secs(5)).expect("SIGKILL ends it");
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    assert!(
        cpu < 0.2,
        "{mode}: the daemon used {:.1}% of a core",
        cpu * 100.0
    );
    assert!(
        slowest < Duration::from_millis(500),
        "{mode}: a read took {slowest:?}"
    );
    assert_eq!(m.status_u64("served_bytes"), served + read);
    let new = log_lines(&m) - lines;
    assert!(new <= 10, "{mode}: {new} new log lines: {}", m.log_text());
    // Nothing the loop left behind keeps a reader from the file.
    assert_eq!(read_once(&f, 32).expect("read").len(), 32);
}

#[test]
fn map_populate_of_random_costs_the_daemon_nothing() {
    a_faulting_loop_costs_the_daemon_nothing("populate");
}

#[test]
fn mlock_of_a_mapping_of_random_costs_the_daemon_nothing() {
    a_faulting_loop_costs_the_daemon_nothing("mlock");
}
