//! A qrypt-fs `/status` file read as `key: value` lines, and waiting for a full buffer.
use std::collections::BTreeMap;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::{Res, ctx};

pub fn read_status(path: &Path) -> Res<BTreeMap<String, String>> {
    let text = ctx(std::fs::read_to_string(path), path.display())?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

pub fn status_u64(s: &BTreeMap<String, String>, key: &str) -> Res<u64> {
    s.get(key)
        .and_then(|v| v.parse().ok())
        .ok_or(format!("status has no numeric {key}"))
}

/// (buffered, capacity)
pub fn buffer_level(status: &Path) -> Res<(u64, u64)> {
    let s = read_status(status)?;
    Ok((
        status_u64(&s, "buffered_bytes")?,
        status_u64(&s, "capacity_bytes")?,
    ))
}

pub fn wait_full(status: &Path, timeout: Duration) -> Res<()> {
    let start = Instant::now();
    loop {
        let (b, c) = buffer_level(status)?;
        if b == c {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "{}: buffer not full after {timeout:?} ({b} of {c} bytes)",
                status.display()
            ));
        }
        sleep(Duration::from_millis(20));
    }
}
