//! A model of one token shared by several mounts, on a virtual clock: the service's sliding
//! window (as the emulator counts it: a 429 takes no slot, `Retry-After` is the whole seconds
//! until the oldest accepted request leaves, a new limit starts with an empty window) and, per
//! mount, the real `Pacing` the refill worker drives, each mount with one reader that never
//! stops. It checks the fleet goals on the controller alone, deterministically and in
//! milliseconds; `scripts/bench.sh fleet` runs the same fleets on real mounts and sets the two
//! side by side (the latencies here are calibrated on those runs).
use std::collections::VecDeque;
use std::io::Write as _;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use qrypt_fs::pacing::{Answer, Pacing, RateLimit, Ticket, Wait};

const KIB: u64 = 1024;
/// The first request's size (the mount's first answer), then whole requests.
const FIRST: u64 = 16 * KIB;
const FULL: u64 = 512 * KIB;
/// Requests in flight at once, as the refill worker's default.
const MAX_IN_FLIGHT: usize = 4;

/// The service: at most `limit.requests` accepted in any `limit.window`, per token.
struct Service {
    limit: RateLimit,
    accepted: VecDeque<Instant>,
}

impl Service {
    /// `Ok` or the 429's Retry-After, as the emulator computes it.
    fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        while self
            .accepted
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= self.limit.window)
        {
            self.accepted.pop_front();
        }
        if self.accepted.len() >= self.limit.requests as usize {
            let frees = self.accepted.front().map_or(Duration::ZERO, |&t| {
                (t + self.limit.window).saturating_duration_since(now)
            });
            let secs = frees.as_secs() + u64::from(frees.subsec_nanos() > 0);
            return Err(Duration::from_secs(secs.max(1)));
        }
        self.accepted.push_back(now);
        Ok(())
    }
}

/// One fleet run: who starts and stops when, how fast the service answers, what it allows.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// When each mount starts, from the first; its readers start with everyone's (below).
    pub starts: Vec<Duration>,
    /// When a mount stops (unmounted), from the first start.
    pub stops: Vec<Option<Duration>>,
    /// Seconds the readers read, from when the last of the mounts started at once is ready.
    pub secs: u64,
    /// How long a whole (512 KiB) answer takes, request to bytes in the pool.
    pub latency: Duration,
    /// How long the first (16 KiB) answer and a 429 take.
    pub short_latency: Duration,
    /// The service's limit from each time on (from the first start); the first from 0.
    pub limits: Vec<(Duration, RateLimit)>,
    pub seed: u64,
    /// Seconds of `secs` before the steady figures count.
    pub warmup: u64,
}

impl Scenario {
    /// `mounts` started `stagger` apart against the emulator's 30 / 10 s, 60 s of reading.
    pub fn fleet(mounts: usize, stagger: Duration, seed: u64) -> Scenario {
        Scenario {
            starts: (0..mounts).map(|i| stagger * i as u32).collect(),
            stops: vec![None; mounts],
            secs: 60,
            latency: Duration::from_millis(40),
            short_latency: Duration::from_millis(5),
            limits: vec![(Duration::ZERO, RateLimit::QRYPT)],
            seed,
            warmup: WARMUP,
        }
    }
}

struct Mount {
    pacing: Pacing,
    start: Instant,
    stop: Option<Instant>,
    /// (ticket, size, answer time, answer)
    in_flight: Vec<(Ticket, u64, Instant, Result<(), Duration>)>,
    /// No request before this (a 429's Retry-After).
    gate: Instant,
    /// When the next attempt is due (pacing), if known.
    wake: Option<Instant>,
    started: bool,
    /// Bytes delivered per second from the readers' start.
    seconds: Vec<u64>,
    /// Requests per window allowed, each second from the first start.
    allowance: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    /// Bytes each mount's reader got per second, from the readers' start.
    pub seconds: Vec<Vec<u64>>,
    pub requests: u64,
    pub refused: u64,
    /// Requests and 429s from `WARMUP` after the readers start.
    pub steady: (u64, u64),
    /// Each mount's allowance (requests per window) each second from the first start.
    pub allowance: Vec<Vec<f64>>,
    /// When the readers started, from the first start.
    pub readers_at: Duration,
    /// Requests and 429s sent each second from the first start.
    pub per_second: Vec<(u64, u64)>,
    /// Seconds of reading before the steady figures count.
    pub warmup: u64,
}

