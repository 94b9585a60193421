//! `qrypt-emulator`: a local stand-in for Qrypt's Entropy-as-a-Service API, for tests,
//! benchmarks and trying qrypt-fs without a token. NOT a source of quantum entropy.
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use qrypt_emulator::{Emulator, EmulatorConfig, RateLimit};
use signal_hook::consts::{SIGINT, SIGTERM};

/// A local stand-in for Qrypt's Entropy-as-a-Service API. NOT a source of quantum entropy.
///
/// For tests, benchmarks and demos only. It serves
/// GET /api/v1/quantum-entropy?size=N like the real service, with bytes from this machine's
/// CSPRNG, plus switchable faults. Never use its output as real key material from Qrypt.
///
/// On start it prints one line, `listening on URL`, to stdout; logs go to stderr
/// (RUST_LOG=debug for every request). It runs until SIGINT or SIGTERM.
#[derive(Parser)]
#[command(
    name = "qrypt-emulator",
    version,
    after_long_help = "\
Admin API on the same port (no auth; see the docs of the qrypt_emulator crate):
  POST /_emulator/fault       {\"fault\":\"status\",\"status\":503,\"times\":3}
                              {\"fault\":\"delay\",\"ms\":2000}  {\"fault\":\"none\"}
                              names: status too_many_requests too_many_requests_text
                              malformed_json wrong_types
                              size_mismatch short_block non_base64 all_zero_blocks
                              repeat_block progression shifted_replay
                              old_block (age_mib, shift) old_window (age_kib, shift)
                              wrong_content_type
                              oversized_body delay drop_connection reset_mid_body
                              truncated_body slow_drip
  GET  /_emulator/stats
  POST /_emulator/tokens      {\"tokens\":[\"a\",\"b\"]}
  POST /_emulator/quota       {\"bytes\":1048576} or {\"bytes\":null}
  POST /_emulator/rate_limit  {\"requests\":30,\"window_secs\":10} or {\"requests\":null}
  POST /_emulator/reset_records"
)]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// An accepted bearer token (repeatable). Default: emulator-token. Visible to other local
    /// users on the command line: fine for a test tool, or use --token-file.
    #[arg(long, value_name = "TOKEN")]
    token: Vec<String>,
    /// Read accepted tokens from a file, one per line.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Per-token limit: at most R requests in any W seconds, then 429 with Retry-After
    /// (e.g. 30/10, Qrypt's documented limit). Off by default.
    #[arg(long, value_name = "R/W")]
    rate_limit: Option<RateLimit>,
    /// Bytes each token may fetch before it gets 403 (suffixes K, M, G). Unlimited by default.
    #[arg(long, value_name = "BYTES", value_parser = qrypt_api::parse_size)]
    quota: Option<u64>,
    /// Serve HTTPS with a freshly generated throwaway CA and a certificate for localhost,
    /// 127.0.0.1 and ::1.
    #[arg(long)]
    tls: bool,
    /// With --tls: write the CA certificate (PEM) here, for clients to trust.
    #[arg(long, value_name = "PATH", requires = "tls")]
    cert_out: Option<PathBuf>,
    /// Keep a copy of every block sent in memory (grows without bound; for tests).
    #[arg(long)]
    record: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qrypt-emulator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut tokens = args.token;
    if let Some(p) = &args.token_file {
        let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
        tokens.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
        if tokens.is_empty() {
            bail!("{}: no token in the file", p.display());
        }
    }
    if tokens.is_empty() {
        tokens.push("emulator-token".into());
    }
    if !args.listen.ip().is_loopback() {
        tracing::warn!(
            "listening on {}, not loopback: the admin API has no authentication",
            args.listen
        );
    }
    // Registered before serving, so a signal right after the ready line is not missed.
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("signal handlers")?;
    let emu = Emulator::start(EmulatorConfig {
        bind: args.listen,
        tokens,
        rate_limit: args.rate_limit,
        quota_bytes: args.quota,
        tls: args.tls,
        record: args.record,
    })
    .with_context(|| format!("cannot serve on {}", args.listen))?;
    if let (Some(path), Some(pem)) = (&args.cert_out, emu.ca_cert_pem()) {
        std::fs::write(path, pem).with_context(|| path.display().to_string())?;
    }
    // Said on every start, so INFO: a warning that every clean run logs teaches operators to
    // ignore warnings (and try-it.sh reports any WARN as a problem).
    tracing::info!("NOT quantum entropy: a local stand-in for tests and demos");
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", emu.url())
        .and_then(|()| out.flush())
        .context("stdout")?;
    drop(out);
    if let Some(sig) = signals.forever().next() {
        tracing::info!("signal {sig}: stopping");
    }
    drop(emu);
    Ok(())
}
