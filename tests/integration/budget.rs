//! The spending budget through real mounts: `--budget` caps what is requested from the
//! emulator, exactly, across read patterns, restarts and `kill -9`; bad values and unusable
//! state are clear errors at start. (The renewal at a period boundary is tested on an
//! injected clock in the prefetcher's unit tests: no test waits for midnight.)

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::*;

const MIB: u64 = 1 << 20;

fn budget_mount(emu: &Emulator, state: &Path, extra: &[&str]) -> Mount {
    MountBuilder::new(emu)
        .args(["--state-dir", state.to_str().expect("utf8")])
        .args(extra.iter().copied())
        .mount()
}

/// A 1G/day budget mount with a full 64 KiB buffer whose state directory is a 64 KiB tmpfs, so
/// that a test can make it read-only or fill it. Fields drop in order: the daemon stops before
/// its state is unmounted.
struct OnTmpfs {
    m: Mount,
    state: PathBuf,
    _tmpfs: DetachOnDrop<PathBuf>,
    _dir: tempfile::TempDir,
}

fn on_tmpfs(emu: &Emulator) -> OnTmpfs {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("dir");
    let tmpfs = mount_tmpfs(&state, "size=64k");
    let m = budget_mount(emu, &state, &["--budget", "1G/day", "--buffer-size", "64K"]);
    m.wait_full();
    OnTmpfs {
        m,
        state,
        _tmpfs: tmpfs,
        _dir: dir,
    }
}

/// Reads with `sizes` in turn until a read fails; returns the bytes read and the error.
fn read_until_error(m: &Mount, sizes: &[usize]) -> (u64, std::io::Error) {
    let f = open_random(m);
    let mut total = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    for &n in sizes.iter().cycle() {
        assert!(Instant::now() < deadline, "no error after {total} bytes");
        match read_once(&f, n) {
            Ok(b) => {
                assert!(!b.is_empty(), "EOF from /random");
                total += b.len() as u64;
            }
            Err(e) => return (total, e),
        }
    }
    unreachable!()
}

fn seconds_until_next_utc_midnight() -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    86_400.0 - now % 86_400.0
}

fn num(s: &std::collections::HashMap<String, String>, k: &str) -> f64 {
    status_num(s, k)
}

#[test]
fn a_budget_is_served_exactly_then_eio_at_once() {
    let patterns: &[&[usize]] = &[&[1 << 20], &[32], &[4096, 100, 65536, 1], &[300_000, 7]];
    for sizes in patterns {
        let emu = emulator();
        let state = tempfile::tempdir().expect("tempdir");
        let m = budget_mount(&emu, state.path(), &["--budget", "1M/day"]);
        let (total, err) = read_until_error(&m, sizes);
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{sizes:?}");
        assert_eq!(total, MIB, "{sizes:?}: served exactly the budget");
        assert_eq!(
            emu.stats().good_bytes,
            MIB,
            "{sizes:?}: requested exactly the budget"
        );
        // Every later read that would wait fails at once.
        let f = open_random(&m);
        let t = Instant::now();
        assert_eq!(
            read_once(&f, 1).expect_err("EIO").raw_os_error(),
            Some(libc::EIO)
        );
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        let s = m.status();
        assert_eq!(s["state"], "budget exhausted");
        assert_eq!(s["budget"], "1M/day");
        assert_eq!(num(&s, "budget_day_limit_bytes"), MIB as f64);
        assert_eq!(num(&s, "budget_day_spent_bytes"), MIB as f64);
        assert_eq!(num(&s, "budget_day_remaining_bytes"), 0.0);
        assert_eq!(num(&s, "budget_day_spent_bytes"), MIB as f64);
        assert_eq!(num(&s, "budget_month_spent_bytes"), MIB as f64);
        let next = num(&s, "next_attempt_in_seconds");
        let midnight = seconds_until_next_utc_midnight();
        assert!((next - midnight).abs() < 3.0, "{next} vs {midnight}");
        assert!(s["budget_day_renews_at"].ends_with("T00:00:00Z"), "{s:#?}");
        let log = m.log_text();
        assert_eq!(log.matches("budget 1M/day reached").count(), 1, "{log}");
        let json = m.status_json();
        assert_eq!(json["budget"], "1M/day");
        assert_eq!(json["budget_day_spent_bytes"], MIB);
        assert_eq!(json["budget_day_remaining_bytes"], 0);
        let metrics = std::fs::read_to_string(m.path().join("metrics")).expect("metrics");
        for line in [
            "qrypt_fs_budget_limit_bytes{period=\"day\"} 1048576\n",
            "qrypt_fs_budget_spent_bytes{period=\"day\"} 1048576\n",
            "qrypt_fs_budget_spent_bytes{period=\"month\"} 1048576\n",
            "qrypt_fs_budget_remaining_bytes{period=\"day\"} 0\n",
            "qrypt_fs_budget_renews_timestamp_seconds{period=\"day\"} ",
            "qrypt_fs_state{state=\"budget exhausted\"} 1\n",
        ] {
            assert!(metrics.contains(line), "{line} missing: {metrics}");
        }
    }
}

