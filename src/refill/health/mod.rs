//! Health tests on upstream bytes before they enter the pool. A response that fails any of
//! them is discarded whole, and nothing of it is remembered.
//!
//! - SP 800-90B §4.4's continuous tests: Repetition Count and Adaptive Proportion.
//! - A most-common-value min-entropy estimate of each response, on the bytes and on their
//!   first differences ([`mcv`]): bias anywhere, progressions, equal steps.
//! - Exact repeats of a 1 KiB block among the last 64 MiB (aligned), and repeats of content at
//!   any shift among the last 1 GiB, certain for 960 bytes or more within one response
//!   ([`replay`]).
//!
//! # False-alarm budget, per good (full-entropy) byte
//! | test | rate |
//! |---|---|
//! | RCT, cutoff 6: five equal successors | 2^-40 = 9.09e-13 |
//! | APT, 2^-40 per 512-byte window | 1.8e-15 |
//! | MCV, bytes and differences, per 1 KiB and per response, 2^-50 each | < 3.5e-18 |
//! | replay, 64-bit fingerprints (see [`replay`]) | < 2.9e-15 |
//! | aligned block repeat, 128-bit fingerprints | < 1e-30 |
//! | total | < 9.15e-13, under one false discard per 10^12 good bytes |
use std::collections::{HashSet, VecDeque};

use crate::upstream::BLOCK_LEN;

pub mod journal;
pub mod mcv;
pub mod replay;

/// False-alarm probability per test window, as the standard recommends (2^-40).
const ALPHA_LOG2: f64 = -40.0;
/// Claimed min-entropy per byte sample: full entropy.
const H: f64 = 8.0;
/// Adaptive Proportion Test window for non-binary samples.
pub const APT_WINDOW: usize = 512;
/// The duplicate test remembers at least this many bytes' worth of blocks.
pub const DUP_MEMORY_BYTES: usize = 64 << 20;
/// Upstream bytes per replay anchor on full-entropy data (2^30 / 4,385,831 measured, see
/// [`replay`]): how `/status` turns the anchors remembered into bytes of history.
pub const BYTES_PER_ANCHOR: u64 = 245;

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
    #[error(
        "most common value: {} 0x{:02x} is {} of {} {} (min-entropy estimate {:.2} bits)",
        match .0.sequence { mcv::Sequence::Bytes => "byte", mcv::Sequence::Differences => "difference" },
        .0.value, .0.count, .0.samples,
        .0.window.map_or("in the response".to_owned(), |w| format!("in KiB {w}")),
        .0.min_entropy()
    )]
    LowEntropy(mcv::LowEntropy),
    #[error("the 64 bytes before byte {0} repeat earlier content (at some shift)")]
    Replay(usize),
}

/// The tests that look at one response alone: run where the response arrives (on the
/// runtime's workers, side by side), before [`HealthTests::commit`] compares it with the
/// history on the prefetcher. Most of the cost is here (the estimate, the hashing), so the
/// refill is not held to one core.
#[derive(Clone)]
pub struct Precheck {
    /// Seed of the block fingerprints, random per process so no one can aim for collisions.
    seed: u64,
    rct_cutoff: usize,
    apt_cutoff: usize,
    anchors: std::sync::Arc<replay::Anchors>,
}

/// What [`Precheck::run`] found in a response that passed it.
pub struct Prechecked {
    digests: Vec<u128>,
    anchors: Vec<replay::Anchor>,
}

impl Precheck {
    fn new(block_seed: u64, anchor_seed: u64) -> Precheck {
        Precheck {
            seed: block_seed,
            rct_cutoff: rct_cutoff(),
            apt_cutoff: apt_cutoff(),
            anchors: std::sync::Arc::new(replay::Anchors::new(anchor_seed)),
        }
    }

