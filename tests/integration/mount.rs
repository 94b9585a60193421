//! The first working product, end to end through the kernel: exact reads, provenance of every
//! byte, disjointness across readers and opens, `/status`, read-only semantics, the CLI's
//! errors, daemon mode, TLS, and the token kept out of everything observable.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

#[test]
fn reads_return_exact_counts_for_many_sizes() {
    let emu = emulator();
    let m = MountBuilder::new(&emu)
        .args(["--buffer-size", "8M"])
        .mount();
    let f = open_random(&m);
    let sizes = [
        1usize,
        2,
        7,
        16,
        31,
        32,
        64,
        100,
        255,
        256,
        257,
        1000,
        4096,
        65_536,
        131_072,
        1 << 20,
    ];
    for size in sizes {
        // Larger reads return what is buffered, so make sure that is enough.
        m.wait_buffered(size as u64);
        let got = read_once(&f, size).expect("read");
        assert_eq!(got.len(), size, "read({size}) returned {}", got.len());
    }
    // A read bigger than one FUSE request is split by the kernel and still complete.
    m.wait_buffered(3 << 20);
    let got = read_once(&f, 3 << 20).expect("read 3 MiB");
    assert_eq!(got.len(), 3 << 20);
}

#[test]
fn every_byte_was_sent_by_the_emulator_and_none_twice() {
    let emu = emulator();
    let m = MountBuilder::new(&emu)
        .args(["--buffer-size", "256K"])
        .mount();
    let mut reads = Vec::new();
    let f = open_random(&m);
    for (i, size) in [16usize, 32, 33, 1024, 1500, 4096, 100_000, 20, 256, 70_000]
        .iter()
        .cycle()
        .take(60)
        .enumerate()
    {
        let r = read_once(&f, *size).expect("read");
        assert!(!r.is_empty(), "read {i} empty");
        reads.push(r);
    }
    drop(f);
    let prov = Provenance::from(&emu);
    for r in &reads {
        prov.check_run(r);
    }
    assert_disjoint(&reads);
}

#[test]
fn requests_follow_the_documented_contract() {
    let emu = emulator();
    let m = MountBuilder::new(&emu)
        .args(["--buffer-size", "2M"])
        .mount();
    m.wait_full();
    let records = emu.records();
    // 16 KiB alone first, then the rest of 2 MiB in requests of at most 512 KiB.
    assert_eq!(records.first().map(|r| r.kib), Some(16));
    assert!(
        records
            .iter()
            .all(|r| r.status == 200 && (1..=512).contains(&r.kib))
    );
    assert_eq!(records.iter().map(|r| r.kib).sum::<u32>(), 2048);
    for r in &records {
        let header = |name: &str| {
            r.request_headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            header("accept"),
            Some("application/json"),
            "{:?}",
            r.request_headers
        );
        assert_eq!(
            header("cache-control"),
            Some("no-store"),
            "{:?}",
            r.request_headers
        );
        assert!(
            header("authorization").is_none(),
            "the emulator keeps no token"
        );
    }
}

#[test]
fn concurrent_readers_and_reopens_get_disjoint_bytes() {
    let emu = emulator();
    let m = MountBuilder::new(&emu)
        .args(["--buffer-size", "512K"])
        .mount();
    let path = m.random();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                for round in 0..6 {
                    // Half the threads reopen every round: a new open must not replay bytes.
                    let f = File::open(&path).expect("open");
                    for k in 0..5 {
                        let size = [32usize, 64, 300, 4096, 20_000][(t + k + round) % 5];
                        out.push(read_once(&f, size).expect("read"));
                    }
                    if t % 2 == 0 {
                        drop(f);
                    }
                }
                out
            })
        })
        .collect();
    let reads: Vec<Vec<u8>> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("reader thread"))
        .collect();
    assert_eq!(reads.len(), 8 * 6 * 5);
    assert!(reads.iter().all(|r| !r.is_empty()));
    let served: u64 = reads.iter().map(|r| r.len() as u64).sum();
    assert_disjoint(&reads);
    let prov = Provenance::from(&emu);
    reads.iter().for_each(|r| prov.check_run(r));
    assert_eq!(m.status_u64("served_bytes"), served);
}

