//! CPU cost of the health tests per GiB of upstream bytes: `cargo run --release --example
//! health_cost [MiB]` (default 256). Random responses of 512 KiB and of 16 KiB go through
//! `HealthTests::check` one after another, as the prefetcher sends them; the figure is
//! process CPU time divided by the bytes checked. Then the same with the replay history
//! written to a journal in a temporary state directory (its thread's CPU counted too), and the
//! time a start takes to load a full history (1 GiB) from it, cold (evicted from the page
//! cache) and warm.
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::time::{ClockId, clock_gettime};
use qrypt_fs::health::HealthTests;
use qrypt_fs::health::journal::{Journal, Place};

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

    let state = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tempdir: {e}");
            std::process::exit(1);
        }
    };
    let open = |name: &str| match Journal::open(Place::new(state.path(), name)) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("journal: {e}");
            std::process::exit(1);
        }
    };
    for response in [512usize << 10, 16 << 10] {
        let (journal, key) = open(&format!("/bench/{response}"));
        let mut h = HealthTests::persistent(journal, &key);
        let start = cpu_time();
        for r in data.chunks_exact(response) {
            if let Err(e) = h.check(r) {
                eprintln!("unexpected failure on random data: {e}");
                std::process::exit(1);
            }
        }
        // Dropped: the last record written and synced, the journal's thread joined.
        drop(h);
        println!(
            "health tests with the journal, {mib} MiB in {} KiB responses: {:.3} s CPU per GiB",
            response >> 10,
            per_gib(cpu_time() - start, data.len())
        );
    }

    // A full history: CAPACITY fingerprints written, then loaded as a start loads them.
    let capacity = qrypt_fs::health::replay::CAPACITY;
    {
        let (journal, _) = open("/bench/full");
        let mut x = qrypt_fs::random_u64();
        for _ in 0..capacity / 4096 + 1 {
            let chunk: Vec<u64> = (0..4096)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    x.max(1)
                })
                .collect();
            journal.append(chunk);
        }
    }
    let full = format!("replay-{}.0-", Place::new(state.path(), "/bench/full").id);
    let on_disk: u64 = std::fs::read_dir(state.path())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&full))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    for cold in [true, false] {
        if cold {
            evict(state.path());
        }
        let wall = Instant::now();
        let (journal, key) = open("/bench/full");
        let mut h = HealthTests::persistent(journal, &key);
        h.wait_for_history();
        println!(
            "load of a full history ({} MiB of upstream bytes, {:.1} MB on disk, {}): {} ms",
            h.history_bytes() >> 20,
            on_disk as f64 / 1e6,
            if cold { "cold" } else { "warm" },
            wall.elapsed().as_millis()
        );
    }
}

/// Drops the journals in `dir` from the page cache, as after a reboot.
fn evict(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(f) = std::fs::File::open(e.path()) {
            let _ = f.sync_all();
            let _ = nix::fcntl::posix_fadvise(
                f.as_fd(),
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
    }
}
