//! A fixed-capacity byte ring, locked in memory where allowed and wiped as it is consumed.
//!
//! The memory is locked as the ring fills, not up front: a chunk is locked (which also faults
//! it in) just before the writer first reaches it, so a 2 GiB buffer that the upstream never
//! fills costs one chunk, and `locked_bytes` grows with the highest fill so far. Every byte is
//! written only into a chunk already locked, so no entropy reaches swap.
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{Ordering, compiler_fence};

use nix::sys::mman::{MmapAdvise, madvise, mlock, munlock};
use zeroize::Zeroize;

/// Zeroes bytes that stay allocated (the ring, the scratch buffer). A plain `fill` is a memset
/// at memory speed; the stores cannot be elided because the memory is read again later, and
/// the fence keeps them from being reordered past the hand-out. (`zeroize` writes byte by byte
/// with volatile stores, which caps a 1 MiB read at a fraction of memory bandwidth.)
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    compiler_fence(Ordering::SeqCst);
}

/// Memory is locked in chunks of this size as the ring fills (each is one `mlock`, which
/// faults it in: about 0.1 ms).
pub const LOCK_CHUNK: usize = 1 << 20;

/// Locked at start, which tells whether locking works: more than the first request's 16 KiB.
const FIRST_LOCK: usize = 128 << 10;

/// A fixed-size buffer for entropy: allocated once and never moved (a `Box<[u8]>` cannot grow,
/// so no reallocation ever frees a copy unwiped), locked in memory where allowed, left out of
/// core dumps, wiped and unlocked when dropped.
pub struct LockedBuf {
    buf: Box<[u8]>,
    locked: bool,
}

impl LockedBuf {
    /// Allocates `len` zeroed bytes (at least one), tries to `mlock` them (so entropy never
    /// reaches swap) and excludes them from core dumps.
    pub fn new(len: usize) -> LockedBuf {
        let buf = vec![0u8; len.max(1)].into_boxed_slice();
        exclude_from_core_dumps(&buf);
        let locked = lock_range(&buf);
        LockedBuf { buf, locked }
    }

    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Bytes locked in memory (whole pages, as the kernel counts them in VmLck).
    pub fn locked_bytes(&self) -> usize {
        if !self.locked {
            return 0;
        }
        let (start, end) = pages_covering(self.buf.as_ptr(), self.buf.len());
        end - start
    }
}

impl std::ops::Deref for LockedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl std::ops::DerefMut for LockedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for LockedBuf {
    fn drop(&mut self) {
        self.buf.zeroize();
        if self.locked {
            // SAFETY: the range is our own live allocation; unlocking changes no byte.
            let _ = unsafe { munlock(NonNull::from(&mut *self.buf).cast(), self.buf.len()) };
        }
    }
}

pub struct Ring {
    buf: Box<[u8]>,
    head: usize,
    len: usize,
    /// `buf[..prepared]` has been reached: faulted in, and locked as far as `locked_until`.
    prepared: usize,
    /// `buf[..locked_until]` is locked; equal to `prepared` while locking works.
    locked_until: usize,
}

impl Ring {
    /// Allocates `capacity` bytes (untouched: the pages come as the ring fills), excludes them
    /// from core dumps, and locks the first chunk, which tells whether locking works.
    pub fn new(capacity: usize) -> Ring {
        // Large zeroed allocations are usually fresh anonymous mappings, but the allocator may
        // hand back memory that is already resident: give those pages back too, so nothing is
        // resident (or locked) before the ring reaches it.
        let buf = vec![0u8; capacity.max(1)].into_boxed_slice();
        exclude_from_core_dumps(&buf);
        release_pages(&buf);
        let mut ring = Ring {
            buf,
            head: 0,
            len: 0,
            prepared: 0,
            locked_until: 0,
        };
        // A first piece, enough for the first response, keeps start-up from faulting in a
        // whole chunk (measured in BENCHMARKS.md's startup figure).
        ring.lock_to(ring.capacity().min(FIRST_LOCK));
        ring
    }

    /// Locking has worked for every chunk reached so far.
    pub fn is_locked(&self) -> bool {
        self.locked_until == self.prepared
    }