#[test]
fn status_fields_and_arithmetic() {
    let emu = emulator();
    let m = full_mount(&emu);
    let s = m.status();
    for key in [
        "state",
        "buffered_bytes",
        "capacity_bytes",
        "served_bytes",
        "fetched_bytes",
        "requests_ok",
        "requests_failed",
        "last_error",
        "endpoint",
        "token_source",
        "memory_locked",
        "failures",
    ] {
        assert!(s.contains_key(key), "missing {key}: {s:?}");
    }
    assert_eq!(s["state"], "ok");
    assert_eq!(s["capacity_bytes"], "65536");
    assert_eq!(s["buffered_bytes"], "65536");
    assert_eq!(s["served_bytes"], "0");
    assert_eq!(s["fetched_bytes"], "65536");
    assert_eq!(s["requests_failed"], "0");
    assert_eq!(s["last_error"], "none");
    assert_eq!(s["endpoint"], format!("{}/", emu.url()));
    assert_eq!(s["token_source"], "environment (QRYPT_TOKEN)");
    let before = m.status_u64("fetched_bytes");
    let f = open_random(&m);
    let mut total = 0;
    for n in [10usize, 200, 5000, 30_000] {
        total += read_once(&f, n).expect("read").len();
        let s = m.status();
        let num = |k: &str| s[k].parse::<u64>().expect("number");
        assert!(
            num("served_bytes") + num("buffered_bytes") <= num("fetched_bytes"),
            "{s:?}"
        );
        assert_eq!(num("served_bytes"), total as u64);
    }
    // Below the low watermark (half): refilled in whole KiB, to less than 1 KiB short of full.
    m.wait_full();
    let fetched = m.status_u64("fetched_bytes");
    let refill = fetched - before;
    assert!(
        refill % 1024 == 0 && refill <= total as u64 && refill + 1024 > total as u64,
        "refill {refill} for {total} taken"
    );
    assert_eq!(
        m.status_u64("served_bytes") + m.status_u64("buffered_bytes"),
        fetched
    );
}

#[test]
fn status_is_one_snapshot_served_by_offset() {
    let emu = emulator();
    let m = MountBuilder::new(&emu).mount();
    let mut f = File::open(m.path().join("status")).expect("open");
    let mut small = Vec::new();
    let mut buf = [0u8; 7];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        small.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(small).expect("utf8");
    assert!(text.starts_with("state: "), "{text}");
    assert!(text.ends_with('\n'));
    // Reading in 7-byte pieces produced whole lines of one snapshot.
    assert_eq!(parse_status(&text).len(), text.lines().count());
    use std::os::unix::fs::FileExt;
    let mut at = vec![0u8; 5];
    let n = f.read_at(&mut at, 7).expect("pread");
    assert_eq!(&at[..n], &text.as_bytes()[7..7 + n]);
    let json: serde_json::Value = m.status_json();
    assert!(json["capacity_bytes"].is_u64());
    let metrics = std::fs::read_to_string(m.path().join("metrics")).expect("metrics");
    assert!(metrics.contains("# TYPE qrypt_fs_buffered_bytes gauge"));
}

#[test]
fn directory_attributes_and_read_only() {
    let emu = emulator();
    let m = MountBuilder::new(&emu).mount();
    let mut names: Vec<String> = std::fs::read_dir(m.path())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["metrics", "random", "status", "status.json"]);
    let md = std::fs::metadata(m.random()).expect("stat");
    assert!(md.is_file());
    assert_eq!(md.permissions().mode() & 0o7777, 0o444);
    assert_eq!(md.size(), qrypt_fs::RANDOM_FILE_SIZE);
    let err = |r: std::io::Result<()>| r.expect_err("must fail").raw_os_error();
    assert_eq!(
        err(std::fs::OpenOptions::new()
            .write(true)
            .open(m.random())
            .map(drop)),
        Some(libc::EROFS)
    );
    assert_eq!(
        err(File::create(m.path().join("new")).map(drop)),
        Some(libc::EROFS)
    );
    assert_eq!(err(std::fs::remove_file(m.random())), Some(libc::EROFS));
    assert_eq!(
        err(std::fs::create_dir(m.path().join("d"))),
        Some(libc::EROFS)
    );
    assert_eq!(
        err(std::fs::rename(m.random(), m.path().join("r2"))),
        Some(libc::EROFS)
    );
    assert_eq!(
        std::fs::metadata(m.path().join("nope"))
            .expect_err("enoent")
            .raw_os_error(),
        Some(libc::ENOENT)
    );
}

