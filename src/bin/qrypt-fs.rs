//! The `qrypt-fs` binary: parse the command line, run the mount, exit 1 with one sentence.
use std::process::ExitCode;

/// jemalloc, not glibc's malloc: the daemon allocates and frees response-sized buffers
/// (hyper's read buffers, up to ~400 KiB) among small long-lived objects, on several threads.
/// glibc's per-thread arenas kept the pages those small objects pinned each time a burst
/// stretched an arena: resident memory crept up 100-190 KiB a minute in 25- and 30-minute
/// soaks. jemalloc keeps small and large allocations apart (size-class slabs, separate
/// extents) and returns freed pages on its own; it crept 53-85 KiB a minute, and the rest was
/// read buffers the HTTP residue pinned, since fixed (BENCHMARKS.md, "Soak").
///
/// Without the `jemalloc` feature (scripts/try-it.sh's quick build) the system allocator
/// serves: a trial mount does not run long enough for the creep to matter.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation: no background thread until
/// [`start_purging`] (the process must have one thread when it forks its helpers and closes
/// its sandbox; the build's default starts one at once); freed pages go back to the kernel 1 s
/// after they were last used (`dirty_decay_ms`), at once after that (`muzzy_decay_ms:0`), by
/// one background thread ([`start_purging`]), so an idle daemon holds no freed memory and no
/// allocating thread pays for the purge. The symbol is jemalloc's `const char *malloc_conf`
/// under the crate's `_rjem_` prefix; a reference to the byte string is that pointer.
/// `background_thread:false`: the crate's feature turns the thread on at the first allocation
/// otherwise, before the fork and before the sandbox (which needs a single thread).
#[cfg(feature = "jemalloc")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 86] =
    b"background_thread:false,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Starts jemalloc's background thread, once the process is the one that serves (after the
/// fork of daemon mode: a thread started before it would not exist in the child). If it cannot
/// start, freed pages still go back, only when later allocations come by.
fn start_purging() {
    #[cfg(feature = "jemalloc")]
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
}

fn main() -> ExitCode {
    qrypt_fs::harden_process();
    qrypt_fs::on_serving(start_purging);
    // Usage errors exit 2 with clap's message; --help and --version exit 0.
    let opts = match qrypt_fs::parse_args(std::env::args_os()) {
        Ok(o) => o,
        Err(e) => e.exit(),
    };
    match qrypt_fs::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qrypt-fs: {}", qrypt_fs::error_message(&e));
            ExitCode::FAILURE
        }
    }
}
