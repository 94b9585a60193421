//! First contact, as a new user meets it: every way a start can go wrong ends with one sentence
//! saying what to do, an exit status, and nothing left mounted or running; every way it can be
//! merely late (no network yet) mounts anyway with a warning. Each case runs the real binary in
//! daemon mode (the command returns once the mount is ready or has failed) against the
//! emulator with a fault, unless it says otherwise.
//!
//! Most cases share one skeleton (an upstream, a command line, one expected outcome and a few
//! checks on the mount), so they are rows of a table run by [`run`], each its own test.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::*;

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

/// `qrypt-fs ARGS MOUNTPOINT` in daemon mode with the emulator's token in the environment.
fn start(mnt: &Path, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = qrypt_fs();
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

/// What the start says in the background when no syslog daemon listens on /dev/log (none does
/// on a test machine without one; a machine with one gets no such line).
fn syslog_note() -> Option<String> {
    let listening = std::os::unix::net::UnixDatagram::unbound()
        .and_then(|s| s.connect("/dev/log"))
        .is_ok();
    (!listening).then(|| {
        "qrypt-fs: warning: no syslog daemon listens on /dev/log: the daemon's log is lost; \
         give --log-file PATH, or run in the foreground (-f) under a supervisor that keeps \
         stderr\n"
            .to_owned()
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stderr of a start that mounted in the background, without the syslog note (which must be
/// there exactly when no syslog daemon listens).
fn stderr_after_syslog_note(out: &Output) -> String {
    let err = stderr(out);
    match syslog_note() {
        Some(note) => {
            assert!(err.contains(&note), "no syslog note: {err}");
            err.replacen(&note, "", 1)
        }
        None => err,
    }
}

/// Exit 1, exactly `message` on stderr, and no mount or daemon left behind.
fn assert_refused(out: &Output, mnt: &Path, message: &str) {
    // A start refused after going to the background said where its log goes first.
    let err = match syslog_note() {
        Some(note) => stderr(out).replacen(&note, "", 1),
        None => stderr(out),
    };
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
    let err = stderr_after_syslog_note(out);
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

/// What the start meets upstream.
enum Upstream {
    /// No `--endpoint` is added: the case's arguments say everything (or fail before any).
    None,
    /// The emulator, answering correctly.
    Healthy,
    /// The emulator with `fault` on its first `times` answers (every answer with `None`).
    Fault(Fault, Option<u32>),
    /// The emulator with the month's quota used up.
    QuotaUsedUp,
    /// The emulator on TLS with a certificate the system does not trust.
    UntrustedTls,
    /// A port nobody listens on: connection refused.
    NobodyListening,
    /// The (plain-HTTP) emulator, asked for with https://: a port that does not speak TLS.
    PlainHttpAsHttps,
}

/// How the command ends.
enum Expect {
    /// Exit 1, exactly `qrypt-fs: MESSAGE` on stderr, and no mount or daemon left behind.
    Refused(&'static str),
    /// Exit 2 (clap's usage error) with the fragment on stderr, and nothing mounted.
    Usage(&'static str),
    /// Exit 0, mounted and serving, and exactly these warnings on stderr.
    Mounted(&'static [&'static str]),
    /// Exit 0, mounted, and one warning line that starts and ends so (its middle names
    /// whichever health test failed).
    MountedWarningBetween(&'static str, &'static str),
}

/// A check on the live mount, in order, after the expected outcome.
enum Check {
    /// `/status` has this value for this key.
    Status(&'static str, &'static str),
    /// 32 bytes can be read from `/random`.
    Serves,
    /// After the unmount, the mount point still holds what was put there before the start.
    KeptItsContents,
}

/// One start. Messages and arguments may name `{url}` (the upstream's base URL), `{api}` (its
/// entropy URL), `{token_file}` and `{mnt}`, filled in by [`run`].
struct Case {
    upstream: Upstream,
    /// QRYPT_TOKEN in the environment.
    token: Option<&'static str>,
    /// A token file with this content and mode, given with `--token-file`.
    token_file: Option<(&'static str, u32)>,
    /// A file is in the mount point before the start.
    mount_point_not_empty: bool,
    /// Arguments after `--endpoint URL` (when there is an upstream).
    args: &'static [&'static str],
    /// Run as user nobody, with a fake /dev/fuse of this mode bound over the real one in a
    /// private mount namespace, and (when true) a PATH without fusermount3.
    as_nobody: Option<(u32, bool)>,
    /// The start takes at least the first and less than the second.
    took: Option<(Duration, Duration)>,
    expect: Expect,
    then: &'static [Check],
}

/// The usual case: a healthy emulator, the right token, no extra arguments, mounted quietly.
const CASE: Case = Case {
    upstream: Upstream::Healthy,
    token: Some(TOKEN),
    token_file: None,
    mount_point_not_empty: false,
    args: &[],
    as_nobody: None,
    took: None,
    expect: Expect::Mounted(&[]),
    then: &[],
};

/// Runs one case: starts its upstream, runs the command, and checks the outcome, then the
/// checks on the mount, and that umount ends the daemon.
fn run(case: Case) {
    let mnt = mount_point();
    let mut url = None;
    let plain_http_as_https = matches!(case.upstream, Upstream::PlainHttpAsHttps);
    let emu = match case.upstream {
        Upstream::None => None,
        Upstream::Healthy | Upstream::PlainHttpAsHttps => Some(emulator()),
        Upstream::Fault(fault, times) => {
            let emu = emulator();
            emu.set_fault(fault, times);
            Some(emu)
        }
        Upstream::QuotaUsedUp => {
            let emu = emulator();
            emu.set_quota(Some(0));
            Some(emu)
        }
        Upstream::UntrustedTls => Some(
            Emulator::start(EmulatorConfig {
                tls: true,
                ..EmulatorConfig::default()
            })
            .expect("emulator"),
        ),
        Upstream::NobodyListening => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            url = Some(format!("http://127.0.0.1:{port}"));
            None
        }
    };
    if let Some(emu) = &emu {
        url = Some(emu.url());
    }
    if plain_http_as_https {
        url = url.map(|u| u.replacen("http://", "https://", 1));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    let fill = |s: &str| {
        s.replace("{url}", url.as_deref().unwrap_or("-"))
            .replace(
                "{api}",
                &format!("{}/api/v1/quantum-entropy", url.as_deref().unwrap_or("-")),
            )
            .replace("{token_file}", &token_file.display().to_string())
            .replace("{mnt}", &mnt.path().display().to_string())
    };
    let mut args: Vec<String> = Vec::new();
    if let Some(url) = &url {
        args.extend(["--endpoint".to_owned(), url.clone()]);
    }
    args.extend(case.args.iter().map(|a| fill(a)));
    if let Some((content, mode)) = case.token_file {
        std::fs::write(&token_file, content).expect("write");
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(mode))
            .expect("chmod");
        args.extend(["--token-file".to_owned(), fill("{token_file}")]);
    }
    if case.mount_point_not_empty {
        std::fs::write(mnt.path().join("notes.txt"), "mine").expect("write");
    }
    let t = Instant::now();
    let out = match case.as_nobody {
        None => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            start(mnt.path(), case.token, &args)
        }
        Some((dev_fuse_mode, hide_fusermount)) => {
            nobody_can_use(mnt.path());
            let fake = dir.path().join("fuse");
            std::fs::write(&fake, "").expect("write");
            std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(dev_fuse_mode))
                .expect("chmod");
            let path = if hide_fusermount {
                let bin = dir.path().join("bin");
                std::fs::create_dir(&bin).expect("mkdir");
                format!("PATH={} ", bin.display())
            } else {
                String::new()
            };
            let token = case
                .token
                .map(|t| format!("QRYPT_TOKEN={t} "))
                .unwrap_or_default();
            as_nobody(
                &format!(
                    "mount --bind {} /dev/fuse && exec setpriv --reuid=65534 --regid=65534 \
                     --clear-groups env {path}{token}{BIN} {} {}",
                    fake.display(),
                    args.join(" "),
                    mnt.path().display()
                ),
                true,
            )
        }
    };
    if let Some((at_least, less_than)) = case.took {
        let took = t.elapsed();
        assert!(took >= at_least && took < less_than, "{took:?}");
    }
    let mounted = match case.expect {
        Expect::Refused(message) => {
            assert_refused(&out, mnt.path(), &fill(message));
            false
        }
        Expect::Usage(fragment) => {
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{err}");
            assert!(err.contains(fragment), "{err}");
            assert!(!is_mounted(mnt.path()));
            false
        }
        Expect::Mounted(warnings) => {
            let warnings: Vec<String> = warnings.iter().map(|w| fill(w)).collect();
            assert_mounted_with_warnings(&out, mnt.path(), &warnings);
            true
        }
        Expect::MountedWarningBetween(prefix, suffix) => {
            let err = stderr_after_syslog_note(&out);
            assert_eq!(out.status.code(), Some(0), "{err}");
            let (prefix, suffix) = (fill(prefix), fill(suffix));
            assert!(
                err.starts_with(&format!("qrypt-fs: warning: {prefix}"))
                    && err.ends_with(&format!("{suffix}\n"))
                    && err.lines().count() == 1,
                "{err}"
            );
            assert!(is_mounted(mnt.path()));
            true
        }
    };
    for check in case.then {
        match check {
            Check::Status(key, value) => {
                let status = parse_status(
                    &std::fs::read_to_string(mnt.path().join("status")).expect("status"),
                );
                assert_eq!(status[*key], *value, "{key}: {status:#?}");
            }
            Check::Serves => assert_eq!(read_exact(&mnt.path().join("random"), 32).len(), 32),
            Check::KeptItsContents => {}
        }
    }
    if mounted {
        unmount_and_wait(mnt.path());
    }
    if case
        .then
        .iter()
        .any(|c| matches!(c, Check::KeptItsContents))
    {
        assert!(mnt.path().join("notes.txt").exists());
    }
}

/// One test per case, so that a failure names its case.
macro_rules! cases {
    ($($(#[$doc:meta])* $name:ident: $case:expr;)*) => {
        $($(#[$doc])* #[test] fn $name() { run($case) })*
    };
}

cases! {
    a_rejected_token_fails_the_start: Case {
        token: Some("not-the-token"),
        expect: Expect::Refused("token rejected (HTTP 401): check QRYPT_TOKEN"),
        ..CASE
    };
    /// From a file: the message names the file.
    a_rejected_token_from_a_file_fails_the_start_naming_the_file: Case {
        token: None,
        token_file: Some(("not-the-token\n", 0o600)),
        expect: Expect::Refused("token rejected (HTTP 401): check {token_file}"),
        ..CASE
    };
    a_wrong_endpoint_path_fails_the_start: Case {
        upstream: Upstream::Fault(Fault::Status(404), None),
        expect: Expect::Refused(
            "HTTP 404 from {api}: --endpoint must be the base URL, e.g. https://api-eus.qrypt.com",
        ),
        ..CASE
    };
    a_bad_request_fails_the_start: Case {
        upstream: Upstream::Fault(Fault::Status(400), None),
        expect: Expect::Refused(
            "request refused (HTTP 400) by {api}: --endpoint must be the base URL of Qrypt's \
             API, e.g. https://api-eus.qrypt.com",
        ),
        ..CASE
    };
    a_used_up_quota_fails_the_start: Case {
        upstream: Upstream::QuotaUsedUp,
        expect: Expect::Refused(
            "quota used up (HTTP 403): the token from QRYPT_TOKEN has no entropy left this \
             month; wait for the quota to renew or use another token",
        ),
        ..CASE
    };
    an_untrusted_certificate_fails_the_start: Case {
        upstream: Upstream::UntrustedTls,
        expect: Expect::Refused(
            "TLS certificate of {url} refused (invalid peer certificate: UnknownIssuer): if a \
             proxy intercepts TLS, trust its CA with --ca-cert PATH",
        ),
        ..CASE
    };
    a_response_that_is_not_the_apis_fails_the_start: Case {
        upstream: Upstream::Fault(Fault::WrongContentType, None),
        expect: Expect::Refused(
            "{api} answered with a body that is not the API's (Content-Type is \"text/html; \
             charset=utf-8\", expected application/json): --endpoint must be the base URL of \
             Qrypt's API, e.g. https://api-eus.qrypt.com",
        ),
        ..CASE
    };
    no_service_yet_mounts_with_a_warning_and_keeps_trying: Case {
        upstream: Upstream::NobodyListening,
        took: Some((Duration::ZERO, Duration::from_secs(5))),
        expect: Expect::Mounted(&[
            "no answer from {url} (connect failed: client error (Connect): tcp connect error: \
             Connection refused (os error 111)); mounted anyway; qrypt-fs keeps retrying and \
             readers wait",
        ]),
        then: &[Check::Status("state", "backing off")],
        ..CASE
    };
    /// The first answer comes after 6 s; the start gives up waiting after 0.5 s. (The upper
    /// bound only tells the two apart, with room for a loaded machine.) The late answer
    /// arrives and is served.
    a_slow_service_mounts_after_the_startup_timeout_with_a_warning: Case {
        upstream: Upstream::Fault(Fault::Delay(Duration::from_secs(6)), Some(1)),
        args: &["--startup-timeout", "0.5"],
        took: Some((Duration::from_millis(500), Duration::from_secs(5))),
        expect: Expect::Mounted(&[
            "no answer from {url} within 0.5s; mounted anyway; qrypt-fs keeps retrying and \
             readers wait",
        ]),
        then: &[Check::Serves],
        ..CASE
    };
    a_server_error_mounts_with_a_warning: Case {
        upstream: Upstream::Fault(Fault::Status(503), Some(1)),
        args: &["--max-backoff", "0.25"],
        expect: Expect::Mounted(&[
            "{url} answered HTTP 503; mounted anyway; qrypt-fs keeps retrying and readers wait",
        ]),
        then: &[Check::Serves],
        ..CASE
    };
    /// Well-formed answers whose bytes are predictable: each kind fails another test. The
    /// next answer is good and served; the first one's bytes never were.
    a_first_answer_of_zeros_fails_a_health_test_and_mounts_with_the_reason: Case {
        upstream: Upstream::Fault(Fault::AllZeroBlocks, Some(1)),
        ..HEALTH_CASE
    };
    a_first_answer_of_a_progression_fails_a_health_test_and_mounts_with_the_reason: Case {
        upstream: Upstream::Fault(Fault::Progression, Some(1)),
        ..HEALTH_CASE
    };
    startup_timeout_zero_skips_the_check: Case {
        token: Some("not-the-token"),
        args: &["--startup-timeout", "0"],
        ..CASE
    };
    an_endpoint_without_a_scheme_is_named: Case {
        upstream: Upstream::None,
        args: &["--endpoint", "api-eus.qrypt.com"],
        expect: Expect::Refused(
            "endpoint \"api-eus.qrypt.com\" has no scheme: add https:// \
             (https://api-eus.qrypt.com)",
        ),
        ..CASE
    };
    /// RFC 6761: a name under .invalid never resolves, so this does not depend on the DNS.
    an_endpoint_whose_host_does_not_exist_fails_the_start: Case {
        upstream: Upstream::None,
        args: &["--endpoint", "https://api-eus.qrypt.invalid"],
        expect: Expect::Refused(
            "no such host api-eus.qrypt.invalid (the DNS answered that it does not exist): \
             check the spelling of --endpoint https://api-eus.qrypt.invalid, e.g. \
             https://api-eus.qrypt.com",
        ),
        ..CASE
    };
    /// The fix, not what was typed.
    an_endpoint_with_an_unknown_scheme_is_fixed_not_echoed: Case {
        upstream: Upstream::None,
        args: &["--endpoint", "htp://127.0.0.1:42073"],
        expect: Expect::Refused(
            "endpoint htp://127.0.0.1:42073 has an unknown scheme: use https:// (or http:// \
             to a loopback address), e.g. http://127.0.0.1:42073",
        ),
        ..CASE
    };
    https_to_a_port_that_does_not_speak_tls_fails_the_start: Case {
        upstream: Upstream::PlainHttpAsHttps,
        expect: Expect::Refused(
            "{url} does not speak TLS (received corrupt message of type InvalidContentType): \
             for a plain-HTTP server on this machine use http://, else check the port of \
             --endpoint",
        ),
        ..CASE
    };
    an_endpoint_with_the_api_path_is_named: Case {
        upstream: Upstream::None,
        args: &["--endpoint", "https://api-eus.qrypt.com/api/v1/quantum-entropy"],
        expect: Expect::Refused(
            "endpoint https://api-eus.qrypt.com/api/v1/quantum-entropy is not a base URL: give \
             https://api-eus.qrypt.com (qrypt-fs adds /api/v1/quantum-entropy itself), e.g. \
             https://api-eus.qrypt.com",
        ),
        ..CASE
    };
    an_endpoint_with_a_query_is_named: Case {
        upstream: Upstream::None,
        args: &["--endpoint", "https://api-eus.qrypt.com?size=1"],
        expect: Expect::Refused(
            "endpoint https://api-eus.qrypt.com?size=1 is not a base URL: give \
             https://api-eus.qrypt.com (qrypt-fs adds /api/v1/quantum-entropy itself), e.g. \
             https://api-eus.qrypt.com",
        ),
        ..CASE
    };
    a_buffer_size_too_small_states_the_range_in_units: Case {
        upstream: Upstream::None,
        args: &["--buffer-size", "1K"],
        expect: Expect::Usage("--buffer-size 1K is too small: at least 4K"),
        ..CASE
    };
    a_buffer_size_too_large_states_the_range_in_units: Case {
        upstream: Upstream::None,
        args: &["--buffer-size", "17G"],
        expect: Expect::Usage("--buffer-size 17G is too large: at most 16G"),
        ..CASE
    };
    an_ambiguous_buffer_size_unit_is_explained: Case {
        upstream: Upstream::None,
        args: &["--buffer-size", "4MB"],
        expect: Expect::Usage(
            "\"4MB\": MB is ambiguous (10^3 or 2^10?); sizes are binary here: write 4M or 4MiB \
             (1M = 1048576 bytes)",
        ),
        ..CASE
    };
    /// A fraction that comes to whole bytes is a size.
    a_fractional_buffer_size_of_whole_bytes_is_a_size: Case {
        args: &["--buffer-size", "4.5M"],
        then: &[Check::Status("capacity_bytes", "4718592")],
        ..CASE
    };
    a_token_file_others_can_read_is_warned_about: Case {
        token: None,
        token_file: Some(("emulator-token\n", 0o644)),
        expect: Expect::Mounted(&[
            "token file {token_file} is readable by group or others (mode 644): anyone who can \
             read it can spend your quota; chmod 600 {token_file}",
        ]),
        ..CASE
    };
    a_mount_point_that_is_not_empty_is_warned_about: Case {
        mount_point_not_empty: true,
        expect: Expect::Mounted(&[
            "mount point {mnt} is not empty: its contents are hidden while qrypt-fs is mounted",
        ]),
        then: &[Check::KeptItsContents],
        ..CASE
    };
    /// /dev/fuse open to all (as it usually is; inside the namespace only), and a PATH
    /// without fusermount3 (or fusermount).
    a_user_without_fusermount3_is_told_to_install_fuse3: Case {
        upstream: Upstream::None,
        args: &["--endpoint", "http://127.0.0.1:1"],
        as_nobody: Some((0o666, true)),
        expect: Expect::Refused(
            "fusermount3 is not installed (a mount by a user other than root goes through it): \
             install fuse3 (apt-get install fuse3), or run qrypt-fs as root",
        ),
        ..CASE
    };
    /// Only inside the namespace is /dev/fuse a root-only file.
    a_user_without_access_to_dev_fuse_is_told_how_to_fix_it: Case {
        upstream: Upstream::None,
        args: &["--endpoint", "http://127.0.0.1:1"],
        as_nobody: Some((0o600, false)),
        expect: Expect::Refused(
            "no read-write access to /dev/fuse (mode 600) for this user: run qrypt-fs as root, \
             or have an administrator grant access (chmod 666 /dev/fuse is the usual setting)",
        ),
        ..CASE
    };
}

/// A first answer that fails a health test: mounted with the reason, then served, with the
/// first request's 16 KiB discarded.
const HEALTH_CASE: Case = Case {
    args: &["--max-backoff", "0.25"],
    expect: Expect::MountedWarningBetween(
        "the first answer from {url} failed a health test and was discarded (",
        "); mounted anyway; qrypt-fs keeps retrying and readers wait",
    ),
    then: &[Check::Serves, Check::Status("discarded_bytes", "16384")],
    ..CASE
};

#[test]
fn a_rejected_token_fails_the_start_in_the_foreground_too() {
    let emu = emulator();
    let mnt = mount_point();
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

/// In the background with no syslog daemon, a daemon whose stderr is the journal's stream
/// (systemd's JOURNAL_STREAM names it) keeps that stderr and logs there; the start says so.
#[test]
fn without_syslog_the_background_logs_to_the_journal_stream() {
    use std::os::unix::fs::MetadataExt;
    if syslog_note().is_none() {
        eprintln!("skipped: a syslog daemon listens on /dev/log here");
        return;
    }
    let emu = emulator();
    let mnt = mount_point();
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    let file = std::fs::File::create(&journal).expect("create");
    let meta = file.metadata().expect("metadata");
    let status = qrypt_fs()
        .args(["--rate-limit", "off", "--endpoint", &emu.url()])
        .arg(mnt.path())
        .env("QRYPT_TOKEN", TOKEN)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("RUST_LOG")
        .stderr(file)
        .status()
        .expect("run");
    assert_eq!(status.code(), Some(0));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&journal).expect("read");
        if text.contains(" mounted on ") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        text.starts_with(
            "qrypt-fs: warning: no syslog daemon listens on /dev/log: logging to the journal \
             through stderr\n"
        ),
        "{text}"
    );
    assert!(text.contains(" mounted on "), "the daemon's log: {text}");
    unmount_and_wait(mnt.path());
}

/// A spent budget is a stop: `last_error` says which cap and when it renews, and the log says
/// it once.
#[test]
fn a_spent_budget_says_why_and_until_when_in_last_error() {
    let emu = emulator();
    let state = tempfile::tempdir().expect("tempdir");
    let m = MountBuilder::new(&emu)
        .args(["--budget", "64K/day", "--buffer-size", "64K"])
        .arg("--state-dir")
        .arg(state.path().display().to_string())
        .mount();
    // More than the cap: the first fill spends it, the rest waits and then gets EIO.
    let _ = read_in_4k(&m, 64 * 1024);
    let f = open_nonblocking(&m.random());
    let deadline = Instant::now() + Duration::from_secs(20);
    while m.status()["state"] != "budget exhausted" {
        assert!(Instant::now() < deadline, "{:#?}", m.status());
        let _ = read_once(&f, 4096);
        std::thread::sleep(Duration::from_millis(50));
    }
    let last_error = m.status()["last_error"].clone();
    assert!(
        last_error.starts_with(
            "budget 64K/day reached: no requests, buffered bytes are still served, reads \
             that would wait get EIO; until it renews at 20"
        ),
        "{last_error}"
    );
    assert_eq!(m.log_text().matches("budget 64K/day reached").count(), 1);
}

/// SIGHUP to a working mount: bytes are served as before, and /status does not say
/// `starting` as if they were not.
#[test]
fn sighup_to_a_working_mount_keeps_it_ok() {
    let emu = emulator();
    let m = MountBuilder::new(&emu).mount();
    m.wait_full();
    assert_eq!(m.status()["state"], "ok");
    m.sighup();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !m.log_text().contains("SIGHUP") {
        assert!(
            Instant::now() < deadline,
            "SIGHUP not handled: {}",
            m.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(m.status()["state"], "ok");
    assert_eq!(read_exact(&m.random(), 32).len(), 32);
    assert_eq!(m.status()["state"], "ok");
}

/// A DNS server that does not answer is not a name that does not exist: the start mounts with
/// a warning and keeps retrying. Run in a private mount namespace whose /etc/resolv.conf names
/// a server this test holds the port of and never answers (getaddrinfo: EAI_AGAIN).
#[test]
fn a_dns_server_that_does_not_answer_mounts_with_a_warning() {
    require_program("unshare");
    let _silent = std::net::UdpSocket::bind("127.0.0.254:53")
        .expect("bind 127.0.0.254:53, the DNS server that never answers");
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.254\noptions timeout:1 attempts:1\n",
    )
    .expect("write");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let (r, m) = (resolv.display(), mnt.display());
    let script = format!(
        "set -e; mount --bind {r} /etc/resolv.conf; trap 'umount -l {m} 2>/dev/null' EXIT; \
         {BIN} --rate-limit off --endpoint https://api.qrypt.example {m}; \
         grep '^state:' {m}/status; umount {m}; trap - EXIT"
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("QRYPT_TOKEN", TOKEN)
        .env_remove("RUST_LOG")
        .output()
        .expect("unshare");
    let err = stderr_after_syslog_note(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.starts_with("qrypt-fs: warning: no answer from https://api.qrypt.example (")
            && err.ends_with("; mounted anyway; qrypt-fs keeps retrying and readers wait\n")
            && !err.contains("no such host"),
        "{err}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "state: backing off\n");
}
