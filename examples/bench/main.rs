//! The measuring half of `scripts/bench.sh` (which starts and stops the emulators and mounts).
//!
//! Each subcommand does one measurement and prints plain numbers, or records one row of the
//! final table; `cargo run --release --example bench -- --help` lists them. Reads are plain
//! `read(2)` calls into one buffer, as `dd bs=SIZE of=/dev/null` does, timed with the monotonic
//! clock around the read loop only (opening the file is not timed).
//!
//! Modules: [`cli`] (the subcommands), [`read`] (the timed read loop), [`status`] (a mount's
//! `/status`), [`trials`] (interleaved trials, medians), [`procs`] (RSS, CPU time),
//! [`http`] (the emulator, through reqwest), [`startup`] (time to first bytes), [`table`].
use std::fs::File;
use std::process::ExitCode;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;

mod cli;
mod http;
mod procs;
mod read;
mod startup;
mod status;
mod table;
mod trials;

use cli::{Cli, Cmd, Metric};
use procs::{clock_ticks_per_sec, cpu_ticks, rss};
use read::read_loop;
use status::{buffer_level, read_status, wait_full};
use trials::{TrialsSpec, ensure_buffered, median, read_trials, trials};

const MIB: f64 = 1024.0 * 1024.0;

fn main() -> ExitCode {
    match run(Cli::parse().cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) type Res<T> = Result<T, String>;

pub(crate) fn ctx<T, E: std::fmt::Display>(
    r: Result<T, E>,
    what: impl std::fmt::Display,
) -> Res<T> {
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
            let stats = http::emulator_stats(&url)?;
            println!("total_requests {}", stats.total_requests);
            for (code, n) in stats.by_status {
                println!("status_{code} {n}");
            }
        }
        Cmd::Startup {
            qrypt_fs,
            null_fs,
            endpoint,
            token,
            dir,
            rounds,
        } => startup::startup(&qrypt_fs, &null_fs, &endpoint, &token, &dir, rounds)?,
        Cmd::Row {
            results,
            section,
            figure,
            value,
            unit,
            baseline,
            baseline_note,
            goal,
        } => table::row(
            &results,
            &section,
            &figure,
            value,
            &unit,
            baseline,
            &baseline_note,
            &goal,
        )?,
        Cmd::Table { results, markdown } => table::table(&results, markdown)?,
    }
    Ok(())
}
