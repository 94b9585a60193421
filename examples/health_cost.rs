//! CPU cost of the health tests per GiB of upstream bytes: `cargo run --release --example
//! health_cost [MiB]` (default 256). Random responses of 512 KiB and of 16 KiB go through
//! `HealthTests::check` one after another, as the prefetcher sends them; the figure is
//! process CPU time (one thread) divided by the bytes checked.
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};
use qrypt_fs::health::HealthTests;

fn cpu_time() -> Duration {
    // CLOCK_PROCESS_CPUTIME_ID always exists on Linux; zero if it ever did not.
    clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

fn per_gib(cpu: Duration, bytes: usize) -> f64 {
    cpu.as_secs_f64() * (1u64 << 30) as f64 / bytes as f64
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let mut data = vec![0u8; mib << 20];
    if let Err(e) = getrandom::getrandom(&mut data) {
        eprintln!("getrandom: {e}");
        std::process::exit(1);
    }
    for response in [512usize << 10, 16 << 10] {
        let mut h = HealthTests::new();
        let start = cpu_time();
        for r in data.chunks_exact(response) {
            if let Err(e) = h.check(r) {
                eprintln!("unexpected failure on random data: {e}");
                std::process::exit(1);
            }
        }
        let cpu = cpu_time() - start;
        println!(
            "health tests, {mib} MiB in {} KiB responses: {:.3} s CPU per GiB",
            response >> 10,
            per_gib(cpu, data.len())
        );
    }
    // parts: the most-common-value estimate and the replay test, alone.
    let mut cutoffs = qrypt_fs::health::mcv::Cutoffs::default();
    let start = cpu_time();
    for r in data.chunks_exact(512 << 10) {
        let _ = qrypt_fs::health::mcv::check(r, &mut cutoffs);
    }
    println!(
        "  of which most-common-value (bytes and differences): {:.3} s CPU per GiB",
        per_gib(cpu_time() - start, data.len())
    );
    let anchors = qrypt_fs::health::replay::Anchors::new(qrypt_fs::random_u64());
    let mut memory = qrypt_fs::health::replay::ReplayMemory::default();
    let mut found = Vec::new();
    let start = cpu_time();
    for r in data.chunks_exact(512 << 10) {
        found.clear();
        anchors.find(r, &mut found);
        let _ = memory.first_replay(&found);
        memory.remember(found.iter().map(|a| a.fingerprint));
    }
    println!(
        "  of which replay (anchors, lookups, memory): {:.3} s CPU per GiB",
        per_gib(cpu_time() - start, data.len())
    );
    // end parts
}