    /// Locks (and so faults in) the chunks up to offset `end` that the writer has not reached
    /// yet. Returns false if locking failed now (later chunks are then faulted in on write,
    /// unlocked, and the ring says so).
    fn prepare(&mut self, end: usize) -> bool {
        if end <= self.prepared {
            return true;
        }
        self.lock_to(end.div_ceil(LOCK_CHUNK).saturating_mul(LOCK_CHUNK))
    }

    /// Locks `buf[prepared..end]` (`end` capped at the capacity) and moves `prepared` there.
    fn lock_to(&mut self, end: usize) -> bool {
        let end = end.min(self.capacity());
        if end <= self.prepared {
            return true;
        }
        let was_locked = self.is_locked();
        if was_locked && lock_range(&self.buf[self.prepared..end]) {
            self.locked_until = end;
        }
        self.prepared = end;
        !was_locked || self.is_locked()
    }

    /// Makes ready for `incoming` more bytes: locks the chunks they will land in, before they
    /// are written. Returns false the first time locking fails.
    pub fn prepare_for(&mut self, incoming: usize) -> bool {
        let cap = self.capacity();
        let tail = self.head + self.len;
        let end = tail + incoming.min(self.free());
        // Past the end the write wraps: the whole ring has then been reached.
        self.prepare(if end > cap { cap } else { end })
    }

