//! On tokio's paused clock: waits take no real time, and time moves only when every task
//! waits, so the timings asserted are exact outcomes of the schedule, not of machine load.
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::*;
use crate::budget::Budget;
use crate::status::{Snapshot, StaticInfo};
use crate::upstream::mock::{MockClient, Step};

fn setup(capacity: usize) -> (Arc<MockClient>, Arc<Pool>, Arc<Status>, PrefetchConfig) {
    let status = Arc::new(Status::new(StaticInfo {
        endpoint: "mock".into(),
        token_source: "test".into(),
        capacity,
        mix_local: false,
        rate_limit: "off".into(),
    }));
    let mut cfg = PrefetchConfig::for_capacity(capacity);
    cfg.rate_limit = None;
    cfg.backoff_base = Duration::from_millis(10);
    cfg.backoff_cap = Duration::from_millis(50);
    (
        Arc::new(MockClient::new()),
        Arc::new(Pool::new(capacity)),
        status,
        cfg,
    )
}

/// Lets the clock run (on the paused clock, straight to the next timer) until `f` holds.
/// Each step also gives 200 µs of real time: the token reader's threads are plain threads,
/// which the paused clock does not wait for, so without it 5 s of paused time could pass
/// before a file read of a few microseconds answered.
async fn wait_until(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 5 s");
}

/// `/status` as it reads now on the paused clock.
fn snapshot(status: &Status, pool: &Pool) -> Snapshot {
    status.snapshot_at(pool, now())
}

