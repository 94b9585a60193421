//! `qrypt-fs-seed`: feeds the kernel's RNG from a qrypt-fs mount (see `qrypt_fs::seed`).
fn main() -> std::process::ExitCode {
    qrypt_fs::seed_main(std::env::args_os())
}