#[test]
fn buffered_bytes_are_still_served_when_the_budget_is_spent() {
    let emu = emulator();
    let state = tempfile::tempdir().expect("tempdir");
    let m = budget_mount(
        &emu,
        state.path(),
        &["--budget", "64K/day", "--buffer-size", "1M"],
    );
    m.wait_status("exhausted", Duration::from_secs(10), |s| {
        s["state"] == "budget exhausted"
    });
    assert_eq!(m.status_u64("buffered_bytes"), 64 << 10);
    assert_eq!(read_exact(&m.random(), 64 << 10).len(), 64 << 10);
    let (total, err) = read_until_error(&m, &[4096]);
    assert_eq!((total, err.raw_os_error()), (0, Some(libc::EIO)));
}

#[test]
fn the_spend_survives_a_restart() {
    let emu = emulator();
    let state = tempfile::tempdir().expect("tempdir");
    let args = ["--budget", "1M/day", "--buffer-size", "64K"];
    let mut m = budget_mount(&emu, state.path(), &args);
    assert_eq!(read_exact(&m.random(), 200 << 10).len(), 200 << 10);
    // Nothing in flight: everything recorded has arrived.
    // And the refill after the read has come (on a busy machine it may not have been sent
    // yet when nothing is in flight).
    m.wait_status("all granted bytes arrived", Duration::from_secs(10), |s| {
        s["budget_day_spent_bytes"] == s["fetched_bytes"]
            && s["fetched_bytes"].parse::<u64>().unwrap_or(0) >= (200 + 32) << 10
    });
    let spent = m.status_u64("budget_day_spent_bytes");
    assert_eq!(spent, emu.stats().good_bytes);
    // What was read, and at least half a buffer more (the refill threshold).
    assert!(spent >= (200 + 32) << 10, "{spent}");
    assert!(m.stop().success());
    let m = budget_mount(&emu, state.path(), &args);
    let s = m.status();
    assert!(num(&s, "budget_day_spent_bytes") >= spent as f64, "{s:#?}");
    let (total, err) = read_until_error(&m, &[65536]);
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // What the first run bought but never served (its buffer, wiped at stop) stays spent.
    assert_eq!(total, MIB - spent);
    assert_eq!(emu.stats().good_bytes, MIB);
}

#[test]
fn kill_9_during_a_burst_never_exceeds_the_budget() {
    let emu = emulator();
    let state = tempfile::tempdir().expect("tempdir");
    let args = [
        "--budget",
        "3M/day",
        "--buffer-size",
        "16M",
        "--max-in-flight",
        "4",
    ];
    // Slow answers: several requests are in flight at each kill.
    emu.set_fault(Fault::Delay(Duration::from_millis(300)), None);
    for round in 0..4 {
        let mut m = budget_mount(&emu, state.path(), &args);
        let deadline = Instant::now() + Duration::from_secs(10);
        while emu.stats().in_flight < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if round > 0 {
            std::thread::sleep(Duration::from_millis(150 * round));
        }
        let mut child = m.child.take().expect("child");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        let _ = nix::mount::umount2(m.path(), nix::mount::MntFlags::MNT_DETACH);
    }
    emu.clear_fault();
    let m = budget_mount(&emu, state.path(), &args);
    let (_, err) = read_until_error(&m, &[1 << 20]);
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // Let any answer to a killed daemon's request finish being counted.
    std::thread::sleep(Duration::from_millis(500));
    let sent = emu.stats().good_bytes;
    assert!(
        sent <= 3 * MIB,
        "the emulator served {sent} bytes under a 3 MiB budget"
    );
    assert_eq!(m.status_u64("budget_day_spent_bytes"), 3 * MIB);
}

