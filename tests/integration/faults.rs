//! Trusting the upstream only as far as it earns: one test per fault of the emulator. Each
//! checks that the stream goes on (or fails fast for 401/403), that no byte of a bad response is
//! served, the counters and state in `/status`, and recovery once the fault clears.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::common::*;

/// Mounts with a 64 KiB buffer (so the first fill is one request) and quick retries. These
/// tests fault the first answer to see the running policy for each fault; the start's own
/// check, which would end the mount at such an answer, is tested in first_contact.rs.
fn mount_with(emu: &Emulator, extra: &[&str]) -> Mount {
    quick_retries(emu)
        .args(["--startup-timeout", "0"])
        .args(extra.iter().copied())
        .mount()
}

/// A fault on the first answer that the stream rides out, and what `/status` must say of it.
struct Transient {
    fault: Fault,
    /// The failure class `/status` counts it under and the log names.
    class: &'static str,
    /// Arguments after [`mount_with`]'s.
    args: &'static [&'static str],
    /// `discarded_bytes` after the fault, when the fault's bytes were received and dropped.
    discarded_bytes: Option<u64>,
    /// A fragment of `last_error`, when the cause must be named.
    last_error: Option<&'static str>,
}

const TRANSIENT: Transient = Transient {
    fault: Fault::Status(500),
    class: "",
    args: &[],
    discarded_bytes: None,
    last_error: None,
};

/// The first response has the case's fault; the stream must go on with good bytes only.
fn transient(case: Transient) {
    let class = case.class;
    let emu = emulator();
    emu.set_fault(case.fault, Some(1));
    let m = mount_with(&emu, case.args);
    m.wait_full();
    read_checked(&emu, &m, 200 * 1024);
    let s = m.status();
    assert_eq!(s["requests_failed"], "1", "{s:#?}");
    assert_eq!(s["failures"], format!("{class}=1"), "{s:#?}");
    assert_ne!(s["last_error"], "none");
    assert_eq!(
        s["state"], "degraded",
        "recovered, with a failure in the last minute: {s:#?}"
    );
    assert_eq!(s["consecutive_failures"], "0");
    let log = m.log_text();
    assert!(
        log.contains(&format!("upstream failure ({class})")),
        "logged once: {log}"
    );
    if let Some(bytes) = case.discarded_bytes {
        assert_eq!(m.status_u64("discarded_bytes"), bytes);
    }
    if let Some(fragment) = case.last_error {
        assert!(m.status()["last_error"].contains(fragment));
    }
}

