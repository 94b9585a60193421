//! The integration tests, in one binary: each module a topic, with the fixtures they share in
//! `common`. The modules that mount real FUSE filesystems need /dev/fuse and root (or
//! fusermount3): they are built only with `--features fuse-tests`, which scripts/test.sh and CI
//! turn on, so that plain `cargo test` runs the rest anywhere.

mod common;

#[cfg(feature = "fuse-tests")]
mod budget;
#[cfg(feature = "fuse-tests")]
mod config;
#[cfg(feature = "fuse-tests")]
mod device;
#[cfg(feature = "fuse-tests")]
mod ecosystem;
#[cfg(feature = "fuse-tests")]
mod faults;
#[cfg(feature = "fuse-tests")]
mod first_contact;
#[cfg(feature = "fuse-tests")]
mod fleet;
// The fleet's pacing on a virtual clock: no mount, runs anywhere.
mod fleet_model;
#[cfg(feature = "fuse-tests")]
mod heap_residue;
#[cfg(feature = "fuse-tests")]
mod hostile;
#[cfg(feature = "fuse-tests")]
mod hostile_upstream;
// Needs scripts/install-test-deps.sh's manifest validator; its start-up test mounts.
#[cfg(feature = "fuse-tests")]
mod kubernetes;
#[cfg(feature = "fuse-tests")]
mod memory;
#[cfg(feature = "fuse-tests")]
mod monitoring;
#[cfg(feature = "fuse-tests")]
mod mount;
#[cfg(feature = "fuse-tests")]
mod privsep;
#[cfg(feature = "fuse-tests")]
mod sandbox;
#[cfg(feature = "fuse-tests")]
mod seed;
#[cfg(feature = "fuse-tests")]
mod status_fields;
#[cfg(feature = "fuse-tests")]
mod tenants;
#[cfg(feature = "fuse-tests")]
mod token_file;
#[cfg(feature = "fuse-tests")]
mod try_it;
#[cfg(feature = "fuse-tests")]
mod waiters;

// The binary, its man page and completions: runs anywhere; only its one test against a live
// mount is gated, inside.
mod packaging;
