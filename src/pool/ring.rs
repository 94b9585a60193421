//! A fixed-capacity byte ring, locked in memory where allowed and wiped as it is consumed.
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{Ordering, compiler_fence};

use nix::sys::mman::{MmapAdvise, madvise, mlock, munlock};
use zeroize::Zeroize;

use crate::sys::page_size;

/// Zeroes bytes that stay allocated (the ring, the scratch buffer). A plain `fill` is a memset
/// at memory speed; the stores cannot be elided because the memory is read again later, and
/// the fence keeps them from being reordered past the hand-out. (`zeroize` writes byte by byte
/// with volatile stores, which caps a 1 MiB read at a fraction of memory bandwidth.)
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    compiler_fence(Ordering::SeqCst);
}

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
        let locked = lock_memory(&buf);
        LockedBuf { buf, locked }
    }

    pub fn is_locked(&self) -> bool {
        self.locked
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
    buf: LockedBuf,
    head: usize,
    len: usize,
}

impl Ring {
    /// Allocates `capacity` bytes as a [`LockedBuf`].
    pub fn new(capacity: usize) -> Ring {
        Ring {
            buf: LockedBuf::new(capacity),
            head: 0,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn free(&self) -> usize {
        self.capacity() - self.len
    }

    pub fn is_locked(&self) -> bool {
        self.buf.is_locked()
    }

    /// The buffer's address and length, for prefaulting it ([`crate::pool::Pool::prefault`]);
    /// the buffer never moves.
    pub fn raw_range(&self) -> (*const u8, usize) {
        (self.buf.as_ptr(), self.buf.len())
    }

    /// Appends as much of `data` as fits; returns how much that was.
    pub fn push(&mut self, data: &[u8]) -> usize {
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

    /// Drops everything buffered, wiping it.
    pub fn wipe(&mut self) {
        self.buf.zeroize();
        self.head = 0;
        self.len = 0;
    }
}

fn lock_memory(buf: &[u8]) -> bool {
    // Not in core dumps, whatever happens with mlock. Needs page alignment: only the whole
    // pages inside the buffer; best effort.
    let page = page_size();
    let start = (buf.as_ptr() as usize).div_ceil(page) * page;
    let end = (buf.as_ptr() as usize + buf.len()) / page * page;
    if let Some(p) = NonNull::new(start as *mut c_void).filter(|_| end > start) {
        // SAFETY: [start, end) lies inside the ring's own live allocation; MADV_DONTDUMP
        // changes only what a core dump includes, never the memory's contents or mapping.
        let _ = unsafe { madvise(p, end - start, MmapAdvise::MADV_DONTDUMP) };
    }
    let ptr = NonNull::from(buf).cast::<c_void>();
    // Each page is locked as it is first written, before any entropy is in it, so nothing
    // ever reaches swap; and start-up does not wait for the whole buffer to be faulted in
    // (a 1 GiB buffer would take a second). nix 0.31 has no mlock2.
    // SAFETY: the range is a live allocation owned by the ring for its whole life; locking
    // changes no byte and no mapping.
    if unsafe { libc::mlock2(ptr.as_ptr(), buf.len(), libc::MLOCK_ONFAULT) } == 0 {
        return true;
    }
    // Older kernels: lock it all now.
    // SAFETY: as above.
    unsafe { mlock(ptr, buf.len()) }.is_ok()
}

/// The page-aligned range `[start, end)` of the pages that hold `[ptr, ptr + len)`.
pub fn pages_covering(ptr: *const u8, len: usize) -> (usize, usize) {
    let page = page_size();
    let start = ptr as usize / page * page;
    (start, (ptr as usize + len).div_ceil(page) * page)
}

/// Faults in the whole range (`[ptr, ptr + len)`, a live ring buffer) without changing a byte,
/// so later pushes do not pay a page fault each; with `MLOCK_ONFAULT` that also locks it.
///
/// # Safety
/// The range must stay mapped for the duration of the call.
pub unsafe fn populate(ptr: *const u8, len: usize) {
    // madvise wants a page-aligned start; the allocator's pointer is not. The page holding the
    // start is mapped (the buffer begins in it), and populating changes no byte.
    let (start, end) = pages_covering(ptr, len);
    let Some(p) = NonNull::new(start as *mut c_void) else {
        return;
    };
    // SAFETY: per the caller, plus the above; MADV_POPULATE_WRITE only prepares page tables.
    if let Err(e) = unsafe { madvise(p, end - start, MmapAdvise::MADV_POPULATE_WRITE) } {
        // Linux < 5.14: the pages fault in as they are filled instead.
        tracing::debug!("prefault: {e}");
    }
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
