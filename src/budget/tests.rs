//! Tests of the budget: caps, renewals and the state file, on an injected clock.
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::Digest;

use super::*;

// 2026-11-28T12:00:00Z; the next midnight is 12 h later.
const T: u64 = 1_795_867_200;
const MIDNIGHT: u64 = T + 12 * 3600;
const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;

fn clock() -> (Arc<AtomicU64>, Clock) {
    let t = Arc::new(AtomicU64::new(T));
    let c = t.clone();
    (t, Arc::new(move || c.load(Ordering::SeqCst)))
}

fn config(dir: &std::path::Path, caps: &[&str]) -> BudgetConfig {
    BudgetConfig {
        caps: merge_caps(caps.iter().copied()).expect("caps"),
        state_dir: dir.to_owned(),
        endpoint: "https://api.example:443/".into(),
        token: TokenBytes::new("token-a"),
        legacy: None,
        reset: false,
    }
}

fn exhausted(r: Result<Grant, Refusal>) -> Exhausted {
    match r {
        Err(Refusal::Exhausted(e)) => e,
        other => panic!("expected exhaustion, got {other:?}"),
    }
}

#[test]
fn reached_exactly_then_renews_at_midnight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (t, clock) = clock();
    let b = Budget::open(&config(dir.path(), &["1M/day"]), clock).expect("open");
    assert_eq!(b.reserve(16 * KIB, KIB).map(|g| g.bytes), Ok(16 * KIB));
    assert_eq!(b.reserve(512 * KIB, KIB).map(|g| g.bytes), Ok(512 * KIB));
    // What is left, not the whole request: the cap is spent exactly.
    assert_eq!(b.reserve(512 * KIB, KIB).map(|g| g.bytes), Ok(496 * KIB));
    let e = exhausted(b.reserve(512 * KIB, KIB));
    assert_eq!(e.renews_at, MIDNIGHT);
    assert_eq!(
        e.caps,
        vec![Cap {
            limit: 1 << 20,
            period: Period::Day
        }]
    );
    let r = b.report();
    assert_eq!(r.caps[0].spent_bytes, 1 << 20);
    assert_eq!(r.caps[0].remaining_bytes, 0);
    assert_eq!(r.caps[0].renews_at, MIDNIGHT);
    t.store(MIDNIGHT - 1, Ordering::SeqCst);
    assert!(b.reserve(KIB, KIB).is_err(), "one second before midnight");
    t.store(MIDNIGHT, Ordering::SeqCst);
    assert_eq!(
        b.report().caps[0].spent_bytes,
        0,
        "the report renews by itself"
    );
    assert_eq!(b.reserve(512 * KIB, KIB).map(|g| g.bytes), Ok(512 * KIB));
    assert_eq!(b.report().spent_month_bytes, (1 << 20) + 512 * KIB);
}

#[test]
fn carried_over_a_restart_and_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, clock) = clock();
    let cfg = config(dir.path(), &["1M/day"]);
    let b = Budget::open(&cfg, clock.clone()).expect("open");
    b.reserve(600 * KIB, KIB).expect("grant");
    // No completion, no clean shutdown: the record was written before the request.
    drop(b);
    let b = Budget::open(&cfg, clock.clone()).expect("reopen");
    assert_eq!(b.report().caps[0].spent_bytes, 600 * KIB);
    assert_eq!(b.reserve(512 * KIB, KIB).map(|g| g.bytes), Ok(424 * KIB));
    // A second daemon on the same file sees the same count.
    let other = Budget::open(&cfg, clock).expect("second daemon");
    assert!(other.reserve(KIB, KIB).is_err());
}

