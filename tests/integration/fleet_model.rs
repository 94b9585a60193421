//! A model of one token shared by several mounts, on a virtual clock: the service's sliding
//! window (as the emulator and Qrypt count it) and, per mount, the real `Pacer` and
//! `AdaptiveRate`, each mount wanting as many requests as it can get. It checks the fleet
//! goals on the controller alone, deterministically and in milliseconds; the
//! benchmark (`scripts/bench.sh fleet`) checks them on real mounts.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use qrypt_fs::pacing::{AdaptiveRate, Pacer, RateLimit};

const MS: Duration = Duration::from_millis(1);

/// The service: at most `requests` accepted in any `window`, per token.
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

struct Mount {
    pacer: Pacer,
    rate: AdaptiveRate,
    /// (slot, sent, answer time, accepted?)
    in_flight: Vec<(u64, Instant, Instant, Result<(), Duration>)>,
    accepted_sends: VecDeque<Instant>,
    next_attempt: Instant,
    ok: u64,
    refused: u64,
    /// Accepted requests per 10 s of the run.
    timeline: Vec<u64>,
}

pub struct Outcome {
    pub ok: Vec<u64>,
    pub refused: u64,
    /// 429s in each 10 s.
    pub refused_timeline: Vec<u64>,
    pub timeline: Vec<Vec<u64>>,
}

/// Runs `mounts` mounts for `secs` as the benchmark does: the i-th starts `stagger * i` after
/// the first and, with `prefill: Some((n, at))`, only fills its buffer (`n` requests) until
/// the readers start together at `at`; from then on each wants every request it can get. A 200 takes `latency`,
/// a 429 a tenth of it. `seed` drives the jitter.
pub fn run(
    mounts: usize,
    secs: u64,
    stagger: Duration,
    latency: Duration,
    prefill: Option<(u64, Duration)>,
    seed: u64,
) -> Outcome {
    let limit = RateLimit::QRYPT;
    let margin = Duration::from_millis(100);
    let t0 = Instant::now();
    let mut service = Service {
        limit,
        accepted: VecDeque::new(),
    };
    let mut ms: Vec<Mount> = (0..mounts)
        .map(|i| Mount {
            pacer: Pacer::new(Some(limit)),
            rate: AdaptiveRate::new(limit, margin),
            in_flight: Vec::new(),
            accepted_sends: VecDeque::new(),
            next_attempt: t0 + stagger * i as u32,
            ok: 0,
            refused: 0,
            timeline: vec![0; secs.div_ceil(10) as usize],
        })
        .collect();
    let end = t0 + Duration::from_secs(secs);
    let mut now = t0;
    let mut refused_timeline = vec![0; secs.div_ceil(10) as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while now < end {
        for m in ms.iter_mut() {
            let (done, pending): (Vec<_>, Vec<_>) = m.in_flight.drain(..).partition(|r| r.2 <= now);
            m.in_flight = pending;
            for (slot, sent, _, answer) in done {
                m.pacer
                    .complete(slot, now + m.rate.jitter(rng.r#gen::<f64>()));
                match answer {
                    Ok(()) => {
                        m.ok += 1;
                        m.timeline[(now - t0).as_secs() as usize / 10] += 1;
                        m.accepted_sends.push_back(sent);
                    }
                    Err(retry_after) => {
                        m.refused += 1;
                        refused_timeline[(now - t0).as_secs() as usize / 10] += 1;
                        while m
                            .accepted_sends
                            .front()
                            .is_some_and(|&t| now.saturating_duration_since(t) >= limit.window)
                        {
                            m.accepted_sends.pop_front();
                        }
                        if m.rate
                            .on_rate_limited(sent, m.accepted_sends.len() as u32, now)
                        {
                            m.pacer.set_allowance(m.rate.current());
                        }
                        // Retry-After exactly: jitter there would make us later still than
                        // the whole seconds it is given in.
                        m.next_attempt = m.next_attempt.max(now + retry_after);
                    }
                }
            }
            if now < m.next_attempt {
                continue;
            }
            if let Some((n, at)) = prefill {
                if now < t0 + at && m.ok + m.in_flight.len() as u64 >= n {
                    continue;
                }
            }
            // Before the first success, one request at a time (as the prefetcher does).
            let most = if m.ok > 0 { 4 } else { 1 };
            while m.in_flight.len() < most {
                match m.pacer.try_acquire(now) {
                    Ok(slot) => {
                        let answer = service.admit(now);
                        let took = if answer.is_ok() {
                            latency
                        } else {
                            latency / 10
                        };
                        m.in_flight.push((slot, now, now + took.max(MS), answer));
                    }
                    Err(_) => {
                        if m.rate.on_held_back(now) {
                            m.pacer.set_allowance(m.rate.current());
                            continue;
                        }
                        break;
                    }
                }
            }
        }
        now += MS;
    }
    Outcome {
        ok: ms.iter().map(|m| m.ok).collect(),
        refused: ms.iter().map(|m| m.refused).sum(),
        refused_timeline,
        timeline: ms.iter().map(|m| m.timeline.clone()).collect(),
    }
}

mod tests {
    use super::*;

    fn summary(o: &Outcome) -> String {
        format!(
            "ok {:?}, 429 {} (per 10 s {:?}), ok per 10 s {:?}",
            o.ok, o.refused, o.refused_timeline, o.timeline
        )
    }

    const PREFILL: Option<(u64, Duration)> = Some((9, Duration::from_millis(1500)));

    #[test]
    fn four_mounts_started_together_share_one_token() {
        for seed in 0..4 {
            for latency in [5, 20, 60] {
                let o = run(
                    4,
                    60,
                    Duration::ZERO,
                    Duration::from_millis(latency),
                    PREFILL,
                    seed,
                );
                let ok: u64 = o.ok.iter().sum();
                let s = summary(&o);
                // The ceiling is 180 in 60 s; each mount gets a fair share.
                assert!(ok >= 153, "throughput: {s}");
                // Most 429s are the start's (every mount must meet one to learn the token is
                // shared, and its requests in flight meet it too): 14 of about 18.
                assert!(o.refused * 100 <= (ok + o.refused) * 11, "429s: {s}");
                let (max, min) = (o.ok.iter().max(), o.ok.iter().min());
                assert!(max <= min.map(|m| m * 2).as_ref(), "fairness: {s}");
            }
        }
    }

    #[test]
    fn mounts_started_300_ms_apart_converge() {
        for seed in 0..4 {
            let o = run(
                4,
                60,
                Duration::from_millis(300),
                Duration::from_millis(20),
                PREFILL,
                seed,
            );
            let ok: u64 = o.ok.iter().sum();
            let s = summary(&o);
            assert!(ok >= 153, "throughput: {s}");
            assert!(o.refused * 100 <= (ok + o.refused) * 11, "429s: {s}");
            let (max, min) = (o.ok.iter().max(), o.ok.iter().min());
            assert!(max <= min.map(|m| m * 2).as_ref(), "fairness: {s}");
        }
    }

    #[test]
    fn one_mount_alone_keeps_the_whole_limit() {
        let o = run(1, 60, Duration::ZERO, Duration::from_millis(20), None, 0);
        assert_eq!(o.refused, 0);
        // 30 per 10.1 s and the round trips: every window full.
        assert!(o.ok[0] >= 175, "{}", summary(&o));
    }
}
