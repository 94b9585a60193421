//! Configuration that must be refused: a clear error naming the value, a non-zero exit, nothing
//! mounted and nothing asked of the upstream. And a `--log-file` that cannot be turned against
//! the daemon.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

struct Refused {
    code: Option<i32>,
    stderr: String,
}

/// Runs `qrypt-fs -f ARGS MOUNTPOINT` against `emu`; it must exit by itself within 10 s having
/// mounted nothing and sent no request.
fn run(emu: &Emulator, args: &[&str], mountpoint: &Path) -> Refused {
    let mut child = Command::new(BIN)
        .arg("-f")
        .args(["--endpoint", &emu.url()])
        .args(args)
        .arg(mountpoint)
        .env("QRYPT_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        if is_mounted(mountpoint) {
            let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
        panic!("qrypt-fs {args:?} {} did not exit", mountpoint.display());
    }
    let out = child.wait_with_output().expect("output");
    assert!(!is_mounted(mountpoint), "{args:?}: mounted");
    assert_eq!(
        emu.stats().total_requests,
        0,
        "{args:?}: asked the upstream"
    );
    Refused {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn refused(args: &[&str], code: i32, says: &[&str]) -> String {
    let emu = emulator();
    let mnt = tempfile::tempdir().expect("tempdir");
    let r = run(&emu, args, mnt.path());
    assert_eq!(r.code, Some(code), "{args:?}: {}", r.stderr);
    for s in says {
        assert!(r.stderr.contains(s), "{args:?}: {s:?} not in {}", r.stderr);
    }
    r.stderr
}

#[test]
fn credentials_in_the_endpoint_are_refused_and_not_shown() {
    let emu = emulator();
    let mnt = tempfile::tempdir().expect("tempdir");
    let with_creds = emu.url().replacen("http://", "http://user:s3cret@", 1);
    let r = run(&emu, &["--endpoint", &with_creds], mnt.path());
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("carries credentials"), "{}", r.stderr);
    assert!(r.stderr.contains("http://***@127.0.0.1"), "{}", r.stderr);
    assert!(!r.stderr.contains("s3cret"), "{}", r.stderr);
    let only_user = emu.url().replacen("http://", "http://user@", 1);
    let r = run(&emu, &["--endpoint", &only_user], mnt.path());
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("carries credentials"), "{}", r.stderr);
    let r = run(&emu, &["-o", &format!("endpoint={with_creds}")], mnt.path());
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(!r.stderr.contains("s3cret"), "{}", r.stderr);
}

/// Every spelling of an endpoint with a password is refused (exit 1, nothing mounted) and no
/// message shows the password: without a scheme, with `@` or `/` inside the password,
/// percent-encoded, unparseable; from `--endpoint`, `-o endpoint=` and `QRYPT_ENDPOINT`.
#[test]
fn credentials_are_masked_whatever_the_endpoints_shape() {
    let emu = emulator();
    let mnt = tempfile::tempdir().expect("tempdir");
    let hostport = emu.url().replacen("http://", "", 1);
    let shapes = [
        format!("alice:s3cret@{hostport}"),
        format!("alice:s3cret@{hostport}/api"),
        format!("http://alice:s3cr@t@{hostport}"),
        format!("http://alice:s3/cret@{hostport}"),
        format!("http://alice:s3cret%40{hostport}"),
        format!("http://al%69ce:s3cret@{hostport}:99999"),
        format!("alice:s3cret://x@{hostport}"),
        "s3cret@".to_owned(),
    ];
    for endpoint in &shapes {
        for args in [
            vec!["--endpoint".to_owned(), endpoint.clone()],
            vec!["-o".to_owned(), format!("endpoint={endpoint}")],
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = run(&emu, &args, mnt.path());
            assert_eq!(r.code, Some(1), "{args:?}: {}", r.stderr);
            assert!(r.stderr.contains("carries credentials"), "{}", r.stderr);
            assert!(r.stderr.contains("***"), "{}", r.stderr);
            assert!(
                !r.stderr.contains("s3cr") && !r.stderr.contains("alice"),
                "{args:?}: {}",
                r.stderr
            );
        }
        // From the environment, with no flag to override it.
        let out = Command::new(BIN)
            .arg("-f")
            .arg(mnt.path())
            .env("QRYPT_TOKEN", TOKEN)
            .env("QRYPT_ENDPOINT", endpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{endpoint}: {stderr}");
        assert!(!stderr.contains("s3cr"), "{endpoint}: {stderr}");
        assert!(!is_mounted(mnt.path()));
        // Nor does --help show the variable's value.
        for help in ["--help", "-h"] {
            let out = Command::new(BIN)
                .arg(help)
                .env("QRYPT_ENDPOINT", endpoint)
                .output()
                .expect("run");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("QRYPT_ENDPOINT"), "{stdout}");
            assert!(!stdout.contains("s3cr"), "{help}: {stdout}");
        }
    }
    assert_eq!(emu.stats().total_requests, 0);
    // A mount shows its endpoint as it is, in every status file.
    let m = MountBuilder::new(&emu).mount();
    let shown = format!("{}/", emu.url());
    assert_eq!(m.status()["endpoint"], shown);
    assert_eq!(m.status_json()["endpoint"], shown.as_str());
    assert!(
        m.read_file("metrics")
            .contains(&format!("endpoint=\"{shown}\""))
    );
}