#[test]
fn two_caps_each_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (t, clock) = clock();
    let b = Budget::open(&config(dir.path(), &["2K/hour", "5K/month"]), clock).expect("open");
    assert_eq!(b.reserve(4 * KIB, KIB).map(|g| g.bytes), Ok(2 * KIB));
    assert_eq!(exhausted(b.reserve(KIB, KIB)).renews_at, T + 3600);
    t.store(T + 3600, Ordering::SeqCst);
    assert_eq!(b.reserve(4 * KIB, KIB).map(|g| g.bytes), Ok(2 * KIB));
    t.store(T + 7200, Ordering::SeqCst);
    assert_eq!(
        b.reserve(4 * KIB, KIB).map(|g| g.bytes),
        Ok(KIB),
        "month: 1K left"
    );
    let e = exhausted(b.reserve(KIB, KIB));
    assert_eq!(e.renews_at, Period::Month.next_start(T));
    assert_eq!(e.caps.len(), 1, "only the month is spent: {e:?}");
    let r = b.report();
    assert_eq!(
        r.caps
            .iter()
            .map(|c| (c.period, c.spent_bytes))
            .collect::<Vec<_>>(),
        vec![(Period::Hour, KIB), (Period::Month, 5 * KIB)]
    );
}

#[test]
fn refunds_what_the_service_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, clock) = clock();
    let b = Budget::open(&config(dir.path(), &["1M/day"]), clock).expect("open");
    let g = b.reserve(512 * KIB, KIB).expect("grant");
    b.refund(g).expect("refund");
    assert_eq!(b.report().caps[0].spent_bytes, 0);
}

#[test]
fn corrupt_state_is_an_error_unless_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, clock) = clock();
    let mut cfg = config(dir.path(), &["1M/day"]);
    let b = Budget::open(&cfg, clock.clone()).expect("open");
    b.reserve(KIB, KIB).expect("grant");
    let path = b.state_file().expect("file").to_owned();
    drop(b);
    std::fs::write(&path, b"{\"format\": \"qrypt-fs budget v1\", \"spend\": 7").expect("damage");
    let err = Budget::open(&cfg, clock.clone()).expect_err("refused");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains("not valid JSON") && err.contains("--reset-budget"),
        "{err}"
    );
    cfg.reset = true;
    let b = Budget::open(&cfg, clock.clone()).expect("reset");
    assert_eq!(b.report().caps[0].spent_bytes, 0);
    cfg.reset = false;
    assert!(Budget::open(&cfg, clock).is_ok(), "the reset was written");
}

#[test]
fn an_unusable_state_dir_is_an_error_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").expect("file");
    let (_, clock) = clock();
    let err = Budget::open(&config(&not_a_dir, &["1M/day"]), clock).expect_err("refused");
    assert!(err.contains(&not_a_dir.display().to_string()), "{err}");
}

#[test]
fn without_a_cap_counts_in_memory_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (t, clock) = clock();
    let b = Budget::open(&config(dir.path(), &[]), clock).expect("open");
    assert_eq!(b.reserve(512 * KIB, KIB).map(|g| g.bytes), Ok(512 * KIB));
    assert_eq!(b.state_file(), None);
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    let r = b.report();
    assert!(r.caps.is_empty());
    assert_eq!(
        (r.spent_day_bytes, r.spent_month_bytes),
        (512 * KIB, 512 * KIB)
    );
    assert_eq!(r.day_renews_at, MIDNIGHT);
    t.store(MIDNIGHT, Ordering::SeqCst);
    let r = b.report();
    assert_eq!((r.spent_day_bytes, r.spent_month_bytes), (0, 512 * KIB));
}

#[test]
fn one_account_one_count_whatever_the_token_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, clock) = clock();
    let mut cfg = config(dir.path(), &["1M/day"]);
    cfg.legacy = Some(Legacy {
        endpoint: "https://api.example/".into(),
        token_source: "environment (QRYPT_TOKEN)".into(),
    });
    let a = Budget::open(&cfg, clock.clone()).expect("open");
    a.reserve(MIB, KIB).expect("grant");
    // The same token from a file, through another path: the same record.
    cfg.legacy = Some(Legacy {
        endpoint: "https://api.example/".into(),
        token_source: "file /etc/qrypt/../qrypt/token".into(),
    });
    let b = Budget::open(&cfg, clock.clone()).expect("open");
    assert_eq!(a.state_file(), b.state_file());
    assert!(matches!(b.reserve(KIB, KIB), Err(Refusal::Exhausted(_))));
    // Another token is another account.
    cfg.token = TokenBytes::new("token-b");
    let c = Budget::open(&cfg, clock).expect("open");
    assert_ne!(a.state_file(), c.state_file());
    assert_eq!(c.reserve(KIB, KIB).map(|g| g.bytes), Ok(KIB));
    // Nothing in the directory holds the token or a plain digest of it.
    let plain: String = sha2::Sha256::digest(b"token-a")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for e in std::fs::read_dir(dir.path()).expect("dir") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        let text = std::fs::read(e.path()).expect("read");
        let text = String::from_utf8_lossy(&text);
        for secret in ["token-a", &plain[..16]] {
            assert!(!name.contains(secret) && !text.contains(secret), "{name}");
        }
    }
}

