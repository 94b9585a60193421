//! Reused buffers for response bodies and decoded entropy.
//!
//! Each response needs a body buffer (up to ~720 KiB of base64) and a decode buffer (up to
//! 512 KiB). Allocated per response, each was a fresh mapping (glibc's mmap threshold was
//! 128 KiB): every page faulted in and zeroed by the kernel, then unmapped, about a fifth of
//! the daemon's CPU at full speed. Kept and reused, their pages stay resident (a steady few
//! MiB) and cost nothing more.
//!
//! A [`Buffer`] is wiped when it drops, whether it goes back to its [`Buffers`] or is freed:
//! the bytes written (`..len`) are zeroed, and beyond them nothing was ever written since the
//! last wipe, so a buffer in the free list holds only zeros.
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use zeroize::Zeroize;

/// Capacity of a kept buffer: at least the largest body (~720 KiB). At 1 MiB each is a large
/// allocation, an extent of its own in jemalloc (see `main.rs`), never sharing pages with
/// small objects.
pub const CAPACITY: usize = 1 << 20;

/// Buffers kept for reuse, each of the same capacity.
#[derive(Debug)]
pub struct Buffers {
    free: Mutex<Vec<Vec<u8>>>,
    capacity: usize,
    keep: usize,
}

impl Buffers {
    /// Keeps up to `keep` free buffers of `capacity` bytes each ([`CAPACITY`] in the client).
    pub fn new(capacity: usize, keep: usize) -> Arc<Buffers> {
        Arc::new(Buffers {
            free: Mutex::new(Vec::new()),
            capacity,
            keep,
        })
    }

    /// An empty buffer of at least `len` bytes' capacity: a kept one if it fits, else a new
    /// one (which goes back to the free list on drop only if it has the pool's capacity).
    pub fn take(self: &Arc<Self>, len: usize) -> Buffer {
        let kept = (len <= self.capacity)
            .then(|| self.free.lock().unwrap_or_else(|p| p.into_inner()).pop())
            .flatten();
        let buf = kept.unwrap_or_else(|| Vec::with_capacity(len.max(self.capacity)));
        Buffer {
            buf,
            home: Some(self.clone()),
        }
    }

    /// Free buffers kept now.
    #[cfg(test)]
    pub fn kept(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn give_back(&self, buf: Vec<u8>) {
        if buf.capacity() != self.capacity {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.keep {
            free.push(buf);
        }
    }
}

/// A byte vector that is wiped on drop and, if it came from [`Buffers`], returned there.
#[derive(Debug, Default)]
pub struct Buffer {
    buf: Vec<u8>,
    home: Option<Arc<Buffers>>,
}

impl From<Vec<u8>> for Buffer {
    /// A buffer of no pool (tests, mock clients): only wiped on drop.
    fn from(buf: Vec<u8>) -> Buffer {
        Buffer { buf, home: None }
    }
}

impl Deref for Buffer {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.as_mut_slice().zeroize();
        buf.clear();
        match &self.home {
            Some(home) => home.give_back(buf),
            // Not kept: wipe the spare capacity too (its history is unknown), then free.
            None => buf.zeroize(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_reused_and_comes_back_wiped() {
        let pool = Buffers::new(4096, 2);
        let mut a = pool.take(100);
        assert!(a.capacity() >= 4096);
        a.extend_from_slice(&[0xAB; 3000]);
        let ptr = a.as_ptr();
        drop(a);
        assert_eq!(pool.kept(), 1);
        let b = pool.take(4096);
        assert_eq!(b.as_ptr(), ptr, "the kept buffer is reused");
        assert!(b.is_empty());
        // SAFETY: the capacity was allocated and every byte of it initialised (written by
        // extend_from_slice or zero from the wipe; never-written bytes are not read: 3000 <
        // capacity, and we read only the first 3000).
        let spare = unsafe { std::slice::from_raw_parts(b.as_ptr(), 3000) };
        assert!(spare.iter().all(|&x| x == 0), "wiped before reuse");
    }

    #[test]
    fn the_largest_body_fits_a_kept_buffer() {
        use crate::upstream::{MAX_KIB_PER_REQUEST, validate::body_limit};
        assert!(body_limit(MAX_KIB_PER_REQUEST) <= CAPACITY);
    }

    #[test]
    fn only_so_many_are_kept_and_odd_sizes_are_not() {
        let pool = Buffers::new(1024, 2);
        let bufs: Vec<Buffer> = (0..3).map(|_| pool.take(1024)).collect();
        drop(bufs);
        assert_eq!(pool.kept(), 2);
        drop(pool.take(5000)); // larger than the pool's buffers: allocated, then freed
        assert_eq!(pool.kept(), 2);
        let unpooled = Buffer::from(vec![1u8; 10]);
        assert_eq!(&unpooled[..], &[1u8; 10]);
    }
}
