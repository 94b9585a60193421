//! The process's life: from the command line to a running mount, and its orderly stop.
//!
//! [`cli`] parses flags and `-o` options; [`run`] checks what can be checked on the terminal
//! ([`check_local`]), goes to the background ([`background`]), sets up [`logging`] and the
//! HTTP client, and runs one [`mount`], whose start waits for the upstream's first answer
//! ([`check_upstream`]). [`seed`] is the other program, `qrypt-fs-seed`: a mount's bytes into
//! the kernel's RNG.
pub mod background;
pub mod check_local;
pub mod check_upstream;
pub mod cli;
pub mod fd_store;
pub mod logging;
pub mod mount;
pub mod run;
pub mod seed;
pub mod start_io;
