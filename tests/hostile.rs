//! Hostile readers: every way a local program can get at `/random` other than `read(2)`, log
//! floods, signals a device would not let end a read, and many waiting readers. Each test drives
//! a real mount and asserts the exact outcome.
mod common;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::*;

/// A mount with a full buffer; nothing moves `served_bytes` but reads.
fn full_mount(emu: &Emulator) -> Mount {
    let m = MountBuilder::new(emu)
        .args(["--buffer-size", "64K"])
        .mount();
    m.wait_full();
    m
}

/// Maps `/random` MAP_PRIVATE, waits for a line on stdin, then touches the page and prints it.
const MAPPER: &str = "
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ)
sys.stdin.readline()
sys.stdout.buffer.write(m[:4096])
sys.stdout.flush()
sys.exit(3)
";

fn spawn_mapper(m: &Mount) -> std::process::Child {
    Command::new("python3")
        .args(["-c", MAPPER])
        .arg(m.random())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3")
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
    thread::sleep(Duration::from_millis(300));
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
    thread::sleep(Duration::from_millis(200));
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
    // SAFETY: as above.
    let fa = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 4096, libc::POSIX_FADV_WILLNEED) };
    assert_eq!(fa, 0);
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
    let (mut p, tmp) = ([0i32; 2], tempfile::tempfile().expect("tempfile"));
    // SAFETY: a two-int array for pipe(2).
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    let fd = f.as_raw_fd();
    // splice and sendfile go through the page cache (filemap_splice_read): refused.
    // SAFETY: valid descriptors, null offsets (the file is a stream).
    let r = unsafe {
        libc::splice(
            fd,
            std::ptr::null_mut(),
            p[1],
            std::ptr::null_mut(),
            4096,
            0,
        )
    };
    assert_eq!(errno_of(r), Some(libc::EIO), "splice");
    // SAFETY: as above.
    let r = unsafe { libc::sendfile(p[1], fd, std::ptr::null_mut(), 4096) };
    assert_eq!(errno_of(r), Some(libc::EIO), "sendfile to a pipe");
    // To a regular file the kernel refuses before asking us; across filesystems
    // copy_file_range is EXDEV (callers fall back to read(2)).
    // SAFETY: as above.
    let r = unsafe { libc::sendfile(tmp.as_raw_fd(), fd, std::ptr::null_mut(), 4096) };
    assert_eq!(errno_of(r), Some(libc::EINVAL), "sendfile to a file");
    // SAFETY: as above.
    let r = unsafe {
        libc::copy_file_range(
            fd,
            std::ptr::null_mut(),
            tmp.as_raw_fd(),
            std::ptr::null_mut(),
            4096,
            0,
        )
    };
    assert_eq!(errno_of(r), Some(libc::EXDEV), "copy_file_range");
    // SAFETY: closing our own pipe.
    unsafe {
        libc::close(p[0]);
        libc::close(p[1]);
    }
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