/// One test per fault, so that a failure names its fault.
macro_rules! transient_cases {
    ($($(#[$doc:meta])* $name:ident: $case:expr;)*) => {
        $($(#[$doc])* #[test] fn $name() { transient($case) })*
    };
}

transient_cases! {
    http_500: Transient { fault: Fault::Status(500), class: "http_500", ..TRANSIENT };
    http_503: Transient { fault: Fault::Status(503), class: "http_503", ..TRANSIENT };
    http_429_without_retry_after_backs_off: Transient {
        fault: Fault::TooManyRequests { retry_after: None },
        class: "http_429",
        ..TRANSIENT
    };
    malformed_json: Transient { fault: Fault::MalformedJson, class: "validation", ..TRANSIENT };
    wrong_json_types: Transient { fault: Fault::WrongTypes, class: "validation", ..TRANSIENT };
    size_mismatch: Transient { fault: Fault::SizeMismatch, class: "validation", ..TRANSIENT };
    short_block: Transient { fault: Fault::ShortBlock, class: "validation", ..TRANSIENT };
    non_base64: Transient { fault: Fault::NonBase64, class: "validation", ..TRANSIENT };
    wrong_content_type: Transient {
        fault: Fault::WrongContentType,
        class: "validation",
        ..TRANSIENT
    };
    oversized_body_is_cut_off: Transient {
        fault: Fault::OversizedBody,
        class: "validation",
        ..TRANSIENT
    };
    /// The first request (16 KiB, see prefetch) was the zero one.
    all_zero_blocks_fail_the_health_tests: Transient {
        fault: Fault::AllZeroBlocks,
        class: "health",
        discarded_bytes: Some(16 * 1024),
        ..TRANSIENT
    };
    dropped_connection: Transient {
        fault: Fault::DropConnection,
        class: "transport",
        ..TRANSIENT
    };
    reset_mid_body: Transient { fault: Fault::ResetMidBody, class: "transport", ..TRANSIENT };
    truncated_body: Transient { fault: Fault::TruncatedBody, class: "transport", ..TRANSIENT };
    slow_drip_past_the_request_timeout: Transient {
        fault: Fault::SlowDrip { bytes_per_sec: 2000 },
        class: "transport",
        args: &["--request-timeout", "1"],
        last_error: Some("timed out"),
        ..TRANSIENT
    };
    delay_past_the_request_timeout: Transient {
        fault: Fault::Delay(Duration::from_secs(3)),
        class: "transport",
        args: &["--request-timeout", "1"],
        ..TRANSIENT
    };
}

#[test]
fn http_429_with_retry_after_is_honoured() {
    let emu = emulator();
    emu.set_fault(
        Fault::TooManyRequests {
            retry_after: Some(2),
        },
        Some(1),
    );
    let t = Instant::now();
    let m = mount_with(&emu, &["--max-backoff", "5"]);
    m.wait_status("backing off", Duration::from_secs(3), |s| {
        s["failures"] == "http_429=1"
    });
    let s = m.status();
    assert_eq!(s["state"], "backing off");
    let next: f64 = s["next_attempt_in_seconds"].parse().expect("seconds");
    assert!(next > 1.0 && next <= 2.0, "{s:#?}");
    m.wait_full();
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "retried before Retry-After"
    );
    read_checked(&emu, &m, 64 * 1024);
}

#[test]
fn http_429_with_an_absurd_retry_after_is_capped() {
    let emu = emulator();
    // "Come back in 584 billion years": honoured up to --max-backoff, never a crash or a hang.
    emu.set_fault(
        Fault::TooManyRequests {
            retry_after: Some(u64::MAX),
        },
        Some(1),
    );
    let m = mount_with(&emu, &["--max-backoff", "1.5"]);
    m.wait_status("backing off", Duration::from_secs(3), |s| {
        s["failures"] == "http_429=1"
    });
    let next: f64 = m.status()["next_attempt_in_seconds"]
        .parse()
        .expect("seconds");
    assert!(next <= 1.5, "{next}");
    m.wait_full();
    assert_eq!(m.status()["state"], "degraded");
    read_checked(&emu, &m, 64 * 1024);
}

/// Requests a mount sends in 5 s (from its first) to an upstream that answers every one with
/// 429 and `fault`'s Retry-After, with `--rate-limit off` and the default `--max-backoff`.
fn requests_in_5s_of_429s(fault: Fault) -> u64 {
    let emu = emulator();
    emu.set_fault(fault, None);
    let m = MountBuilder::new(&emu)
        .args(["--buffer-size", "64K", "--startup-timeout", "0"])
        .mount();
    m.wait_status("a first 429", Duration::from_secs(10), |s| {
        s["failures"].starts_with("http_429=")
    });
    let first = emu.stats().total_requests;
    std::thread::sleep(Duration::from_secs(5));
    let sent = emu.stats().total_requests - first;
    assert_eq!(m.status()["state"], "backing off");
    sent
}

/// No Retry-After brings a retry sooner than the client's own backoff would (0.25 s doubling
/// per failure, full jitter): over 5 s that is about 6 requests, and more than 12 has a chance
/// below 1e-5. Taken at its word (floored at 0.25 s), "0" would send 20.
#[test]
fn a_429_asking_for_no_wait_still_backs_off() {
    for fault in [
        Fault::TooManyRequests {
            retry_after: Some(0),
        },
        Fault::TooManyRequestsText {
            retry_after: "Sun, 06 Nov 1994 08:49:37 GMT".into(),
        },
        Fault::TooManyRequestsText {
            retry_after: "-3".into(),
        },
        Fault::TooManyRequestsText {
            retry_after: "soon".into(),
        },
    ] {
        let sent = requests_in_5s_of_429s(fault.clone());
        assert!(sent <= 12, "{fault:?}: {sent} requests in 5 s");
        assert!(sent >= 1, "{fault:?}: no retry in 5 s");
    }
}

#[test]
fn a_block_repeated_from_an_earlier_response_is_rejected() {
    let emu = emulator();
    let m = mount_with(&emu, &[]);
    m.wait_full();
    emu.set_fault(Fault::RepeatBlock, Some(1));
    read_checked(&emu, &m, 200 * 1024);
    let s = m.status();
    assert_eq!(s["failures"], "health=1", "{s:#?}");
    assert_eq!(s["state"], "degraded", "{s:#?}");
    assert!(
        s["last_error"].contains("repeats a recently received block"),
        "{s:#?}"
    );
}

#[test]
fn connect_timeout() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so connect hangs.
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, getsockname, listen,
        setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd;
    // CLOEXEC: qrypt-fs must not inherit it.
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    // So that the service started on this port later can bind it next to the remains of the
    // connections this one never accepted.
    setsockopt(&fd, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
    bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).expect("bind");
    listen(&fd, Backlog::new(0).expect("backlog")).expect("listen");
    let port = getsockname::<SockaddrIn>(fd.as_raw_fd())
        .expect("getsockname")
        .port();
    let fillers: Vec<_> = (0..2)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_millis(200),
            )
            .ok()
        })
        .collect();
    let emu = emulator();
    let url = format!("http://127.0.0.1:{port}");
    let m = MountBuilder::new(&emu)
        .args([
            "--endpoint",
            &url,
            "--connect-timeout",
            "0.5",
            "--max-backoff",
            "0.25",
        ])
        .args(["--buffer-size", "64K"])
        .mount();
    m.wait_status("a connect timeout", Duration::from_secs(10), |s| {
        s["failures"].starts_with("transport=")
    });
    let s = m.status();
    assert!(
        s["last_error"].contains("timed out") || s["last_error"].contains("connect"),
        "{s:#?}"
    );
    assert_eq!(s["fetched_bytes"], "0");
    assert_eq!(s["state"], "backing off");
    assert!(!m.log_text().contains(TOKEN));

    // The fault clears: the black hole goes and a working service answers on the same port.
    drop(fd);
    drop(fillers);
    let recovered = Emulator::start(EmulatorConfig {
        bind: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        record: true,
        ..EmulatorConfig::default()
    })
    .expect("emulator on the black hole's port");
    m.wait_status("recovery", Duration::from_secs(10), |s| {
        s["state"] == "degraded"
    });
    let data = read_exact(&m.random(), 4096);
    Provenance::from(&recovered).check_run(&data);
    assert_eq!(m.status()["consecutive_failures"], "0");
}

