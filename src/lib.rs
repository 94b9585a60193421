//! qrypt-fs: quantum entropy from Qrypt's Entropy-as-a-Service API behind a FUSE file.
//!
//! Layers, each readable on its own (see ARCHITECTURE.md): [`upstream`] (client trait, HTTP
//! client, validation), [`health`], [`pool`] (ring + waiting readers), [`prefetch`] (worker),
//! [`fs`] (the filesystem), [`fuse`] (fuser adapter, mount options), [`session`] (one mount's
//! threads and shutdown order), [`cli`]/[`app`] (wiring).
//! The API's contract is in the `qrypt-api` crate; its emulator is the `qrypt-emulator` crate.
pub mod app;
pub mod budget;
pub mod cli;
pub mod daemon;
pub mod first_contact;
pub mod fs;
pub mod fuse;
pub mod health;
pub mod log_limit;
pub mod logging;
pub mod pacing_wait;
pub mod pool;
pub mod prefetch;
pub mod preflight;
pub mod read_origin;
pub mod refusal_pacer;
pub mod requester;
pub mod session;
pub mod signals;
pub mod size;
pub mod status;
pub mod sys;
pub mod token;
pub mod unsupported;
pub mod upstream;
pub mod waitwatch;
pub mod watchdog;
