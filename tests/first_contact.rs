//! First contact, as a new user meets it: every way a start can go wrong ends with one sentence
//! saying what to do, an exit status, and nothing left mounted or running; every way it can be
//! merely late (no network yet) mounts anyway with a warning. Each case runs the real binary in
//! daemon mode (the command returns once the mount is ready or has failed) against the
//! emulator with a fault, unless it says otherwise.
// These mount real FUSE filesystems: /dev/fuse and root (or fusermount3) needed. Run by
// scripts/test.sh and CI (`--features fuse-tests`); plain `cargo test` builds them empty.
#![cfg(feature = "fuse-tests")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

/// Processes whose command line names `mountpoint` (the daemon we started, if still alive).
fn processes_naming(mountpoint: &Path) -> Vec<i32> {
    let needle = mountpoint.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// A temporary mount point that is unmounted (lazily) on drop, whatever the test did.
struct MountPoint(tempfile::TempDir);

impl MountPoint {
    fn new() -> MountPoint {
        MountPoint(tempfile::tempdir().expect("tempdir"))
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        if is_mounted(self.path()) {
            let _ = nix::mount::umount2(self.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// `qrypt-fs ARGS MOUNTPOINT` in daemon mode with the emulator's token in the environment.
fn start(mnt: &Path, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(["--rate-limit", "off"])
        .args(args)
        .arg(mnt)
        .env_remove("QRYPT_TOKEN")
        .env_remove("RUST_LOG");
    if let Some(t) = token {
        c.env("QRYPT_TOKEN", t);
    }
    c.output().expect("run qrypt-fs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit 1, exactly `message` on stderr, and no mount or daemon left behind.
fn assert_refused(out: &Output, mnt: &Path, message: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err, format!("qrypt-fs: {message}\n"));
    assert!(!is_mounted(mnt), "left mounted");
    // The daemon reported before exiting; give it a moment to be gone.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !processes_naming(mnt).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        processes_naming(mnt),
        Vec::<i32>::new(),
        "process left behind"
    );
}

/// Exit 0, mounted and serving, and exactly these warnings on stderr.
fn assert_mounted_with_warnings(out: &Output, mnt: &Path, warnings: &[String]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let expected: String = warnings
        .iter()
        .map(|w| format!("qrypt-fs: warning: {w}\n"))
        .collect();
    assert_eq!(err, expected);
    assert!(is_mounted(mnt));
    assert!(mnt.join("status").exists());
}

fn unmount_and_wait(mnt: &Path) {
    assert!(
        run_cmd("umount", &[mnt.to_str().expect("utf8")])
            .status
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while !processes_naming(mnt).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        processes_naming(mnt),
        Vec::<i32>::new(),
        "daemon outlived umount"
    );
}

fn api_url(emu: &Emulator) -> String {
    format!("{}/api/v1/quantum-entropy", emu.url())
}

#[test]
fn a_rejected_token_fails_the_start() {
    let emu = emulator();
    let mnt = MountPoint::new();
    let out = start(
        mnt.path(),
        Some("not-the-token"),
        &["--endpoint", &emu.url()],
    );
    assert_refused(
        &out,
        mnt.path(),
        "token rejected (HTTP 401): check QRYPT_TOKEN",
    );
    // From a file: the message names the file.
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "not-the-token\n").expect("write");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = start(
        mnt.path(),
        None,
        &[
            "--endpoint",
            &emu.url(),
            "--token-file",
            token.to_str().expect("utf8"),
        ],
    );
    assert_refused(
        &out,
        mnt.path(),
        &format!("token rejected (HTTP 401): check {}", token.display()),
    );
}

#[test]
fn a_rejected_token_fails_the_start_in_the_foreground_too() {
    let emu = emulator();
    let mnt = MountPoint::new();
    let out = start(
        mnt.path(),
        Some("not-the-token"),
        &["-f", "--endpoint", &emu.url()],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // The log goes to stderr in the foreground; the last line is the sentence.
    assert_eq!(
        err.lines().last(),
        Some("qrypt-fs: token rejected (HTTP 401): check QRYPT_TOKEN"),
        "{err}"
    );
    // Said once: the log on the terminal does not repeat what the last line says.
    assert_eq!(err.matches("token rejected (HTTP 401)").count(), 1, "{err}");
    assert!(!is_mounted(mnt.path()));
    assert_eq!(processes_naming(mnt.path()), Vec::<i32>::new());

    // With a log file, the terminal gets the sentence and the log keeps it.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("qrypt-fs.log");
    let out = start(
        mnt.path(),
        Some("not-the-token"),
        &[
            "-f",
            "--endpoint",
            &emu.url(),
            "--log-file",
            log.to_str().expect("utf8"),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        "qrypt-fs: token rejected (HTTP 401): check QRYPT_TOKEN",
        "{err}"
    );
    let logged = std::fs::read_to_string(&log).expect("log file");
    assert_eq!(
        logged
            .lines()
            .filter(|l| l.contains(" ERROR ")
                && l.ends_with("token rejected (HTTP 401): check QRYPT_TOKEN"))
            .count(),
        1,
        "{logged}"
    );
    assert!(!is_mounted(mnt.path()));
}

#[test]
fn a_wrong_endpoint_path_fails_the_start() {
    let emu = emulator();
    emu.set_fault(Fault::Status(404), None);
    let mnt = MountPoint::new();
    let out = start(mnt.path(), Some(TOKEN), &["--endpoint", &emu.url()]);
    assert_refused(
        &out,
        mnt.path(),
        &format!(
            "HTTP 404 from {}: --endpoint must be the base URL, e.g. https://api-eus.qrypt.com",
            api_url(&emu)
        ),
    );
}

#[test]
fn a_bad_request_fails_the_start() {
    let emu = emulator();
    emu.set_fault(Fault::Status(400), None);
    let mnt = MountPoint::new();
    let out = start(mnt.path(), Some(TOKEN), &["--endpoint", &emu.url()]);
    assert_refused(
        &out,
        mnt.path(),
        &format!(
            "request refused (HTTP 400) by {}: --endpoint must be the base URL of Qrypt's API, \
             e.g. https://api-eus.qrypt.com",
            api_url(&emu)
        ),
    );
}

#[test]
fn a_used_up_quota_fails_the_start() {
    let emu = emulator();
    emu.set_quota(Some(0));
    let mnt = MountPoint::new();
    let out = start(mnt.path(), Some(TOKEN), &["--endpoint", &emu.url()]);
    assert_refused(
        &out,
        mnt.path(),
        "quota used up (HTTP 403): the token from QRYPT_TOKEN has no entropy left this month; \
         wait for the quota to renew or use another token",
    );
}

#[test]
fn an_untrusted_certificate_fails_the_start() {
    let emu = Emulator::start(EmulatorConfig {
        tls: true,
        ..EmulatorConfig::default()
    })
    .expect("emulator");
    let mnt = MountPoint::new();
    let out = start(mnt.path(), Some(TOKEN), &["--endpoint", &emu.url()]);
    assert_refused(
        &out,
        mnt.path(),
        &format!(
            "TLS certificate of {} refused (invalid peer certificate: UnknownIssuer): if a \
             proxy intercepts TLS, trust its CA with --ca-cert PATH",
            emu.url()
        ),
    );
}

#[test]
fn a_response_that_is_not_the_apis_fails_the_start() {
    let emu = emulator();
    emu.set_fault(Fault::WrongContentType, None);
    let mnt = MountPoint::new();
    let out = start(mnt.path(), Some(TOKEN), &["--endpoint", &emu.url()]);
    assert_refused(
        &out,
        mnt.path(),
        &format!(
            "{} answered with a body that is not the API's (Content-Type is \"text/html; \
             charset=utf-8\", expected application/json): --endpoint must be the base URL of \
             Qrypt's API, e.g. https://api-eus.qrypt.com",
            api_url(&emu)
        ),
    );
}

#[test]
fn no_service_yet_mounts_with_a_warning_and_keeps_trying() {
    // A port nobody listens on: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mnt = MountPoint::new();
    let t = Instant::now();
    let out = start(mnt.path(), Some(TOKEN), &["--endpoint", &url]);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_mounted_with_warnings(
        &out,
        mnt.path(),
        &[format!(
            "no answer from {url} (connect failed: client error (Connect): tcp connect error: \
             Connection refused (os error 111)); mounted anyway; qrypt-fs keeps retrying and \
             readers wait"
        )],
    );
    let status = parse_status(&std::fs::read_to_string(mnt.path().join("status")).expect("status"));
    assert_eq!(status["state"], "backing off");
    unmount_and_wait(mnt.path());
}

#[test]
fn a_slow_service_mounts_after_the_startup_timeout_with_a_warning() {
    let emu = emulator();
    // The first answer comes after 6 s; the start gives up waiting after 0.5 s. (The upper
    // bound below only tells the two apart, with room for a loaded machine.)
    emu.set_fault(Fault::Delay(Duration::from_secs(6)), Some(1));
    let mnt = MountPoint::new();
    let t = Instant::now();
    let out = start(
        mnt.path(),
        Some(TOKEN),
        &["--endpoint", &emu.url(), "--startup-timeout", "0.5"],
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_mounted_with_warnings(
        &out,
        mnt.path(),
        &[format!(
            "no answer from {} within 0.5s; mounted anyway; qrypt-fs keeps retrying and \
             readers wait",
            emu.url()
        )],
    );
    // The late answer arrives and is served.
    assert_eq!(read_exact(&mnt.path().join("random"), 32).len(), 32);
    unmount_and_wait(mnt.path());
}

#[test]
fn a_server_error_mounts_with_a_warning() {
    let emu = emulator();
    emu.set_fault(Fault::Status(503), Some(1));
    let mnt = MountPoint::new();
    let out = start(
        mnt.path(),
        Some(TOKEN),
        &["--endpoint", &emu.url(), "--max-backoff", "0.2"],
    );
    assert_mounted_with_warnings(
        &out,
        mnt.path(),
        &[format!(
            "{} answered HTTP 503; mounted anyway; qrypt-fs keeps retrying and readers wait",
            emu.url()
        )],
    );
    assert_eq!(read_exact(&mnt.path().join("random"), 32).len(), 32);
    unmount_and_wait(mnt.path());
}

#[test]
fn a_first_answer_that_fails_a_health_test_mounts_with_the_reason() {
    // Well-formed answers whose bytes are predictable: each kind fails another test.
    for fault in [Fault::AllZeroBlocks, Fault::Progression] {
        let emu = emulator();
        emu.set_fault(fault.clone(), Some(1));
        let mnt = MountPoint::new();
        let out = start(
            mnt.path(),
            Some(TOKEN),
            &["--endpoint", &emu.url(), "--max-backoff", "0.2"],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{fault:?}: {err}");
        let prefix = format!(
            "qrypt-fs: warning: the first answer from {} failed a health test and was \
             discarded (",
            emu.url()
        );
        let suffix = "); mounted anyway; qrypt-fs keeps retrying and readers wait\n";
        assert!(
            err.starts_with(&prefix) && err.ends_with(suffix) && err.lines().count() == 1,
            "{fault:?}: {err}"
        );
        assert!(is_mounted(mnt.path()));
        // The next answer is good and served; the first one's bytes never were.
        assert_eq!(read_exact(&mnt.path().join("random"), 32).len(), 32);
        let status =
            parse_status(&std::fs::read_to_string(mnt.path().join("status")).expect("status"));
        assert_eq!(status["discarded_bytes"], "16384", "{fault:?}");
        unmount_and_wait(mnt.path());
    }
}

#[test]
fn startup_timeout_zero_skips_the_check() {
    let emu = emulator();
    let mnt = MountPoint::new();
    let out = start(
        mnt.path(),
        Some("not-the-token"),
        &["--endpoint", &emu.url(), "--startup-timeout", "0"],
    );
    assert_mounted_with_warnings(&out, mnt.path(), &[]);
    unmount_and_wait(mnt.path());
}

#[test]
fn endpoint_mistakes_are_named() {
    let mnt = MountPoint::new();
    for (endpoint, message) in [
        (
            "api-eus.qrypt.com",
            "endpoint \"api-eus.qrypt.com\" has no scheme: add https:// \
             (https://api-eus.qrypt.com)",
        ),
        (
            "https://api-eus.qrypt.com/api/v1/quantum-entropy",
            "endpoint https://api-eus.qrypt.com/api/v1/quantum-entropy is not a base URL: give \
             https://api-eus.qrypt.com (qrypt-fs adds /api/v1/quantum-entropy itself), e.g. \
             https://api-eus.qrypt.com",
        ),
        (
            "https://api-eus.qrypt.com?size=1",
            "endpoint https://api-eus.qrypt.com?size=1 is not a base URL: give \
             https://api-eus.qrypt.com (qrypt-fs adds /api/v1/quantum-entropy itself), e.g. \
             https://api-eus.qrypt.com",
        ),
    ] {
        let out = start(mnt.path(), Some(TOKEN), &["--endpoint", endpoint]);
        assert_refused(&out, mnt.path(), message);
    }
}

#[test]
fn buffer_size_errors_state_the_range_in_units() {
    let mnt = MountPoint::new();
    for (size, message) in [
        ("1K", "--buffer-size 1K is too small: at least 4K"),
        ("17G", "--buffer-size 17G is too large: at most 16G"),
        (
            "4MB",
            "\"4MB\": MB is ambiguous (10^3 or 2^10?); sizes are binary here: write 4M or 4MiB \
             (1M = 1048576 bytes)",
        ),
    ] {
        let out = start(mnt.path(), Some(TOKEN), &["--buffer-size", size]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{size}: {err}");
        assert!(err.contains(message), "{size}: {err}");
        assert!(!is_mounted(mnt.path()));
    }
    // A fraction that comes to whole bytes is a size.
    let emu = emulator();
    let out = start(
        mnt.path(),
        Some(TOKEN),
        &["--endpoint", &emu.url(), "--buffer-size", "4.5M"],
    );
    assert_mounted_with_warnings(&out, mnt.path(), &[]);
    let status = parse_status(&std::fs::read_to_string(mnt.path().join("status")).expect("status"));
    assert_eq!(status["capacity_bytes"], "4718592");
    unmount_and_wait(mnt.path());
}

#[test]
fn a_token_file_others_can_read_is_warned_about() {
    let emu = emulator();
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("write");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mnt = MountPoint::new();
    let out = start(
        mnt.path(),
        None,
        &[
            "--endpoint",
            &emu.url(),
            "--token-file",
            token.to_str().expect("utf8"),
        ],
    );
    assert_mounted_with_warnings(
        &out,
        mnt.path(),
        &[format!(
            "token file {} is readable by group or others (mode 644): anyone who can read it \
             can spend your quota; chmod 600 {}",
            token.display(),
            token.display()
        )],
    );
    unmount_and_wait(mnt.path());
}

#[test]
fn a_mount_point_that_is_not_empty_is_warned_about() {
    let emu = emulator();
    let mnt = MountPoint::new();
    std::fs::write(mnt.path().join("notes.txt"), "mine").expect("write");
    let out = start(mnt.path(), Some(TOKEN), &["--endpoint", &emu.url()]);
    assert_mounted_with_warnings(
        &out,
        mnt.path(),
        &[format!(
            "mount point {} is not empty: its contents are hidden while qrypt-fs is mounted",
            mnt.path().display()
        )],
    );
    unmount_and_wait(mnt.path());
    assert!(mnt.path().join("notes.txt").exists());
}

/// `sh -c SCRIPT` as user nobody, in a private mount namespace when `private` (so a test can
/// bind something over /dev/fuse without touching the system's).
fn as_nobody(script: &str, private: bool) -> Output {
    require_program("setpriv");
    require_program("unshare");
    let mut c = Command::new("unshare");
    if private {
        c.args(["--mount", "--propagation", "private"]);
    }
    c.args(["sh", "-c", script])
        .env_remove("QRYPT_TOKEN")
        .env_remove("RUST_LOG")
        .output()
        .expect("unshare")
}

fn nobody_can_use(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
}

#[test]
fn a_user_without_fusermount3_is_told_to_install_fuse3() {
    let mnt = MountPoint::new();
    nobody_can_use(mnt.path());
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    // /dev/fuse open to all (as it usually is; inside this namespace only), and a PATH
    // without fusermount3 (or fusermount).
    let fake = dir.path().join("fuse");
    std::fs::write(&fake, "").expect("write");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = as_nobody(
        &format!(
            "mount --bind {} /dev/fuse && exec setpriv --reuid=65534 --regid=65534 \
             --clear-groups env PATH={} QRYPT_TOKEN={TOKEN} {BIN} --endpoint \
             http://127.0.0.1:1 {}",
            fake.display(),
            bin.display(),
            mnt.path().display()
        ),
        true,
    );
    assert_refused(
        &out,
        mnt.path(),
        "fusermount3 is not installed (a mount by a user other than root goes through it): \
         install fuse3 (apt-get install fuse3), or run qrypt-fs as root",
    );
}

#[test]
fn a_user_without_access_to_dev_fuse_is_told_how_to_fix_it() {
    let mnt = MountPoint::new();
    nobody_can_use(mnt.path());
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("fuse");
    std::fs::write(&fake, "").expect("write");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // Only inside this namespace is /dev/fuse a root-only file.
    let out = as_nobody(
        &format!(
            "mount --bind {} /dev/fuse && exec setpriv --reuid=65534 --regid=65534 \
             --clear-groups env QRYPT_TOKEN={TOKEN} {BIN} --endpoint http://127.0.0.1:1 {}",
            fake.display(),
            mnt.path().display()
        ),
        true,
    );
    assert_refused(
        &out,
        mnt.path(),
        "no read-write access to /dev/fuse (mode 600) for this user: run qrypt-fs as root, or \
         have an administrator grant access (chmod 666 /dev/fuse is the usual setting)",
    );
}