#[test]
fn two_caps_each_hold() {
    let emu = emulator();
    let state = tempfile::tempdir().expect("tempdir");
    let m = budget_mount(
        &emu,
        state.path(),
        &["--budget", "256K/hour", "--budget", "1G/month"],
    );
    let (total, err) = read_until_error(&m, &[4096]);
    assert_eq!((total, err.raw_os_error()), (256 << 10, Some(libc::EIO)));
    let s = m.status();
    assert_eq!(s["budget"], "256K/hour 1G/month");
    assert_eq!(num(&s, "budget_hour_spent_bytes"), (256 << 10) as f64);
    assert_eq!(num(&s, "budget_hour_remaining_bytes"), 0.0);
    assert_eq!(num(&s, "budget_month_spent_bytes"), (256 << 10) as f64);
    assert_eq!(
        num(&s, "budget_month_remaining_bytes"),
        ((1 << 30) - (256 << 10)) as f64
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let to_hour = 3600.0 - now % 3600.0;
    let next = num(&s, "next_attempt_in_seconds");
    assert!((next - to_hour).abs() < 3.0, "{next} vs {to_hour}");
    assert!(m.log_text().contains("budget 256K/hour reached"));
}

#[test]
fn with_no_budget_the_day_and_month_spend_is_shown() {
    let emu = emulator();
    let state = tempfile::tempdir().expect("tempdir");
    let m = budget_mount(&emu, state.path(), &["--buffer-size", "64K"]);
    m.wait_full();
    let s = m.status();
    assert_eq!(s["budget"], "off");
    assert_eq!(num(&s, "budget_day_spent_bytes"), (64 << 10) as f64);
    assert_eq!(num(&s, "budget_month_spent_bytes"), (64 << 10) as f64);
    let metrics = std::fs::read_to_string(m.path().join("metrics")).expect("metrics");
    assert!(
        metrics.contains("qrypt_fs_budget_spent_bytes{period=\"day\"} 65536\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("qrypt_fs_budget_limit_bytes{"),
        "{metrics}"
    );
    // No budget file without a cap; the replay history is all the directory holds.
    let names: Vec<String> = std::fs::read_dir(state.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("replay")), "{names:?}");
}

fn start_fails(args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .arg("-f")
        .args(["--endpoint", "http://127.0.0.1:9"])
        .args(args)
        .arg(dir.path())
        .env("QRYPT_TOKEN", "hunter2-secret")
        .output()
        .expect("run");
    assert!(!is_mounted(dir.path()), "{args:?} mounted");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("hunter2"), "{err}");
    (out.status.code().unwrap_or(-1), err)
}

#[test]
fn bad_budget_values_are_clear_errors() {
    let state = tempfile::tempdir().expect("tempdir");
    let sd = state.path().to_str().expect("utf8");
    for (value, needle) in [
        ("0M/day", "zero"),
        ("-1M/day", "negative"),
        ("1M/week", "unknown period"),
        ("200/day", "missing unit"),
        ("200M", "missing /PERIOD"),
        ("99999999999999G/day", "too large"),
        ("lots/day", "not a size"),
    ] {
        for args in [
            vec!["--state-dir", sd, "--budget", value],
            vec!["--state-dir", sd, "-o", &format!("budget={value}")],
        ] {
            let (code, err) = start_fails(&args);
            assert_ne!(code, 0, "{args:?}");
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
    assert_eq!(std::fs::read_dir(state.path()).expect("dir").count(), 0);
}

#[test]
fn an_unusable_state_dir_is_a_clear_error_at_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").expect("file");
    let (code, err) = start_fails(&[
        "--budget",
        "1M/day",
        "--state-dir",
        file.to_str().expect("utf8"),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains(file.to_str().expect("utf8")), "{err}");
    // Read-only: a read-only tmpfs (root writes through permission bits).
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).expect("dir");
    nix::mount::mount(
        Some("tmpfs"),
        &ro,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_RDONLY,
        Some("size=64k"),
    )
    .expect("mount tmpfs");
    let (code, err) = start_fails(&[
        "--budget",
        "1M/day",
        "--state-dir",
        ro.to_str().expect("utf8"),
    ]);
    let _ = nix::mount::umount2(&ro, nix::mount::MntFlags::MNT_DETACH);
    assert_ne!(code, 0);
    assert!(
        err.contains("Read-only file system") && err.contains("--state-dir"),
        "{err}"
    );
}

#[test]
fn a_corrupt_state_file_is_an_error_until_reset() {
    let emu = emulator();
    let state = tempfile::tempdir().expect("tempdir");
    let mut m = budget_mount(
        &emu,
        state.path(),
        &["--budget", "1M/day", "--buffer-size", "64K"],
    );
    m.wait_full();
    let file = m.status()["budget_state_file"].clone();
    assert!(m.stop().success());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&file).expect("state file").mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(!text.contains(TOKEN), "{text}");
    std::fs::write(&file, &text[..text.len() / 2]).expect("truncate");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .arg("-f")
        .args(["--endpoint", &emu.url(), "--budget", "1M/day"])
        .args(["--state-dir", state.path().to_str().expect("utf8")])
        .arg(dir.path())
        .env("QRYPT_TOKEN", TOKEN)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains(&file) && err.contains("--reset-budget"),
        "{err}"
    );
    assert!(!is_mounted(dir.path()));
    assert_eq!(
        std::fs::read_to_string(&file).expect("kept"),
        &text[..text.len() / 2]
    );
    let m = budget_mount(
        &emu,
        state.path(),
        &[
            "--budget",
            "1M/day",
            "--reset-budget",
            "--buffer-size",
            "64K",
        ],
    );
    m.wait_full();
    assert_eq!(
        m.status_u64("budget_day_spent_bytes"),
        64 << 10,
        "counted from zero"
    );
    assert!(m.log_text().contains("--reset-budget"), "{}", m.log_text());
}