#[test]
fn missing_token_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .arg("-f")
        .arg(dir.path())
        .env_remove("QRYPT_TOKEN")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("QRYPT_TOKEN") && err.contains("--token-file"),
        "{err}"
    );
    assert!(!is_mounted(dir.path()));
}

#[test]
fn bad_flags_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf8");
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--buffer-size", "12Q", d], 2, "unknown unit"),
        (&["--buffer-size", "1K", d], 2, "too small: at least 4K"),
        (&["--token", "hunter2-secret", d], 2, "QRYPT_TOKEN"),
        (&["--token=hunter2-secret", d], 2, "--token-file"),
        (&["--rate-limit", "fast", d], 2, "REQUESTS/SECONDS"),
        (&["-o", "token=hunter2-secret", d], 2, "token_file"),
        (&["--endpoint", "http://example.com", d], 1, "clear text"),
        (&["--endpoint", "ftp://127.0.0.1", d], 1, "https://"),
        (
            &[
                "--ca-cert",
                "/nonexistent.pem",
                "--endpoint",
                "https://localhost:1",
                d,
            ],
            1,
            "CA certificate",
        ),
        (&["/nonexistent/mountpoint"], 1, "mount point"),
        (&["--no-such-flag", d], 2, "--no-such-flag"),
    ];
    for (args, code, needle) in cases {
        let out = Command::new(BIN)
            .arg("-f")
            .args(*args)
            .env("QRYPT_TOKEN", "hunter2-secret")
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("hunter2"), "{args:?} echoed the token: {err}");
        assert!(!is_mounted(dir.path()));
    }
    let help = Command::new(BIN).arg("--help").output().expect("help");
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "--token-file",
        "--buffer-size",
        "status.json",
        "EXAMPLE",
        "QRYPT_TOKEN",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}");
    }
}

fn daemon_pids(mountpoint: &std::path::Path) -> Vec<i32> {
    let needle = mountpoint.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains(&needle) && c.contains("qrypt-fs")
                })
                .unwrap_or(false)
        })
        // The server, not its helpers (supervisor, spawner, fetcher; see privsep.rs).
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "qrypt-fs")
        })
        .collect()
}