fn mem_total() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("MemTotal")
        * 1024
}

#[test]
fn a_buffer_over_half_the_memory_is_refused() {
    let half = mem_total() / 2;
    // The flag's own ceiling is 16 GiB: on a machine with 32 GiB or more this cannot be shown.
    assert!(
        half < 16 << 30,
        "this test needs a machine with less than 32 GiB"
    );
    let over = format!("{}K", half / 1024 + 4);
    let e = refused(
        &["--buffer-size", &over],
        2,
        &["--buffer-size", "more than half of this machine's memory"],
    );
    assert!(e.contains(&format!("at most {half} bytes")), "{e}");
    refused(&["--buffer-size", "16G"], 2, &["more than half"]);
}

#[test]
fn durations_below_a_millisecond_or_above_a_day_are_refused() {
    for flag in [
        "--read-timeout",
        "--connect-timeout",
        "--request-timeout",
        "--quota-retry",
        "--max-backoff",
        "--startup-timeout",
    ] {
        for bad in ["1e-300", "0.0001", "86401", "NaN"] {
            refused(&[flag, bad], 2, &[flag, bad, "out of range"]);
        }
    }
    let option = "request_timeout=1e-300";
    refused(&["-o", option], 2, &["1e-300", "out of range"]);
}

/// Each duration has a floor below which it cannot work (a 1 ms timeout fails every request
/// and retries hundreds of times a second); the refusal names it and why, for flags and `-o`.
#[test]
fn durations_below_their_floor_are_refused_with_the_reason() {
    for (flag, floor, below, why) in [
        (
            "--connect-timeout",
            "0.1",
            "0.001",
            "no connection or answer comes sooner",
        ),
        (
            "--request-timeout",
            "0.1",
            "0.05",
            "no connection or answer comes sooner",
        ),
        ("--startup-timeout", "0.1", "0.001", "or 0 to skip"),
        (
            "--max-backoff",
            "0.25",
            "0.1",
            "the backoff starts at 0.25 s",
        ),
        ("--quota-retry", "1", "0.5", "quota is used up"),
        ("--read-timeout", "0.25", "0.1", "every 225 ms"),
    ] {
        let at_least = format!("At least {floor} (");
        refused(&[flag, below], 2, &[flag, below, &at_least, why]);
        let option = format!(
            "{}={below}",
            flag.trim_start_matches("--").replace('-', "_")
        );
        refused(&["-o", &option], 2, &[flag, below, &at_least, why]);
    }
    // The pacing window too: a zero window would not pace at all.
    refused(
        &["--rate-limit", "1/1e-300"],
        2,
        &["1/1e-300", "at least 0.1 s"],
    );
}

#[test]
fn mount_points_under_proc_or_sys_are_refused() {
    let emu = emulator();
    for dir in ["/proc/sys", "/sys/kernel", "/proc/self/fdinfo"] {
        let r = run(&emu, &[], Path::new(dir));
        assert_eq!(r.code, Some(1), "{dir}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!("mount point {dir}")),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("refused"), "{}", r.stderr);
    }
    // Through a symlink: the canonical path is what counts.
    let tmp = tempfile::tempdir().expect("tempdir");
    let link = tmp.path().join("innocent");
    std::os::unix::fs::symlink("/sys/fs", &link).expect("symlink");
    let r = run(&emu, &[], &link);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("under /sys"), "{}", r.stderr);
    // The kernel's filesystems wherever they are mounted: a procfs on a temporary directory.
    let procfs = tempfile::tempdir().expect("tempdir");
    nix::mount::mount(
        Some("proc"),
        procfs.path(),
        Some("proc"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount proc");
    let sys = procfs.path().join("sys");
    let r = run(&emu, &[], &sys);
    let _ = nix::mount::umount2(procfs.path(), nix::mount::MntFlags::MNT_DETACH);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("on the kernel's proc filesystem"),
        "{}",
        r.stderr
    );
}

/// An existing log file of ours that group or others may read is tightened to 0600, said on
/// the terminal and once in the log; a directory others can write to gets a warning.
#[test]
fn a_loose_log_file_is_tightened_and_a_shared_directory_is_warned_of() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("qrypt-fs.log");
    std::fs::write(&log, "earlier\n").expect("write");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let emu = emulator();
    let mut m = MountBuilder::new(&emu)
        .args(["--log-file", log.to_str().expect("utf8")])
        .mount();
    assert_eq!(
        std::fs::metadata(&log).expect("log").permissions().mode() & 0o7777,
        0o600
    );
    m.stop();
    let said = format!(
        "log file {} had mode 0644 (open to group or others): tightened to 0600",
        log.display()
    );
    assert!(m.log_text().contains(&said), "stderr: {}", m.log_text());
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.starts_with("earlier\n"), "appended to: {text}");
    assert_eq!(text.matches(&said).count(), 1, "logged once: {text}");
    assert!(!text.contains("writable by group or others"), "{text}");

    // A directory anyone may write to, without the sticky bit: the file stays, with a warning.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let mut m = MountBuilder::new(&emu)
        .args(["--log-file", log.to_str().expect("utf8")])
        .mount();
    m.stop();
    let said = format!(
        "directory {} of log file {} is writable by group or others without the sticky bit \
         (mode 0777): they can replace the log file; chmod go-w {}",
        dir.path().display(),
        log.display(),
        dir.path().display()
    );
    assert!(m.log_text().contains(&said), "stderr: {}", m.log_text());
    let text = std::fs::read_to_string(&log).expect("log");
    assert_eq!(text.matches(&said).count(), 1, "logged once: {text}");
    assert_eq!(text.matches("tightened").count(), 1, "not again: {text}");
}