/// The figures the fleet goals are stated in.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// Bytes delivered / (limit x 512 KiB per window x seconds).
    pub delivered: f64,
    /// 429s / requests.
    pub refused: f64,
    /// Bytes of the busiest mount / the least busy.
    pub spread: f64,
    /// The least, over mounts and 20 s spans from 10 s on, of a mount's bytes over the
    /// span's fair share (the span's bytes / mounts).
    pub worst_20s: f64,
}

/// The three figures and the worst 20 s share from per-second bytes; `limit` the ceiling.
pub fn figures(seconds: &[Vec<u64>], requests: u64, refused: u64, limit: RateLimit) -> Figures {
    let secs = seconds.iter().map(Vec::len).max().unwrap_or(0);
    let bytes: Vec<u64> = seconds.iter().map(|s| s.iter().sum()).collect();
    let total: u64 = bytes.iter().sum();
    let ceiling =
        f64::from(limit.requests) * FULL as f64 * secs as f64 / limit.window.as_secs_f64();
    let busiest = bytes.iter().max().copied().unwrap_or(0);
    let least = bytes.iter().min().copied().unwrap_or(0);
    let mut worst = f64::INFINITY;
    for from in 10..secs.saturating_sub(19) {
        let span: Vec<u64> = seconds
            .iter()
            .map(|s| s.iter().skip(from).take(20).sum())
            .collect();
        let fair = span.iter().sum::<u64>() as f64 / seconds.len().max(1) as f64;
        for b in span {
            worst = worst.min(b as f64 / fair.max(1.0));
        }
    }
    Figures {
        delivered: total as f64 / ceiling,
        refused: refused as f64 / requests.max(1) as f64,
        spread: busiest as f64 / least.max(1) as f64,
        worst_20s: if worst.is_finite() { worst } else { 0.0 },
    }
}