#[tokio::test(start_paused = true)]
async fn fills_to_capacity_in_whole_kib_requests() {
    let (client, pool, status, cfg) = setup(2 * 1024 * 1024 + 3 * 1024);
    let (_tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(Prefetcher::new(client.clone(), pool.clone(), status.clone(), cfg).run(rx));
    wait_until(|| pool.buffered() == pool.capacity()).await;
    // 2 MiB + 3 KiB: a first 16 KiB request alone, then three of 512 KiB, and what is left
    // (512 - 16 + 3 KiB) in one more.
    assert_eq!(client.requests.load(Ordering::SeqCst), 5);
    assert_eq!(
        status.fetched_bytes.load(Ordering::SeqCst),
        pool.capacity() as u64
    );
    assert_eq!(status.state(), UpstreamState::Ok);
}

#[tokio::test(start_paused = true)]
async fn backs_off_on_503_then_recovers() {
    let (client, pool, status, cfg) = setup(64 * 1024);
    client.fail_next([
        FetchError::Status {
            code: 503,
            retry_after: None,
        },
        FetchError::Transport("reset".into()),
    ]);
    let (_tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(Prefetcher::new(client.clone(), pool.clone(), status.clone(), cfg).run(rx));
    wait_until(|| pool.buffered() == pool.capacity()).await;
    assert_eq!(status.requests_failed.load(Ordering::SeqCst), 2);
    let snap = snapshot(&status, &pool);
    assert_eq!(snap.failures.get("http_503"), Some(&1));
    assert_eq!(snap.failures.get("transport"), Some(&1));
    // Working again, but it failed within the last minute.
    assert_eq!(snap.state, "degraded");
    assert_eq!(status.state(), UpstreamState::Ok);
    assert_eq!(snap.consecutive_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn unauthorized_halts_until_reload() {
    let (client, pool, status, cfg) = setup(64 * 1024);
    client.fail_next([FetchError::Status {
        code: 401,
        retry_after: None,
    }]);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(Prefetcher::new(client.clone(), pool.clone(), status.clone(), cfg).run(rx));
    wait_until(|| status.state() == UpstreamState::Unauthorized).await;
    tokio::time::advance(Duration::from_millis(200)).await;
    assert_eq!(
        client.requests.load(Ordering::SeqCst),
        1,
        "no retry while halted"
    );
    assert!(pool.poll(0, None).error, "readers fail fast");
    tx.send(Control::Reload).expect("send");
    wait_until(|| pool.buffered() == pool.capacity()).await;
    assert_eq!(status.state(), UpstreamState::Ok);
    assert!(!pool.poll(0, None).error);
}

#[tokio::test(start_paused = true)]
async fn quota_exhausted_waits_for_quota_retry() {
    let (client, pool, status, mut cfg) = setup(64 * 1024);
    cfg.quota_retry = Duration::from_millis(300);
    client.fail_next([FetchError::Status {
        code: 403,
        retry_after: None,
    }]);
    let (_tx, rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    tokio::spawn(Prefetcher::new(client.clone(), pool.clone(), status.clone(), cfg).run(rx));
    wait_until(|| status.state() == UpstreamState::QuotaExhausted).await;
    wait_until(|| pool.buffered() == pool.capacity()).await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(status.state(), UpstreamState::Ok);
}

#[tokio::test(start_paused = true)]
async fn respects_max_in_flight_and_rate_limit() {
    let (client, pool, status, mut cfg) = setup(64 * 1024);
    cfg.rate_limit = Some(RateLimit {
        requests: 3,
        window: Duration::from_millis(400),
    });
    cfg.low_watermark = 64 * 1024;
    *client.delay.lock() = Some(Duration::from_millis(20));
    let (_tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(Prefetcher::new(client.clone(), pool.clone(), status.clone(), cfg).run(rx));
    wait_until(|| pool.buffered() == pool.capacity()).await;
    // The first fill took two requests (16 KiB first, then 48 KiB). Drain three times: one
    // request each, but a slot frees only 500 ms (window + margin) after its request
    // completed, so the third refill waits for the first slot.
    assert_eq!(client.requests.load(Ordering::SeqCst), 2);
    let start = Instant::now();
    for _ in 0..3 {
        drain(&pool, 64 * 1024);
        wait_until(|| pool.buffered() == pool.capacity()).await;
    }
    assert_eq!(client.requests.load(Ordering::SeqCst), 5);
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
}

fn drain(pool: &Pool, n: usize) {
    struct Discard;
    impl crate::pool::ReadSink for Discard {
        fn deliver(self, _: &[u8]) {}
        fn fail(self, _: crate::pool::ReadError) {}
    }
    // One read serves at most MAX_READ bytes, as one FUSE READ.
    let mut left = n;
    while left > 0 {
        let len = left.min(crate::pool::MAX_READ);
        pool.read(
            crate::pool::ReadRequest {
                len,
                nonblocking: true,
                pid: 0,
                tenant: crate::pool::Tenant::uid(0),
                deadline: None,
            },
            Discard,
        );
        left -= len;
    }
}

#[tokio::test(start_paused = true)]
async fn a_success_in_flight_when_the_quota_runs_out_does_not_undo_the_403() {
    let (client, pool, status, mut cfg) = setup(4 * 1024 * 1024);
    cfg.quota_retry = Duration::from_secs(30);
    let slow = Duration::from_millis(300);
    let quota = || {
        Step::fail(FetchError::Status {
            code: 403,
            retry_after: None,
        })
    };
    // The first (small) request alone, then four at once: two slow successes, two 403s.
    client.script([
        Step::ok_after(Duration::ZERO),
        Step::ok_after(slow),
        quota(),
        quota(),
        Step::ok_after(slow),
    ]);
    let (_tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(Prefetcher::new(client.clone(), pool.clone(), status.clone(), cfg).run(rx));
    wait_until(|| status.requests_ok.load(Ordering::SeqCst) == 3).await;
    tokio::time::advance(Duration::from_millis(100)).await;
    // The late 200s delivered their bytes but the quota is still used up: no new request for
    // 30 s, and a reader that empties the buffer gets EIO instead of waiting.
    assert_eq!(status.state(), UpstreamState::QuotaExhausted);
    assert_eq!(client.requests.load(Ordering::SeqCst), 5);
    assert_eq!(pool.buffered(), (16 + 512 + 512) * 1024);
    let snap = snapshot(&status, &pool);
    assert!(
        snap.next_attempt_in_seconds.is_some_and(|s| s > 25.0),
        "{snap:?}"
    );
    // Both 403s are counted; the second was sent before the first arrived, so it does not
    // lengthen the failure streak.
    assert_eq!(snap.requests_failed, 2);
    assert_eq!(snap.consecutive_failures, 1);
    drain(&pool, pool.buffered());
    assert!(pool.poll(0, None).error, "readers fail fast");
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_within_bounds() {
    let (client, pool, status, mut cfg) = setup(64 * 1024);
    cfg.backoff_cap = Duration::from_millis(400);
    let asked = |secs| {
        Step::fail(FetchError::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(secs)),
        })
    };
    // A server asking for "forever" must neither crash the worker nor park it for good, and
    // "0" must not turn into a tight loop.
    client.script([asked(u64::MAX), asked(0)]);
    let (_tx, rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    tokio::spawn(Prefetcher::new(client.clone(), pool.clone(), status.clone(), cfg).run(rx));
    wait_until(|| status.requests_failed.load(Ordering::SeqCst) == 1).await;
    let snap = snapshot(&status, &pool);
    assert_eq!(snap.state, "backing off");
    assert!(
        snap.next_attempt_in_seconds.is_some_and(|s| s <= 0.4),
        "{snap:?}"
    );
    wait_until(|| pool.buffered() == pool.capacity()).await;
    // Capped at --max-backoff (400 ms), then at least the backoff base (10 ms).
    assert!(
        start.elapsed() >= Duration::from_millis(410),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(client.requests.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn a_fill_in_flight_at_a_sighup_still_brings_the_state_to_ok() {
    let (client, pool, status, cfg) = setup(1024 * 1024);
    let slow = Duration::from_millis(300);
    // The first (small) request, then the rest of the fill, slow enough to be in flight when
    // SIGHUP comes; nothing else is asked once the buffer is full.
    client.script([
        Step::ok_after(Duration::ZERO),
        Step::ok_after(slow),
        Step::ok_after(slow),
    ]);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(Prefetcher::new(client.clone(), pool.clone(), status.clone(), cfg).run(rx));
    wait_until(|| status.requests_ok.load(Ordering::SeqCst) == 1).await;
    tx.send(Control::Reload).expect("send");
    wait_until(|| pool.buffered() == pool.capacity()).await;
    assert_eq!(client.requests.load(Ordering::SeqCst), 3);
    assert_eq!(status.state(), UpstreamState::Ok);
}

#[tokio::test(start_paused = true)]
async fn a_new_token_in_the_token_file_ends_an_unauthorized_stop() {
    let (client, pool, status, mut cfg) = setup(64 * 1024);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token");
    std::fs::write(&path, "old-token\n").expect("write");
    cfg.token_file = Some(crate::upstream::token::TokenFile::new(path.clone()));
    cfg.token_poll = Duration::from_secs(2);
    client.fail_next([FetchError::Status {
        code: 401,
        retry_after: None,
    }]);
    let (_tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(Prefetcher::new(client.clone(), pool.clone(), status.clone(), cfg).run(rx));
    wait_until(|| status.state() == UpstreamState::Unauthorized).await;
    // The file is looked at every 2 s, but an unchanged token is not tried again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(client.requests.load(Ordering::SeqCst), 1);
    assert_eq!(status.state(), UpstreamState::Unauthorized);
    std::fs::write(&path, "new-token\n").expect("write");
    let start = Instant::now();
    wait_until(|| pool.buffered() == pool.capacity()).await;
    assert!(
        start.elapsed() <= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(status.state(), UpstreamState::Ok);
}

/// A budget of `cap` on a wall clock the test sets.
fn budget_on(
    dir: &std::path::Path,
    cap: &str,
    wall: &Arc<std::sync::atomic::AtomicU64>,
) -> Arc<Budget> {
    let w = wall.clone();
    let clock: crate::budget::Clock = Arc::new(move || w.load(Ordering::SeqCst));
    let cfg = crate::budget::BudgetConfig {
        caps: crate::budget::merge_caps([cap]).expect("cap"),
        state_dir: dir.to_owned(),
        endpoint: "mock".into(),
        token: crate::budget::TokenBytes::new("test"),
        legacy: None,
        reset: false,
    };
    Arc::new(Budget::open(&cfg, clock).expect("budget"))
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_renews_at_the_period_boundary() {
    let (client, pool, status, mut cfg) = setup(1024 * 1024);
    let dir = tempfile::tempdir().expect("tempdir");
    // 2026-11-30T00:00:00Z, and the wall clock 30 s before it.
    const MIDNIGHT: u64 = 1_795_910_400;
    let wall = Arc::new(std::sync::atomic::AtomicU64::new(MIDNIGHT - 30));
    cfg.budget = budget_on(dir.path(), "64K/day", &wall);
    let (_tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(Prefetcher::new(client.clone(), pool.clone(), status.clone(), cfg).run(rx));
    wait_until(|| status.state() == UpstreamState::BudgetExhausted).await;
    assert_eq!(status.fetched_bytes.load(Ordering::SeqCst), 64 * 1024);
    let requests = client.requests.load(Ordering::SeqCst);
    let snap = snapshot(&status, &pool);
    assert_eq!(snap.state, "budget exhausted");
    let next = snap.next_attempt_in_seconds.expect("a countdown");
    assert!((29.9..=30.0).contains(&next), "{next}");
    assert_eq!(snap.budget.caps[0].remaining_bytes, 0);
    assert_eq!(snap.budget.caps[0].renews_at, MIDNIGHT);
    // The buffer is still served; a read that would wait fails at once.
    drain(&pool, 64 * 1024);
    assert_eq!(pool.buffered(), 0);
    // One second before midnight nothing has changed.
    wall.store(MIDNIGHT - 1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(status.state(), UpstreamState::BudgetExhausted);
    assert_eq!(client.requests.load(Ordering::SeqCst), requests);
    // At midnight the next day's 64 KiB is fetched, and then that day's cap holds.
    wall.store(MIDNIGHT, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_until(|| status.fetched_bytes.load(Ordering::SeqCst) == 128 * 1024).await;
    wait_until(|| status.state() == UpstreamState::BudgetExhausted).await;
    let snap = snapshot(&status, &pool);
    assert_eq!(snap.budget.caps[0].spent_bytes, 64 * 1024);
    assert_eq!(
        snap.budget.spent_month_bytes,
        128 * 1024,
        "the month counts both days"
    );
    assert_eq!(snap.budget.caps[0].renews_at, MIDNIGHT + 86_400);
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_is_given_back_to_the_budget() {
    let (client, pool, status, mut cfg) = setup(64 * 1024);
    let dir = tempfile::tempdir().expect("tempdir");
    let wall = Arc::new(std::sync::atomic::AtomicU64::new(1_795_867_200));
    cfg.budget = budget_on(dir.path(), "1M/day", &wall);
    let budget = cfg.budget.clone();
    client.fail_next([FetchError::Status {
        code: 429,
        retry_after: Some(Duration::from_secs(1)),
    }]);
    let (_tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(Prefetcher::new(client.clone(), pool.clone(), status.clone(), cfg).run(rx));
    wait_until(|| pool.buffered() == pool.capacity()).await;
    // The 429 cost nothing: spent is exactly what arrived.
    assert_eq!(budget.report().caps[0].spent_bytes, 64 * 1024);
    assert_eq!(status.requests_failed.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_reader_held_back_by_the_clients_own_pacing_sees_pacing() {
    let (client, pool, status, mut cfg) = setup(64 * 1024);
    cfg.rate_limit = Some(RateLimit {
        requests: 2,
        window: Duration::from_secs(10),
    });
    let (_tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(Prefetcher::new(client.clone(), pool.clone(), status.clone(), cfg).run(rx));
    wait_until(|| pool.buffered() == pool.capacity()).await;
    // 16 KiB, then 48 KiB: both slots of the window are taken.
    assert_eq!(client.requests.load(Ordering::SeqCst), 2);
    drain(&pool, 64 * 1024);
    struct Keep;
    impl crate::pool::ReadSink for Keep {
        fn deliver(self, _: &[u8]) {}
        fn fail(self, _: crate::pool::ReadError) {}
    }
    pool.read(
        crate::pool::ReadRequest {
            len: 1024,
            nonblocking: false,
            pid: 0,
            tenant: crate::pool::Tenant::uid(0),
            deadline: None,
        },
        Keep,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let snap = snapshot(&status, &pool);
    assert_eq!(snap.state, "pacing");
    assert_eq!(snap.waiting_readers, 1);
    assert_eq!(snap.rate_allowance, Some(2));
    assert!(snap.rate_limited_until.is_some());
    let next = snap.next_attempt_in_seconds.expect("a countdown");
    assert!((8.0..=9.2).contains(&next), "{next}");
    assert!(
        snap.to_prometheus()
            .contains("qrypt_fs_pacing_wait_seconds_total ")
    );
    // When the slot frees, the reader is served and the state is ok again.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(pool.counts().2, 0, "the reader was served");
    let snap = snapshot(&status, &pool);
    assert_eq!(snap.state, "ok");
    assert_eq!(snap.rate_limited_until, None);
}

#[tokio::test(start_paused = true)]
async fn a_429_lowers_the_allowance_to_the_share_got() {
    let (client, pool, status, mut cfg) = setup(4 * 1024 * 1024);
    cfg.rate_limit = Some(RateLimit::QRYPT);
    // The first request and two more succeed; the fourth is refused: the token is shared.
    client.script([
        Step::ok_after(Duration::ZERO),
        Step::ok_after(Duration::ZERO),
        Step::ok_after(Duration::ZERO),
        Step::fail(FetchError::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(5)),
        }),
    ]);
    let (_tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(Prefetcher::new(client.clone(), pool.clone(), status.clone(), cfg).run(rx));
    wait_until(|| status.requests_failed.load(Ordering::SeqCst) == 1).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let snap = snapshot(&status, &pool);
    // Three sent about a second apart (jittered) before the window was found full.
    let a = snap.rate_allowance.expect("an allowance");
    assert!((3..=4).contains(&a), "{a}");
}
