//! One token shared by a fleet: `FLEET_MOUNTS` mounts (default 4) started together, each with
//! one reader that never stops, against the emulator enforcing 30 requests / 10 s for their
//! token. Figures (see `fleet_model::figures`): delivered bytes over the ceiling (30 x 512 KiB
//! per 10 s), the share of requests answered 429, the busiest mount's bytes over the least
//! busy's, and the least share of a mount over any 20 s; for the whole run and for the 60 s
//! after a `WARMUP` (the start costs each mount one 429: only a 429 tells it the token is
//! shared). Goals, on the steady figures: delivered >= 0.90, 429s <= 5%, busiest/least <=
//! 1.5, no mount below half its fair share over any 20 s. The same figures from 30 s after a
//! mount joins a busy fleet, and a lone mount's way back after a storm of 429s.
//!
//! A benchmark, not a check of correctness: ignored by default, run by `scripts/bench.sh
//! fleet` (release build). `FLEET_OUT=DIR` writes `fleet-N.tsv` (mount, second, bytes) and
//! `fleet-N-summary.tsv` for the plot and BENCHMARKS.md.

use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::fleet_model::{Figures, WARMUP, figures};

const SECS: u64 = 60;
const LIMIT: RateLimit = RateLimit {
    requests: 30,
    window: Duration::from_secs(10),
};

/// The emulator enforcing `LIMIT` for the fleet's token.
fn emulator() -> Emulator {
    Emulator::start(EmulatorConfig {
        rate_limit: Some(LIMIT),
        ..EmulatorConfig::default()
    })
    .expect("emulator")
}

/// `mounts` mounts started together, as a fleet restarted by one deployment would be.
fn start_fleet(emu: &Emulator, mounts: usize) -> Vec<Mount> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..mounts)
            .map(|_| s.spawn(|| MountBuilder::new(emu).rate_limit("30/10").mount()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("mount"))
            .collect()
    })
}

/// Reads `path` 1 MiB at a time until `end`: the bytes got in each of `secs` seconds from `t0`.
fn read_until(path: &std::path::Path, t0: Instant, end: Instant, secs: u64) -> Vec<u64> {
    let f = std::fs::File::open(path).expect("open");
    let mut seconds = vec![0u64; secs as usize];
    while Instant::now() < end {
        // A reader blocked past the end is answered by the next response; bytes after the
        // end are not counted.
        let got = read_once(&f, 1 << 20).expect("read");
        if let Some(slot) = seconds.get_mut(t0.elapsed().as_secs() as usize) {
            *slot += got.len() as u64;
        }
    }
    seconds
}

/// Each mount's MiB, to a tenth.
fn mib(seconds: &[Vec<u64>]) -> Vec<f64> {
    seconds
        .iter()
        .map(|s| (s.iter().sum::<u64>() as f64 / 1048576.0 * 10.0).round() / 10.0)
        .collect()
}

fn row(name: &str, f: &Figures) -> String {
    format!(
        "{name}_delivered\t{:.4}\n{name}_refused\t{:.4}\n{name}_spread\t{:.3}\n{name}_worst_20s\t{:.3}\n",
        f.delivered, f.refused, f.spread, f.worst_20s
    )
}

