//! `qrypt-emulator`: a local stand-in for Qrypt's Entropy-as-a-Service API, for tests,
//! benchmarks and trying qrypt-fs without a token. NOT a source of quantum entropy.
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use qrypt_fs::emulator::{Emulator, EmulatorConfig, RateLimit};
use signal_hook::consts::{SIGINT, SIGTERM};

/// A local emulator of Qrypt's Entropy-as-a-Service API (GET /api/v1/quantum-entropy?size=N),
/// with switchable faults. Its bytes come from the OS CSPRNG: THIS IS NOT QUANTUM ENTROPY.
#[derive(Parser)]
#[command(
    name = "qrypt-emulator",
    version,
    after_help = "Admin API (same port): POST /_emulator/fault {\"fault\":\"status\",\"status\":503,\"times\":3}, GET /_emulator/stats, POST /_emulator/tokens {\"tokens\":[...]}, POST /_emulator/quota {\"bytes\":N}. See the module docs of qrypt_fs::emulator for every fault."
)]
struct Args {
    /// Address to listen on; port 0 picks a free one. Prints `listening on URL` when ready.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// An accepted bearer token (repeatable). Default: emulator-token.
    #[arg(long)]
    token: Vec<String>,
    /// Read accepted tokens from a file, one per line.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Per-token limit REQUESTS/SECONDS answered with 429 + Retry-After, e.g. 30/10.
    #[arg(long)]
    rate_limit: Option<String>,
    /// Bytes each token may fetch before 403 (K, M, G suffixes).
    #[arg(long, value_parser = qrypt_fs::size::parse_size)]
    quota: Option<u64>,
    /// Serve HTTPS with a freshly generated CA.
    #[arg(long)]
    tls: bool,
    /// Write the CA certificate (PEM) here, for --ca-cert.
    #[arg(long)]
    cert_out: Option<PathBuf>,
    /// Keep every block sent in memory (for tests).
    #[arg(long)]
    record: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qrypt-emulator: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let mut tokens = args.token;
    if let Some(p) = &args.token_file {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        tokens.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
    }
    if tokens.is_empty() {
        tokens.push("emulator-token".into());
    }
    let rate_limit = match args.rate_limit {
        Some(s) => {
            let r: qrypt_fs::pacer::RateLimit = s.parse()?;
            Some(RateLimit {
                requests: r.requests,
                window: r.window,
            })
        }
        None => None,
    };
    let signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(|e| e.to_string())?;
    let emu = Emulator::start(EmulatorConfig {
        bind: args.listen,
        tokens,
        rate_limit,
        quota_bytes: args.quota,
        tls: args.tls,
        record: args.record,
    })
    .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    if let (Some(path), Some(pem)) = (&args.cert_out, emu.ca_cert_pem()) {
        std::fs::write(path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    eprintln!("qrypt-emulator: NOT quantum entropy; a local stand-in for tests and demos");
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on {}", emu.url());
    let _ = out.flush();
    let mut signals = signals;
    let _ = signals.forever().next();
    drop(emu);
    std::thread::sleep(Duration::from_millis(10));
    Ok(())
}
