use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use qrypt_fs::cli::{Cli, Options, reject_token_argument};

/// "0.1.0 (commit abc1234)": build.rs asks git which commit this binary is built from.
const VERSION: &str = env!("QRYPT_FS_VERSION");

fn main() -> ExitCode {
    qrypt_fs::daemon::harden_process();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Err(e) = reject_token_argument(&args) {
        eprintln!("qrypt-fs: {e}");
        return ExitCode::from(2);
    }
    let parsed = Cli::command()
        .version(VERSION)
        .try_get_matches_from(&args)
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let opts = match Options::from_cli(cli) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("qrypt-fs: {e}");
            return ExitCode::from(2);
        }
    };
    match qrypt_fs::app::main(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qrypt-fs: {e}");
            ExitCode::FAILURE
        }
    }
}
