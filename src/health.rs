//! Continuous health tests on upstream bytes before they enter the pool (NIST SP 800-90B §4.4)
//! plus a duplicate-block test. A response that fails any of them is discarded whole.
use std::collections::{HashSet, VecDeque};

use crate::upstream::BLOCK_LEN;

/// False-alarm probability per test window, as the standard recommends (2^-40).
const ALPHA_LOG2: f64 = -40.0;
/// Claimed min-entropy per byte sample: full entropy.
const H: f64 = 8.0;
/// Adaptive Proportion Test window for non-binary samples.
pub const APT_WINDOW: usize = 512;
/// The duplicate test remembers at least this many bytes' worth of blocks.
pub const DUP_MEMORY_BYTES: usize = 64 << 20;

/// Repetition Count Test cutoff: C = 1 + ceil(-log2(alpha) / H).
pub fn rct_cutoff() -> usize {
    1 + (-ALPHA_LOG2 / H).ceil() as usize
}

/// Adaptive Proportion Test cutoff at the standard's false-alarm rate.
pub fn apt_cutoff() -> usize {
    apt_cutoff_for(ALPHA_LOG2)
}

/// C = 1 + CRITBINOM(W, 2^-H, 1 - alpha): one more than the smallest k with P(X > k) <= alpha
/// for X ~ Binomial(W, 2^-H), computed from the upper tail to keep precision.
pub fn apt_cutoff_for(alpha_log2: f64) -> usize {
    let alpha = 2f64.powf(alpha_log2);
    let p = 2f64.powf(-H);
    let n = APT_WINDOW;
    let mut pmf = vec![0f64; n + 1];
    pmf[0] = (1.0 - p).powi(n as i32);
    for j in 0..n {
        pmf[j + 1] = pmf[j] * (n - j) as f64 / (j + 1) as f64 * p / (1.0 - p);
    }
    let mut tail = 0.0; // P(X > k)
    for k in (0..=n).rev() {
        if tail > alpha {
            return k + 2;
        }
        tail += pmf[k];
    }
    1
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthFailure {
    #[error("repetition count test: a byte repeated {0} times in a row")]
    Repetition(usize),
    #[error("adaptive proportion test: a byte appeared {0} times in a {APT_WINDOW}-byte window")]
    Proportion(usize),
    #[error("block {0} repeats a recently received block")]
    DuplicateBlock(usize),
}

pub struct HealthTests {
    /// Seed of the block fingerprints, random per process so no one can aim for collisions.
    seed: u64,
    rct_cutoff: usize,
    apt_cutoff: usize,
    seen: FingerprintSet,
    order: VecDeque<u128>,
    memory_blocks: usize,
    /// The last accepted byte and how many times in a row the accepted stream ends with it:
    /// the Repetition Count Test runs over the stream, so a run across responses counts.
    tail: Option<(u8, usize)>,
}

impl Default for HealthTests {
    fn default() -> Self {
        HealthTests::new()
    }
}

impl HealthTests {
    pub fn new() -> HealthTests {
        HealthTests {
            seed: rand::random(),
            rct_cutoff: rct_cutoff(),
            apt_cutoff: apt_cutoff(),
            seen: FingerprintSet::default(),
            order: VecDeque::new(),
            memory_blocks: DUP_MEMORY_BYTES / BLOCK_LEN,
            tail: None,
        }
    }

    /// Tests one response's bytes (a whole number of blocks). On success its blocks are
    /// remembered for the duplicate test; on failure nothing is remembered.
    pub fn check(&mut self, bytes: &[u8]) -> Result<(), HealthFailure> {
        self.run_across_the_boundary(bytes)?;
        self.repetition_count(bytes)?;
        self.adaptive_proportion(bytes)?;
        let digests: Vec<u128> = bytes
            .chunks(BLOCK_LEN)
            .map(|b| xxhash_rust::xxh3::xxh3_128_with_seed(b, self.seed))
            .collect();
        let mut fresh = FingerprintSet::with_capacity_and_hasher(digests.len(), Default::default());
        for (i, d) in digests.iter().enumerate() {
            if self.seen.contains(d) || !fresh.insert(*d) {
                return Err(HealthFailure::DuplicateBlock(i));
            }
        }
        for d in digests {
            self.seen.insert(d);
            self.order.push_back(d);
            if self.order.len() > self.memory_blocks {
                if let Some(old) = self.order.pop_front() {
                    self.seen.remove(&old);
                }
            }
        }
        self.remember_tail(bytes);
        Ok(())
    }

    fn run_across_the_boundary(&self, bytes: &[u8]) -> Result<(), HealthFailure> {
        let Some((byte, run)) = self.tail else {
            return Ok(());
        };
        let lead = bytes
            .iter()
            .take(self.rct_cutoff)
            .take_while(|&&b| b == byte)
            .count();
        if run + lead >= self.rct_cutoff {
            return Err(HealthFailure::Repetition(run + lead));
        }
        Ok(())
    }

    fn remember_tail(&mut self, bytes: &[u8]) {
        let Some(&last) = bytes.last() else {
            return;
        };
        let run = bytes.iter().rev().take_while(|&&b| b == last).count();
        self.tail = match self.tail {
            Some((byte, before)) if byte == last && run == bytes.len() => {
                Some((last, before + run))
            }
            _ => Some((last, run)),
        };
    }

    fn repetition_count(&self, bytes: &[u8]) -> Result<(), HealthFailure> {
        match screened_prefix(bytes, self.rct_cutoff.saturating_sub(1)) {
            // Runs wholly inside bytes[..done] are ruled out; count exactly from a little
            // before `done`, so a run reaching past it is seen whole.
            Some(done) => self.exact_repetition_count(
                &bytes[done.saturating_sub(self.rct_cutoff).min(bytes.len())..],
            ),
            None => self.exact_repetition_count(bytes),
        }
    }

    fn exact_repetition_count(&self, bytes: &[u8]) -> Result<(), HealthFailure> {
        let mut run = 0usize;
        let mut prev = None;
        for &b in bytes {
            if Some(b) == prev {
                run += 1;
                if run >= self.rct_cutoff {
                    return Err(HealthFailure::Repetition(run));
                }
            } else {
                prev = Some(b);
                run = 1;
            }
        }
        Ok(())
    }

    fn adaptive_proportion(&self, bytes: &[u8]) -> Result<(), HealthFailure> {
        for window in bytes.chunks(APT_WINDOW) {
            let count = count_byte(window, window[0]);
            if count >= self.apt_cutoff {
                return Err(HealthFailure::Proportion(count));
            }
        }
        Ok(())
    }
}

/// How often `needle` occurs in `window` (at most 255 * 32 bytes long). Counts in 32 byte-wide
/// lanes so the compiler vectorises the compare-and-add.
fn count_byte(window: &[u8], needle: u8) -> usize {
    let mut lanes = [0u8; 32];
    let mut chunks = window.chunks_exact(32);
    for chunk in chunks.by_ref() {
        for (lane, &b) in lanes.iter_mut().zip(chunk) {
            *lane += u8::from(b == needle);
        }
    }
    let tail = chunks.remainder().iter().filter(|&&b| b == needle).count();
    lanes.iter().map(|&n| usize::from(n)).sum::<usize>() + tail
}

/// Fingerprints are already keyed-random XXH3 values: hashing them again is wasted work.
#[derive(Default, Clone, Copy)]
struct Fingerprint(u64);

impl std::hash::Hasher for Fingerprint {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type FingerprintSet = HashSet<u128, std::hash::BuildHasherDefault<Fingerprint>>;

/// Screens for `pairs` equal neighbour pairs in a row (a run of `pairs + 1` equal bytes), 16
/// bytes per step with SSE2: a bit mask of `b[i] == b[i + 1]`, joined with the previous step's
/// so runs across steps are seen. Returns how far it screened with no hit, or `None` on a
/// hit (or where it cannot screen), leaving the exact count to decide.
#[cfg(target_arch = "x86_64")]
fn screened_prefix(bytes: &[u8], pairs: usize) -> Option<usize> {
    use std::arch::x86_64::{__m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8};
    if !(1..=16).contains(&pairs) {
        return None;
    }
    let mut previous = 0u32;
    let mut i = 0;
    while i + 17 <= bytes.len() {
        // SAFETY: SSE2 is part of x86_64; both unaligned 16-byte loads lie within
        // bytes[i..i + 17], which the loop condition keeps in bounds.
        let mask = unsafe {
            let p = bytes.as_ptr().add(i);
            let a = _mm_loadu_si128(p.cast::<__m128i>());
            let b = _mm_loadu_si128(p.add(1).cast::<__m128i>());
            _mm_movemask_epi8(_mm_cmpeq_epi8(a, b)) as u32
        };
        let joined = (mask << 16) | previous;
        let mut run = joined;
        for k in 1..pairs {
            run &= joined >> k;
        }
        if run != 0 {
            return None;
        }
        previous = mask;
        i += 16;
    }
    Some(i)
}

#[cfg(not(target_arch = "x86_64"))]
fn screened_prefix(_bytes: &[u8], _pairs: usize) -> Option<usize> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        getrandom::getrandom(&mut v).expect("os rng");
        v
    }

    #[test]
    fn cutoffs_match_the_standard() {
        // SP 800-90B: RCT C = 1 + ceil(40/8) = 6. Its Table 2 (alpha = 2^-20, H = 8, W = 512)
        // gives C = 13, which checks the formula; at alpha = 2^-40 it gives 19.
        assert_eq!(rct_cutoff(), 6);
        assert_eq!(apt_cutoff_for(-20.0), 13);
        assert_eq!(apt_cutoff(), 19);
    }

    #[test]
    fn count_byte_matches_a_plain_count() {
        let mut v = vec![0u8; 600];
        getrandom::getrandom(&mut v).expect("rng");
        for len in [0usize, 1, 31, 32, 33, 512, 600] {
            for needle in [v[0], 0, 255] {
                let w = &v[..len];
                assert_eq!(
                    count_byte(w, needle),
                    w.iter().filter(|&&b| b == needle).count()
                );
            }
        }
        assert_eq!(count_byte(&[7u8; 512], 7), 512);
    }

    #[test]
    fn screen_finds_runs_anywhere() {
        let h = HealthTests::new();
        for len in [6usize, 63, 64, 65, 66, 130, 1024, 4096] {
            for start in 0..=(len - 6) {
                let mut v: Vec<u8> = (0..len).map(|i| (i % 100) as u8).collect();
                v[start..start + 6].fill(0xAA);
                assert_eq!(
                    h.repetition_count(&v),
                    Err(HealthFailure::Repetition(6)),
                    "len {len} start {start}"
                );
                v[start + 5] = 0xAB;
                assert_eq!(
                    h.repetition_count(&v),
                    Ok(()),
                    "len {len} start {start}: 5 only"
                );
            }
        }
    }

    #[test]
    fn a_run_across_two_responses_is_one_run() {
        let mut h = HealthTests::new();
        let mut first = random(1024);
        first[1021..].fill(0x5A);
        first[1020] = 0x00;
        h.check(&first).expect("a run of 3 passes");
        let mut second = random(1024);
        second[..3].fill(0x5A);
        second[3] = 0x01;
        assert_eq!(h.check(&second), Err(HealthFailure::Repetition(6)));
        // A rejected response leaves the tail alone: two more 0x5A still make a run of 5.
        second[2] = 0x02;
        second[..2].fill(0x5A);
        h.check(&second).expect("3 + 2 = 5 passes");
    }

    #[test]
    fn passes_random_and_catches_faults() {
        let mut h = HealthTests::new();
        for _ in 0..64 {
            h.check(&random(64 * 1024)).expect("random data passes");
        }
        assert!(matches!(
            h.check(&vec![0u8; 1024]),
            Err(HealthFailure::Repetition(6))
        ));
        let mut biased = random(1024);
        for i in (0..512).step_by(20) {
            biased[i] = biased[0];
        }
        assert!(matches!(
            h.check(&biased),
            Err(HealthFailure::Proportion(_))
        ));
        let block = random(1024);
        h.check(&block).expect("fresh");
        let mut again = random(2048);
        again[1024..].copy_from_slice(&block);
        assert_eq!(h.check(&again), Err(HealthFailure::DuplicateBlock(1)));
        let twice = [block.clone(), block].concat();
        assert!(matches!(
            h.check(&twice),
            Err(HealthFailure::DuplicateBlock(_))
        ));
    }
}
