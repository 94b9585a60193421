//! Replay detection at any alignment, over at least 1 GiB of history.
//!
//! # Anchors
//! A Gear rolling hash `h = (h << 1) + G[byte]` runs over each response; after 64 bytes `h`
//! is a function of exactly the last 64 bytes (older terms are shifted out). A position is an
//! *anchor* when the top 8 bits of `h` are zero (one position in 256 on random data), and its
//! fingerprint is the seeded XXH3-64 of those 64 bytes. Anchors depend on content only, never
//! on the offset in a response, so a repeat of earlier content at any shift has the same
//! anchors with the same fingerprints. `G` and the XXH3 seed come from a per-process random
//! seed: the upstream cannot aim for or away from anchors.
//!
//! A rolling-hash anchor alone would leave gaps: a stretch of `L` bytes holds `L - 63`
//! positions and has none with probability `(255/256)^(L-63)`, 2.3% for 1 KiB. So the gaps are
//! winnowed (`Anchors::cover_gaps`): in every run of `SPAN` = 897 positions without an
//! anchor, the position with the smallest `h` is an anchor too. A repeat of
//! [`GUARANTEED_REPEAT`] = 960 bytes or more (a 1 KiB block, a response shifted by up to 64
//! bytes) is therefore found for certain, at any shift, when each copy lies within one
//! response (the first in an accepted response still in the history, or earlier in the same
//! response): anchors are found per response, so a stretch cut by a response boundary counts
//! as its two pieces. A shorter one (64 to 959 bytes), or a piece, is found with probability
//! `1 - (255/256)^(L-63)`. The gap
//! minima add 4.7% to the anchors (measured: 4,190,245 rolling-hash anchors and 4,385,831 in
//! all per GiB of random input; `anchor_density_matches_the_documented_figures` below). (Aligned 1 KiB repeats within the
//! last 64 MiB are also caught by the block fingerprints in `health`.)
//!
//! # Memory
//! The fingerprints of the last [`CAPACITY`] anchors, oldest evicted first: a ring of `u64` in
//! arrival order, plus an open-addressing hash set (linear probing, deletion by backward
//! shift) of the same values, doubled as it fills, up to 2^23 slots (load at most 0.54).
//! `CAPACITY` is 2^22 + 2^18 = 4,456,448: 1 GiB of full-entropy input has 4.39 million anchors
//! on average with a standard deviation near 2,200, so 1 GiB of history is kept unless the
//! count runs 30 standard deviations high. RAM: 8 bytes per ring entry and per slot,
//! 34 MiB + 64 MiB = 98 MiB at full history, reached as the history grows: both are
//! allocated once at full size, zeroed, and their pages become resident as they are used (the
//! ring as it fills, the set as the slots in use double from 2^16).
//!
//! # False alarms
//! A fresh anchor's fingerprint collides with one of at most `CAPACITY` stored values with
//! probability at most `CAPACITY * 2^-64 ≈ 2.4e-13`; there is one anchor per 245 bytes, so
//! that is `9.9e-16` false discards per good byte. Two anchors of one response colliding adds
//! at most `(n/245)^2 / 2 * 2^-64` per response of `n` bytes, `2.4e-19` per byte at 512 KiB.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Bytes a fingerprint covers: the reach of the Gear hash.
pub const WINDOW: usize = 64;
const _: () = assert!(WINDOW == 64, "the error text in health says 64");
/// An anchor has this many leading zero bits of the rolling hash: one position in 2^8.
pub const ANCHOR_BITS: u32 = 8;
/// A repeat this long or longer is always found (see `Anchors::cover_gaps`).
pub const GUARANTEED_REPEAT: usize = 960;
/// Positions (64-byte windows) in a [`GUARANTEED_REPEAT`]-byte stretch.
const SPAN: usize = GUARANTEED_REPEAT - WINDOW + 1;
/// Gap positions whose hash is below this (2.7% of them) are the only ones a window minimum
/// is looked for among, first (see `Anchors::cover_gaps`).
const CANDIDATE_BOUND: u64 = 1 << 59;
/// Anchors remembered: see the module documentation.
pub const CAPACITY: usize = (1 << 22) + (1 << 18);
const MIN_TABLE_BITS: u32 = 16;

