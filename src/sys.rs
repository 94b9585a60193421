//! Small things asked of the OS: the page size, a random number.
use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;

/// The system's page size (`sysconf(_SC_PAGESIZE)`): memory locking and prefaulting work in
/// pages, and it is the preferred I/O size (`st_blksize`) of every file. 4096 if sysconf
/// cannot say (it always can on Linux).
pub fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n.is_power_of_two())
            .unwrap_or(4096)
    })
}

/// A random u64 from the OS CSPRNG (getrandom(2)), for seeds and jitter, never for output.
/// Should getrandom fail (it cannot on Linux >= 3.17 once booted), std's per-process random
/// hash keys stand in rather than a fixed value or a panic.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    match getrandom::getrandom(&mut b) {
        Ok(()) => u64::from_ne_bytes(b),
        Err(_) => RandomState::new().hash_one(std::time::Instant::now()),
    }
}

/// True unless no thread `tid` exists: `kill(tid, 0)` gives `EPERM` for a live thread that is
/// not ours (or that `hidepid=` hides from `/proc`), `ESRCH` only for a gone one.
pub fn task_exists(tid: u32) -> bool {
    let Ok(tid) = i32::try_from(tid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(tid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// A uniform random number in [0, 1) from [`random_u64`] (its top 53 bits), for jitter.
pub fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn task_exists_tells_a_missing_thread_from_someone_elses() {
        assert!(super::task_exists(nix::unistd::gettid().as_raw() as u32));
        assert!(!super::task_exists(u32::MAX - 1));
        // pid 1 exists whoever we are (EPERM for a non-root caller still means it exists).
        assert!(super::task_exists(1));
    }

    #[test]
    fn page_size_is_a_power_of_two_of_at_least_4_kib() {
        let p = super::page_size();
        assert!(p.is_power_of_two() && p >= 4096, "{p}");
    }

    #[test]
    fn random_u64_differs_between_calls() {
        let a: Vec<u64> = (0..4).map(|_| super::random_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] != w[1]), "{a:?}");
        let u: Vec<f64> = (0..64).map(|_| super::random_unit()).collect();
        assert!(u.iter().all(|x| (0.0..1.0).contains(x)), "{u:?}");
        assert!(
            u.iter().any(|&x| x < 0.5) && u.iter().any(|&x| x >= 0.5),
            "{u:?}"
        );
    }
}
