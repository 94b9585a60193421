//! An upstream that sends well-formed responses of bad entropy: each class is discarded whole
//! by the health tests, counted in `/status`, and none of its bytes reaches a reader.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::common::*;

fn mount_with(emu: &Emulator) -> Mount {
    quick_retries(emu).mount()
}

/// Bytes of the responses the emulator sent with `fault`.
fn faulty_bytes(emu: &Emulator, fault: &str) -> Vec<u8> {
    emu.records()
        .into_iter()
        .filter(|r| r.fault.as_deref() == Some(fault))
        .flat_map(|r| r.blocks)
        .collect()
}

#[test]
fn blocks_of_arithmetic_progressions_are_discarded() {
    let emu = emulator();
    emu.set_fault(Fault::Progression, Some(3));
    let m = mount_with(&emu);
    m.wait_full();
    read_checked(&emu, &m, 256 * 1024);
    let bad = faulty_bytes(&emu, "progression");
    let s = m.status();
    assert_eq!(s["failures"], "health=3", "{s:#?}");
    assert_eq!(s["discarded_bytes"], bad.len().to_string(), "{s:#?}");
    assert!(
        s["last_error"].contains("most common value: difference"),
        "{s:#?}"
    );
    assert!(!bad.is_empty());
}

#[test]
fn a_response_that_replays_the_previous_one_shifted_by_a_byte_is_discarded() {
    let emu = emulator();
    let m = mount_with(&emu);
    m.wait_full();
    // The buffer holds the newest good bytes, which the fault replays shifted by one.
    emu.set_fault(Fault::ShiftedReplay, Some(2));
    let reads = read_in_4k(&m, 256 * 1024);
    m.wait_status("two discards", Duration::from_secs(10), |s| {
        s["failures"] == "health=2"
    });
    let bad = faulty_bytes(&emu, "shifted_replay");
    let s = m.status();
    assert_eq!(s["discarded_bytes"], bad.len().to_string(), "{s:#?}");
    assert!(s["last_error"].contains("repeat earlier content"), "{s:#?}");
    // Every byte read came from a good response, and nothing was handed out twice: the
    // replayed content was served once, in its first (good) response.
    let good: Vec<u8> = emu
        .records()
        .into_iter()
        .filter(|r| r.status == 200 && r.fault.is_none())
        .flat_map(|r| r.blocks)
        .collect();
    let served: Vec<u8> = reads.concat();
    assert_disjoint(&reads);
    let good_windows: std::collections::HashSet<&[u8]> = good.windows(32).collect();
    assert!(
        served
            .windows(32)
            .step_by(32)
            .all(|w| good_windows.contains(w)),
        "served bytes outside the good responses"
    );
}

/// A single 1 KiB block replayed more than 64 MiB after it was served (past the aligned
/// block memory), at many shifts: every one is found by the replay memory, which guarantees
/// it for any repeat of 960 bytes or more. With rolling-hash anchors alone about 2.3% of such
/// blocks escaped, so 120 replays would let about 3 through.
#[test]
fn single_blocks_replayed_more_than_64_mib_later_are_discarded_at_any_shift() {
    let emu = emulator();
    let m = MountBuilder::new(&emu)
        .args([
            "--buffer-size",
            "64K",
            "--rate-limit",
            "off",
            "--max-backoff",
            "0.25",
        ])
        .mount();
    // 74 MiB through the mount, so the emulator holds 128 blocks (one per 64 KiB) older than
    // the aligned block memory (64 MiB), each replayed once below.
    let mut f = std::fs::File::open(m.random()).expect("open /random");
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..74 {
        std::io::Read::read_exact(&mut f, &mut buf).expect("read 1 MiB");
    }
    let replays = 120u64;
    for i in 0..replays {
        let shift = [0, 1, 7, 64, 333, 640, 1000, 1023][i as usize % 8] + i % 3;
        emu.set_fault(
            Fault::OldBlock {
                age_mib: 66,
                shift: shift.min(1023),
            },
            Some(1),
        );
        // Reads make room, so the daemon asks again and meets the fault.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while m.status()["failures"] != format!("health={}", i + 1) {
            assert!(
                std::time::Instant::now() < deadline,
                "replay {i} (shift {shift}) not discarded: {:#?}",
                m.status()
            );
            std::io::Read::read_exact(&mut f, &mut buf[..64 << 10]).expect("read");
        }
    }
    let s = m.status();
    assert!(s["last_error"].contains("repeat earlier content"), "{s:#?}");
    let bad = faulty_bytes(&emu, "old_block");
    assert_eq!(s["discarded_bytes"], bad.len().to_string(), "{s:#?}");
    assert_eq!(
        emu.records()
            .iter()
            .filter(|r| r.fault.as_deref() == Some("old_block"))
            .count() as u64,
        replays
    );
}