    /// Bytes of the buffer locked in memory (whole pages), from the ring's own count.
    pub fn locked_bytes(&self) -> usize {
        if self.locked_until == 0 {
            return 0;
        }
        let (start, end) = pages_covering(self.buf.as_ptr(), self.locked_until);
        end - start
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn free(&self) -> usize {
        self.capacity() - self.len
    }

    /// The buffer's address and how far the writer has reached (for tests of residency).
    #[cfg(test)]
    pub fn raw_range(&self) -> (*const u8, usize) {
        (self.buf.as_ptr(), self.buf.len())
    }

    /// Appends as much of `data` as fits; returns how much that was.
    pub fn push(&mut self, data: &[u8]) -> usize {
        // Normally done already, outside the pool's lock (Pool::push).
        self.prepare_for(data.len());
        let n = data.len().min(self.free());
        let cap = self.capacity();
        let tail = (self.head + self.len) % cap;
        let first = n.min(cap - tail);
        self.buf[tail..tail + first].copy_from_slice(&data[..first]);
        self.buf[..n - first].copy_from_slice(&data[first..n]);
        self.len += n;
        n
    }

    /// Hands the oldest `n` bytes (n <= len) to `f` as one slice, then wipes and drops them.
    /// When they wrap around the end, they are gathered in `scratch` (at least `n` bytes long:
    /// it is never grown), whose used part is wiped too.
    pub fn consume<R>(&mut self, n: usize, scratch: &mut [u8], f: impl FnOnce(&[u8]) -> R) -> R {
        assert!(n <= self.len, "consume past end of ring");
        let cap = self.capacity();
        let first = n.min(cap - self.head);
        let result = if first == n {
            let r = f(&self.buf[self.head..self.head + n]);
            wipe(&mut self.buf[self.head..self.head + n]);
            r
        } else {
            assert!(n <= scratch.len(), "scratch smaller than a wrapped read");
            let gathered = &mut scratch[..n];
            gathered[..first].copy_from_slice(&self.buf[self.head..]);
            gathered[first..].copy_from_slice(&self.buf[..n - first]);
            let r = f(gathered);
            wipe(gathered);
            wipe(&mut self.buf[self.head..]);
            wipe(&mut self.buf[..n - first]);
            r
        };
        self.head = (self.head + n) % cap;
        self.len -= n;
        if self.len == 0 {
            // Keeps later reads contiguous (no scratch copy) as often as possible.
            self.head = 0;
        }
        result
    }

    /// Drops everything buffered, wiping it: only what the writer reached, so a large buffer
    /// never filled is not faulted in just to be zeroed.
    pub fn wipe(&mut self) {
        self.buf[..self.prepared].zeroize();
        self.head = 0;
        self.len = 0;
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.wipe();
        if self.locked_until > 0 {
            let locked = &mut self.buf[..self.locked_until];
            // SAFETY: the range is our own live allocation; unlocking changes no byte.
            let _ = unsafe { munlock(NonNull::from(&mut *locked).cast(), locked.len()) };
        }
    }
}

fn exclude_from_core_dumps(buf: &[u8]) {
    // Whatever happens with mlock. Needs page alignment: only the whole pages inside the
    // buffer; best effort.
    let page = crate::sys::page_size();
    let start = (buf.as_ptr() as usize).div_ceil(page) * page;
    let end = (buf.as_ptr() as usize + buf.len()) / page * page;
    if let Some(p) = NonNull::new(start as *mut c_void).filter(|_| end > start) {
        // SAFETY: [start, end) lies inside the ring's own live allocation; MADV_DONTDUMP
        // changes only what a core dump includes, never the memory's contents or mapping.
        let _ = unsafe { madvise(p, end - start, MmapAdvise::MADV_DONTDUMP) };
    }
}

/// Drops the whole pages inside `buf` from memory (best effort). Only for a buffer fresh from
/// `vec![0; n]`: all zeros, in private anonymous memory (the allocator's), where a dropped
/// page reads back as zeros.
fn release_pages(buf: &[u8]) {
    let page = crate::sys::page_size();
    let start = (buf.as_ptr() as usize).div_ceil(page) * page;
    let end = (buf.as_ptr() as usize + buf.len()) / page * page;
    if let Some(p) = NonNull::new(start as *mut c_void).filter(|_| end > start) {
        // SAFETY: [start, end) lies inside the ring's own live allocation, which holds only
        // zeros; MADV_DONTNEED on private anonymous memory makes those pages read back as
        // zeros when next touched, so no byte the program sees changes.
        let _ = unsafe { madvise(p, end - start, MmapAdvise::MADV_DONTNEED) };
    }
}

/// Locks `range` (part of the ring's buffer), which faults it in; false if not allowed.
fn lock_range(range: &[u8]) -> bool {
    if range.is_empty() {
        return true;
    }
    let ptr = NonNull::from(range).cast::<c_void>();
    // SAFETY: the range is part of a live allocation owned by the ring for its whole life;
    // locking changes no byte and no mapping (mlock rounds out to whole pages itself).
    unsafe { mlock(ptr, range.len()) }.is_ok()
}

/// The page-aligned range `[start, end)` of the pages that hold `[ptr, ptr + len)`.
pub fn pages_covering(ptr: *const u8, len: usize) -> (usize, usize) {
    let page = crate::sys::page_size();
    let start = ptr as usize / page * page;
    (start, (ptr as usize + len).div_ceil(page) * page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_wipes() {
        let mut r = Ring::new(8);
        let mut scratch = LockedBuf::new(8);
        assert_eq!(r.push(&[1, 2, 3, 4, 5, 6]), 6);
        assert_eq!(r.consume(4, &mut scratch, |b| b.to_vec()), vec![1, 2, 3, 4]);
        assert_eq!(r.push(&[7, 8, 9, 10, 11, 12]), 6);
        assert_eq!(r.push(&[13]), 0, "full");
        assert_eq!(
            r.consume(8, &mut scratch, |b| b.to_vec()),
            vec![5, 6, 7, 8, 9, 10, 11, 12]
        );
        assert!(r.is_empty());
        assert!(r.buf.iter().all(|&b| b == 0), "consumed bytes wiped");
        assert!(scratch.iter().all(|&b| b == 0));
    }

    /// A wrapped read is gathered in the scratch buffer in place: no reallocation (which would
    /// free a copy of the read's first part unwiped), and nothing left in it afterwards.
    #[test]
    fn a_wrapped_read_stays_in_place_in_scratch_and_is_wiped() {
        let mut r = Ring::new(8);
        let mut scratch = LockedBuf::new(8);
        let (ptr, len) = (scratch.as_ptr(), scratch.len());
        r.push(&[1, 2, 3, 4, 5, 6]);
        r.consume(5, &mut scratch, |_| ());
        r.push(&[7, 8, 9, 10, 11, 12]);
        let mut seen = (std::ptr::null(), Vec::new());
        r.consume(7, &mut scratch, |b| seen = (b.as_ptr(), b.to_vec()));
        assert_eq!(seen.1, vec![6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(seen.0, ptr, "delivered from scratch itself");
        assert_eq!(
            (scratch.as_ptr(), scratch.len()),
            (ptr, len),
            "scratch not moved"
        );
        assert!(
            scratch.iter().all(|&b| b == 0),
            "scratch wiped after delivery"
        );
        assert!(r.buf.iter().all(|&b| b == 0), "ring wiped");
    }
}
