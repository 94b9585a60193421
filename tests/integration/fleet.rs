//! One token shared by a fleet: 4 mounts read as fast as they can for 60 s against the
//! emulator enforcing one 30 requests / 10 s limit for their token. Goals:
//! aggregate throughput >= 85% of 30 x 512 KiB / 10 s, 429 answers <= 10% of requests, and
//! the busiest mount gets at most twice the bytes of the least busy.
//!
//! A benchmark, not a check of correctness: ignored by default, run by `scripts/bench.sh
//! fleet` (release build). `FLEET_OUT=DIR` writes `fleet.tsv` (mount, second, bytes) and
//! `fleet-summary.tsv` for the plot and BENCHMARKS.md.

use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::common::*;

const MOUNTS: usize = 4;
const SECS: u64 = 60;
const KIB: f64 = 1024.0;

#[test]
#[ignore = "a 60 s benchmark: scripts/bench.sh fleet"]
fn four_mounts_share_one_token() {
    let limit = RateLimit {
        requests: 30,
        window: Duration::from_secs(10),
    };
    let emu = Emulator::start(EmulatorConfig {
        rate_limit: Some(limit),
        ..EmulatorConfig::default()
    })
    .expect("emulator");
    // Started together, as a fleet restarted by one deployment would be.
    let mounts: Vec<Mount> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..MOUNTS)
            .map(|_| s.spawn(|| MountBuilder::new(&emu).rate_limit("30/10").mount()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("mount"))
            .collect()
    });
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(SECS);
    let per_second: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = mounts
            .iter()
            .map(|m| {
                let path = m.random();
                s.spawn(move || {
                    let f = std::fs::File::open(&path).expect("open");
                    let mut seconds = vec![0u64; SECS as usize];
                    while Instant::now() < end {
                        // A reader blocked past the end is answered by the next response;
                        // bytes after the end are not counted.
                        let got = read_once(&f, 1 << 20).expect("read");
                        let at = t0.elapsed().as_secs();
                        if let Some(slot) = seconds.get_mut(at as usize) {
                            *slot += got.len() as u64;
                        }
                    }
                    seconds
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reader"))
            .collect()
    });
    let stats = emu.stats();
    let bytes: Vec<u64> = per_second.iter().map(|s| s.iter().sum()).collect();
    let total: u64 = bytes.iter().sum();
    let ceiling = f64::from(limit.requests) * 512.0 * KIB / limit.window.as_secs_f64();
    let throughput = total as f64 / SECS as f64;
    let share = throughput / ceiling;
    let n429 = stats.count(429);
    let refused = n429 as f64 / stats.total_requests.max(1) as f64;
    let busiest = bytes.iter().max().copied().unwrap_or(0);
    let least = bytes.iter().min().copied().unwrap_or(0);
    let fairness = busiest as f64 / least.max(1) as f64;
    let summary = format!(
        "aggregate {:.0} KiB/s = {:.1}% of the {:.0} KiB/s ceiling; {} requests, {} answered 429 \
         ({:.1}%); per mount MiB {:?}; busiest/least busy {:.2}",
        throughput / KIB,
        share * 100.0,
        ceiling / KIB,
        stats.total_requests,
        n429,
        refused * 100.0,
        bytes
            .iter()
            .map(|b| (*b as f64 / 1048576.0 * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        fairness
    );
    eprintln!("{summary}");
    if let Some(dir) = std::env::var_os("FLEET_OUT") {
        let dir = std::path::PathBuf::from(dir);
        let mut tsv = std::fs::File::create(dir.join("fleet.tsv")).expect("tsv");
        writeln!(tsv, "mount\tsecond\tbytes").expect("write");
        for (i, s) in per_second.iter().enumerate() {
            for (sec, b) in s.iter().enumerate() {
                writeln!(tsv, "{i}\t{sec}\t{b}").expect("write");
            }
        }
        let mut sum = std::fs::File::create(dir.join("fleet-summary.tsv")).expect("tsv");
        writeln!(
            sum,
            "throughput_share\t{share:.4}\nrefused_share\t{refused:.4}\nfairness\t{fairness:.3}\n\
             requests\t{}\nanswered_429\t{n429}\nsummary\t{summary}",
            stats.total_requests
        )
        .expect("write");
    }
    assert!(share >= 0.85, "throughput: {summary}");
    assert!(refused <= 0.10, "429s: {summary}");
    assert!(fairness <= 2.0, "fairness: {summary}");
}