pub fn run(sc: &Scenario) -> Outcome {
    let t0 = Instant::now();
    let mut service = Service {
        limit: sc.limits[0].1,
        accepted: VecDeque::new(),
    };
    let mut limits: VecDeque<(Instant, RateLimit)> = sc
        .limits
        .iter()
        .skip(1)
        .map(|(d, l)| (t0 + *d, *l))
        .collect();
    let first_limit = sc.limits[0].1;
    // The readers start when the mounts started at once are all ready.
    let together = sc
        .starts
        .iter()
        .filter(|s| **s <= sc.starts[0] + Duration::from_secs(5));
    let readers = t0 + together.max().copied().unwrap_or_default() + sc.short_latency;
    let end = readers + Duration::from_secs(sc.secs);
    let total_secs = (end - t0).as_secs() as usize + 1;
    let mut ms: Vec<Mount> = sc
        .starts
        .iter()
        .zip(&sc.stops)
        .map(|(s, stop)| Mount {
            pacing: Pacing::new(Some(first_limit)),
            start: t0 + *s,
            stop: stop.map(|d| t0 + d),
            in_flight: Vec::new(),
            gate: t0 + *s,
            wake: Some(t0 + *s),
            started: false,
            seconds: vec![0; sc.secs as usize],
            allowance: vec![0.0; total_secs],
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(sc.seed);
    let (mut requests, mut refused) = (0u64, 0u64);
    let mut steady = (0u64, 0u64);
    let steady_from = readers + Duration::from_secs(sc.warmup);
    let mut per_second = vec![(0u64, 0u64); total_secs];
    let mut now = t0;
    while now < end {
        while limits.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, l)) = limits.pop_front() {
                service.limit = l;
                service.accepted.clear();
            }
        }
        for m in ms.iter_mut() {
            let second = (now - t0).as_secs() as usize;
            if let Some(a) = m.allowance.get_mut(second) {
                *a = m.pacing.rate().unwrap_or(0.0);
            }
            if now < m.start {
                continue;
            }
            if m.stop.is_some_and(|s| now >= s) {
                m.in_flight.clear();
                m.wake = None;
                continue;
            }
            let (done, pending): (Vec<_>, Vec<_>) = m.in_flight.drain(..).partition(|r| r.2 <= now);
            m.in_flight = pending;
            for (ticket, size, _, answer) in done {
                match answer {
                    Ok(()) => {
                        m.pacing.finished(ticket, Answer::Accepted, now);
                        m.started = true;
                        if now >= readers {
                            if let Some(s) = m.seconds.get_mut((now - readers).as_secs() as usize) {
                                *s += size;
                            }
                        } else if let Some(s) = m.seconds.first_mut() {
                            // Buffered before the readers start: read at once.
                            *s += size;
                        }
                    }
                    Err(retry_after) => {
                        m.pacing
                            .finished(ticket, Answer::RateLimited(Some(retry_after)), now);
                        m.gate = m.gate.max(now + retry_after);
                    }
                }
                m.wake = Some(now);
            }
            if now < m.gate || m.wake.is_none_or(|w| now < w) {
                continue;
            }
            m.wake = None;
            let most = if m.started { MAX_IN_FLIGHT } else { 1 };
            while m.in_flight.len() < most {
                match m.pacing.try_start(now, rng.r#gen::<f64>()) {
                    Ok(ticket) => {
                        requests += 1;
                        let counted = now >= steady_from;
                        steady.0 += u64::from(counted);
                        let size = if m.started { FULL } else { FIRST };
                        let answer = service.admit(now);
                        if let Some(p) = per_second.get_mut((now - t0).as_secs() as usize) {
                            p.0 += 1;
                            p.1 += u64::from(answer.is_err());
                        }
                        let took = match answer {
                            Ok(()) if size == FULL => sc.latency,
                            Ok(()) => sc.short_latency,
                            Err(_) => {
                                refused += 1;
                                steady.1 += u64::from(counted);
                                sc.short_latency
                            }
                        };
                        m.in_flight.push((ticket, size, now + took, answer));
                    }
                    Err(Wait::Until(t)) => {
                        m.wake = Some(t);
                        break;
                    }
                    Err(Wait::ForCompletion) => break,
                }
            }
        }
        // The next event: an answer, a due attempt, a gate opening, a start, a limit change,
        // or the next second's sample.
        let mut next = t0 + Duration::from_secs((now - t0).as_secs() + 1);
        for m in &ms {
            let times = m
                .in_flight
                .iter()
                .map(|r| r.2)
                .chain(m.wake.map(|w| w.max(m.gate)))
                .chain(std::iter::once(m.start).filter(|s| *s > now));
            for t in times {
                next = next.min(t.max(now + Duration::from_micros(1)));
            }
        }
        if let Some((at, _)) = limits.front() {
            next = next.min((*at).max(now + Duration::from_micros(1)));
        }
        now = next;
    }
    Outcome {
        seconds: ms.iter().map(|m| m.seconds.clone()).collect(),
        requests,
        refused,
        steady,
        allowance: ms.iter().map(|m| m.allowance.clone()).collect(),
        readers_at: readers - t0,
        per_second,
        warmup: sc.warmup,
    }
}

/// The model's steady figures for `mounts` started together, `secs` after `WARMUP`,
/// averaged over `seeds`.
pub fn fleet_figures(mounts: usize, secs: u64, seeds: u64) -> Figures {
    let mut sum = Figures {
        delivered: 0.0,
        refused: 0.0,
        spread: 0.0,
        worst_20s: 0.0,
    };
    for seed in 0..seeds {
        let mut sc = Scenario::fleet(mounts, STAGGER, seed);
        sc.warmup = model_warmup(mounts);
        sc.secs = sc.warmup + secs;
        let o = run(&sc);
        let f = steady_figures(&o);
        sum.delivered += f.delivered;
        sum.refused += f.refused;
        sum.spread += f.spread;
        sum.worst_20s += f.worst_20s;
    }
    let n = seeds.max(1) as f64;
    Figures {
        delivered: sum.delivered / n,
        refused: sum.refused / n,
        spread: sum.spread / n,
        worst_20s: sum.worst_20s / n,
    }
}

/// Seconds from the readers' start before the steady figures count (the start costs each
/// mount one 429: only a 429 tells it the token is shared).
pub const WARMUP: u64 = 20;

/// The steady figures: from `WARMUP` on.
pub fn steady_figures(o: &Outcome) -> Figures {
    let seconds: Vec<Vec<u64>> = o
        .seconds
        .iter()
        .map(|s| s.iter().skip(o.warmup as usize).copied().collect())
        .collect();
    figures(&seconds, o.steady.0, o.steady.1, RateLimit::QRYPT)
}

