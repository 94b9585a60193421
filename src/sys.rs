//! Small facts about the system, asked once.
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

#[cfg(test)]
mod tests {
    #[test]
    fn page_size_is_a_power_of_two_of_at_least_4_kib() {
        let p = super::page_size();
        assert!(p.is_power_of_two() && p >= 4096, "{p}");
    }
}
