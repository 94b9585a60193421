//! The buffer's memory is locked as it fills, not all at mount, wherever the process may
//! still lock once its privileges are gone: a large buffer the upstream cannot fill costs
//! little locked memory. Where it may not (started as root without CAP_SYS_RESOURCE to raise
//! RLIMIT_MEMLOCK), the whole buffer is locked before the drop. `/status` shows what is locked.

use std::time::Duration;

use crate::common::*;

/// This process may raise its hard RLIMIT_MEMLOCK (CAP_SYS_RESOURCE), and so may the daemon
/// it starts before it drops its privileges.
fn may_raise_the_locking_limit() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapEff");
    const CAP_SYS_RESOURCE: u32 = 24;
    eff & (1 << CAP_SYS_RESOURCE) != 0
}

/// The daemon's VmLck, in bytes.
fn vm_locked(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmLck kB")
        * 1024
}

fn num(s: &std::collections::HashMap<String, String>, k: &str) -> u64 {
    status_num(s, k)
}

/// Locked memory may run ahead of the buffered bytes by the requests in flight (4 x 512 KiB)
/// and one lock chunk (1 MiB), plus the pages at either end, and the pool's fixed 1 MiB
/// scratch buffer for reads that wrap (locked from the start, as it holds served bytes).
const AHEAD: u64 = (4 << 20) + 16384;

#[test]
fn a_large_buffer_is_locked_as_it_fills_and_status_says_how_much() {
    let emu = emulator();
    emu.set_fault(Fault::Status(503), None);
    let m = MountBuilder::new(&emu)
        .args(["--buffer-size", "256M"])
        .mount();
    // The upstream answers 503: nothing to buffer, hardly anything locked, for a while.
    m.wait_status("a few 503s", Duration::from_secs(10), |s| {
        num(s, "requests_failed") >= 2
    });
    std::thread::sleep(Duration::from_secs(1));
    let s = m.status();
    assert_eq!(num(&s, "buffered_bytes"), 0);
    let locked = vm_locked(m.pid());
    // Locked as it fills, or (see the module's note) whole before the drop, and said so.
    let as_it_fills = may_raise_the_locking_limit();
    if as_it_fills {
        assert!(
            locked <= 2 << 20,
            "VmLck {locked} bytes with nothing buffered"
        );
    } else {
        assert!(
            ((256 << 20)..=(256 << 20) + AHEAD).contains(&locked),
            "VmLck {locked} bytes: not the whole buffer"
        );
        assert!(
            m.log_text().contains("the whole buffer is locked now"),
            "{}",
            m.log_text()
        );
    }
    assert_eq!(num(&s, "locked_bytes"), locked, "{s:?}");
    assert_eq!(s["memory_locked"], "yes");

    // Let it fill, up to a quota of 48 MiB (then 403): what is locked follows what is
    // buffered, and stops with it.
    const QUOTA: u64 = 48 << 20;
    emu.set_quota(Some(QUOTA));
    emu.clear_fault();
    m.wait_status("the quota used up", Duration::from_secs(120), |s| {
        let (buffered, shown) = (num(s, "buffered_bytes"), num(s, "locked_bytes"));
        assert!(shown >= buffered, "locked {shown} < buffered {buffered}");
        assert!(
            !as_it_fills || shown <= buffered + AHEAD,
            "locked {shown} far ahead of buffered {buffered}"
        );
        s["state"] == "quota exhausted"
    });
    let s = m.status();
    let locked = vm_locked(m.pid());
    assert_eq!(num(&s, "locked_bytes"), locked, "{s:?}");
    let buffered = num(&s, "buffered_bytes");
    // The last requests of the quota may be cut short (403): most of it, at least.
    assert!((QUOTA * 3 / 4..=QUOTA).contains(&buffered), "{s:?}");
    let most = if as_it_fills {
        buffered + AHEAD
    } else {
        (256 << 20) + AHEAD
    };
    assert!((buffered..=most).contains(&locked), "VmLck {locked}");
    let json: serde_json::Value = m.status_json();
    assert_eq!(json["locked_bytes"], locked);
    let metrics = std::fs::read_to_string(m.path().join("metrics")).expect("metrics");
    assert!(
        metrics.contains(&format!("\nqrypt_fs_locked_bytes {locked}\n")),
        "{metrics}"
    );
}
