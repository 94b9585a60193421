//! The subcommands, one measurement each (`cargo run --release --example bench -- --help`).
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use qrypt_api::parse_size;

#[derive(Parser)]
#[command(name = "bench", about = "Measurements for scripts/bench.sh")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
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
    /// Prints the CPU time (user + system, all threads, children included) each PID has used so
    /// far, in seconds, one line per PID.
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
pub enum Metric {
    /// bytes per second
    Bytes,
    /// read(2) calls per second
    Reads,
}