/// The names of `pid`'s threads.
fn thread_names(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

#[test]
fn daemon_mode_returns_once_mounted_and_ends_on_umount() {
    let emu = emulator();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = qrypt_fs()
        .args(["--endpoint", &emu.url(), "--rate-limit", "off"])
        .arg(dir.path())
        .env("QRYPT_TOKEN", TOKEN)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Live the moment the command returned.
    assert!(is_mounted(dir.path()));
    let pids = daemon_pids(dir.path());
    assert_eq!(pids.len(), 1, "one daemon: {pids:?}");
    let got = read_exact(&dir.path().join("random"), 32);
    assert_eq!(got.len(), 32);
    // The allocator's purge thread runs in the daemon that serves, started after the fork (a
    // thread started before it would not have survived it).
    assert_eq!(
        thread_names(pids[0])
            .iter()
            .filter(|n| n.as_str() == "jemalloc_bg_thd")
            .count(),
        1,
        "{:?}",
        thread_names(pids[0])
    );
    let st = Command::new("umount")
        .arg(dir.path())
        .status()
        .expect("umount");
    assert!(st.success());
    for _ in 0..200 {
        if daemon_pids(dir.path()).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("daemon still running after umount");
}

#[test]
fn daemon_mode_reports_mount_failure() {
    let emu = emulator();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").expect("write");
    let out = Command::new(BIN)
        .args(["--endpoint", &emu.url()])
        .arg(&file)
        .env("QRYPT_TOKEN", TOKEN)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
}

#[test]
fn token_never_appears_in_status_logs_argv_or_environ() {
    const SECRET: &str = "tok-9f8e7d6c5b4a-SECRET";
    let emu = Emulator::start(EmulatorConfig {
        tokens: vec![SECRET.into()],
        ..EmulatorConfig::default()
    })
    .expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::File::create(&token_file)
        .and_then(|mut f| writeln!(f, "  {SECRET}  "))
        .expect("token file");
    let m = MountBuilder::new(&emu)
        .token(Some(SECRET))
        .args(["-v", "-v"])
        .mount();
    let _ = read_exact(&m.random(), 64);
    // A failing request too, so error paths are logged.
    emu.set_fault(Fault::Status(500), Some(1));
    let _ = read_exact(&m.random(), 1 << 20);
    let m2 = MountBuilder::new(&emu)
        .token(None)
        .args(["--token-file", token_file.to_str().expect("utf8")])
        .mount();
    assert_eq!(read_exact(&m2.random(), 32).len(), 32);
    assert!(m2.status()["token_source"].contains("file"));
    for mnt in [&m, &m2] {
        for file in ["status", "status.json", "metrics"] {
            let text = std::fs::read_to_string(mnt.path().join(file)).expect("read");
            assert!(!text.contains(SECRET), "token in {file}");
        }
        let pid = mnt.pid();
        for what in ["cmdline", "environ"] {
            let data = std::fs::read(format!("/proc/{pid}/{what}")).expect("proc");
            assert!(
                !String::from_utf8_lossy(&data).contains(SECRET),
                "token in /proc/{pid}/{what}"
            );
        }
    }
    drop(m2);
    let log = m.log_text();
    assert!(
        log.contains("DEBUG") || log.contains("INFO"),
        "logging works: {log}"
    );
    assert!(!log.contains(SECRET), "token in the log");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log that is not a terminal"
    );
}

#[test]
fn the_daemon_keeps_no_descriptor_it_inherited() {
    let emu = emulator();
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("inherited");
    // The shell opens fd 9 on `marker` and execs qrypt-fs with it (no CLOEXEC).
    let open_fd_9 = format!("exec \"$@\" 9>>'{}'", marker.display());
    let m = MountBuilder::new(&emu)
        .wrapped_in(&["sh", "-c", &open_fd_9, "sh"])
        .mount();
    let fds = std::fs::read_dir(format!("/proc/{}/fd", m.pid())).expect("fd dir");
    for fd in fds.flatten() {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        assert_ne!(
            target,
            marker,
            "fd {:?} was inherited and kept",
            fd.file_name()
        );
    }
    assert_eq!(read_exact(&m.random(), 32).len(), 32);
}

#[test]
fn tls_with_ca_cert_and_without() {
    let emu = Emulator::start(EmulatorConfig {
        tls: true,
        record: true,
        ..EmulatorConfig::default()
    })
    .expect("emulator");
    assert!(emu.url().starts_with("https://"));
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, emu.ca_cert_pem().expect("pem")).expect("write ca");
    let m = MountBuilder::new(&emu)
        .args(["--ca-cert", ca.to_str().expect("utf8")])
        .mount();
    let got = read_exact(&m.random(), 4096);
    Provenance::from(&emu).check_run(&got);
    // Without the CA the certificate is refused: nothing is served, the failure is reported.
    // (The start's check would end this mount at once: first_contact.rs; skip it here
    // to see what a mount whose certificate goes bad later does.)
    let m2 = MountBuilder::new(&emu)
        .args(["--startup-timeout", "0"])
        .mount();
    m2.wait_status("a certificate failure", Duration::from_secs(10), |s| {
        s["failures"].contains("tls_certificate")
    });
    assert_eq!(m2.status_u64("fetched_bytes"), 0);
    let f = open_nonblocking(&m2.random());
    assert_eq!(
        read_once(&f, 32)
            .expect_err("nothing to serve")
            .raw_os_error(),
        Some(libc::EAGAIN)
    );
}

