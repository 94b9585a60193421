//! Interleaved trials of several read targets, and their medians.
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::read::read_loop;
use crate::status::{buffer_level, read_status, status_u64, wait_full};
use crate::{MIB, Res, ctx};

pub struct TrialsSpec {
    pub targets: Vec<String>,
    pub buffered: Vec<String>,
    pub sizes: Vec<u64>,
    pub rounds: usize,
    pub seconds: Option<f64>,
    pub max_bytes: Option<u64>,
    pub bytes: Option<u64>,
    pub low_watermark: f64,
    pub out: PathBuf,
}

pub struct TrialRow {
    pub target: String,
    pub size: u64,
    pub bytes: u64,
    pub reads: u64,
    pub secs: f64,
}

pub fn trials(spec: TrialsSpec) -> Res<()> {
    let targets: Vec<(String, PathBuf)> = spec
        .targets
        .iter()
        .map(|t| {
            t.split_once('=')
                .map(|(n, p)| (n.to_owned(), PathBuf::from(p)))
                .ok_or(format!("--target {t:?}: expected NAME=PATH"))
        })
        .collect::<Res<_>>()?;
    for b in &spec.buffered {
        if !targets.iter().any(|(n, _)| n == b) {
            return Err(format!("--buffered {b}: no such target"));
        }
    }
    let (deadline, limit) = match (spec.seconds, spec.bytes) {
        (Some(s), None) => (
            Some(Duration::from_secs_f64(s)),
            spec.max_bytes.unwrap_or(u64::MAX),
        ),
        (None, Some(b)) => (None, b),
        _ => return Err("give --seconds (and --max-bytes) or --bytes".into()),
    };
    let mut out = ctx(
        OpenOptions::new().create(true).append(true).open(&spec.out),
        spec.out.display(),
    )?;
    let max_size = *spec.sizes.iter().max().ok_or("no --sizes")?;
    let mut buf = vec![0u8; max_size as usize];
    // Bytes the last trial of each (target, size) read: what the next one will likely need.
    let mut last: BTreeMap<(usize, u64), u64> = BTreeMap::new();
    let mut files: Vec<File> = targets
        .iter()
        .map(|(_, p)| ctx(File::open(p), p.display()))
        .collect::<Res<_>>()?;
    for round in 0..spec.rounds {
        for &size in &spec.sizes {
            for k in 0..targets.len() {
                let i = (k + round) % targets.len();
                let (name, path) = &targets[i];
                let mut limit = limit;
                let status = spec
                    .buffered
                    .contains(name)
                    .then(|| path.with_file_name("status"));
                if let Some(status) = &status {
                    let expect = last
                        .get(&(i, size))
                        .map_or(limit, |b| (b * 3 / 2 + (1 << 20)).min(limit));
                    let budget = ensure_buffered(
                        status,
                        &mut files[i],
                        expect,
                        spec.low_watermark,
                        deadline.is_none(),
                    )?;
                    limit = limit.min(budget);
                }
                let fetched = |s: &Option<PathBuf>| -> Res<u64> {
                    s.as_deref()
                        .map_or(Ok(0), |s| status_u64(&read_status(s)?, "fetched_bytes"))
                };
                let fetched_before = fetched(&status)?;
                let t = read_loop(&mut files[i], &mut buf[..size as usize], limit, deadline)?;
                if fetched(&status)? != fetched_before {
                    eprintln!("  warning: {name} fetched from upstream during this trial");
                }
                last.insert((i, size), t.bytes);
                ctx(
                    writeln!(
                        out,
                        "{name}\t{size}\t{round}\t{}\t{}\t{:.6}",
                        t.bytes, t.reads, t.secs
                    ),
                    spec.out.display(),
                )?;
                eprintln!(
                    "  round {round} {name:<10} {:>5}: {:>10.1} MiB/s {:>10.0} reads/s ({} MiB in {:.3} s)",
                    size_label(size),
                    t.bytes as f64 / MIB / t.secs,
                    t.reads as f64 / t.secs,
                    t.bytes >> 20,
                    t.secs
                );
            }
        }
    }
    Ok(())
}

/// Makes sure a trial reading `need` bytes keeps the buffer above the refill watermark, so no
/// fetch starts while it runs; returns how much the trial may read. When it cannot, drains the
/// buffer below the watermark (which starts a refill) and waits until it is full again.
/// `strict`: the trial must read all of `need` (fixed-size trials).
pub fn ensure_buffered(
    status: &Path,
    f: &mut File,
    need: u64,
    low_watermark: f64,
    strict: bool,
) -> Res<u64> {
    const MARGIN: u64 = 1 << 20;
    let (buffered, capacity) = buffer_level(status)?;
    let low = (capacity as f64 * low_watermark) as u64;
    let budget = |b: u64| b.saturating_sub(low + MARGIN);
    if strict && budget(capacity) < need {
        return Err(format!(
            "{need} bytes cannot be read from a {capacity}-byte buffer without a refill"
        ));
    }
    if buffered == capacity || budget(buffered) >= need {
        return Ok(budget(buffered));
    }
    eprintln!(
        "  (refilling {}: draining below the watermark, then waiting until full)",
        status.display()
    );
    if buffered >= low {
        let mut buf = vec![0u8; 1 << 20];
        read_loop(f, &mut buf, buffered - low + MARGIN, None)?;
    }
    wait_full(status, Duration::from_secs(180))?;
    let (buffered, _) = buffer_level(status)?;
    Ok(budget(buffered))
}

pub fn read_trials(path: &Path) -> Res<Vec<TrialRow>> {
    let f = ctx(File::open(path), path.display())?;
    let mut rows = Vec::new();
    for line in BufReader::new(f).lines() {
        let line = ctx(line, path.display())?;
        let c: Vec<&str> = line.split('\t').collect();
        if c.len() != 6 {
            continue;
        }
        let num = |s: &str| s.parse::<f64>().map_err(|e| format!("{line:?}: {e}"));
        rows.push(TrialRow {
            target: c[0].to_owned(),
            size: num(c[1])? as u64,
            bytes: num(c[3])? as u64,
            reads: num(c[4])? as u64,
            secs: num(c[5])?,
        });
    }
    Ok(rows)
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

fn size_label(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}M", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}K", n >> 10),
        n => n.to_string(),
    }
}
