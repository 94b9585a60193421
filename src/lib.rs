//! qrypt-fs: quantum entropy from Qrypt's Entropy-as-a-Service API behind a FUSE file.
pub mod emulator;