/// How far apart the benchmark's mounts start (measured: 16 mounts started within 0.2 s).
pub const STAGGER: Duration = Duration::from_millis(13);

/// Seconds the model reads at `mounts`: 60 s up to 16 mounts, then as long as gives each
/// mount as many requests as 16 get in 60 s (a fleet of 256 shares one request per 85 s).
pub fn model_secs(mounts: usize) -> u64 {
    60 * (mounts as u64).div_ceil(16).max(1)
}

/// The start's seconds at `mounts`, on the same scale as `model_secs`: 20 s up to 16 mounts.
pub fn model_warmup(mounts: usize) -> u64 {
    WARMUP * (mounts as u64).div_ceil(16).max(1)
}

mod tests {
    use super::*;

    fn check(mounts: usize, f: &Figures, goals: (f64, f64, f64)) {
        let s = format!("{mounts} mounts: {f:?}");
        assert!(f.delivered >= goals.0, "delivered: {s}");
        assert!(f.refused <= goals.1, "429s: {s}");
        assert!(f.spread <= goals.2, "busiest/least: {s}");
    }

    /// The steady figures (60 s after a 20 s start) of fleets started together meet the
    /// goals: delivered >= 0.90, 429s <= 5%, busiest/least <= 1.5 and no mount below half
    /// its fair share over 20 s; up to 8 mounts with room (the `sweep` shows 30 of 32 seeds
    /// meeting all four at 16, and the least room there).
    #[test]
    fn fleets_of_2_to_16_stay_polite_and_fair() {
        for mounts in [2, 4, 8, 16] {
            for seed in 0..3 {
                let mut sc = Scenario::fleet(mounts, STAGGER, seed);
                sc.secs = WARMUP + 60;
                let o = run(&sc);
                let f = steady_figures(&o);
                let (refused, worst) = if mounts <= 8 {
                    (0.02, 0.6)
                } else {
                    (0.05, 0.5)
                };
                check(mounts, &f, (0.90, refused, 1.5));
                // The start costs each mount one 429, and a few echoes of it at most.
                assert!(
                    o.refused - o.steady.1 <= 5 * mounts as u64,
                    "start: {mounts} mounts, {} 429s",
                    o.refused - o.steady.1
                );
                assert!(f.worst_20s >= worst, "worst 20 s: {mounts} mounts: {f:?}");
            }
        }
    }

    /// 64 mounts started together: a share below one request per window, which the start
    /// cannot measure (the window is full before most mounts sent twice), so the fleet
    /// starts at four times the limit. Goals there: delivered >= 0.85, 429s <= 5%,
    /// busiest/least <= 2; the model reaches the first only (BENCHMARKS.md). This guards
    /// that the fleet comes down from its start: 429s in a row cut deeper and for good.
    #[test]
    fn a_fleet_of_64_comes_down_to_the_limit() {
        for seed in 0..2 {
            let mut sc = Scenario::fleet(64, STAGGER, seed);
            sc.warmup = model_warmup(64);
            sc.secs = sc.warmup + model_secs(64);
            let o = run(&sc);
            let f = steady_figures(&o);
            assert!(f.delivered >= 0.85, "{f:?}");
            assert!(f.refused <= 0.25, "{f:?}");
        }
    }

    /// Ten minutes of 4, 8 and 16 mounts: the growth has no pull towards equal shares, so
    /// nothing may push them apart (a long quiet's growth taken by mounts spared by chance
    /// drifted 8 mounts to 3x apart in ten minutes, and 16 to 2-3x).
    #[test]
    fn fleets_stay_fair_over_ten_minutes() {
        for (mounts, seed) in [(4, 0), (4, 1), (8, 0), (8, 1), (16, 0), (16, 1)] {
            let mut sc = Scenario::fleet(mounts, STAGGER, seed);
            sc.secs = 600;
            let f = steady_figures(&run(&sc));
            let refused = if mounts <= 8 { 0.03 } else { 0.035 };
            assert!(f.refused <= refused, "{mounts} mounts, seed {seed}: {f:?}");
            assert!(f.spread <= 1.7, "{mounts} mounts, seed {seed}: {f:?}");
        }
    }