#[test]
fn an_unwritable_state_dir_at_run_time_stops_requests_until_writable() {
    let emu = emulator();
    let OnTmpfs { m, state, .. } = &on_tmpfs(&emu);
    let state = state.as_path();
    let remount = |flags: nix::mount::MsFlags| {
        nix::mount::mount(
            None::<&str>,
            state,
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT | flags,
            None::<&str>,
        )
        .expect("remount");
    };
    remount(nix::mount::MsFlags::MS_RDONLY);
    let before = emu.stats().total_requests;
    let reader = {
        let path = m.random();
        std::thread::spawn(move || read_exact(&path, 256 << 10).len())
    };
    m.wait_status("unwritable", Duration::from_secs(10), |s| {
        s["state"] == "budget state unwritable"
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        emu.stats().total_requests,
        before,
        "nothing sent unrecorded"
    );
    assert!(!reader.is_finished(), "the reader waits");
    remount(nix::mount::MsFlags::empty());
    assert_eq!(reader.join().expect("reader"), 256 << 10);
    m.wait_status("ok", Duration::from_secs(10), |s| s["state"] == "ok");
    let log = m.log_text();
    assert_eq!(log.matches("cannot record the budget").count(), 1, "{log}");
}

#[test]
fn sighup_does_not_reset_the_budget() {
    let emu = emulator();
    let state = tempfile::tempdir().expect("tempdir");
    let m = budget_mount(&emu, state.path(), &["--budget", "64K/day"]);
    m.wait_status("exhausted", Duration::from_secs(10), |s| {
        s["state"] == "budget exhausted"
    });
    m.sighup();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(m.status()["state"], "budget exhausted");
    assert_eq!(emu.stats().good_bytes, 64 << 10);
    let _ = File::open(m.random()).and_then(|mut f| f.read(&mut [0u8; 1]));
}

#[test]
fn a_full_disk_at_run_time_stops_requests_until_there_is_room() {
    let emu = emulator();
    let OnTmpfs { m, state, .. } = &on_tmpfs(&emu);
    let state = state.as_path();
    // Fill the file system to the last byte.
    let filler = state.join("filler");
    {
        use std::io::Write;
        let mut f = File::create(&filler).expect("filler");
        let block = [0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&[0u8]);
        let _ = f.sync_all();
    }
    let before = emu.stats().total_requests;
    let reader = {
        let path = m.random();
        std::thread::spawn(move || read_exact(&path, 256 << 10).len())
    };
    m.wait_status("unwritable", Duration::from_secs(10), |s| {
        s["state"] == "budget state unwritable"
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        emu.stats().total_requests,
        before,
        "nothing sent unrecorded"
    );
    std::fs::remove_file(&filler).expect("make room");
    assert_eq!(reader.join().expect("reader"), 256 << 10);
    let log = m.log_text();
    assert!(log.contains("No space left on device"), "{log}");
    assert!(!log.contains(TOKEN));
    assert_eq!(log.matches("cannot record the budget").count(), 1, "{log}");
}

#[test]
fn a_reader_held_back_by_the_clients_own_pacing_sees_it_in_status() {
    let emu = emulator();
    // Two requests per 10 s: the 16 KiB first one and a 48 KiB one fill the 64 KiB buffer.
    let m = MountBuilder::new(&emu)
        .rate_limit("2/10")
        .args(["--buffer-size", "64K"])
        .mount();
    m.wait_full();
    let t0 = Instant::now();
    let reader = {
        let path = m.random();
        std::thread::spawn(move || read_exact(&path, 96 << 10).len())
    };
    m.wait_status("pacing", Duration::from_secs(5), |s| s["state"] == "pacing");
    let s = m.status();
    assert_ne!(s["rate_limited_until"], "none", "{s:#?}");
    assert_eq!(s["rate_allowance"], "2");
    let next = num(&s, "next_attempt_in_seconds");
    assert!(next > 0.0 && next <= 10.2, "{next}");
    assert_eq!(reader.join().expect("reader"), 96 << 10);
    assert!(t0.elapsed() >= Duration::from_secs(5), "{:?}", t0.elapsed());
    let waited = num(&m.status(), "pacing_wait_seconds");
    assert!(waited >= 4.0, "{waited}");
    let metrics = std::fs::read_to_string(m.path().join("metrics")).expect("metrics");
    assert!(
        metrics.contains("qrypt_fs_pacing_wait_seconds_total "),
        "{metrics}"
    );
    assert_eq!(emu.stats().count(429), 0);
}

/// Reads `n` bytes from a fresh open of `/random`, in 64 KiB reads.
fn read_n(m: &Mount, n: u64) {
    let f = open_random(m);
    let mut got = 0u64;
    while got < n {
        let want = (n - got).min(65536) as usize;
        let b = read_once(&f, want).expect("read");
        assert!(!b.is_empty(), "EOF from /random");
        got += b.len() as u64;
    }
}

/// Waits until the buffer is at least half full (no refill starts) with nothing in flight,
/// and everything this mount was granted has arrived: the record then holds exactly `before` (what was spent before this
/// mount started, all of it served) plus what this mount fetched.
fn wait_settled(m: &Mount, emu: &Emulator, before: u64) {
    m.wait_status("settled", Duration::from_secs(20), |s| {
        let n = |k: &str| s[k].parse::<u64>().unwrap_or(u64::MAX);
        let fetched = n("fetched_bytes");
        s["state"] == "ok"
            && n("buffered_bytes").saturating_mul(2) >= n("capacity_bytes")
            && n("budget_day_spent_bytes") == before + fetched
            && emu.stats().good_bytes == before + fetched
    });
}

#[test]
fn tampering_with_the_state_while_running_never_lowers_the_spend() {
    let emu = emulator();
    let root = tempfile::tempdir().expect("tempdir");
    let state = root.path().join("state");
    let cap = 6 * MIB;
    let args = ["--budget", "6M/day", "--buffer-size", "256K"];
    let mut m = budget_mount(&emu, &state, &args);
    m.wait_full();
    wait_settled(&m, &emu, 0);
    let file = PathBuf::from(m.status()["budget_state_file"].clone());
    let older = std::fs::read(&file).expect("an early copy");
    let zeroed = {
        let text = String::from_utf8(older.clone()).expect("utf8");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let mut v = v;
        for p in ["hour", "day", "month"] {
            v["spend"][p]["spent"] = 0.into();
        }
        serde_json::to_vec(&v).expect("json")
    };
    // Replaced as an editor or `cp` to a temporary name and `mv` would: whole, at once.
    let replace = |bytes: &[u8]| {
        let tmp = file.with_extension("edit");
        std::fs::write(&tmp, bytes).expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
    };
    type Tamper<'a> = Box<dyn Fn() + 'a>;
    let tampers: Vec<(&str, Tamper, &str)> = vec![
        (
            "rm",
            Box::new(|| std::fs::remove_file(&file).expect("rm")),
            "is missing",
        ),
        (
            "an older copy",
            Box::new(|| replace(&older)),
            "holds less than was spent",
        ),
        (
            "a zeroed count",
            Box::new(|| replace(&zeroed)),
            "holds less than was spent",
        ),
        (
            "truncated",
            Box::new(|| {
                File::options()
                    .write(true)
                    .open(&file)
                    .and_then(|f| f.set_len(0))
                    .expect("truncate")
            }),
            "not valid JSON",
        ),
        // Every file, not the directory: the daemon runs unprivileged by now and could not
        // create the directory again in its root-owned parent (it would stop requesting).
        (
            "rm the directory's files",
            Box::new(|| {
                for e in std::fs::read_dir(&state).expect("ls") {
                    std::fs::remove_file(e.expect("entry").path()).expect("rm");
                }
            }),
            "budget.key: was removed",
        ),
    ];
    for (what, tamper, why) in &tampers {
        let before = m.status_u64("budget_day_spent_bytes");
        let logged = m.log_text().matches(why).count();
        tamper();
        // Enough to need new requests, each recorded first.
        read_n(&m, 768 << 10);
        wait_settled(&m, &emu, 0);
        let after = m.status_u64("budget_day_spent_bytes");
        assert!(after > before, "{what}: {before} -> {after}");
        let text = std::fs::read_to_string(&file).expect("written again");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["spend"]["day"]["spent"], after, "{what}: {text}");
        let log = m.log_text();
        assert_eq!(log.matches(why).count(), logged + 1, "{what}: {log}");
    }
    let (_, err) = read_until_error(&m, &[65536]);
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert_eq!(emu.stats().good_bytes, cap, "requested exactly the cap");
    assert!(!m.log_text().contains(TOKEN));
    // A restart finds the same record, key and all.
    assert!(m.stop().success());
    let m = budget_mount(&emu, &state, &args);
    m.wait_status("exhausted", Duration::from_secs(10), |s| {
        s["state"] == "budget exhausted"
    });
    assert_eq!(m.status_u64("budget_day_spent_bytes"), cap);
    assert_eq!(emu.stats().good_bytes, cap);
}

#[test]
fn every_spelling_of_one_account_shares_one_count() {
    let emu = emulator();
    let state = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("secrets");
    std::fs::create_dir(&real).expect("dir");
    let token_file = real.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let link = dir.path().join("token-link");
    std::os::unix::fs::symlink(&token_file, &link).expect("symlink");
    let dotted = real.join("..").join("secrets").join("token");
    let port = emu.url().rsplit(':').next().expect("port").to_owned();
    let cap = 8 * MIB;
    let spellings: Vec<(Option<&str>, Vec<String>)> = vec![
        (Some(TOKEN), vec!["--endpoint".into(), emu.url()]),
        (
            None,
            vec![
                "--endpoint".into(),
                format!("http://localhost:{port}/"),
                "--token-file".into(),
                link.display().to_string(),
            ],
        ),
        (
            None,
            vec![
                "--endpoint".into(),
                format!("http://LOCALHOST:{port}"),
                "--token-file".into(),
                dotted.display().to_string(),
            ],
        ),
    ];
    let last = spellings.len() - 1;
    for (i, (env, extra)) in spellings.into_iter().enumerate() {
        let before = emu.stats().good_bytes;
        let mut m = MountBuilder::new(&emu)
            .token(env)
            .args(["--state-dir", state.path().to_str().expect("utf8")])
            .args(["--budget", "8M/day", "--buffer-size", "64K"])
            .args(extra)
            .mount();
        // The account's count so far, whatever the spelling.
        assert!(
            m.status_u64("budget_day_spent_bytes") >= before,
            "spelling {i}: {:#?}",
            m.status()
        );
        if i < last {
            read_n(&m, 3 * MIB);
            wait_settled(&m, &emu, before);
            assert!(m.stop().success());
        } else {
            let (_, err) = read_until_error(&m, &[65536]);
            assert_eq!(err.raw_os_error(), Some(libc::EIO));
            assert_eq!(m.status()["state"], "budget exhausted");
        }
    }
    assert_eq!(emu.stats().good_bytes, cap, "one cap for the account");
    // One record, and nothing in the directory names the token.
    let names: Vec<String> = std::fs::read_dir(state.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.ends_with(".json")).count(),
        1,
        "{names:?}"
    );
    for n in &names {
        let text = std::fs::read(state.path().join(n)).expect("read");
        assert!(!String::from_utf8_lossy(&text).contains(TOKEN), "{n}");
    }
}

