use std::process::ExitCode;

use clap::Parser;
use qrypt_fs::cli::{Cli, Options, reject_token_argument};

fn main() -> ExitCode {
    qrypt_fs::daemon::harden_process();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Err(e) = reject_token_argument(&args) {
        eprintln!("qrypt-fs: {e}");
        return ExitCode::from(2);
    }
    let cli = match Cli::try_parse_from(&args) {
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