    /// The tests within one response (Repetition Count inside it, Adaptive Proportion, the
    /// estimate), and its block fingerprints and anchors for the history.
    pub fn run(&self, bytes: &[u8]) -> Result<Prechecked, HealthFailure> {
        self.repetition_count(bytes)?;
        self.adaptive_proportion(bytes)?;
        mcv::CUTOFFS
            .with_borrow_mut(|c| mcv::check(bytes, c))
            .map_err(HealthFailure::LowEntropy)?;
        let digests = bytes
            .chunks(BLOCK_LEN)
            .map(|b| xxhash_rust::xxh3::xxh3_128_with_seed(b, self.seed))
            .collect();
        let mut anchors = Vec::with_capacity(bytes.len() / 200);
        self.anchors.find(bytes, &mut anchors);
        Ok(Prechecked { digests, anchors })
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

pub struct HealthTests {
    precheck: Precheck,
    seen: FingerprintSet,
    order: VecDeque<u128>,
    memory_blocks: usize,
    /// The last accepted byte and how many times in a row the accepted stream ends with it:
    /// the Repetition Count Test runs over the stream, so a run across responses counts.
    tail: Option<(u8, usize)>,
    replays: replay::ReplayMemory,
    /// Where the replay history is kept across restarts, if it is.
    journal: Option<journal::Journal>,
}

impl Default for HealthTests {
    fn default() -> Self {
        HealthTests::new()
    }
}

impl HealthTests {
    /// Tests whose history lives in this process only, under a key of its own.
    pub fn new() -> HealthTests {
        HealthTests::with_seeds(crate::sys::random_u64(), crate::sys::random_u64(), None)
    }

    /// Tests whose replay history is loaded from and written to `journal`, under the
    /// installation's `key`: the first [`HealthTests::commit`] waits for the history to load,
    /// so no answer is compared with a history still partly unknown.
    pub fn persistent(journal: journal::Journal, key: &journal::Key) -> HealthTests {
        HealthTests::with_seeds(key.block_seed(), key.anchor_seed(), Some(journal))
    }

    fn with_seeds(
        block_seed: u64,
        anchor_seed: u64,
        journal: Option<journal::Journal>,
    ) -> HealthTests {
        HealthTests {
            precheck: Precheck::new(block_seed, anchor_seed),
            seen: FingerprintSet::default(),
            order: VecDeque::new(),
            memory_blocks: DUP_MEMORY_BYTES / BLOCK_LEN,
            tail: None,
            replays: replay::ReplayMemory::default(),
            journal,
        }
    }

    /// Waits for the journal's history, once, and remembers it.
    pub fn wait_for_history(&mut self) {
        if let Some(history) = self.journal.as_mut().and_then(|j| j.take_loaded()) {
            self.replays.reserve(history.len());
            self.replays.remember(history.iter().copied());
        }
    }

    /// Upstream bytes the replay history covers now, estimated from its anchors.
    pub fn history_bytes(&self) -> u64 {
        self.replays.len() as u64 * BYTES_PER_ANCHOR
    }

    /// True while the replay history is being written to `--state-dir`.
    pub fn history_saved(&self) -> bool {
        self.journal.as_ref().is_some_and(journal::Journal::saving)
    }

    /// For tests: remembers fingerprints as if their content had been accepted, to fill the
    /// replay memory without hashing a GiB.
    #[cfg(test)]
    pub(crate) fn remember_anchors(&mut self, fingerprints: impl IntoIterator<Item = u64>) {
        self.replays.remember(fingerprints);
    }

    /// The part of the tests that can run elsewhere, side by side (see [`Precheck`]).
    pub fn precheck(&self) -> Precheck {
        self.precheck.clone()
    }

    /// Tests one response's bytes (a whole number of blocks). On success its blocks are
    /// remembered for the duplicate test; on failure nothing is remembered.
    pub fn check(&mut self, bytes: &[u8]) -> Result<(), HealthFailure> {
        let pre = self.precheck.run(bytes);
        self.commit(bytes, pre)
    }

    /// Finishes the tests of a response that [`Precheck::run`] saw: a run across the boundary
    /// with the accepted stream, then repeats of the history.
    pub fn commit(
        &mut self,
        bytes: &[u8],
        pre: Result<Prechecked, HealthFailure>,
    ) -> Result<(), HealthFailure> {
        self.run_across_the_boundary(bytes)?;
        let Prechecked { digests, anchors } = pre?;
        let mut fresh = FingerprintSet::with_capacity_and_hasher(digests.len(), Default::default());
        for (i, d) in digests.iter().enumerate() {
            if self.seen.contains(d) || !fresh.insert(*d) {
                return Err(HealthFailure::DuplicateBlock(i));
            }
        }
        self.wait_for_history();
        if let Some(a) = self.replays.first_replay(&anchors) {
            return Err(HealthFailure::Replay(a.end));
        }
        self.replays.remember(anchors.iter().map(|a| a.fingerprint));
        if let Some(j) = &self.journal {
            j.append(anchors.iter().map(|a| a.fingerprint));
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
            .take(self.precheck.rct_cutoff)
            .take_while(|&&b| b == byte)
            .count();
        if run + lead >= self.precheck.rct_cutoff {
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
                    h.precheck.repetition_count(&v),
                    Err(HealthFailure::Repetition(6)),
                    "len {len} start {start}"
                );
                v[start + 5] = 0xAB;
                assert_eq!(
                    h.precheck.repetition_count(&v),
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

    /// Responses of `kib` KiB from a fresh random source, for the tests below.
    fn responses(count: usize, kib: usize) -> Vec<Vec<u8>> {
        (0..count).map(|_| random(kib * BLOCK_LEN)).collect()
    }

    #[test]
    fn many_mib_of_random_data_pass() {
        let mut h = HealthTests::new();
        for kib in [1usize, 16, 512] {
            for r in responses(8 * 1024 / kib, kib) {
                h.check(&r).expect("random data passes");
            }
        }
    }

    #[test]
    fn blocks_of_arithmetic_progressions_fail_at_any_step_and_offset() {
        // 4 MiB of such blocks went through before: bytes all equally common, no runs.
        let mut h = HealthTests::new();
        let seeds = random(96);
        for (i, pair) in seeds.chunks(2).enumerate() {
            let (step, offset) = (pair[0] | 1, pair[1]);
            let kib = [1usize, 16, 512][i % 3];
            let v: Vec<u8> = (0..kib * BLOCK_LEN)
                .map(|j| {
                    let block = (j / BLOCK_LEN) as u8;
                    offset
                        .wrapping_add(block.wrapping_mul(7))
                        .wrapping_add(step.wrapping_mul(j as u8))
                })
                .collect();
            assert!(
                matches!(h.check(&v), Err(HealthFailure::LowEntropy(_))),
                "step {step} offset {offset}"
            );
        }
        // Even steps too (step 0 is a run, caught by the RCT).
        for step in (2..=254u8).step_by(2) {
            let v: Vec<u8> = (0..BLOCK_LEN).map(|j| step.wrapping_mul(j as u8)).collect();
            assert!(h.check(&v).is_err(), "step {step}");
        }
        h.check(&random(16 * BLOCK_LEN))
            .expect("good data still passes");
    }

    #[test]
    fn biased_streams_fail_even_when_window_starts_look_fair() {
        let mut h = HealthTests::new();
        for percent in [83usize, 60, 40, 20, 10, 5, 3] {
            for kib in [1usize, 16, 512] {
                if kib == 1 && percent < 10 {
                    // 1 KiB can only tell 3.1% and more apart from chance, and the mask below
                    // leaves 4/5 of a nominal 5%: about 41 of 1024 against a cutoff of 32, two
                    // standard deviations, so that case would fail a run in forty.
                    continue;
                }
                let mut v = random(kib * BLOCK_LEN);
                let coin = random(v.len());
                for (i, (b, &c)) in v.iter_mut().zip(&coin).enumerate() {
                    // Never the first byte of an APT window, never six in a row: only the
                    // proportion gives the stream away.
                    if i % APT_WINDOW != 0 && i % 5 != 4 && (c as usize * 100) < percent * 256 {
                        *b = 0x42;
                    } else if *b == 0x42 {
                        *b = 0x43;
                    }
                }
                match h.check(&v) {
                    Err(HealthFailure::LowEntropy(e)) => assert_eq!(e.value, 0x42),
                    // High proportions also trip the (weaker) APT through other starts.
                    Err(HealthFailure::Proportion(_)) if percent >= 40 => {}
                    other => panic!("{percent}% in {kib} KiB: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn shifted_repeats_of_earlier_responses_fail() {
        let mut h = HealthTests::new();
        let mut earlier = random(64 * BLOCK_LEN);
        h.check(&earlier).expect("fresh");
        for shift in [1usize, 2, 3, 17, 255, 1000, 1023, 1025, 4097] {
            // The next response is the previous one shifted by `shift` bytes, with fresh bytes
            // at the end (every block of it is new as a whole block).
            let mut next = earlier[shift..].to_vec();
            next.extend_from_slice(&random(shift));
            assert!(
                matches!(h.check(&next), Err(HealthFailure::Replay(_))),
                "shift {shift}"
            );
            // A replay inside a larger fresh response, not aligned to anything.
            let mut mixed = random(32 * BLOCK_LEN);
            mixed[5000 + shift..5000 + shift + 8192].copy_from_slice(&earlier[shift..shift + 8192]);
            assert!(matches!(h.check(&mixed), Err(HealthFailure::Replay(_))));
            earlier = random(64 * BLOCK_LEN);
            h.check(&earlier).expect("fresh");
        }
    }

    #[test]
    fn repeats_are_found_up_to_a_gib_later_and_memory_stays_bounded() {
        let mut h = HealthTests::new();
        let first = random(16 * BLOCK_LEN);
        h.check(&first).expect("fresh");
        // Stand-ins for the anchors of 1 GiB of later traffic (4 Mi anchors, one per 256
        // bytes), injected rather than hashed to keep the test fast.
        let mut x: u64 = crate::sys::random_u64();
        // Generated as consumed: a 30 MB vector freed here would raise malloc's mmap
        // threshold for the whole test process (other tests expect fresh pages).
        let mut filler = |h: &mut HealthTests, n: usize| {
            let mut out = Vec::with_capacity(4096);
            for _ in 0..n {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                out.push(x.max(1));
                if out.len() == 4096 {
                    h.remember_anchors(out.drain(..));
                }
            }
            h.remember_anchors(out);
        };
        let per_gib = (1usize << 30) >> replay::ANCHOR_BITS;
        for (after, anchors) in [
            ("80 MiB", per_gib * 80 / 1024),
            ("1 GiB", per_gib - per_gib * 80 / 1024),
        ] {
            filler(&mut h, anchors);
            for shift in [1usize, 333] {
                let replay = [&first[shift..], &random(shift)[..]].concat();
                assert!(
                    matches!(h.check(&replay), Err(HealthFailure::Replay(_))),
                    "shift {shift}, {after} later"
                );
            }
        }
        // Past the capacity the oldest anchors go: the memory is bounded.
        filler(&mut h, replay::CAPACITY);
        assert_eq!(h.replays.len(), replay::CAPACITY);
        let replay = [&first[1..], &random(1)[..]].concat();
        h.check(&replay).expect("forgotten after more than 1 GiB");
    }
}