#[test]
fn http_400_stops_requesting() {
    let emu = emulator();
    emu.set_fault(Fault::Status(400), Some(1));
    let m = mount_with(&emu, &[]);
    m.wait_status("bad request", Duration::from_secs(5), |s| {
        s["state"] == "bad request"
    });
    let requests = emu.stats().total_requests;
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        emu.stats().total_requests,
        requests,
        "no retries after a 400"
    );
    let f = open_random(&m);
    assert_eq!(
        read_once(&f, 32).expect_err("EIO").raw_os_error(),
        Some(libc::EIO)
    );
    assert!(m.log_text().contains("SIGHUP"));
    // SIGHUP retries; the fault was a one-off, so the stream resumes.
    m.sighup();
    m.wait_full();
    read_checked(&emu, &m, 64 * 1024);
}

#[test]
fn http_401_fails_fast_then_token_file_rotation_resumes() {
    let emu = emulator();
    emu.set_tokens(vec!["new-token".into()]);
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "old-token\n").expect("write");
    // Past the start's check (which would end the mount: first_contact.rs).
    let m = MountBuilder::new(&emu)
        .token(None)
        .args([
            "--token-file",
            token_file.to_str().expect("utf8"),
            "--buffer-size",
            "64K",
            "--startup-timeout",
            "0",
        ])
        .mount();
    assert_fails_fast(&m, "unauthorized");
    let requests = emu.stats().total_requests;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        emu.stats().total_requests,
        requests,
        "no retries with a rejected token"
    );
    assert!(m.log_text().contains(token_file.to_str().expect("utf8")));
    // Rotate: write the new token; it is picked up without a restart or signal.
    let tmp = dir.path().join("token.new");
    std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(b"new-token\n"))
        .expect("write");
    std::fs::rename(&tmp, &token_file).expect("rename");
    m.wait_full();
    assert_eq!(m.status()["state"], "degraded");
    read_checked(&emu, &m, 64 * 1024);
    assert!(!m.log_text().contains("new-token"));
}