/// One anchor of a response: its fingerprint (never 0, the empty slot) and where it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub fingerprint: u64,
    pub end: usize,
}

/// Finds the anchors of a response.
pub struct Anchors {
    gear: [u64; 256],
    seed: u64,
}

impl Anchors {
    pub fn new(seed: u64) -> Anchors {
        let mut gear = [0u64; 256];
        let mut s = seed;
        for g in gear.iter_mut() {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            *g = z ^ (z >> 31);
        }
        Anchors {
            gear,
            seed: seed.rotate_left(32) ^ 0x5851_F42D_4C95_7F2D,
        }
    }

    /// Appends the rolling-hash anchors of `bytes` to `out`, in order.
    ///
    /// The hash at a position depends on the 64 bytes before it only, so four quarters of
    /// `bytes` are hashed side by side (each warmed up on the 63 bytes before it): four
    /// independent chains instead of one dependent one.
    fn find_rolling(&self, bytes: &[u8], out: &mut Vec<Anchor>) {
        const LANES: usize = 4;
        let quarter = bytes.len() / LANES;
        if quarter < WINDOW {
            return self.find_serial(bytes, 0, bytes.len(), out);
        }
        let g = &self.gear;
        let mut h = [0u64; LANES];
        for (k, hk) in h.iter_mut().enumerate().skip(1) {
            for &b in &bytes[k * quarter - (WINDOW - 1)..k * quarter] {
                *hk = (*hk << 1).wrapping_add(g[usize::from(b)]);
            }
        }
        let mut found: [Vec<usize>; LANES] = Default::default();
        let q = |k: usize| &bytes[k * quarter..(k + 1) * quarter];
        let lanes = q(0).iter().zip(q(1)).zip(q(2)).zip(q(3));
        for (j, (((&b0, &b1), &b2), &b3)) in lanes.enumerate() {
            h[0] = (h[0] << 1).wrapping_add(g[usize::from(b0)]);
            h[1] = (h[1] << 1).wrapping_add(g[usize::from(b1)]);
            h[2] = (h[2] << 1).wrapping_add(g[usize::from(b2)]);
            h[3] = (h[3] << 1).wrapping_add(g[usize::from(b3)]);
            // One rare branch for all four: any top byte zero.
            if h.iter().map(|x| x >> (64 - ANCHOR_BITS)).product::<u64>() == 0 {
                for (k, f) in found.iter_mut().enumerate() {
                    if h[k] >> (64 - ANCHOR_BITS) == 0 {
                        f.push(k * quarter + j);
                    }
                }
            }
        }
        for i in found.iter().flatten().copied().filter(|&i| i + 1 >= WINDOW) {
            out.push(self.anchor(bytes, i));
        }
        self.find_serial(bytes, LANES * quarter, bytes.len(), out);
    }

    /// Appends the anchors of `bytes` to `out` in order: the rolling-hash anchors
    /// (`Anchors::find_rolling`) and, where they leave a gap a [`GUARANTEED_REPEAT`] could
    /// hide in, the gap's window minima (`Anchors::cover_gaps`).
    pub fn find(&self, bytes: &[u8], out: &mut Vec<Anchor>) {
        let base = out.len();
        self.find_rolling(bytes, out);
        let rolling = out.len();
        self.cover_gaps(bytes, base, out);
        if out.len() > rolling {
            out[base..].sort_unstable_by_key(|a| a.end);
        }
    }

