//! Other processes: memory, CPU time, finding a daemon by its arguments, stopping children.
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::{Res, ctx};

pub fn rss(pid: u32) -> Res<u64> {
    let path = format!("/proc/{pid}/status");
    let text = ctx(std::fs::read_to_string(&path), &path)?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or(format!("{path}: no VmRSS"))
}

pub fn clock_ticks_per_sec() -> f64 {
    // 100 on every Linux ABI; asked anyway, as procfs(5) says.
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as f64,
        _ => 100.0,
    }
}

/// utime + stime of all the process's threads and of its children, live or reaped, in clock
/// ticks.
pub fn cpu_ticks(pid: u32) -> Res<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = ctx(std::fs::read_to_string(&path), &path)?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = text.rsplit_once(')').ok_or(format!("{path}: malformed"))?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime, stime, cutime and cstime are fields 14 to 17
    // (the last two: children already reaped, such as fetchers that ended).
    let tick = |i: usize| -> Res<u64> {
        f.get(i - 3)
            .and_then(|s| s.parse().ok())
            .ok_or(format!("{path}: no field {i}"))
    };
    let mut total = tick(14)? + tick(15)? + tick(16)? + tick(17)?;
    // Live children too: qrypt-fs's fetchers do the HTTP, JSON and base64 work.
    for child in children(pid) {
        total += cpu_ticks(child).unwrap_or(0);
    }
    Ok(total)
}

/// The live children of every thread of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Processes whose command line has `arg` as one argument (for the daemon we cannot wait on).
pub fn pids_with_arg(arg: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let want = arg.as_os_str().as_encoded_bytes();
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == want))
        })
        .collect()
}

pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Res<()> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > timeout {
            return Err(format!("timed out waiting for {what}"));
        }
        sleep(Duration::from_micros(200));
    }
    Ok(())
}
