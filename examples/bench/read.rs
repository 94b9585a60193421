//! Timed reads: plain `read(2)` calls into one buffer, as `dd bs=SIZE of=/dev/null` does.
use std::fs::File;
use std::io::Read;
use std::time::{Duration, Instant};

use crate::Res;

pub struct Tally {
    pub bytes: u64,
    pub reads: u64,
    pub secs: f64,
}

/// Reads until `limit` bytes (asking for at most the buffer's length each time) or until
/// `deadline` has passed since the first read.
pub fn read_loop(
    f: &mut File,
    buf: &mut [u8],
    limit: u64,
    deadline: Option<Duration>,
) -> Res<Tally> {
    let (mut bytes, mut reads) = (0u64, 0u64);
    let start = Instant::now();
    while bytes < limit {
        let want = (buf.len() as u64).min(limit - bytes) as usize;
        let n = loop {
            match f.read(&mut buf[..want]) {
                Ok(0) => return Err("unexpected end of file".into()),
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read: {e}")),
            }
        };
        bytes += n as u64;
        reads += 1;
        if deadline.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
    }
    Ok(Tally {
        bytes,
        reads,
        secs: start.elapsed().as_secs_f64(),
    })
}
