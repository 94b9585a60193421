//! qrypt-fs: quantum entropy from Qrypt's Entropy-as-a-Service API behind a FUSE file.
//!
//! One folder per layer, from the network up (ARCHITECTURE.md draws them): `upstream`
//! fetches and validates; `refill` keeps the pool topped up (health tests, pacing), steered by
//! `state_machine` and `budget`; `pool` holds the bytes and the waiting reads; `read_guard`
//! decides whether a READ may be served; `fs` is the filesystem and its fuser adapter;
//! `status` renders what everything reports; `session` is the process's life, from the
//! command line to an orderly stop. The API's contract is the `qrypt-api` crate; its emulator
//! the `qrypt-emulator` crate.
//!
//! The public surface is what the binary, the tests and the benchmarks use.
mod budget;
mod fs;
mod pool;
mod privsep;
mod read_guard;
mod refill;
// Public: the processes' entry points and the sandbox tests apply it.
pub mod sandbox;
mod session;
mod state_machine;
mod status;
mod sys;
mod tenant;
mod upstream;

pub use fs::fuse_adapter::favour_this_thread;
pub use fs::mount_options::{FuseOptions, fuse_config};
pub use fs::{RANDOM_FILE_SIZE, RANDOM_OPEN_FLAGS, page_size};
/// The client's pacing under the service's rate limit, public for the fleet model that checks
/// it on a virtual clock (`tests/integration/fleet_model.rs`).
pub mod pacing {
    pub use crate::refill::pacer::adaptive::AdaptiveRate;
    pub use crate::refill::pacer::pacing::{Answer, Pacing, Ticket};
    pub use crate::refill::pacer::{Pacer, RateLimit, Wait};
}
pub use refill::FIRST_REQUEST_KIB;
/// The health tests, public for their cost benchmark (`examples/health_cost.rs`).
pub use refill::health;
pub use session::background::{harden_process, on_serving};
pub use session::cli::parse as parse_args;
pub use session::run::{main as run, message as error_message};
pub use session::seed::main as seed_main;
pub use sys::random_u64;