#[test]
fn a_held_lock_is_shown_and_signals_are_still_handled() {
    let emu = emulator();
    let state = tempfile::tempdir().expect("tempdir");
    let m = budget_mount(
        &emu,
        state.path(),
        &["--budget", "1G/day", "--buffer-size", "64K"],
    );
    m.wait_full();
    // The budget's lock, not the replay history's (which its daemon holds while it runs).
    let lock_path = std::fs::read_dir(state.path())
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| n.starts_with("budget-") && n.ends_with(".lock"))
        })
        .expect("the budget's lock file");
    // Taken without blocking, retried: the daemon holds it only while it writes a record.
    let mut file = File::open(&lock_path).expect("open");
    let deadline = Instant::now() + Duration::from_secs(10);
    let held = loop {
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(held) => break held,
            Err((f, e)) => {
                assert!(Instant::now() < deadline, "the lock stayed taken: {e}");
                file = f;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let before = emu.stats().total_requests;
    let reader = {
        let path = m.random();
        std::thread::spawn(move || read_exact(&path, 256 << 10).len())
    };
    m.wait_status("unwritable", Duration::from_secs(10), |s| {
        s["state"] == "budget state unwritable"
    });
    let s = m.status();
    let shown = lock_path.to_str().expect("utf8");
    assert!(
        s["last_error"].contains(shown) && s["last_error"].contains("is held by"),
        "{s:#?}"
    );
    assert_eq!(
        emu.stats().total_requests,
        before,
        "nothing sent unrecorded"
    );
    m.sighup();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !m.log_text().contains("SIGHUP: reloading") {
        assert!(
            Instant::now() < deadline,
            "SIGHUP not handled: {}",
            m.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!reader.is_finished(), "the reader waits");
    drop(held);
    assert_eq!(reader.join().expect("reader"), 256 << 10);
    m.wait_status("ok", Duration::from_secs(10), |s| s["state"] == "ok");
}

#[test]
fn a_new_token_counts_in_its_own_record_from_the_count_so_far() {
    let emu = emulator();
    emu.set_tokens(vec!["token-one".into(), "token-two".into()]);
    let state = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "token-one\n").expect("write");
    let token_arg = token_file.display().to_string();
    let args = [
        "--budget",
        "2M/day",
        "--buffer-size",
        "64K",
        "--token-file",
        &token_arg,
    ];
    let mount = || {
        MountBuilder::new(&emu)
            .token(None)
            .args(["--state-dir", state.path().to_str().expect("utf8")])
            .args(args)
            .mount()
    };
    let mut m = mount();
    read_n(&m, MIB);
    wait_settled(&m, &emu, 0);
    let first_file = m.status()["budget_state_file"].clone();
    let spent = m.status_u64("budget_day_spent_bytes");
    // Rotated in place, and SIGHUP.
    let tmp = token_file.with_extension("new");
    std::fs::write(&tmp, "token-two\n").expect("write");
    std::fs::rename(&tmp, &token_file).expect("rename");
    m.sighup();
    m.wait_status("the new record", Duration::from_secs(10), |s| {
        s["budget_state_file"] != first_file
    });
    // The count goes on from where it stood: a rotation never restarts it.
    assert!(m.status_u64("budget_day_spent_bytes") >= spent);
    let (_, err) = read_until_error(&m, &[65536]);
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert_eq!(
        emu.stats().good_bytes,
        2 * MIB,
        "one cap across the rotation"
    );
    assert!(m.log_text().contains("its account's record"));
    // The next start, with the new token, reads the new record.
    assert!(m.stop().success());
    let m = mount();
    m.wait_status("exhausted", Duration::from_secs(10), |s| {
        s["state"] == "budget exhausted"
    });
    assert_ne!(m.status()["budget_state_file"], first_file);
    assert_eq!(emu.stats().good_bytes, 2 * MIB);
}