#[test]
fn http_401_with_environment_token_says_restart() {
    let emu = Emulator::start(EmulatorConfig {
        tokens: vec!["other".into()],
        ..EmulatorConfig::default()
    })
    .expect("emulator");
    let m = mount_with(&emu, &[]);
    m.wait_status("unauthorized", Duration::from_secs(5), |s| {
        s["state"] == "unauthorized"
    });
    let log = m.log_text();
    assert!(log.contains("restarting"), "{log}");
}

#[test]
fn http_403_quota_fails_fast_serves_buffered_and_retries_rarely() {
    let emu = emulator();
    let m = mount_with(&emu, &["--quota-retry", "2"]);
    m.wait_full();
    emu.set_quota(Some(0));
    let f = open_random(&m);
    // Buffered bytes are still served until they run out...
    let mut got = 0;
    let err = loop {
        match read_once(&f, 4096) {
            Ok(r) => got += r.len(),
            Err(e) => break e,
        }
        assert!(
            got <= 200 * 1024,
            "served more than could have been fetched"
        );
    };
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(got >= 64 * 1024);
    let s = m.status();
    assert_eq!(s["state"], "quota exhausted", "{s:#?}");
    assert!(s["failures"].contains("http_403="));
    let requests = emu.stats().total_requests;
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(emu.stats().total_requests, requests, "retried too soon");
    emu.set_quota(None);
    m.wait_full();
    assert_eq!(m.status()["state"], "degraded");
}

#[test]
fn sighup_retries_at_once_after_a_403() {
    let emu = emulator();
    let m = mount_with(&emu, &["--quota-retry", "3600"]);
    m.wait_full();
    emu.set_quota(Some(0));
    let _ = read_exact(&m.random(), 48 * 1024);
    m.wait_status("quota exhausted", Duration::from_secs(5), |s| {
        s["state"] == "quota exhausted"
    });
    let next: f64 = m.status()["next_attempt_in_seconds"]
        .parse()
        .expect("seconds");
    assert!(next > 3500.0, "{next}");
    // The account gets more quota; the operator tells qrypt-fs instead of waiting an hour.
    emu.set_quota(None);
    let t = Instant::now();
    m.sighup();
    m.wait_full();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    read_checked(&emu, &m, 64 * 1024);
}

#[test]
fn forty_mib_under_the_rate_limit_gets_no_429() {
    let emu = Emulator::start(EmulatorConfig {
        rate_limit: Some(RateLimit {
            requests: 30,
            window: Duration::from_secs(10),
        }),
        ..EmulatorConfig::default()
    })
    .expect("emulator");
    let m = MountBuilder::new(&emu).rate_limit("30/10").mount();
    let f = open_random(&m);
    let mut total = 0usize;
    let t = Instant::now();
    while total < 40 << 20 {
        total += read_once(&f, 1 << 20).expect("read").len();
    }
    let stats = emu.stats();
    assert_eq!(
        stats.by_status.get(&429).copied().unwrap_or(0),
        0,
        "{stats:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
}

#[test]
fn mix_local_hedges_every_byte_and_says_so() {
    let emu = emulator();
    let m = MountBuilder::new(&emu)
        .args(["--mix-local", "--buffer-size", "64K"])
        .mount();
    m.wait_full();
    assert!(m.status()["mix_local"] == "yes", "{:?}", m.status());
    let got = read_exact(&m.random(), 32 * 1024);
    // XORed with getrandom: no run of the output is a run the emulator sent.
    assert!(!Provenance::from(&emu).knows_any(&got));
    assert_disjoint(&[got]);
    let plain = MountBuilder::new(&emu)
        .args(["--buffer-size", "64K"])
        .mount();
    assert_eq!(plain.status()["mix_local"], "no");
}
