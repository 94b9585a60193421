//! The processes of a mount and what each may do: every one but the supervisor runs as an
//! unprivileged user with no capability, `no_new_privs` and a seccomp filter; a killed fetcher
//! costs no reader a read and is replaced at once (with backoff when it keeps dying); a killed
//! server leaves no dead mount behind.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

/// One process's `/proc/PID/status`, as key → value.
fn proc_status(pid: i32) -> HashMap<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The mount's helper processes: (supervisor, spawner), children of the server.
fn helpers(m: &Mount) -> (i32, i32) {
    let kids = children_of(m.pid());
    let find = |name: &str| {
        *kids
            .iter()
            .find(|&&p| comm(p) == name)
            .unwrap_or_else(|| panic!("no {name} among {kids:?}"))
    };
    (find("qrypt-superv"), find("qrypt-spawner"))
}

/// Whether `pid` is alive (not a zombie waiting to be reaped).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// The running fetcher, waiting up to `within` for one newer than `old` (pids grow; a killed
/// one may linger as a zombie until the spawner reaps it).
fn fetcher(spawner: i32, old: Option<i32>, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        let f = children_of(spawner)
            .into_iter()
            .find(|&p| comm(p) == "qrypt-fetcher" && alive(p) && old.is_none_or(|o| p > o));
        if f.is_some() || Instant::now() > deadline {
            return f;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn kill9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL");
}

const NO_CAPS: &str = "0000000000000000";
const CAP_SYS_ADMIN: &str = "0000000000200000";

#[test]
fn every_process_but_the_supervisor_runs_unprivileged_and_confined() {
    let emu = emulator();
    let m = MountBuilder::new(&emu).mount();
    // Filled: the fetcher has applied its sandbox (it does before its first answer).
    m.wait_full();
    let (supervisor, spawner) = helpers(&m);
    let fetcher = fetcher(spawner, None, Duration::from_secs(10)).expect("a fetcher");
    let root = nix::unistd::geteuid().is_root();
    for (name, pid, sandboxed) in [
        ("server", m.pid(), true),
        ("fetcher", fetcher, true),
        // Forks fetchers: the fetcher's filter plus forking and reaping.
        ("spawner", spawner, true),
    ] {
        let s = proc_status(pid);
        if root {
            for id in ["Uid", "Gid"] {
                assert!(
                    s[id].split_whitespace().all(|u| u != "0"),
                    "{name}: {id} {}",
                    s[id]
                );
            }
            assert_eq!(s["CapBnd"], NO_CAPS, "{name}: CapBnd");
        }
        for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
            assert_eq!(s[set], NO_CAPS, "{name}: {set}");
        }
        assert_eq!(s["NoNewPrivs"], "1", "{name}");
        if sandboxed {
            assert_eq!(s["Seccomp"], "2", "{name}");
        }
    }
    // Every thread of the server, not only its first.
    for task in std::fs::read_dir(format!("/proc/{}/task", m.pid())).expect("tasks") {
        let t = task.expect("task").path();
        let text = std::fs::read_to_string(t.join("status")).unwrap_or_default();
        for line in [
            "NoNewPrivs:\t1",
            "Seccomp:\t2",
            &format!("CapEff:\t{NO_CAPS}"),
        ] {
            assert!(text.contains(line), "{}: no {line:?}", t.display());
        }
    }
    // The supervisor: CAP_SYS_ADMIN at most, and nothing open but stdio and its socket.
    let s = proc_status(supervisor);
    if root {
        assert_eq!(s["CapEff"], CAP_SYS_ADMIN);
        assert_eq!(s["CapBnd"], CAP_SYS_ADMIN);
    }
    assert_eq!(s["NoNewPrivs"], "1");
    let fds = std::fs::read_dir(format!("/proc/{supervisor}/fd"))
        .expect("fds")
        .count();
    assert_eq!(fds, 4, "the supervisor holds only stdio and its socket");
    let status = m.status();
    assert!(
        status["sandbox"] == "full" || status["sandbox"].starts_with("partial ("),
        "{status:?}"
    );
}