    /// One of two mounts leaves: after a long quiet the other grows to the whole limit.
    #[test]
    fn the_mount_that_stays_takes_the_whole_limit_within_minutes() {
        for seed in 0..3 {
            let mut sc = Scenario::fleet(2, STAGGER, seed);
            sc.secs = 520;
            sc.stops[0] = Some(Duration::from_secs(200));
            let o = run(&sc);
            let a = &o.allowance[1];
            let back = (200..a.len()).find(|&s| a[s] >= 29.9);
            eprintln!("seed {seed}: the whole limit at {back:?}");
            assert!(back.is_some_and(|s| s <= 290), "{back:?}: {:?}", &a[200..]);
        }
    }

    #[test]
    fn one_mount_alone_reaches_the_whole_limit_without_a_429() {
        let o = run(&Scenario::fleet(1, STAGGER, 0));
        assert_eq!(o.refused, 0);
        let f = figures(&o.seconds, o.requests, o.refused, RateLimit::QRYPT);
        assert!(f.delivered >= 0.75, "{f:?}");
        let at_30s = o.allowance[0][30];
        assert!(at_30s >= 29.9, "{at_30s}");
    }

    #[test]
    fn a_lone_mount_is_back_to_the_whole_limit_within_60_s_after_a_storm() {
        let storm = RateLimit {
            requests: 3,
            window: Duration::from_secs(10),
        };
        for seed in 0..4 {
            let mut sc = Scenario::fleet(1, STAGGER, seed);
            sc.secs = 200;
            sc.limits = vec![
                (Duration::ZERO, RateLimit::QRYPT),
                (Duration::from_secs(40), storm),
                (Duration::from_secs(80), RateLimit::QRYPT),
            ];
            let o = run(&sc);
            let a = &o.allowance[0];
            let back = (80..a.len()).find(|&s| a[s] >= 29.9);
            eprintln!("seed {seed}: back at {back:?}");
            assert!(back.is_some_and(|s| s <= 140), "back at {back:?}: {a:?}");
            // And it gets the whole limit: 30 requests in the window after that.
            let at = o.readers_at.as_secs() as usize;
            let got: u64 = o.seconds[0][141 - at..151 - at].iter().sum();
            assert!(got >= 29 * FULL, "{} requests", got / FULL);
        }
    }

    /// The fleet's throughput over 20 s from 30 s after a mount joins it; after one leaves,
    /// how long until the others take its share (a quiet long for their share: BENCHMARKS.md).
    #[test]
    fn a_fleet_keeps_its_throughput_after_a_join_and_regains_a_leavers_share() {
        for mounts in [4, 8, 16] {
            for seed in 0..4 {
                let mut sc = Scenario::fleet(mounts, STAGGER, seed);
                sc.secs = 480;
                // The last mount joins at 60 s; the first leaves at 120 s.
                sc.starts[mounts - 1] = Duration::from_secs(60);
                sc.stops[0] = Some(Duration::from_secs(120));
                let o = run(&sc);
                let at = o.readers_at.as_secs() as usize;
                let span = |from: usize, who: std::ops::Range<usize>| -> Vec<Vec<u64>> {
                    o.seconds[who]
                        .iter()
                        .map(|s| s[from - at..from - at + 20].to_vec())
                        .collect()
                };
                // 30 s after the join: the fleet's throughput holds. The joiner is far
                // from its fair share (BENCHMARKS.md): only that it is served is held here.
                let joined = span(90, 0..mounts);
                let f = figures(&joined, 1, 0, RateLimit::QRYPT);
                assert!(f.delivered >= 0.85, "after the join, {mounts}: {f:?}");
                let joiner: u64 = joined[mounts - 1].iter().sum();
                assert!(joiner > 0, "the joiner got nothing: {joined:?}");
                let back = (130..=460).step_by(10).find(|&from| {
                    figures(&span(from, 1..mounts), 1, 0, RateLimit::QRYPT).delivered >= 0.9
                });
                eprintln!("{mounts} mounts, seed {seed}: back at 0.9 {back:?}");
                assert!(
                    back.is_some_and(|b| b <= 120 + 330),
                    "{mounts} mounts, seed {seed}: {back:?}"
                );
            }
        }
    }