/// A clean stop, by signal or by an outside `umount`, unmounts once: fuser's own unmount on
/// drop used to run again after ours and log `Unmount failed: Invalid argument`. (With the
/// default log filter: the tests' usual RUST_LOG would hide fuser's warnings.)
#[test]
fn a_clean_stop_logs_no_failed_unmount() {
    let emu = emulator();
    for outside_umount in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        let mut child = qrypt_fs()
            .args(["-f", "--rate-limit", "off", "--endpoint", &emu.url()])
            .arg(&mnt)
            .env("QRYPT_TOKEN", TOKEN)
            .env_remove("RUST_LOG")
            .stderr(File::create(&log).expect("log"))
            .spawn()
            .expect("qrypt-fs");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !mnt.join("status").exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(read_exact(&mnt.join("random"), 32).len(), 32);
        if outside_umount {
            assert!(
                run_cmd("umount", &[mnt.to_str().expect("utf8")])
                    .status
                    .success()
            );
        } else {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
        }
        let st = wait_timeout(&mut child, Duration::from_secs(5)).expect("exits");
        assert_eq!(st.code(), Some(0));
        assert!(!is_mounted(&mnt));
        let log = std::fs::read_to_string(&log).expect("log");
        for needle in ["Unmount failed", "Failed to umount", "unmount of"] {
            assert!(
                !log.contains(needle),
                "umount={outside_umount}: {needle}:\n{log}"
            );
        }
    }
}

/// A user other than root mounts through fusermount3, and `umount2` is not permitted to
/// undo that: a SIGTERM must still leave no mount behind (it used to leave a dead one,
/// ENOTCONN). Run in a private mount namespace with a /dev/fuse open to all (the system's
/// is root-only here), as user nobody; the namespace's mounts end with it.
#[test]
fn a_stop_by_a_user_other_than_root_unmounts_through_fusermount() {
    require_program("setpriv");
    require_program("unshare");
    require_program("fusermount3");
    let emu = emulator();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let log = dir.path().join("log");
    let script = format!(
        r#"set -u
mknod -m 666 {dir}/fuse c 10 229 && mount --bind {dir}/fuse /dev/fuse || exit 10
setpriv --reuid=65534 --regid=65534 --clear-groups env QRYPT_TOKEN={TOKEN} RUST_LOG=info \
  {BIN} -f --rate-limit off --endpoint {url} {mnt} 2>{log} &
pid=$!
i=0
until grep -q " {mnt} fuse" /proc/self/mounts; do
  i=$((i + 1)); [ $i -lt 500 ] || exit 11; sleep 0.02
done
setpriv --reuid=65534 --regid=65534 --clear-groups head -c 32 {mnt}/random | wc -c
kill -TERM $pid
wait $pid; echo "exit $?"
if grep -q " {mnt} fuse" /proc/self/mounts; then echo "still mounted"; fi
"#,
        dir = dir.path().display(),
        url = emu.url(),
        mnt = mnt.display(),
        log = log.display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_remove("QRYPT_TOKEN")
        .output()
        .expect("unshare");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "32\nexit 0\n",
        "stderr: {}\nlog: {log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("asking fusermount"), "{log}");
    assert!(!log.contains("failed"), "{log}");
}

/// The exit joins the session's threads, but never waits on one that cannot end: with a
/// reader holding `/random` open the unmount is lazy and the FUSE session lives on until that
/// file is closed, yet SIGTERM still ends the daemon at once, and cleanly.
#[test]
fn a_stop_with_a_file_held_open_exits_at_once() {
    let emu = emulator();
    let mut m = MountBuilder::new(&emu).mount();
    let f = open_random(&m);
    assert_eq!(read_once(&f, 32).expect("read").len(), 32);
    let t = std::time::Instant::now();
    let st = m.stop();
    let took = t.elapsed();
    assert!(st.success(), "{st:?}");
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
    let log = m.log_text();
    assert!(log.contains("detaching lazily"), "{log}");
    assert!(!log.contains("did not end"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    drop(f);
}

/// Reads by many short-lived processes leave the daemon's descriptor count where it was: what
/// it keeps per reader (a pidfd that tells a kernel thread from a user thread) goes with it.
#[test]
fn the_descriptor_count_stays_flat_over_many_short_lived_readers() {
    let emu = emulator();
    let m = MountBuilder::new(&emu)
        .args(["--buffer-size", "1M"])
        .mount();
    m.wait_full();
    let count = || {
        std::fs::read_dir(format!("/proc/{}/fd", m.pid()))
            .expect("fd dir")
            .count()
    };
    let read_in_a_child = || {
        let out = std::process::Command::new("head")
            .args(["-c", "32"])
            .arg(m.random())
            .output()
            .expect("head");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout.len(), 32);
    };
    read_in_a_child();
    let before = count();
    for _ in 0..300 {
        read_in_a_child();
    }
    let after = count();
    assert!(
        after <= before + 2,
        "descriptors {before} -> {after} over 300 readers"
    );
}