#[test]
fn a_log_file_is_created_0600_and_a_planted_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Created 0600 (whatever the umask allows beyond that).
    let log = dir.path().join("qrypt-fs.log");
    let emu = emulator();
    let mut m = MountBuilder::new(&emu)
        .args(["--log-file", log.to_str().expect("utf8")])
        .mount();
    m.stop();
    let meta = std::fs::metadata(&log).expect("log created");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(
        std::fs::read_to_string(&log)
            .expect("log")
            .contains("mounted on")
    );

    // A symlink planted where the log goes: refused, and its target untouched.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").expect("write");
    let planted = dir.path().join("planted.log");
    std::os::unix::fs::symlink(&victim, &planted).expect("symlink");
    let p = planted.to_str().expect("utf8");
    refused(&["--log-file", p], 1, &[p, "is a symlink: refused"]);
    refused(&["-o", &format!("log_file={p}")], 1, &[p, "symlink"]);
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious\n"
    );

    // A hard link to another file, a FIFO (never blocks start-up), a directory, and a file of
    // another user: each refused, naming the path.
    let hard = dir.path().join("hard.log");
    std::fs::hard_link(&victim, &hard).expect("hard link");
    let h = hard.to_str().expect("utf8");
    refused(&["--log-file", h], 1, &[h, "hard links: refused"]);
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious\n"
    );
    let fifo = dir.path().join("fifo.log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
    let f = fifo.to_str().expect("utf8");
    refused(&["--log-file", f], 1, &[f, "not a regular file"]);
    let d = dir.path().to_str().expect("utf8");
    refused(&["--log-file", d], 1, &[d]);
    let theirs = dir.path().join("theirs.log");
    std::fs::write(&theirs, "").expect("write");
    nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
    assert_eq!(std::fs::metadata(&theirs).expect("meta").uid(), 65534);
    let t = theirs.to_str().expect("utf8");
    refused(&["--log-file", t], 1, &[t, "belongs to another user"]);
    // A missing directory: the error names the path.
    let missing = dir.path().join("no/such/dir/x.log");
    let mi = missing.to_str().expect("utf8");
    refused(&["--log-file", mi], 1, &[mi]);
}

#[test]
fn a_start_that_touches_a_file_on_a_hung_filesystem_fails_naming_it() {
    // A qrypt-fs whose daemon is then stopped: a lookup of any new name in its mount hangs,
    // as on a dead NFS server.
    let hung_emu = emulator();
    let mut hung = MountBuilder::new(&hung_emu)
        .args(["--buffer-size", "64K"])
        .mount();
    let on = hung.path().to_owned();
    let stopped = Stopped::stop(&hung);
    let at = |name: &str| on.join(name).display().to_string();
    let cases: Vec<(Vec<String>, String)> = vec![
        (vec!["--token-file".into(), at("token")], at("token")),
        (vec!["--ca-cert".into(), at("ca.pem")], at("ca.pem")),
        (vec!["--log-file".into(), at("log")], at("log")),
        (
            vec![
                "--budget".into(),
                "1M/day".into(),
                "--state-dir".into(),
                at("state"),
            ],
            at("state"),
        ),
    ];
    for (args, path) in &cases {
        let emu = emulator();
        let mnt = tempfile::tempdir().expect("tempdir");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t = std::time::Instant::now();
        // `run` gives up (and fails) after 10 s.
        let r = run(&emu, &args, mnt.path());
        assert_eq!(r.code, Some(1), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(path.as_str()) && r.stderr.contains("no answer within"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }
    // The mount point itself.
    let emu = emulator();
    let r = run(&emu, &[], &on.join("mnt"));
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains(&at("mnt")) && r.stderr.contains("no answer within"),
        "{}",
        r.stderr
    );
    drop(stopped);
    assert!(hung.stop().success());
}
