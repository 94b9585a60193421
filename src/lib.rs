//! qrypt-fs: quantum entropy from Qrypt's Entropy-as-a-Service API behind a FUSE file.
//!
//! Layers, each readable on its own (see ARCHITECTURE.md): [`upstream`] (client trait, HTTP
//! client, validation), [`health`], [`pool`] (ring + waiting readers), [`prefetch`] (worker),
//! [`fs`] (FUSE adapter), [`cli`]/[`app`] (wiring), and the [`emulator`] of the API.
pub mod app;
pub mod backoff;
pub mod budget;
pub mod cli;
pub mod daemon;
pub mod emulator;
pub mod fs;
pub mod health;
pub mod logging;
pub mod pacer;
pub mod pacing_wait;
pub mod pool;
pub mod prefetch;
pub mod size;
pub mod status;
pub mod token;
pub mod upstream;
pub mod watchdog;