#[test]
fn a_killed_fetcher_loses_no_read_and_is_replaced_at_once() {
    let emu = emulator();
    let m = MountBuilder::new(&emu).mount();
    m.wait_full();
    let (_, spawner) = helpers(&m);
    let first = fetcher(spawner, None, Duration::from_secs(10)).expect("a fetcher");
    // A reader at about 1 MiB/s: 4 KiB every 4 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, path) = (stop.clone(), m.random());
        std::thread::spawn(move || {
            let mut f = std::fs::File::open(path).expect("open");
            let mut reads = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let mut buf = vec![0u8; 4096];
                let n = f
                    .read(&mut buf)
                    .expect("no read fails while the fetcher is replaced");
                assert_eq!(n, 4096, "a full read");
                reads.push(buf);
                std::thread::sleep(Duration::from_millis(4));
            }
            reads
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let fetched = m.status_u64("fetched_bytes");
    let killed = Instant::now();
    kill9(first);
    let second = fetcher(spawner, Some(first), Duration::from_secs(10)).expect("a new fetcher");
    let replaced = killed.elapsed();
    assert!(
        replaced < Duration::from_secs(1),
        "replaced after {replaced:?}"
    );
    // The refill goes on through the new one (the reader keeps the buffer below full).
    m.wait_status("the refill to resume", Duration::from_secs(10), |s| {
        s["fetched_bytes"].parse::<u64>().unwrap_or(0) > fetched
    });
    let resumed = killed.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let reads = reader.join().expect("the reader saw no error");
    let prov = Provenance::from(&emu);
    reads.iter().for_each(|r| prov.check_run(r));
    assert_disjoint(&reads);
    let s = m.status();
    assert_eq!(s["fetcher_restarts"], "1", "{s:?}");
    assert!(
        s["fetcher_last_exit"].contains(&format!("pid {first} killed by signal 9")),
        "{s:?}"
    );
    assert_eq!(s["state"], "ok", "{s:?}");
    assert!(
        m.log_text()
            .contains(&format!("fetcher started (pid {second})"))
    );
    eprintln!("new fetcher after {replaced:?}, refill resumed after {resumed:?}");
    let metrics = m.read_file("metrics");
    assert!(
        metrics.contains("\nqrypt_fs_fetcher_restarts_total 1\n"),
        "{metrics}"
    );
}

#[test]
fn fetchers_that_keep_dying_are_restarted_with_backoff() {
    let emu = emulator();
    let m = MountBuilder::new(&emu).mount();
    let (_, spawner) = helpers(&m);
    let mut current = fetcher(spawner, None, Duration::from_secs(10)).expect("a fetcher");
    // Four deaths in a row, each young: the waits before the next start are 0, 0.25, 0.5
    // and 1 s.
    let mut gaps = Vec::new();
    for _ in 0..4 {
        let killed = Instant::now();
        kill9(current);
        current = fetcher(spawner, Some(current), Duration::from_secs(20)).expect("restarted");
        gaps.push(killed.elapsed());
    }
    assert!(gaps[0] < Duration::from_millis(250), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_millis(500), "{gaps:?}");
    assert!(gaps[3] >= Duration::from_secs(1), "{gaps:?}");
    m.wait_status("four restarts", Duration::from_secs(10), |s| {
        s["fetcher_restarts"] == "4"
    });
    assert!(m.log_text().contains("(it keeps ending)"));
}

#[test]
fn a_killed_server_leaves_no_dead_mount() {
    let emu = emulator();
    let mut m = MountBuilder::new(&emu).mount();
    let (supervisor, spawner) = helpers(&m);
    let mut child = m.child.take().expect("running");
    let _ = child.kill();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_mounted(m.path()) {
        assert!(
            Instant::now() < deadline,
            "still mounted after the server died"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The helpers end with it.
    for pid in [supervisor, spawner] {
        while std::path::Path::new(&format!("/proc/{pid}")).exists()
            && comm(pid).starts_with("qrypt")
        {
            assert!(Instant::now() < deadline, "{} still runs", comm(pid));
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
