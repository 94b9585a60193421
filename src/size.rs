//! Byte sizes on the command line: `4096`, `64K`, `4M`, `1G`, `4MiB`. One parser for the whole
//! workspace (the emulator and the benchmark use it too), kept in `qrypt-api`.
pub use qrypt_api::parse_size;