#[test]
fn a_record_kept_the_old_way_still_counts_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, clock) = clock();
    let legacy = Legacy {
        endpoint: "https://api.example/".into(),
        token_source: "file /etc/qrypt/token".into(),
    };
    // What the previous release wrote: named by the spelling, v1.
    let mut h = sha2::Sha256::new();
    h.update(b"qrypt-fs budget\0https://api.example/\0file /etc/qrypt/token");
    let hex: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let old = dir.path().join(format!("budget-{hex}.json"));
    let day = T - T % 86_400;
    let month = Period::Month.start_of(T);
    std::fs::write(
        &old,
        format!(
            "{{\"format\":\"qrypt-fs budget v1\",\"endpoint\":\"https://api.example/\",\
             \"token_source\":\"file /etc/qrypt/token\",\"spend\":{{\
             \"hour\":{{\"start\":{T},\"spent\":1024}},\"day\":{{\"start\":{day},\
             \"spent\":786432}},\"month\":{{\"start\":{month},\"spent\":786432}}}}}}"
        ),
    )
    .expect("old record");
    let mut cfg = config(dir.path(), &["1M/day"]);
    cfg.legacy = Some(legacy);
    let b = Budget::open(&cfg, clock.clone()).expect("open");
    assert_eq!(b.report().caps[0].spent_bytes, 768 * KIB);
    assert_eq!(b.reserve(MIB, KIB).map(|g| g.bytes), Ok(256 * KIB));
    assert!(!old.exists(), "moved aside");
    drop(b);
    // Counted once: a restart does not add it again.
    let b = Budget::open(&cfg, clock).expect("reopen");
    assert_eq!(b.report().caps[0].spent_bytes, MIB);
}

#[test]
fn a_damaged_old_record_stops_the_start_until_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, clock) = clock();
    let mut cfg = config(dir.path(), &["1M/day"]);
    let legacy = Legacy {
        endpoint: "https://api.example/".into(),
        token_source: "environment (QRYPT_TOKEN)".into(),
    };
    cfg.legacy = Some(legacy.clone());
    let b = Budget::open(&cfg, clock.clone()).expect("open");
    let old = StateFile::new(dir.path(), "", "").legacy_path(&legacy);
    drop(b);
    std::fs::write(&old, b"{").expect("damaged");
    let err = Budget::open(&cfg, clock.clone()).expect_err("refused");
    assert!(
        err.contains(&old.display().to_string()) && err.contains("--reset-budget"),
        "{err}"
    );
    cfg.reset = true;
    Budget::open(&cfg, clock.clone()).expect("reset");
    assert!(!old.exists(), "moved aside");
    cfg.reset = false;
    Budget::open(&cfg, clock).expect("starts again");
}

