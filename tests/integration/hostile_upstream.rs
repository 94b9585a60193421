//! An upstream that sends well-formed responses of bad entropy: each class is discarded whole
//! by the health tests, counted in `/status`, and none of its bytes reaches a reader.

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