    /// A mount joins one alone at the whole limit, which refills each slot of the window as it
    /// frees: the joiner is let in and served (it used to cut itself at each 429 until it sent
    /// one request per 200 windows, and got nothing in four seeds of eight).
    #[test]
    fn a_mount_joining_a_lone_mount_at_the_whole_limit_is_served() {
        for seed in 0..4 {
            let mut sc = Scenario::fleet(2, STAGGER, seed);
            sc.secs = 200;
            sc.starts[1] = Duration::from_secs(60);
            let o = run(&sc);
            let at = o.readers_at.as_secs() as usize;
            let bytes: Vec<u64> = o
                .seconds
                .iter()
                .map(|s| s[90 - at..150 - at].iter().sum())
                .collect();
            let joiner = bytes[1] as f64 / (bytes.iter().sum::<u64>() as f64 / 2.0);
            assert!(
                joiner >= 0.3,
                "seed {seed}: the joiner's bytes / the mean {joiner}"
            );
        }
    }

    /// Environment: `N` mounts (4), `SEED` (0), `SECS` of reading (the table's), the last
    /// mount starting at `JOIN` s, the first stopping at `LEAVE` s, `PER_SECOND` to print
    /// requests and 429s each second.
    #[test]
    #[ignore = "a trace for tuning"]
    fn trace() {
        use crate::common::env_setting as var;
        let n: usize = var("N").unwrap_or(4);
        let mut sc = Scenario::fleet(n, STAGGER, var("SEED").unwrap_or(0));
        sc.warmup = model_warmup(n);
        sc.secs = var("SECS").unwrap_or(model_secs(n) + sc.warmup);
        if let Some(at) = var("LEAVE") {
            sc.stops[0] = Some(Duration::from_secs(at));
        }
        if let Some(at) = var("JOIN") {
            sc.starts[n - 1] = Duration::from_secs(at);
        }
        let o = run(&sc);
        eprintln!(
            "whole {:?}",
            figures(&o.seconds, o.requests, o.refused, RateLimit::QRYPT)
        );
        eprintln!("steady {:?}", steady_figures(&o));
        for s in (0..o.allowance[0].len()).step_by(5) {
            let a: Vec<String> = o.allowance.iter().map(|m| format!("{:.1}", m[s])).collect();
            let sum: f64 = o.allowance.iter().map(|m| m[s]).sum();
            let (req, refused): (u64, u64) = o.per_second[s..(s + 5).min(o.per_second.len())]
                .iter()
                .fold((0, 0), |a, p| (a.0 + p.0, a.1 + p.1));
            let max = o.allowance.iter().map(|m| m[s]).fold(0.0, f64::max);
            let min = o.allowance.iter().map(|m| m[s]).fold(f64::MAX, f64::min);
            eprintln!(
                "{s:3} sum {sum:5.1} min {min:.2} max {max:4.1} req {req:3} 429 {refused:3} {}",
                a.join(" ")
            );
        }
        if std::env::var_os("PER_SECOND").is_some() {
            eprintln!("per second {:?}", o.per_second);
        }
        for m in &o.seconds {
            let tens: Vec<u64> = m.chunks(10).map(|c| c.iter().sum::<u64>() / FULL).collect();
            eprintln!("  {tens:?}");
        }
        let per: Vec<u64> = o
            .seconds
            .iter()
            .map(|s| s.iter().sum::<u64>() / FULL)
            .collect();
        eprintln!(
            "requests {} refused {} per mount {per:?}",
            o.requests, o.refused
        );
    }

    /// The fleets of `MOUNTS` (comma-separated; `4,8,16`), for the sweeps.
    fn mounts_setting() -> Vec<usize> {
        std::env::var("MOUNTS")
            .ok()
            .map(|v| v.split(',').filter_map(|m| m.parse().ok()).collect())
            .unwrap_or_else(|| vec![4, 8, 16])
    }

    /// All four goals of a fleet: delivered >= 0.90, 429s <= 5 %, busiest/least <= 1.5, and
    /// no mount below half its fair share over 20 s.
    fn meets_the_goals(f: &Figures) -> bool {
        f.delivered >= 0.9 && f.refused <= 0.05 && f.spread <= 1.5 && f.worst_20s >= 0.5
    }