    /// Winnowing (Schleimer, Wilkerson, Aiken 2003) inside the gaps between the anchors of
    /// `out[base..]`: in every run of [`SPAN`] consecutive positions with no anchor, the
    /// position of the smallest rolling hash (the last one, on a tie) is an anchor too. A
    /// stretch of [`GUARANTEED_REPEAT`] bytes holds exactly `SPAN` positions; if none is a
    /// rolling-hash anchor, that run's minimum depends on the stretch's bytes alone, so both
    /// copies of a repeated stretch share an anchor whatever their alignment.
    fn cover_gaps(&self, bytes: &[u8], base: usize, out: &mut Vec<Anchor>) {
        if bytes.len() < GUARANTEED_REPEAT {
            return;
        }
        // Positions are the index of a window's last byte: WINDOW - 1 ..= len - 1.
        let mut gaps = Vec::new();
        let mut next = WINDOW - 1;
        for a in &out[base..] {
            let at = a.end - 1;
            if at >= next + SPAN {
                gaps.push((next, at - 1));
            }
            next = at + 1;
        }
        if bytes.len() >= next + SPAN {
            gaps.push((next, bytes.len() - 1));
        }
        let mut deque = std::collections::VecDeque::with_capacity(64);
        let mut minima = Vec::new();
        for (first, last) in gaps {
            // Only hashes below the bound can be a window's minimum, as long as the window
            // holds one; with 24 such positions per window on average, one without any
            // (probability 2e-11) sends the gap to the exact pass over every position.
            if !self.gap_minima(bytes, first, last, CANDIDATE_BOUND, &mut deque, &mut minima) {
                self.gap_minima(bytes, first, last, u64::MAX, &mut deque, &mut minima);
            }
            out.extend(minima.iter().map(|&j| self.anchor(bytes, j)));
        }
    }

    /// The distinct window minima of the gap `first..=last` into `minima`, considering only
    /// hashes below `bound`; false if some window has none (then `minima` is incomplete).
    fn gap_minima(
        &self,
        bytes: &[u8],
        first: usize,
        last: usize,
        bound: u64,
        deque: &mut std::collections::VecDeque<(u64, usize)>,
        minima: &mut Vec<usize>,
    ) -> bool {
        deque.clear();
        minima.clear();
        let mut h = 0u64;
        for (i, &b) in bytes
            .iter()
            .enumerate()
            .take(last + 1)
            .skip(first + 1 - WINDOW)
        {
            h = (h << 1).wrapping_add(self.gear[usize::from(b)]);
            if i < first {
                continue;
            }
            if h <= bound {
                while deque.back().is_some_and(|&(v, _)| v >= h) {
                    deque.pop_back();
                }
                deque.push_back((h, i));
            }
            if i + 1 < first + SPAN {
                continue;
            }
            while deque.front().is_some_and(|&(_, j)| j + SPAN <= i) {
                deque.pop_front();
            }
            match deque.front() {
                Some(&(_, j)) => {
                    if minima.last() != Some(&j) {
                        minima.push(j);
                    }
                }
                None => return false,
            }
        }
        true
    }

    /// Anchors among positions `from..to`, hashing one byte after another.
    fn find_serial(&self, bytes: &[u8], from: usize, to: usize, out: &mut Vec<Anchor>) {
        let mut h = 0u64;
        for i in from.saturating_sub(WINDOW - 1)..to {
            h = (h << 1).wrapping_add(self.gear[usize::from(bytes[i])]);
            if i >= from && i + 1 >= WINDOW && h >> (64 - ANCHOR_BITS) == 0 {
                out.push(self.anchor(bytes, i));
            }
        }
    }

    fn anchor(&self, bytes: &[u8], i: usize) -> Anchor {
        let fp = xxh3_64_with_seed(&bytes[i + 1 - WINDOW..=i], self.seed);
        Anchor {
            fingerprint: fp.max(1),
            end: i + 1,
        }
    }
}

/// The fingerprints of the last [`CAPACITY`] anchors accepted.
pub struct ReplayMemory {
    ring: Vec<u64>,
    /// Next ring slot to write (the oldest entry once the ring is full).
    head: usize,
    capacity: usize,
    /// Allocated once at its largest size (zeroed, so its pages cost nothing until
    /// touched); only the first `slots` are in use. Never reallocated: no second table at
    /// peak.
    table: Vec<u64>,
    /// Slots in use: a power of two, doubled as the set fills, up to `table.len()`.
    slots: usize,
    stored: usize,
}