#[test]
#[ignore = "a 90 s benchmark: scripts/bench.sh fleet"]
fn mounts_share_one_token() {
    let mounts: usize = crate::common::env_setting("FLEET_MOUNTS").unwrap_or(4);
    let emu = emulator();
    let started = Instant::now();
    let fleet = start_fleet(&emu, mounts);
    let secs = WARMUP + SECS;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(secs);
    let mut at_warmup = None;
    let mut allowance: Vec<String> = Vec::new();
    let per_second: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = fleet
            .iter()
            .map(|m| {
                let path = m.random();
                s.spawn(move || read_until(&path, t0, end, secs))
            })
            .collect();
        // Each mount's allowance every second, for the model's calibration.
        let mut sample = 0u64;
        while sample < secs {
            let at = t0 + Duration::from_secs(sample);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            if sample == WARMUP {
                at_warmup = Some(emu.stats());
            }
            allowance.push(
                fleet
                    .iter()
                    .map(|m| {
                        m.status()
                            .get("rate_allowance")
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            sample += 1;
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("reader"))
            .collect()
    });
    let stats = emu.stats();
    let (requests, n429) = (stats.total_requests, stats.count(429));
    let whole = figures(&per_second, requests, n429, LIMIT);
    let (w_requests, w_429) = at_warmup.map_or((0, 0), |s| (s.total_requests, s.count(429)));
    let steady_seconds: Vec<Vec<u64>> = per_second
        .iter()
        .map(|s| s.iter().skip(WARMUP as usize).copied().collect())
        .collect();
    let steady = figures(&steady_seconds, requests - w_requests, n429 - w_429, LIMIT);
    let mib = mib(&steady_seconds);
    let summary = format!(
        "{mounts} mounts (started in {:.1} s): steady 60 s: delivered {:.3} of the ceiling, \
         {} of {} requests answered 429 ({:.1}%), busiest/least {:.2}, worst 20 s share {:.2}, \
         MiB per mount {mib:?}; whole {secs} s: delivered {:.3}, {n429} of {requests} answered \
         429 ({:.1}%), busiest/least {:.2}",
        (t0 - started).as_secs_f64(),
        steady.delivered,
        n429 - w_429,
        requests - w_requests,
        steady.refused * 100.0,
        steady.spread,
        steady.worst_20s,
        whole.delivered,
        whole.refused * 100.0,
        whole.spread,
    );
    eprintln!("{summary}");
    if let Some(dir) = std::env::var_os("FLEET_OUT") {
        let dir = std::path::PathBuf::from(dir);
        let mut tsv = std::fs::File::create(dir.join(format!("fleet-{mounts}.tsv"))).expect("tsv");
        writeln!(tsv, "mount\tsecond\tbytes").expect("write");
        for (i, s) in per_second.iter().enumerate() {
            for (sec, b) in s.iter().enumerate() {
                writeln!(tsv, "{i}\t{sec}\t{b}").expect("write");
            }
        }
        let mut a = std::fs::File::create(dir.join(format!("fleet-{mounts}-allowance.txt")))
            .expect("allowance");
        for (sec, line) in allowance.iter().enumerate() {
            writeln!(a, "{sec}\t{line}").expect("write");
        }
        let mut sum =
            std::fs::File::create(dir.join(format!("fleet-{mounts}-summary.tsv"))).expect("tsv");
        write!(
            sum,
            "mounts\t{mounts}\n{}{}requests\t{}\nanswered_429\t{}\nsummary\t{summary}\n",
            row("steady", &steady),
            row("whole", &whole),
            requests - w_requests,
            n429 - w_429,
        )
        .expect("write");
    }
    assert!(steady.delivered >= 0.90, "delivered: {summary}");
    assert!(steady.refused <= 0.05, "429s: {summary}");
    assert!(steady.spread <= 1.5, "busiest/least: {summary}");
    assert!(steady.worst_20s >= 0.5, "worst 20 s: {summary}");
}

/// A mount joins a busy fleet: of `FLEET_MOUNTS` mounts (default 4), all but the last start
/// together and read for `JOIN_AT` s, then the last mounts and reads too (as the fleet model's
/// joins). The figures over the 60 s from 30 s after the join (the goal: the fleet back within
/// its goals by then), and the joiner's bytes over the fleet's mean. `FLEET_OUT=DIR` writes
/// `join-N-summary.tsv`.
#[test]
#[ignore = "a 150 s benchmark: scripts/bench.sh fleet"]
fn a_mount_joins_a_busy_fleet() {
    const JOIN_AT: u64 = 60;
    const FROM: u64 = JOIN_AT + 30;
    const UNTIL: u64 = FROM + SECS;
    let mounts: usize = crate::common::env_setting("FLEET_MOUNTS").unwrap_or(4);
    assert!(mounts >= 2, "FLEET_MOUNTS: a fleet and a joiner");
    let emu = emulator();
    let fleet = start_fleet(&emu, mounts - 1);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(UNTIL);
    let emu = &emu;
    let (per_second, at_from) = std::thread::scope(|s| {
        let mut handles: Vec<_> = fleet
            .iter()
            .map(|m| {
                let path = m.random();
                s.spawn(move || read_until(&path, t0, end, UNTIL))
            })
            .collect();
        handles.push(s.spawn(move || {
            std::thread::sleep(
                (t0 + Duration::from_secs(JOIN_AT)).saturating_duration_since(Instant::now()),
            );
            let joiner = MountBuilder::new(emu).rate_limit("30/10").mount();
            read_until(&joiner.random(), t0, end, UNTIL)
        }));
        std::thread::sleep(
            (t0 + Duration::from_secs(FROM)).saturating_duration_since(Instant::now()),
        );
        let at_from = emu.stats();
        let per_second: Vec<Vec<u64>> = handles
            .into_iter()
            .map(|h| h.join().expect("reader"))
            .collect();
        (per_second, at_from)
    });
    let stats = emu.stats();
    let requests = stats.total_requests - at_from.total_requests;
    let n429 = stats.count(429) - at_from.count(429);
    let span: Vec<Vec<u64>> = per_second
        .iter()
        .map(|s| s[FROM as usize..].to_vec())
        .collect();
    let joined = figures(&span, requests, n429, LIMIT);
    let bytes: Vec<u64> = span.iter().map(|s| s.iter().sum()).collect();
    let mean = bytes.iter().sum::<u64>() as f64 / bytes.len() as f64;
    let joiner = bytes[mounts - 1] as f64 / mean.max(1.0);
    let summary = format!(
        "{mounts} mounts, the last joining at {JOIN_AT} s: the {SECS} s from 30 s after the join: \
         delivered {:.3} of the ceiling, {n429} of {requests} requests answered 429 ({:.1}%), \
         busiest/least {:.2}, worst 20 s share {:.2}, the joiner's bytes / the mean {joiner:.2}, \
         MiB per mount {:?}",
        joined.delivered,
        joined.refused * 100.0,
        joined.spread,
        joined.worst_20s,
        mib(&span),
    );
    eprintln!("{summary}");
    if let Some(dir) = std::env::var_os("FLEET_OUT") {
        let path = std::path::PathBuf::from(dir).join(format!("join-{mounts}-summary.tsv"));
        let mut sum = std::fs::File::create(path).expect("tsv");
        write!(
            sum,
            "mounts\t{mounts}\n{}joiner_share\t{joiner:.3}\nrequests\t{requests}\n\
             answered_429\t{n429}\nsummary\t{summary}\n",
            row("joined", &joined),
        )
        .expect("write");
    }
    // The joiner's share is not held to a goal here: see BENCHMARKS.md for why it is not met.
    assert!(joined.delivered >= 0.85, "{summary}");
    assert!(bytes[mounts - 1] > 0, "the joiner got nothing: {summary}");
}

/// A storm of 429s: a lone mount reads without end; from 20 s the service allows 3 requests
/// per 10 s for 40 s, then 30 again. Goal: the mount is back to the whole limit (30 requests
/// in a window) within 60 s of the storm's end. `FLEET_OUT=DIR` writes `storm.tsv` (second,
/// bytes, allowance).
#[test]
#[ignore = "a 140 s benchmark: scripts/bench.sh fleet"]
fn a_lone_mount_is_back_to_the_whole_limit_within_60_s_of_a_storm() {
    const STORM_AT: u64 = 20;
    const STORM_END: u64 = 60;
    const SECS: u64 = 140;
    let emu = emulator();
    let m = MountBuilder::new(&emu).rate_limit("30/10").mount();
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(SECS);
    let mut allowance = Vec::new();
    let seconds = std::thread::scope(|s| {
        let path = m.random();
        let reader = s.spawn(move || read_until(&path, t0, end, SECS));
        for sec in 0..SECS {
            std::thread::sleep(
                (t0 + Duration::from_secs(sec)).saturating_duration_since(Instant::now()),
            );
            if sec == STORM_AT {
                emu.set_rate_limit(Some(RateLimit {
                    requests: 3,
                    window: Duration::from_secs(10),
                }));
            }
            if sec == STORM_END {
                emu.set_rate_limit(Some(LIMIT));
            }
            allowance.push(
                m.status()
                    .get("rate_allowance")
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        reader.join().expect("reader")
    });
    // Requests (512 KiB each) per 10 s from each second after the storm.
    let full = (STORM_END as usize..SECS as usize - 10)
        .find(|&from| seconds[from..from + 10].iter().sum::<u64>() >= 29 * 512 * 1024);
    let summary = format!(
        "back to 30 requests in 10 s from {:?} s after the storm's end; allowance each second {allowance:?}",
        full.map(|f| f - STORM_END as usize)
    );
    eprintln!("{summary}");
    if let Some(dir) = std::env::var_os("FLEET_OUT") {
        let mut tsv =
            std::fs::File::create(std::path::PathBuf::from(dir).join("storm.tsv")).expect("tsv");
        writeln!(tsv, "second\tbytes\tallowance").expect("write");
        for (sec, (b, a)) in seconds.iter().zip(&allowance).enumerate() {
            writeln!(tsv, "{sec}\t{b}\t{a}").expect("write");
        }
    }
    assert!(
        full.is_some_and(|f| f <= (STORM_END + 60) as usize),
        "{summary}"
    );
}