    /// Environment: `SEEDS` (8), `MOUNTS` (`4,8,16`). A mount joins a busy fleet at 60 s:
    /// the fleet's figures over 60 s from 30 s after the join, and the joiner's share of the
    /// fair one.
    #[test]
    #[ignore = "a sweep for tuning"]
    fn joins() {
        let seeds: u64 = crate::common::env_setting("SEEDS").unwrap_or(8);
        for mounts in mounts_setting() {
            let mut met = 0;
            let mut line = String::new();
            for seed in 0..seeds {
                let mut sc = Scenario::fleet(mounts, STAGGER, seed);
                sc.secs = 200;
                sc.starts[mounts - 1] = Duration::from_secs(60);
                let o = run(&sc);
                let at = o.readers_at.as_secs() as usize;
                let span: Vec<Vec<u64>> = o
                    .seconds
                    .iter()
                    .map(|s| s[90 - at..150 - at].to_vec())
                    .collect();
                let (req, refused) = o.per_second[90..150]
                    .iter()
                    .fold((0, 0), |a, p| (a.0 + p.0, a.1 + p.1));
                let f = figures(&span, req, refused, RateLimit::QRYPT);
                let fair = span.iter().flatten().sum::<u64>() as f64 / mounts as f64;
                let joiner = span[mounts - 1].iter().sum::<u64>() as f64 / fair;
                met += u32::from(meets_the_goals(&f));
                line += &format!(
                    " [{:.2} {:.1}% {:.2} {:.2} j{:.2}]",
                    f.delivered,
                    100.0 * f.refused,
                    f.spread,
                    f.worst_20s,
                    joiner
                );
            }
            eprintln!("{mounts:2}: met {met}/{seeds}{line}");
        }
    }

    /// Environment: `SEEDS` (12), `MOUNTS` (`4,8,16`). Each fleet's mean and worst steady
    /// figures over the seeds, and how many seeds meet all four goals: one seed says little
    /// at 16 mounts.
    #[test]
    #[ignore = "a sweep for tuning"]
    fn sweep() {
        let seeds: u64 = crate::common::env_setting("SEEDS").unwrap_or(12);
        for mounts in mounts_setting() {
            let mut met = 0;
            let mut all = Vec::new();
            for seed in 0..seeds {
                let mut sc = Scenario::fleet(mounts, STAGGER, seed);
                sc.secs = WARMUP + 60;
                let f = steady_figures(&run(&sc));
                met += u32::from(meets_the_goals(&f));
                all.push(f);
            }
            let mean = |g: fn(&Figures) -> f64| all.iter().map(g).sum::<f64>() / all.len() as f64;
            let max = |g: fn(&Figures) -> f64| all.iter().map(g).fold(0.0, f64::max);
            let min = |g: fn(&Figures) -> f64| all.iter().map(g).fold(f64::MAX, f64::min);
            eprintln!(
                "{mounts:2}: met {met}/{seeds}  delivered {:.3} (min {:.3})  429s {:.1} % (max {:.1})  spread {:.2} (max {:.2})  worst {:.2} (min {:.2})",
                mean(|f| f.delivered),
                min(|f| f.delivered),
                100.0 * mean(|f| f.refused),
                100.0 * max(|f| f.refused),
                mean(|f| f.spread),
                max(|f| f.spread),
                mean(|f| f.worst_20s),
                min(|f| f.worst_20s),
            );
        }
    }

    /// The model's table: `FLEET_OUT=DIR` writes `model.tsv` (mounts, seconds, the figures),
    /// for `scripts/bench.sh fleet`.
    #[test]
    #[ignore = "the model's table for scripts/bench.sh fleet"]
    fn table() {
        let mut rows = String::from("mounts\tsecs\tdelivered\trefused\tspread\tworst_20s\n");
        for mounts in [2, 4, 6, 8, 10, 12, 14, 16, 64, 256] {
            let secs = model_secs(mounts);
            let f = fleet_figures(mounts, secs, 5);
            eprintln!("{mounts} mounts, {secs} s: {f:?}");
            rows += &format!(
                "{mounts}\t{secs}\t{:.4}\t{:.4}\t{:.3}\t{:.3}\n",
                f.delivered, f.refused, f.spread, f.worst_20s
            );
        }
        if let Some(dir) = std::env::var_os("FLEET_OUT") {
            let path = std::path::PathBuf::from(dir).join("model.tsv");
            let mut out = std::fs::File::create(path).expect("model.tsv");
            out.write_all(rows.as_bytes()).expect("write");
        }
    }
}
