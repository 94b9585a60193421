//! Byte sizes on the command line: `4096`, `64K`, `4M`, `4.5M`, `1G`, `4MiB`. One parser for
//! the whole workspace (the emulator and the benchmark use it too), kept in `qrypt-api`.
pub use qrypt_api::{check_range, format_size, parse_size};