#[test]
fn a_new_token_counts_in_its_own_record_from_no_less_than_so_far() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, clock) = clock();
    let mut cfg = config(dir.path(), &["1M/day"]);
    let b = Budget::open(&cfg, clock.clone()).expect("open");
    let before = b.reserve(256 * KIB, KIB).expect("grant");
    let old_file = b.state_file().expect("file");
    assert_eq!(b.rekey("token-a"), Ok(false), "same token");
    assert_eq!(b.rekey("token-b"), Ok(true));
    let new_file = b.state_file().expect("file");
    assert_ne!(old_file, new_file);
    // A rotated token of the same account never restarts the count.
    assert_eq!(b.report().caps[0].spent_bytes, 256 * KIB);
    b.reserve(256 * KIB, KIB).expect("grant");
    // A refund of a grant counted against the old token's record is not taken from the new.
    b.refund(before).expect("refund");
    assert_eq!(b.report().caps[0].spent_bytes, 512 * KIB);
    // What another mount of the new token reads.
    cfg.token = TokenBytes::new("token-b");
    let other = Budget::open(&cfg, clock).expect("open");
    assert_eq!(other.report().caps[0].spent_bytes, 512 * KIB);
    assert_eq!(other.state_file(), Some(new_file));
}

#[test]
fn human_sizes() {
    assert_eq!(human_bytes(1 << 20), "1M");
    assert_eq!(human_bytes(1536 << 10), "1536K");
    assert_eq!(human_bytes(3 << 30), "3G");
    assert_eq!(human_bytes(1000), "1000B");
    assert_eq!(human_bytes(0), "0B");
}

#[test]
fn rate_and_forecast_follow_the_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (t, clock) = clock();
    let b = Budget::open(&config(dir.path(), &["100M/day", "1G/month"]), clock).expect("open");
    let r = b.report();
    assert_eq!((r.rate_hour, r.rate_day), (0.0, 0.0));
    assert_eq!(
        r.caps[0].runs_out_at, None,
        "nothing spent, nothing forecast"
    );
    // 36 MiB in the first hour.
    for i in 0..36 {
        t.store(T + i * 100, Ordering::SeqCst);
        assert_eq!(b.reserve(1 << 20, KIB).map(|g| g.bytes), Ok(1 << 20));
    }
    t.store(T + 3599, Ordering::SeqCst);
    let r = b.report();
    assert_eq!(r.rate_hour, 36.0 * 1024.0 * 1024.0 / 3600.0);
    assert_eq!(r.rate_day, 36.0 * 1024.0 * 1024.0 / 86_400.0);
    // 64 MiB left of the day at 36 MiB/h: 6400 s, before midnight (12 h away).
    let day = &r.caps[0];
    assert_eq!(day.period, Period::Day);
    assert_eq!(day.runs_out_at, Some(T + 3599 + 6400));
    // The month's 988 MiB last longer than the month at that pace? Not before its renewal.
    let month = &r.caps[1];
    let left = month.remaining_bytes as f64 / r.rate_hour;
    assert_eq!(
        month.runs_out_at.is_some(),
        (T + 3599) as f64 + left.ceil() < month.renews_at as f64
    );
    // A refund takes its bytes back out of the rate.
    let g = b.reserve(1 << 20, KIB).expect("grant");
    b.refund(g).expect("refund");
    assert_eq!(b.report().rate_hour, r.rate_hour);
    // Two quiet hours later the hour's rate is zero, the day's is not: the higher one counts.
    t.store(T + 3 * 3600, Ordering::SeqCst);
    let r = b.report();
    assert_eq!(r.rate_hour, 0.0);
    assert!(r.rate_day > 0.0);
    let at_day_rate = (T + 3 * 3600) as f64 + (64.0 * 1024.0 * 1024.0 / r.rate_day).ceil();
    assert_eq!(
        r.caps[0].runs_out_at,
        (at_day_rate < MIDNIGHT as f64).then_some(at_day_rate as u64)
    );
    assert_eq!(
        r.caps[0].runs_out_at, None,
        "at 436 B/s the day renews first"
    );
}

#[test]
fn rate_without_caps() {
    let (t, clock) = clock();
    let b = Budget::open(&config(std::path::Path::new("/nonexistent"), &[]), clock).expect("open");
    assert_eq!(b.reserve(360 * KIB, KIB).map(|g| g.bytes), Ok(360 * KIB));
    t.store(T + 10, Ordering::SeqCst);
    assert_eq!(b.report().rate_hour, 102.4);
    assert!(b.report().caps.is_empty());
}
