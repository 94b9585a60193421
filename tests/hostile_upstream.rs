//! An upstream that sends well-formed responses of bad entropy: each class is discarded whole
//! by the health tests, counted in `/status`, and none of its bytes reaches a reader.
#![cfg(feature = "fuse-tests")]

mod common;

use std::time::Duration;

use common::*;

fn mount_with(emu: &Emulator) -> Mount {
    MountBuilder::new(emu)
        .args([
            "--buffer-size",
            "64K",
            "--max-backoff",
            "0.3",
            "--request-timeout",
            "2",
        ])
        .mount()
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
    let reads = read_in_4k(&m, 256 * 1024);
    let prov = Provenance::from(&emu);
    reads.iter().for_each(|r| prov.check_run(r));
    assert_disjoint(&reads);
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
