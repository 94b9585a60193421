//! The two ioctls of `/dev/random` that feed the kernel's RNG (linux/random.h):
//! `RNDADDENTROPY` mixes bytes in and credits them, `RNDRESEEDCRNG` makes the CRNG reseed
//! from the pool now rather than at its next scheduled reseed. Both need `CAP_SYS_ADMIN`.
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use zeroize::Zeroizing;

/// The most bytes one call adds: `qrypt-fs-seed --bytes` stays within it.
pub const MAX_BYTES: usize = 512;

/// `struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }`: the header the
/// request code is computed from (two ints).
const HEADER: usize = 2 * std::mem::size_of::<libc::c_int>();

nix::ioctl_write_ptr_bad!(
    rnd_add_entropy,
    nix::request_code_write!(b'R', 0x03, HEADER),
    u8
);
nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);

/// Adds `bytes` to the pool of the `/dev/random` open at `fd`, credited as 8 bits each.
/// `EINVAL` without calling the kernel for an empty or oversized buffer.
pub fn add_entropy(fd: BorrowedFd<'_>, bytes: &[u8]) -> Result<(), Errno> {
    if bytes.is_empty() || bytes.len() > MAX_BYTES {
        return Err(Errno::EINVAL);
    }
    let n = bytes.len() as libc::c_int;
    // The request is a copy of the bytes behind the header: wiped when it drops.
    let mut req = Zeroizing::new(Vec::with_capacity(HEADER + bytes.len()));
    req.extend_from_slice(&(n * 8).to_ne_bytes());
    req.extend_from_slice(&n.to_ne_bytes());
    req.extend_from_slice(bytes);
    // SAFETY: `req` is a live buffer of the layout RNDADDENTROPY reads (two ints, then
    // `buf_size` bytes); the kernel only reads it, within its length.
    unsafe { rnd_add_entropy(fd.as_raw_fd(), req.as_ptr()) }.map(drop)
}

/// Makes the kernel's CRNG reseed from its pool now.
pub fn reseed_crng(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: RNDRESEEDCRNG takes no argument; on an fd that is not /dev/random the kernel
    // answers ENOTTY.
    unsafe { rnd_reseed_crng(fd.as_raw_fd()) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn refuses_bad_lengths_before_the_kernel() {
        let f = tempfile::tempfile().expect("tempfile");
        assert_eq!(add_entropy(f.as_fd(), &[]), Err(Errno::EINVAL));
        assert_eq!(
            add_entropy(f.as_fd(), &[0u8; MAX_BYTES + 1]),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn an_fd_that_is_not_dev_random_is_refused() {
        // A regular file knows neither ioctl: nothing reaches any RNG.
        let f = tempfile::tempfile().expect("tempfile");
        assert_eq!(add_entropy(f.as_fd(), &[7u8; 64]), Err(Errno::ENOTTY));
        assert_eq!(reseed_crng(f.as_fd()), Err(Errno::ENOTTY));
    }

    #[test]
    fn request_codes_match_linux() {
        // linux/random.h: _IOW('R', 0x03, int [2]) and _IO('R', 0x07).
        assert_eq!(nix::request_code_write!(b'R', 0x03, HEADER), 0x4008_5203);
        assert_eq!(nix::request_code_none!(b'R', 0x07), 0x5207);
    }
}
