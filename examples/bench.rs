//! The measuring half of `scripts/bench.sh` (which starts and stops the emulators and mounts).
//!
//! Each subcommand does one measurement and prints plain numbers, or records one row of the
//! final table; `cargo run --release --example bench -- --help` lists them. Reads are plain
//! `read(2)` calls into one buffer, as `dd bs=SIZE of=/dev/null` does, timed with the monotonic
//! clock around the read loop only (opening the file is not timed).
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Parser)]
#[command(name = "bench", about = "Measurements for scripts/bench.sh")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Reads exactly BYTES from FILE (looping over short reads, like `dd iflag=fullblock`) and
    /// prints the seconds it took.
    ReadExact {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, value_parser = parse_size)]
        bytes: u64,
        /// Bytes asked for per read(2).
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        size: u64,
        /// Count from this wall-clock time (ns since the epoch, `date +%s%N`) instead of from
        /// the first read, e.g. from the moment the filesystem was started.
        #[arg(long)]
        since_ns: Option<u128>,
    },
    /// Interleaved trials: for each round, for each read size, one trial of every target (the
    /// order of targets rotates each round). Appends one TSV row per trial to --out:
    /// target, size, round, bytes, reads, seconds.
    Trials {
        /// NAME=PATH, repeatable.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// Target NAME is a qrypt-fs /random: before each trial, make sure enough is buffered
        /// that the trial cannot push the buffer below the refill watermark (drain and wait
        /// for a full buffer if not), so no fetch runs while it is measured.
        #[arg(long = "buffered")]
        buffered: Vec<String>,
        /// Read sizes, comma-separated (K, M suffixes).
        #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "1M")]
        sizes: Vec<u64>,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Each trial lasts this long (or until --max-bytes)...
        #[arg(long, conflicts_with = "bytes")]
        seconds: Option<f64>,
        #[arg(long, value_parser = parse_size)]
        max_bytes: Option<u64>,
        /// ...or reads exactly this much.
        #[arg(long, value_parser = parse_size)]
        bytes: Option<u64>,
        /// The refill watermark of buffered targets, as a fraction of the capacity.
        #[arg(long, default_value_t = 0.5)]
        low_watermark: f64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Prints the median of one target and size over the trials in FILE.
    Median {
        #[arg(long)]
        trials: PathBuf,
        #[arg(long)]
        target: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
        #[arg(long, value_enum, default_value = "bytes")]
        metric: Metric,
    },
    /// Waits until a qrypt-fs status file shows buffered_bytes == capacity_bytes; prints the
    /// seconds waited.
    WaitFull {
        #[arg(long)]
        status: PathBuf,
        #[arg(long, default_value_t = 180.0)]
        timeout: f64,
    },
    /// Brings a qrypt-fs buffer to full: if it is not, reads from the `random` beside STATUS
    /// until the buffer is below the refill watermark (a refill starts only there), then waits
    /// until full. Prints the seconds it took.
    Fill {
        #[arg(long)]
        status: PathBuf,
        /// The refill watermark, as a fraction of the capacity.
        #[arg(long, default_value_t = 0.5)]
        low_watermark: f64,
    },
    /// Prints the value of KEY in a qrypt-fs status file.
    Status {
        #[arg(long)]
        status: PathBuf,
        #[arg(long)]
        key: String,
    },
    /// Prints a process's resident set size in bytes (VmRSS).
    Rss {
        #[arg(long)]
        pid: u32,
    },
    /// Prints the CPU time (user + system, all threads) of each PID over the same SECONDS, as a
    /// percentage of one core, one line per PID.
    Cpu {
        #[arg(long = "pid", required = true)]
        pids: Vec<u32>,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Prints the CPU time (user + system, all threads) each PID has used so far, in seconds,
    /// one line per PID.
    Cputime {
        #[arg(long = "pid", required = true)]
        pids: Vec<u32>,
    },
    /// Prints `total_requests N` and `status_CODE N` lines from an emulator's /_emulator/stats
    /// (plain http:// only).
    EmulatorStats {
        #[arg(long)]
        url: String,
    },
    /// Time from starting qrypt-fs in daemon mode to the first 32 bytes read from /random
    /// (as `head -c 32`), against one API round trip (a fresh connection asking for the same
    /// size as qrypt-fs's first request, FIRST_REQUEST_KIB) plus the time to mount the null filesystem, rounds
    /// interleaved. Prints medians in ms: startup, mounted, baseline, rtt, null_mount.
    Startup {
        #[arg(long)]
        qrypt_fs: PathBuf,
        #[arg(long)]
        null_fs: PathBuf,
        /// Plain http:// emulator URL.
        #[arg(long)]
        endpoint: String,
        #[arg(long, default_value = "emulator-token")]
        token: String,
        /// Work directory (mount points, logs, pid files).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Appends one row to the results table: the ratio is VALUE / BASELINE, the goal one of
    /// `ratio<=X`, `ratio>=X`, `value<=X`, `value>=X`, `value==X`, or `info`.
    Row {
        #[arg(long)]
        results: PathBuf,
        #[arg(long)]
        section: String,
        #[arg(long)]
        figure: String,
        #[arg(long, allow_hyphen_values = true)]
        value: f64,
        /// s, ms, B/s (shown as MiB/s), reads/s, B (shown as MiB), %, count.
        #[arg(long)]
        unit: String,
        #[arg(long)]
        baseline: Option<f64>,
        /// Words after the baseline, e.g. `(ideal)`.
        #[arg(long, default_value = "")]
        baseline_note: String,
        #[arg(long)]
        goal: String,
    },
    /// Prints the results table (aligned text, or Markdown).
    Table {
        #[arg(long)]
        results: PathBuf,
        #[arg(long)]
        markdown: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Metric {
    /// bytes per second
    Bytes,
    /// read(2) calls per second
    Reads,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: not a size"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        u => return Err(format!("{s:?}: unknown unit {u:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))
}

fn size_label(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}M", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}K", n >> 10),
        n => n.to_string(),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse().cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res<T> = Result<T, String>;

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: impl std::fmt::Display) -> Res<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn run(cmd: Cmd) -> Res<()> {
    match cmd {
        Cmd::ReadExact {
            file,
            bytes,
            size,
            since_ns,
        } => {
            let mut f = ctx(File::open(&file), file.display())?;
            let mut buf = vec![0u8; size as usize];
            let start = Instant::now();
            let t = read_loop(&mut f, &mut buf, bytes, None)?;
            let secs = match since_ns {
                Some(t0) => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_err(|e| e.to_string())?
                        .as_nanos();
                    now.saturating_sub(t0) as f64 / 1e9
                }
                None => start.elapsed().as_secs_f64(),
            };
            debug_assert_eq!(t.bytes, bytes);
            println!("{secs:.4}");
        }
        Cmd::Trials {
            targets,
            buffered,
            sizes,
            rounds,
            seconds,
            max_bytes,
            bytes,
            low_watermark,
            out,
        } => trials(TrialsSpec {
            targets,
            buffered,
            sizes,
            rounds,
            seconds,
            max_bytes,
            bytes,
            low_watermark,
            out,
        })?,
        Cmd::Median {
            trials,
            target,
            size,
            metric,
        } => {
            let rows = read_trials(&trials)?;
            let vals: Vec<f64> = rows
                .iter()
                .filter(|r| r.target == target && r.size == size)
                .map(|r| match metric {
                    Metric::Bytes => r.bytes as f64 / r.secs,
                    Metric::Reads => r.reads as f64 / r.secs,
                })
                .collect();
            let m = median(&vals).ok_or(format!(
                "no trial of {target} at size {size} in {}",
                trials.display()
            ))?;
            println!("{m:.3}");
        }
        Cmd::WaitFull { status, timeout } => {
            let start = Instant::now();
            wait_full(&status, Duration::from_secs_f64(timeout))?;
            println!("{:.3}", start.elapsed().as_secs_f64());
        }
        Cmd::Fill {
            status,
            low_watermark,
        } => {
            let start = Instant::now();
            let random = status.with_file_name("random");
            let mut f = ctx(File::open(&random), random.display())?;
            let (_, capacity) = buffer_level(&status)?;
            ensure_buffered(&status, &mut f, capacity, low_watermark, false)?;
            println!("{:.3}", start.elapsed().as_secs_f64());
        }
        Cmd::Status { status, key } => {
            let s = read_status(&status)?;
            println!(
                "{}",
                s.get(&key)
                    .ok_or(format!("no {key} in {}", status.display()))?
            );
        }
        Cmd::Rss { pid } => println!("{}", rss(pid)?),
        Cmd::Cpu { pids, seconds } => {
            let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect::<Res<_>>()?;
            let start = Instant::now();
            sleep(Duration::from_secs_f64(seconds));
            let after: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect::<Res<_>>()?;
            let wall = start.elapsed().as_secs_f64();
            let hz = clock_ticks_per_sec();
            for (b, a) in before.iter().zip(&after) {
                println!("{:.3}", (a - b) as f64 / hz / wall * 100.0);
            }
        }
        Cmd::Cputime { pids } => {
            for p in pids {
                println!("{:.3}", cpu_ticks(p)? as f64 / clock_ticks_per_sec());
            }
        }
        Cmd::EmulatorStats { url } => {
            let (status, body) = http_get(&url, "_emulator/stats", None)?;
            if status != 200 {
                return Err(format!("{url}_emulator/stats: HTTP {status}"));
            }
            let v: serde_json::Value = ctx(serde_json::from_slice(&body), "stats JSON")?;
            println!(
                "total_requests {}",
                v["total_requests"].as_u64().unwrap_or(0)
            );
            if let Some(m) = v["by_status"].as_object() {
                for (k, n) in m {
                    println!("status_{k} {}", n.as_u64().unwrap_or(0));
                }
            }
        }
        Cmd::Startup {
            qrypt_fs,
            null_fs,
            endpoint,
            token,
            dir,
            rounds,
        } => startup(&qrypt_fs, &null_fs, &endpoint, &token, &dir, rounds)?,
        Cmd::Row {
            results,
            section,
            figure,
            value,
            unit,
            baseline,
            baseline_note,
            goal,
        } => row(
            &results,
            &section,
            &figure,
            value,
            &unit,
            baseline,
            &baseline_note,
            &goal,
        )?,
        Cmd::Table { results, markdown } => table(&results, markdown)?,
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading

struct Tally {
    bytes: u64,
    reads: u64,
    secs: f64,
}

/// Reads until `limit` bytes (asking for at most the buffer's length each time) or until
/// `deadline` has passed since the first read.
fn read_loop(f: &mut File, buf: &mut [u8], limit: u64, deadline: Option<Duration>) -> Res<Tally> {
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

fn read_status(path: &Path) -> Res<BTreeMap<String, String>> {
    let text = ctx(std::fs::read_to_string(path), path.display())?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

fn status_u64(s: &BTreeMap<String, String>, key: &str) -> Res<u64> {
    s.get(key)
        .and_then(|v| v.parse().ok())
        .ok_or(format!("status has no numeric {key}"))
}

/// (buffered, capacity)
fn buffer_level(status: &Path) -> Res<(u64, u64)> {
    let s = read_status(status)?;
    Ok((
        status_u64(&s, "buffered_bytes")?,
        status_u64(&s, "capacity_bytes")?,
    ))
}

fn wait_full(status: &Path, timeout: Duration) -> Res<()> {
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

struct TrialsSpec {
    targets: Vec<String>,
    buffered: Vec<String>,
    sizes: Vec<u64>,
    rounds: usize,
    seconds: Option<f64>,
    max_bytes: Option<u64>,
    bytes: Option<u64>,
    low_watermark: f64,
    out: PathBuf,
}

struct TrialRow {
    target: String,
    size: u64,
    bytes: u64,
    reads: u64,
    secs: f64,
}

fn trials(spec: TrialsSpec) -> Res<()> {
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
fn ensure_buffered(
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

fn read_trials(path: &Path) -> Res<Vec<TrialRow>> {
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

fn median(v: &[f64]) -> Option<f64> {
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

// ---------------------------------------------------------------------------------------------
// Processes

fn rss(pid: u32) -> Res<u64> {
    let path = format!("/proc/{pid}/status");
    let text = ctx(std::fs::read_to_string(&path), &path)?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or(format!("{path}: no VmRSS"))
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// utime + stime of all the process's threads, in clock ticks.
fn cpu_ticks(pid: u32) -> Res<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = ctx(std::fs::read_to_string(&path), &path)?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = text.rsplit_once(')').ok_or(format!("{path}: malformed"))?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let tick = |i: usize| -> Res<u64> {
        f.get(i - 3)
            .and_then(|s| s.parse().ok())
            .ok_or(format!("{path}: no field {i}"))
    };
    Ok(tick(14)? + tick(15)?)
}

/// Processes whose command line has `arg` as one argument (for the daemon we cannot wait on).
fn pids_with_arg(arg: &Path) -> Vec<u32> {
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

// ---------------------------------------------------------------------------------------------
// HTTP (plain, HTTP/1.0 so the body ends at EOF)

fn http_get(base: &str, path: &str, token: Option<&str>) -> Res<(u16, Vec<u8>)> {
    let rest = base
        .strip_prefix("http://")
        .ok_or(format!("{base}: only http:// URLs"))?;
    let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_end_matches('/');
    let full = if prefix.is_empty() {
        format!("/{path}")
    } else {
        format!("/{prefix}/{path}")
    };
    let mut s = ctx(TcpStream::connect(host), host)?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    ctx(
        write!(
            s,
            "GET {full} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n{auth}\r\n"
        ),
        host,
    )?;
    let mut resp = Vec::new();
    ctx(s.read_to_end(&mut resp), host)?;
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("HTTP response without headers")?;
    let status = std::str::from_utf8(&resp[..end])
        .ok()
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("malformed HTTP status line")?;
    Ok((status, resp[end + 4..].to_vec()))
}

// ---------------------------------------------------------------------------------------------
// Startup

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Res<()> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > timeout {
            return Err(format!("timed out waiting for {what}"));
        }
        sleep(Duration::from_micros(200));
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn startup(
    qrypt_fs: &Path,
    null_fs: &Path,
    endpoint: &str,
    token: &str,
    dir: &Path,
    rounds: usize,
) -> Res<()> {
    let mnt = dir.join("startup-mnt");
    ctx(std::fs::create_dir_all(&mnt), mnt.display())?;
    let random = mnt.join("random");
    let (mut startup, mut mounted, mut baseline, mut rtts, mut mounts) =
        (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        // qrypt-fs, as a user starts it: daemon mode, returns once mounted.
        let t0 = Instant::now();
        let st = ctx(
            Command::new(qrypt_fs)
                .arg("--endpoint")
                .arg(endpoint)
                .arg("--log-file")
                .arg(dir.join("startup-qrypt-fs.log"))
                .arg(&mnt)
                .env("QRYPT_TOKEN", token)
                .stdin(Stdio::null())
                .status(),
            qrypt_fs.display(),
        )?;
        let t_mounted = t0.elapsed();
        if !st.success() {
            return Err(format!("qrypt-fs exited with {st}"));
        }
        let mut first = [0u8; 32];
        let r = File::open(&random).and_then(|mut f| f.read_exact(&mut first));
        let t_first = t0.elapsed();
        let daemons = pids_with_arg(&mnt);
        ctx(
            nix::mount::umount2(&mnt, nix::mount::MntFlags::empty()),
            "umount",
        )?;
        ctx(r, random.display())?;
        wait_until("qrypt-fs to exit", Duration::from_secs(5), || {
            daemons
                .iter()
                .all(|p| !Path::new(&format!("/proc/{p}")).exists())
        })?;

        // Baseline: one round trip for what qrypt-fs asks first, then mounting a null FS.
        let t0 = Instant::now();
        let first = qrypt_fs::prefetch::FIRST_REQUEST_KIB;
        let (code, body) = http_get(
            endpoint,
            &format!("api/v1/quantum-entropy?size={first}"),
            Some(token),
        )?;
        let rtt = t0.elapsed();
        if code != 200 || body.len() < first as usize * 1024 {
            return Err(format!("round trip: HTTP {code}, {} bytes", body.len()));
        }
        let t0 = Instant::now();
        let child = ctx(
            Command::new(null_fs).arg(&mnt).stdin(Stdio::null()).spawn(),
            null_fs.display(),
        )?;
        let pid = child.id();
        let child = KillOnDrop(child);
        ctx(
            std::fs::write(dir.join("startup-null_fs.pid"), pid.to_string()),
            "pid file",
        )?;
        wait_until("null_fs to mount", Duration::from_secs(10), || {
            random.exists()
        })?;
        let mount = t0.elapsed();
        // SIGTERM: it unmounts and exits.
        ctx(
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            ),
            "kill null_fs",
        )?;
        let mut child = child;
        let _ = child.0.wait();
        let _ = std::fs::remove_file(dir.join("startup-null_fs.pid"));
        wait_until("null_fs to unmount", Duration::from_secs(5), || {
            !random.exists()
        })?;

        eprintln!(
            "  round {round}: first byte {:.1} ms (mounted {:.1} ms); round trip {:.1} ms + null mount {:.1} ms",
            ms(t_first),
            ms(t_mounted),
            ms(rtt),
            ms(mount)
        );
        startup.push(ms(t_first));
        mounted.push(ms(t_mounted));
        baseline.push(ms(rtt + mount));
        rtts.push(ms(rtt));
        mounts.push(ms(mount));
    }
    for (k, v) in [
        ("startup", startup),
        ("mounted", mounted),
        ("baseline", baseline),
        ("rtt", rtts),
        ("null_mount", mounts),
    ] {
        println!("{k} {:.3}", median(&v).unwrap_or(f64::NAN));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The table

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "B/s" => format!("{:.1} MiB/s", v / MIB),
        "B" => format!("{:.1} MiB", v / MIB),
        "reads/s" if v >= 1e4 => format!("{:.1}k reads/s", v / 1e3),
        "s" => format!("{v:.2} s"),
        "ms" => format!("{v:.1} ms"),
        "%" => format!("{v:.2} %"),
        "count" => format!("{v:.0}"),
        u => format!("{v:.3} {u}"),
    }
}

#[allow(clippy::too_many_arguments)]
fn row(
    results: &Path,
    section: &str,
    figure: &str,
    value: f64,
    unit: &str,
    baseline: Option<f64>,
    baseline_note: &str,
    goal: &str,
) -> Res<()> {
    let ratio = baseline.map(|b| value / b);
    let (verdict, goal_text) = if goal == "info" {
        ("info".to_owned(), "-".to_owned())
    } else {
        let (lhs, op, rhs) = ["<=", ">=", "=="]
            .iter()
            .find_map(|op| goal.split_once(op).map(|(l, r)| (l, *op, r)))
            .ok_or(format!("--goal {goal:?}: expected ratio<=X and the like"))?;
        let x: f64 = rhs
            .trim()
            .parse()
            .map_err(|_| format!("--goal {goal:?}: {rhs:?} is not a number"))?;
        let (subject, shown) = match lhs.trim() {
            "ratio" => (
                ratio.ok_or("a ratio goal needs --baseline")?,
                format!("ratio {} {x}", op.replace("<=", "≤").replace(">=", "≥")),
            ),
            "value" => (
                value,
                format!(
                    "{} {}",
                    op.replace("<=", "≤").replace(">=", "≥").replace("==", "="),
                    fmt_value(x, unit)
                ),
            ),
            other => return Err(format!("--goal {goal:?}: {other:?} is not ratio or value")),
        };
        let ok = match op {
            "<=" => subject <= x,
            ">=" => subject >= x,
            _ => subject == x,
        };
        (if ok { "PASS" } else { "FAIL" }.to_owned(), shown)
    };
    let base_text = baseline.map_or("-".to_owned(), |b| {
        let t = fmt_value(b, unit);
        if baseline_note.is_empty() {
            t
        } else {
            format!("{t} {baseline_note}")
        }
    });
    let ratio_text = ratio.map_or("-".to_owned(), |r| format!("{r:.2}"));
    let cells = [
        section,
        figure,
        &fmt_value(value, unit),
        &base_text,
        &ratio_text,
        &goal_text,
        &verdict,
    ];
    let mut f = ctx(
        OpenOptions::new().create(true).append(true).open(results),
        results.display(),
    )?;
    ctx(writeln!(f, "{}", cells.join("\t")), results.display())?;
    eprintln!("  => {}", cells.join(" | "));
    Ok(())
}

fn table(results: &Path, markdown: bool) -> Res<()> {
    let text = ctx(std::fs::read_to_string(results), results.display())?;
    let header = [
        "section", "figure", "value", "baseline", "ratio", "goal", "result",
    ];
    let mut rows: Vec<Vec<&str>> = vec![header.to_vec()];
    rows.extend(text.lines().map(|l| l.split('\t').collect::<Vec<_>>()));
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |r: &[&str], sep: &str, edge: bool| {
        let cells: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let c = r.get(i).copied().unwrap_or("");
                format!("{c}{}", " ".repeat(w - c.chars().count()))
            })
            .collect();
        if edge {
            format!("| {} |", cells.join(sep))
        } else {
            cells.join(sep)
        }
    };
    for (i, r) in rows.iter().enumerate() {
        println!("{}", line(r, if markdown { " | " } else { "  " }, markdown));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
            println!(
                "{}",
                line(&rule, if markdown { " | " } else { "  " }, markdown)
            );
        }
    }
    let failed = rows
        .iter()
        .skip(1)
        .filter(|r| r.get(6) == Some(&"FAIL"))
        .count();
    let passed = rows
        .iter()
        .skip(1)
        .filter(|r| r.get(6) == Some(&"PASS"))
        .count();
    if !markdown {
        println!("\n{passed} passed, {failed} failed");
    }
    Ok(())
}
