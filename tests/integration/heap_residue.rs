//! Served bytes must not linger in the daemon's memory in another form: after 4 MiB was read
//! (and wiped from the ring), the base64 text the upstream sent for those blocks is looked
//! for in every writable mapping of the daemon, through /proc/PID/mem.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use crate::common::*;
use base64::Engine;

/// Characters of each block's base64 looked for: 32 characters hold 24 bytes of entropy, so
/// a match is that block's text and nothing else.
const NEEDLE: usize = 32;

/// The contents of every private writable mapping of `pid` (heap, thread arenas, anonymous
/// maps), each as one buffer.
fn writable_memory(pid: i32) -> Vec<Vec<u8>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open mem");
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let path = line.split_whitespace().nth(5).unwrap_or("");
        if !perms.starts_with("rw") || path.starts_with("[v") || path.starts_with('/') {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (a, b) = (
            u64::from_str_radix(a, 16).expect("hex"),
            u64::from_str_radix(b, 16).expect("hex"),
        );
        if b - a > 1 << 30 {
            continue;
        }
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_ok() && mem.read_exact(&mut buf).is_ok() {
            out.push(buf);
        }
    }
    out
}

fn is_b64(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'+' || c == b'/'
}

/// How many of `needles` occur in `memory`. Only runs of base64 characters at least a needle
/// long are looked into, which keeps the scan quick.
fn count_found(memory: &[Vec<u8>], needles: &HashSet<Vec<u8>>) -> usize {
    let mut found = HashSet::new();
    for region in memory {
        let mut i = 0;
        while i < region.len() {
            if !is_b64(region[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < region.len() && is_b64(region[i]) {
                i += 1;
            }
            if i - start >= NEEDLE {
                for w in region[start..i].windows(NEEDLE) {
                    if needles.contains(w) {
                        found.insert(w.to_vec());
                    }
                }
            }
        }
    }
    found.len()
}

/// The needle of each 1 KiB block of `bytes`.
fn needles_of(bytes: &[u8]) -> HashSet<Vec<u8>> {
    bytes
        .chunks_exact(1024)
        .map(|b| {
            let text = base64::engine::general_purpose::STANDARD.encode(b);
            text.as_bytes()[600..600 + NEEDLE].to_vec()
        })
        .collect()
}

/// Every block the emulator sent in a correct response.
fn good_blocks(emu: &Emulator) -> Vec<u8> {
    emu.records()
        .into_iter()
        .filter(|r| r.status == 200 && r.fault.is_none())
        .flat_map(|r| r.blocks)
        .collect()
}

#[test]
fn an_idle_connection_s_read_buffer_is_wiped_once_it_closes() {
    let emu = emulator();
    let m = MountBuilder::new(&emu).mount();
    m.wait_full();
    std::thread::sleep(Duration::from_millis(500));
    let needles = needles_of(&good_blocks(&emu));
    assert_eq!(needles.len(), 4096);
    let live = count_found(&writable_memory(m.pid()), &needles);
    eprintln!("base64 of {live} of 4096 fetched blocks in memory while connections are live");
    // Idle connections close after 10 s; the next sweep (every second) wipes their buffers.
    std::thread::sleep(Duration::from_secs(12));
    let after = count_found(&writable_memory(m.pid()), &needles);
    eprintln!("base64 of {after} of 4096 fetched blocks in memory after the idle timeout");
    assert_eq!(
        after, 0,
        "{after} blocks' text left after the connections closed"
    );
}

/// Many responses of odd sizes share each connection's read buffers (a body ends mid-buffer,
/// the next response's headers and body follow it): every one of those buffers must still be
/// wiped once its connection closes, whatever shares it.
#[test]
fn read_buffers_shared_by_many_responses_are_wiped_once_idle() {
    let emu = emulator();
    // A small buffer is refilled by small responses of varied sizes (what is free when half
    // of it is), four in flight.
    let m = full_mount(&emu);
    let mut f = std::fs::File::open(m.random()).expect("open");
    for i in 0..400 {
        let mut buf = vec![0u8; (3 + i * 13 % 41) << 10];
        f.read_exact(&mut buf).expect("read");
    }
    drop(f);
    let responses = emu.records().len();
    assert!(responses > 150, "only {responses} responses");
    // Idle connections close after 10 s; the next sweep (every second) wipes their buffers.
    std::thread::sleep(Duration::from_secs(12));
    let needles = needles_of(&good_blocks(&emu));
    let after = count_found(&writable_memory(m.pid()), &needles);
    eprintln!(
        "base64 of {after} of {} fetched blocks in memory after {responses} responses and the idle timeout",
        needles.len()
    );
    assert_eq!(
        after, 0,
        "{after} blocks' text left after the connections closed"
    );
}

#[test]
fn base64_of_served_blocks_does_not_linger_in_the_heap() {
    served_blocks_leave_no_text(false);
}

/// Under HTTPS rustls decrypts into buffers of its own, which we cannot reach: measured, and
/// held to the same bound.
#[test]
fn base64_of_served_blocks_does_not_linger_in_the_heap_over_https() {
    served_blocks_leave_no_text(true);
}

fn served_blocks_leave_no_text(tls: bool) {
    let emu = Emulator::start(EmulatorConfig {
        tls,
        record: true,
        ..EmulatorConfig::default()
    })
    .expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    let mut b = MountBuilder::new(&emu);
    if let Some(pem) = emu.ca_cert_pem() {
        std::fs::write(&ca, pem).expect("write ca");
        b = b.args(["--ca-cert", ca.to_str().expect("utf8")]);
    }
    let m = b.mount();
    m.wait_full();
    // No more responses after the fill: nothing new overwrites what the old ones left behind.
    emu.set_fault(Fault::Status(503), None);
    let served = read_exact(&m.random(), 4 << 20);
    std::thread::sleep(Duration::from_secs(2));
    // The stream starts at a block boundary and every response is whole blocks, so the bytes
    // read are whole blocks; the emulator sent each as standard base64.
    let needles = needles_of(&served);
    assert_eq!(needles.len(), 4096);
    // The scan must be able to see: the text of a block the daemon still holds (buffered,
    // unread) is found where the daemon keeps it... as raw bytes, so check the method on
    // ourselves instead: our own copy of the needles is in this process's memory.
    let own = writable_memory(std::process::id() as i32);
    assert_eq!(
        count_found(&own, &needles),
        needles.len(),
        "scan finds text"
    );
    drop(own);
    let memory = writable_memory(m.pid());
    let lingering = count_found(&memory, &needles);
    eprintln!(
        "base64 of {lingering} of {} served blocks still in the daemon's memory (tls: {tls})",
        needles.len()
    );
    // hyper's read buffer of a live connection is out of our reach (README, security
    // notes): a few blocks' worth may remain there, never a large share. Over HTTPS rustls'
    // buffers of decrypted records are freed unwiped too: 35 to 189 of 4096 were measured,
    // against 1325 before, so the bound there is 10%.
    let bound = if tls {
        needles.len() / 10
    } else {
        needles.len() / 50
    };
    assert!(
        lingering <= bound,
        "{lingering} of {} served blocks still in memory as base64",
        needles.len()
    );
}