/// Sum of the sizes of the replay journals in `dir`.
fn journal_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("state dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".journal"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Reads `mib` MiB through the mount in 64 KiB reads.
fn read_mib(m: &Mount, mib: usize) -> Vec<Vec<u8>> {
    let mut f = std::fs::File::open(m.random()).expect("open /random");
    (0..mib * 16)
        .map(|_| {
            let mut buf = vec![0u8; 64 << 10];
            std::io::Read::read_exact(&mut f, &mut buf).expect("read");
            buf
        })
        .collect()
}

/// Arms each fault once and reads until the mount has discarded it; returns what was read.
fn replay_and_wait(emu: &Emulator, m: &Mount, faults: &[Fault]) -> Vec<Vec<u8>> {
    let mut f = std::fs::File::open(m.random()).expect("open /random");
    let mut reads = Vec::new();
    for (i, fault) in faults.iter().enumerate() {
        emu.set_fault(fault.clone(), Some(1));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while m.status()["failures"] != format!("health={}", i + 1) {
            assert!(
                std::time::Instant::now() < deadline,
                "{fault:?} after a restart was not discarded: {:#?}",
                m.status()
            );
            // Reads make room, so the daemon asks again and meets the fault.
            let mut buf = vec![0u8; 16 << 10];
            std::io::Read::read_exact(&mut f, &mut buf).expect("read");
            reads.push(buf);
        }
    }
    reads
}

/// An upstream (or a proxy) that sends again, after the daemon restarts, bytes it sent
/// before: whole responses at odd shifts and single blocks. The replay history is kept in
/// --state-dir, so each is discarded after a clean stop and after a kill -9 alike, and none of
/// their bytes reaches a reader. With the history in memory only, the first of them went
/// through (and with it nearly every byte of a replayed response).
#[test]
fn bytes_sent_before_a_restart_and_replayed_after_it_are_discarded() {
    let emu = emulator();
    let state = tempfile::tempdir().expect("tempdir");
    let sd = state.path().to_str().expect("utf8").to_owned();
    // Each start on a mount point of its own: the history belongs to the upstream account.
    let start = || quick_retries(&emu).args(["--state-dir", &sd]).mount();
    // 3000 KiB back from the newest correct byte: before the restart, as long as the new
    // daemon has fetched less than 2.9 MiB (a 64 KiB buffer and the reads below).
    let faults = [
        Fault::OldWindow {
            age_kib: 3000,
            shift: 1,
        },
        Fault::OldWindow {
            age_kib: 3000,
            shift: 333,
        },
        Fault::OldBlock {
            age_mib: 2,
            shift: 5,
        },
        Fault::OldWindow {
            age_kib: 2500,
            shift: 1023,
        },
    ];
    let mut m = start();
    read_mib(&m, 4);
    assert_eq!(m.status()["replay_history_saved"], "yes");
    assert!(m.stop().success());

    for kill in [true, false] {
        let mut m = start();
        let sent_before = faulty_total(&emu);
        let after = replay_and_wait(&emu, &m, &faults);
        let s = m.status();
        assert!(s["last_error"].contains("repeat earlier content"), "{s:#?}");
        let bad = faulty_bytes_since(&emu, sent_before);
        assert_eq!(s["discarded_bytes"], bad.len().to_string(), "{s:#?}");
        // The history the restart loaded: the 4 MiB read before it, and more.
        assert!(m.status_u64("replay_history_bytes") >= 4 << 20, "{s:#?}");
        assert_eq!(s["replay_history_saved"], "yes");
        // No 16-byte run of a replayed response was read after the restart.
        let replayed: std::collections::HashSet<&[u8]> = bad.windows(16).collect();
        for r in &after {
            assert!(
                r.chunks_exact(16).all(|c| !replayed.contains(c)),
                "bytes of a replayed response were served"
            );
        }
        // Fresh bytes for the next restart to be offered again.
        read_mib(&m, 4);
        if kill {
            // What a kill -9 may lose is the last second: wait until the journal holds the
            // anchors of nearly every byte the emulator sent (one per 245 bytes; 90% is
            // many standard deviations below the count expected).
            let good = emu.stats().good_bytes;
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while journal_bytes(state.path()) / 8 * 245 < good * 9 / 10 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "journal not written: {} bytes for {good} sent",
                    journal_bytes(state.path())
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            m.kill();
        } else {
            assert!(m.stop().success());
        }
    }
    assert!(
        std::fs::read_dir(state.path())
            .expect("state dir")
            .flatten()
            .all(|e| e.metadata().expect("meta").permissions().mode() & 0o077 == 0),
        "every file in the state dir is private"
    );
}

/// Bytes of faulty responses the emulator sent so far.
fn faulty_total(emu: &Emulator) -> usize {
    emu.records()
        .iter()
        .filter(|r| r.fault.is_some())
        .map(|r| r.blocks.len())
        .sum()
}

/// Bytes of the faulty responses sent after the first `skip` faulty bytes.
fn faulty_bytes_since(emu: &Emulator, skip: usize) -> Vec<u8> {
    let all: Vec<u8> = emu
        .records()
        .into_iter()
        .filter(|r| r.fault.is_some())
        .flat_map(|r| r.blocks)
        .collect();
    all[skip..].to_vec()
}

/// A damaged replay history, a damaged key, or a state directory that cannot be used never
/// stops a start: the log says what was kept or why the history lives in memory only, and
/// `/status` shows it.
#[test]
fn a_damaged_history_or_an_unusable_state_dir_never_fails_a_start() {
    let emu = emulator();
    let state = tempfile::tempdir().expect("tempdir");
    let place = tempfile::tempdir().expect("tempdir");
    let sd = state.path().to_str().expect("utf8").to_owned();
    let start = || {
        quick_retries(&emu)
            .args(["--state-dir", &sd])
            .at(place.path())
            .mount()
    };
    let mut m = start();
    // Two records at least: one flushed while running, the rest at the stop.
    read_mib(&m, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while journal_bytes(state.path()) < 16 << 10 {
        assert!(std::time::Instant::now() < deadline, "no journal record");
        std::thread::sleep(Duration::from_millis(50));
    }
    read_mib(&m, 1);
    assert!(m.stop().success());
    // The newest journal's last record loses its last bytes (a torn write).
    let mut journals: Vec<_> = std::fs::read_dir(state.path())
        .expect("state dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".journal"))
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 4096))
        .collect();
    journals.sort();
    let newest = journals.last().expect("a journal");
    let mut bytes = std::fs::read(newest).expect("read journal");
    bytes.truncate(bytes.len() - 3);
    std::fs::write(newest, &bytes).expect("write journal");
    let mut m = start();
    read_mib(&m, 1);
    let log = m.log_text();
    assert!(
        log.contains("truncated record")
            && log.contains("kept the")
            && !log.contains("kept the 0 "),
        "{log}"
    );
    // The good prefix (the first MiB and more) was loaded, besides this run's own MiB.
    assert!(m.status_u64("replay_history_bytes") >= 1600 << 10);
    assert_eq!(m.status()["replay_history_saved"], "yes");
    assert!(m.stop().success());

    std::fs::write(state.path().join("replay.key"), b"not a key").expect("write key");
    let mut m = start();
    read_mib(&m, 1);
    assert!(m.log_text().contains("is unusable"), "{}", m.log_text());
    assert_eq!(m.status()["replay_history_saved"], "yes");
    assert!(m.status_u64("replay_history_bytes") < 2 << 20);
    assert!(m.stop().success());

    // A state directory that is a regular file: in memory only, said in the log and /status.
    let file = state.path().join("a-file");
    std::fs::write(&file, b"").expect("write");
    let m = quick_retries(&emu)
        .args(["--state-dir", file.to_str().expect("utf8")])
        .mount();
    read_mib(&m, 1);
    assert!(m.log_text().contains("in memory only"), "{}", m.log_text());
    assert_eq!(m.status()["replay_history_saved"], "no");
}