impl Default for ReplayMemory {
    fn default() -> Self {
        ReplayMemory::with_capacity(CAPACITY)
    }
}

impl ReplayMemory {
    pub fn with_capacity(capacity: usize) -> ReplayMemory {
        let capacity = capacity.max(1);
        ReplayMemory {
            // Reserved, not touched: its pages become resident as the history grows.
            ring: Vec::with_capacity(capacity),
            head: 0,
            capacity,
            // At most 0.56 full at `capacity`.
            table: vec![
                0;
                (capacity * 9 / 5)
                    .next_power_of_two()
                    .max(1 << MIN_TABLE_BITS)
            ],
            slots: 1 << MIN_TABLE_BITS,
            stored: 0,
        }
    }

    /// Anchors remembered now.
    pub fn len(&self) -> usize {
        self.stored
    }

    pub fn is_empty(&self) -> bool {
        self.stored == 0
    }

    fn home(&self, fp: u64) -> usize {
        fp as usize & (self.slots - 1)
    }

    pub fn contains(&self, fp: u64) -> bool {
        let mask = self.slots - 1;
        let mut i = self.home(fp);
        loop {
            match self.table[i] {
                0 => return false,
                v if v == fp => return true,
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// The first anchor that repeats remembered content or another anchor of the same list.
    pub fn first_replay(&self, anchors: &[Anchor]) -> Option<Anchor> {
        if let Some(a) = anchors.iter().find(|a| self.contains(a.fingerprint)) {
            return Some(*a);
        }
        let mut sorted: Vec<Anchor> = anchors.to_vec();
        sorted.sort_unstable_by_key(|a| (a.fingerprint, a.end));
        sorted
            .windows(2)
            .filter(|w| w[0].fingerprint == w[1].fingerprint)
            .map(|w| w[1])
            .min_by_key(|a| a.end)
    }

    /// Sizes the set for `n` more fingerprints at once, so a bulk load (the history read at
    /// start) rebuilds it once instead of at every doubling.
    pub fn reserve(&mut self, n: usize) {
        let want = ((self.stored + n.min(self.capacity)) * 2)
            .next_power_of_two()
            .min(self.table.len());
        if want > self.slots {
            // `grow` doubles: start from half.
            self.slots = want / 2;
            self.grow();
        }
    }

    /// Remembers fingerprints (none of them already remembered), evicting the oldest.
    pub fn remember(&mut self, fingerprints: impl IntoIterator<Item = u64>) {
        for fp in fingerprints {
            if self.ring.len() < self.capacity {
                self.ring.push(fp);
            } else {
                let old = std::mem::replace(&mut self.ring[self.head], fp);
                self.remove(old);
            }
            self.head = (self.head + 1) % self.capacity;
            if (self.stored + 1) * 2 > self.slots && self.slots < self.table.len() {
                // Rebuilt from the ring, which holds `fp` already.
                self.grow();
            } else {
                self.insert(fp);
            }
        }
    }

    fn insert(&mut self, fp: u64) {
        let mask = self.slots - 1;
        let mut i = self.home(fp);
        while self.table[i] != 0 {
            if self.table[i] == fp {
                return;
            }
            i = (i + 1) & mask;
        }
        self.table[i] = fp;
        self.stored += 1;
    }

    fn remove(&mut self, fp: u64) {
        let mask = self.slots - 1;
        let mut i = self.home(fp);
        loop {
            match self.table[i] {
                0 => return,
                v if v == fp => break,
                _ => i = (i + 1) & mask,
            }
        }
        // Backward shift: move later members of the cluster into the hole when their home
        // does not lie cyclically in (hole, j].
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let v = self.table[j];
            if v == 0 {
                break;
            }
            let k = self.home(v);
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if !stays {
                self.table[i] = v;
                i = j;
            }
        }
        self.table[i] = 0;
        self.stored -= 1;
    }

    /// Doubles the slots in use and inserts the ring's fingerprints (all of the set) again.
    fn grow(&mut self) {
        self.slots *= 2;
        self.table[..self.slots].fill(0);
        self.stored = 0;
        let ring = std::mem::take(&mut self.ring);
        for &fp in &ring {
            self.insert(fp);
        }
        self.ring = ring;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        getrandom::getrandom(&mut v).expect("os rng");
        v
    }

    fn fps(a: &[Anchor]) -> Vec<u64> {
        a.iter().map(|a| a.fingerprint).collect()
    }

    #[test]
    fn anchors_depend_on_content_not_offset() {
        let a = Anchors::new(7);
        let data = random(256 << 10);
        let mut whole = Vec::new();
        a.find_rolling(&data, &mut whole);
        // About one in 256 positions.
        assert!((800..1250).contains(&whole.len()), "{}", whole.len());
        for shift in [1usize, 2, 3, 63, 64, 100, 1000] {
            let mut part = Vec::new();
            a.find_rolling(&data[shift..], &mut part);
            let expect: Vec<u64> = whole
                .iter()
                .filter(|x| x.end >= shift + WINDOW)
                .map(|x| x.fingerprint)
                .collect();
            assert_eq!(fps(&part), expect, "shift {shift}");
        }
        // Another process (seed) picks other anchors.
        let mut other = Vec::new();
        Anchors::new(8).find_rolling(&data, &mut other);
        assert_ne!(fps(&other), fps(&whole));
    }

    #[test]
    fn side_by_side_hashing_finds_what_serial_hashing_finds() {
        let a = Anchors::new(3);
        let data = random(64 << 10);
        for len in [0usize, 1, 63, 64, 255, 256, 257, 1024, 4099, 64 << 10] {
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            a.find_rolling(&data[..len], &mut fast);
            a.find_serial(&data[..len], 0, len, &mut slow);
            assert_eq!(fast, slow, "len {len}");
        }
    }

    #[test]
    fn hash_set_survives_churn() {
        let mut m = ReplayMemory::with_capacity(5000);
        let mut all = Vec::new();
        let mut x = 1u64;
        for _ in 0..40_000 {
            // Clustered values stress backward-shift deletion.
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            all.push((x & 0xFFFF_0000_0000_3FFF).max(1));
        }
        all.sort_unstable();
        all.dedup();
        let mut seen = 0;
        for chunk in all.chunks(977) {
            m.remember(chunk.iter().copied());
            seen += chunk.len();
            let live = seen.min(5000);
            assert_eq!(m.len(), live);
            for (i, &fp) in all[..seen].iter().enumerate() {
                assert_eq!(m.contains(fp), i >= seen - live, "entry {i} of {seen}");
            }
        }
    }

    #[test]
    fn a_reserved_set_holds_the_same_as_a_grown_one() {
        let all: Vec<u64> = (1..=20_000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
            .collect();
        let mut grown = ReplayMemory::with_capacity(15_000);
        grown.remember(all.iter().copied());
        let mut reserved = ReplayMemory::with_capacity(15_000);
        reserved.remember(all[..10].iter().copied());
        reserved.reserve(all.len());
        assert!(reserved.slots >= 2 * 15_000);
        reserved.remember(all[10..].iter().copied());
        assert_eq!(reserved.len(), grown.len());
        for (i, &fp) in all.iter().enumerate() {
            assert_eq!(reserved.contains(fp), i >= 5_000, "{i}");
            assert_eq!(grown.contains(fp), i >= 5_000, "{i}");
        }
    }

    #[test]
    fn full_history_fits_the_stated_table() {
        let m = ReplayMemory::default();
        assert_eq!(m.table.len(), 1 << 23);
        assert!(CAPACITY as f64 / m.table.len() as f64 <= 0.54);
    }

    #[test]
    fn a_repeat_inside_one_response_is_found() {
        let a = Anchors::new(1);
        let m = ReplayMemory::default();
        let first = random(8 << 10);
        let data = [&first[..], &first[3..]].concat();
        let mut anchors = Vec::new();
        a.find(&data, &mut anchors);
        let hit = m.first_replay(&anchors).expect("repeat");
        assert!(hit.end > first.len());
    }

    /// A stretch of `GUARANTEED_REPEAT` bytes copied from one response into another, each
    /// at a random offset: found every time, including the ~3% of stretches that hold no
    /// rolling-hash anchor (with those alone, 1 KiB repeats escaped 2.3% of the time).
    #[test]
    fn every_repeat_of_the_guaranteed_length_is_found() {
        let a = Anchors::new(11);
        let mut without_rolling_anchor = 0;
        for trial in 0..3000 {
            let old = random(3 << 10);
            let mut new = random(3 << 10);
            let from = usize::from(old[0]) * 8 % (old.len() - GUARANTEED_REPEAT);
            let to = usize::from(new[1]) * 8 % (new.len() - GUARANTEED_REPEAT) + trial % 7;
            let to = to.min(new.len() - GUARANTEED_REPEAT);
            let stretch = &old[from..from + GUARANTEED_REPEAT];
            new[to..to + GUARANTEED_REPEAT].copy_from_slice(stretch);
            let mut rolling = Vec::new();
            a.find_rolling(stretch, &mut rolling);
            without_rolling_anchor += usize::from(rolling.is_empty());
            let mut m = ReplayMemory::with_capacity(1 << 12);
            let mut first = Vec::new();
            a.find(&old, &mut first);
            m.remember(first.iter().map(|x| x.fingerprint));
            let mut second = Vec::new();
            a.find(&new, &mut second);
            let hit = m.first_replay(&second).expect("a 960-byte repeat is found");
            assert!(
                hit.end > to && hit.end <= to + GUARANTEED_REPEAT,
                "trial {trial}"
            );
        }
        // The case the gap minima are for did occur (expected about 90 times).
        assert!(without_rolling_anchor >= 30, "{without_rolling_anchor}");
    }

    #[test]
    fn gap_minima_are_in_order_and_not_duplicated() {
        let a = Anchors::new(5);
        let data = random(512 << 10);
        let mut all = Vec::new();
        a.find(&data, &mut all);
        let mut rolling = Vec::new();
        a.find_rolling(&data, &mut rolling);
        assert!(all.windows(2).all(|w| w[0].end < w[1].end));
        assert!(rolling.iter().all(|r| all.contains(r)));
        // No run of SPAN positions is left without an anchor.
        let mut last = WINDOW - 1;
        for x in &all {
            assert!(x.end - 1 < last + SPAN, "gap before {}", x.end);
            last = x.end;
        }
        assert!(data.len() < last + SPAN);
        // The extra anchors: a few per cent (see the module documentation).
        let extra = all.len() - rolling.len();
        assert!(
            extra * 100 < rolling.len() * 8,
            "{extra} of {}",
            rolling.len()
        );
    }

    /// The anchor density the module documentation states (4,190,245 rolling-hash anchors and
    /// 4,385,831 in all per GiB), on 16 MiB of random input: within 2% (the sample's own
    /// spread is about 0.3%), and 1 GiB's worth fits in [`CAPACITY`].
    #[test]
    fn anchor_density_matches_the_documented_figures() {
        let a = Anchors::new(crate::sys::random_u64());
        let (mut rolling, mut all) = (0usize, 0usize);
        let responses = 32; // of 512 KiB: 16 MiB, 1/64 GiB
        for _ in 0..responses {
            let buf = random(512 << 10);
            let (mut r, mut x) = (Vec::new(), Vec::new());
            a.find_rolling(&buf, &mut r);
            a.find(&buf, &mut x);
            rolling += r.len();
            all += x.len();
        }
        let per_gib = |n: usize| n as f64 * 2048.0 / responses as f64;
        let near = |got: f64, want: f64| (got / want - 1.0).abs() < 0.02;
        assert!(
            near(per_gib(rolling), 4_190_245.0),
            "rolling {}",
            per_gib(rolling)
        );
        assert!(near(per_gib(all), 4_385_831.0), "all {}", per_gib(all));
        assert!(per_gib(all) < CAPACITY as f64, "{}", per_gib(all));
    }
}
