//! qrypt-fs: quantum entropy from Qrypt's Entropy-as-a-Service API behind a FUSE file.
//!
//! Layers, each readable on its own (see ARCHITECTURE.md): [`upstream`] (client trait, HTTP
//! client, validation), [`health`], [`pool`] (ring + waiting readers), [`prefetch`] (worker),
//! [`fs`] (the filesystem), [`fuse`] (fuser adapter, mount options), [`session`] (one mount's
//! threads and shutdown order), [`cli`]/[`app`] (wiring), and the [`emulator`] of the API.
pub mod app;
pub mod backoff;
pub mod cli;
pub mod daemon;
pub mod emulator;
pub mod fs;
pub mod fuse;
pub mod health;
pub mod logging;
pub mod pacer;
pub mod pool;
pub mod prefetch;
pub mod session;
pub mod status;
pub mod token;
pub mod upstream;
pub mod watchdog;

/// Byte sizes on the command line (compiled as part of the CLI definition, see `cli::args`).
pub use cli::args::size;
