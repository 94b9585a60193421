use std::process::ExitCode;

fn main() -> ExitCode {
    qrypt_fs::daemon::harden_process();
    qrypt_fs::daemon::tune_allocator();
    // Usage errors exit 2 with clap's message; --help and --version exit 0.
    let opts = match qrypt_fs::cli::parse(std::env::args_os()) {
        Ok(o) => o,
        Err(e) => e.exit(),
    };
    match qrypt_fs::app::main(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qrypt-fs: {}", qrypt_fs::app::message(&e));
            ExitCode::FAILURE
        }
    }
}
