//! Most-common-value min-entropy estimate (NIST SP 800-90B §6.3.1) of one response, on its
//! bytes and on their first differences `b[i+1] - b[i]` (mod 256).
//!
//! The bytes catch bias (a stream that is 83% one value, wherever the values sit); the
//! differences catch structure with uniform-looking bytes: an arithmetic progression of any
//! step and offset has one difference value only, and so does any run of equal steps. Both
//! are estimated over each 1 KiB window (local structure, e.g. 256 bytes of progression in an
//! otherwise good block) and over the whole response (weak bias, e.g. 1% extra of one value).
//!
//! # Cutoff and false-alarm rate
//! For full-entropy bytes the counts of each of the 256 values are Binomial(n, 2^-8). So are
//! the counts of differences: `(b[0], d[0], .., d[n-2])` is a bijection of
//! `(b[0], .., b[n-1])`, hence uniform, so the differences are independent and uniform too.
//! A sequence of `n` samples fails when its most common value occurs `c(n)` times or more,
//! where `c(n)` is the least `c` with `256 * P[Binomial(n, 2^-8) >= c] <= 2^-50` (union bound
//! over the 256 values). A response of `n >= 1024` bytes runs 2 tests per 1 KiB window and 2
//! over the whole, so it is falsely rejected with probability at most
//! `(2n/1024 + 2) * 2^-50`: per byte at most `2^-58 ≈ 3.5e-18`, far below the budget of
//! 10^-12 per byte. Cutoffs: c(1 KiB) = 32 (3.1%, where 4 are expected), c(16 KiB) = 145
//! (0.89%, 64 expected), c(512 KiB) = 2450 (0.47%, 2048 expected). In SP 800-90B's terms the
//! cutoff is a floor on the MCV estimate `-log2(count / n)`.

/// log2 of the false-alarm probability allowed for each of the two tests on one response.
pub const ALPHA_LOG2: f64 = -50.0;

/// Which sequence failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    Bytes,
    Differences,
}

/// A failed estimate: `count` of `samples` were the value `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowEntropy {
    pub sequence: Sequence,
    pub value: u8,
    pub count: usize,
    pub samples: usize,
    /// The 1 KiB window (by index) that failed, or `None` for the whole response.
    pub window: Option<usize>,
}

impl LowEntropy {
    /// The MCV estimate of min-entropy per sample, bits.
    pub fn min_entropy(&self) -> f64 {
        -(self.count as f64 / self.samples as f64).log2()
    }
}

/// Least `c` with `256 * P[Binomial(n, 1/256) >= c] <= 2^alpha_log2`. Sums the upper tail
/// from the top in log space, so it stays exact for n up to 512 Ki.
pub fn cutoff_for(n: usize, alpha_log2: f64) -> usize {
    if n == 0 {
        return 1;
    }
    let p: f64 = 1.0 / 256.0;
    let ln_alpha = alpha_log2 * std::f64::consts::LN_2 - 256f64.ln();
    // ln P[X = k] from ln P[X = mode], then the ratio P[k+1]/P[k] upward.
    let mode = ((n + 1) as f64 * p).floor() as usize;
    let ln_choose: f64 = (1..=mode)
        .map(|j| ((n - mode + j) as f64 / j as f64).ln())
        .sum();
    let mut ln_pmf = ln_choose + mode as f64 * p.ln() + (n - mode) as f64 * (1.0 - p).ln();
    let mut terms = Vec::new();
    let mut k = mode;
    // Past the point where the pmf is < 2^-200 the rest of the tail is negligible.
    while k <= n && ln_pmf > -140.0 {
        terms.push(ln_pmf);
        ln_pmf += ((n - k) as f64 / (k + 1) as f64 * p / (1.0 - p)).ln();
        k += 1;
    }
    // tail(c) = sum of terms[c - mode..]; find the least c whose tail is within alpha.
    let mut tail = 0f64;
    for (i, &t) in terms.iter().enumerate().rev() {
        let with = tail + t.exp();
        if with.ln() > ln_alpha {
            return mode + i + 1;
        }
        tail = with;
    }
    mode.max(1)
}

/// Cutoffs per response length, computed once per length seen (the prefetcher asks for a
/// handful of sizes).
#[derive(Default)]
pub struct Cutoffs(std::collections::HashMap<usize, usize>);

impl Cutoffs {
    pub fn get(&mut self, n: usize) -> usize {
        *self.0.entry(n).or_insert_with(|| cutoff_for(n, ALPHA_LOG2))
    }
}

thread_local! {
    /// Each thread's cutoffs: the estimate runs on whichever worker received the response.
    pub static CUTOFFS: std::cell::RefCell<Cutoffs> = std::cell::RefCell::default();
}

/// Samples per window of the local estimate: one block of the API.
pub const WINDOW: usize = 1024;

/// Histograms of the bytes and of their differences, in one pass, estimated per 1 KiB window
/// (local structure: a 256-byte progression is lost in 512 KiB, not in 1 KiB) and over the
/// whole response (weak bias). Two interleaved tables per histogram, so consecutive equal
/// values do not wait on each other's increment.
pub fn check(bytes: &[u8], cutoffs: &mut Cutoffs) -> Result<(), LowEntropy> {
    if bytes.len() < 2 {
        return Ok(());
    }
    let mut values = [0u32; 256];
    let mut diffs = [0u32; 256];
    let mut prev = bytes[0];
    for (w, window) in bytes.chunks(WINDOW).enumerate() {
        let mut v2 = [[0u16; 256]; 2];
        let mut d2 = [[0u16; 256]; 2];
        let mut chunks = window.chunks_exact(2);
        for c in chunks.by_ref() {
            v2[0][usize::from(c[0])] += 1;
            v2[1][usize::from(c[1])] += 1;
            d2[0][usize::from(c[0].wrapping_sub(prev))] += 1;
            d2[1][usize::from(c[1].wrapping_sub(c[0]))] += 1;
            prev = c[1];
        }
        for &b in chunks.remainder() {
            v2[0][usize::from(b)] += 1;
            d2[0][usize::from(b.wrapping_sub(prev))] += 1;
            prev = b;
        }
        if w == 0 {
            // The first "difference" was b[0] - b[0] = 0: take it back out.
            d2[0][0] -= 1;
        }
        let v = merge(&v2, &mut values);
        let d = merge(&d2, &mut diffs);
        // Each window's differences include the one from the byte before it.
        let n_diffs = window.len() - usize::from(w == 0);
        if window.len() == WINDOW {
            judge(v, window.len(), Sequence::Bytes, Some(w), cutoffs)?;
            judge(d, n_diffs, Sequence::Differences, Some(w), cutoffs)?;
        }
    }
    let n = bytes.len();
    let most = |t: &[u32; 256]| {
        let (value, count) = (0..256)
            .map(|v| (v, t[v]))
            .max_by_key(|&(_, c)| c)
            .unwrap_or((0, 0));
        (value as u8, count as usize)
    };
    judge(most(&values), n, Sequence::Bytes, None, cutoffs)?;
    judge(most(&diffs), n - 1, Sequence::Differences, None, cutoffs)
}

/// Adds a window's two tables into `total`; returns the window's most common value and
/// its count. Written as plain loops over arrays so they vectorise; the value is searched
/// for only when the count is high.
fn merge(tables: &[[u16; 256]; 2], total: &mut [u32; 256]) -> (u8, usize) {
    let mut sum = [0u16; 256];
    for (i, s) in sum.iter_mut().enumerate() {
        *s = tables[0][i] + tables[1][i];
    }
    for (t, &s) in total.iter_mut().zip(&sum) {
        *t += u32::from(s);
    }
    let max = sum.iter().copied().max().unwrap_or(0);
    let value = sum.iter().position(|&s| s == max).unwrap_or(0);
    (value as u8, usize::from(max))
}

fn judge(
    (value, count): (u8, usize),
    samples: usize,
    sequence: Sequence,
    window: Option<usize>,
    cutoffs: &mut Cutoffs,
) -> Result<(), LowEntropy> {
    if count >= cutoffs.get(samples) {
        return Err(LowEntropy {
            sequence,
            value,
            count,
            samples,
            window,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        getrandom::getrandom(&mut v).expect("os rng");
        v
    }

    /// P[Binomial(n, 1/256) >= c] by direct summation, for checking the fast path.
    fn tail(n: usize, c: usize) -> f64 {
        let p: f64 = 1.0 / 256.0;
        let ln_pmf = |k: usize| {
            let ln_choose: f64 = (1..=k).map(|j| ((n - k + j) as f64 / j as f64).ln()).sum();
            ln_choose + k as f64 * p.ln() + (n - k) as f64 * (1.0 - p).ln()
        };
        (c..=n.min(c + 400)).map(|k| ln_pmf(k).exp()).sum()
    }

    #[test]
    fn cutoffs_are_the_least_within_alpha() {
        for n in [1023usize, 1024, 4095, 16 << 10, 64 << 10, 512 << 10] {
            let c = cutoff_for(n, ALPHA_LOG2);
            let alpha = 2f64.powf(ALPHA_LOG2);
            assert!(256.0 * tail(n, c) <= alpha, "n {n} c {c}");
            assert!(256.0 * tail(n, c - 1) > alpha, "n {n} c {c} not least");
        }
        assert_eq!(cutoff_for(1024, ALPHA_LOG2), 32);
        assert_eq!(cutoff_for(16 << 10, ALPHA_LOG2), 145);
        assert_eq!(cutoff_for(512 << 10, ALPHA_LOG2), 2450);
    }

    #[test]
    fn random_data_passes() {
        let mut cutoffs = Cutoffs::default();
        for n in [2usize, 3, 1024, 4096, 16 << 10, 512 << 10] {
            for _ in 0..8 {
                assert_eq!(check(&random(n), &mut cutoffs), Ok(()), "n {n}");
            }
        }
    }

    #[test]
    fn histograms_are_exact() {
        // Counted against a plain loop through the reported count.
        let mut cutoffs = Cutoffs::default();
        let mut v = random(3000);
        v[..40].fill(9);
        let err = check(&v, &mut cutoffs).expect_err("40 nines");
        let plain = v[..WINDOW].iter().filter(|&&b| b == 9).count();
        assert_eq!(
            (err.sequence, err.value, err.count, err.window),
            (Sequence::Bytes, 9, plain, Some(0))
        );
        // A progression in the second window: its differences there include the step from
        // the first window's last byte, which is random.
        let mut steps = random(3000);
        for (i, b) in steps[WINDOW..2 * WINDOW].iter_mut().enumerate() {
            *b = (i * 3 + 1) as u8;
        }
        let err = check(&steps, &mut cutoffs).expect_err("progression");
        let plain = steps[WINDOW - 1..2 * WINDOW]
            .windows(2)
            .filter(|w| w[1].wrapping_sub(w[0]) == 3)
            .count();
        assert_eq!(
            (err.sequence, err.value, err.count, err.samples, err.window),
            (Sequence::Differences, 3, plain, WINDOW, Some(1))
        );
        // Weak bias spread over the whole response: no window fails, the response does.
        let mut weak = random(512 << 10);
        for b in weak.iter_mut().step_by(100) {
            *b = 0x77;
        }
        let err = check(&weak, &mut cutoffs).expect_err("1% extra");
        assert_eq!((err.value, err.window), (0x77, None));
        let plain = weak.iter().filter(|&&b| b == 0x77).count();
        assert_eq!((err.count, err.samples), (plain, 512 << 10));
    }

    #[test]
    fn local_structure_in_a_large_response_fails() {
        let mut cutoffs = Cutoffs::default();
        for start in [0usize, 1000, 300_000, (512 << 10) - 256] {
            let mut v = random(512 << 10);
            for (i, b) in v[start..start + 256].iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(37).wrapping_add(5);
            }
            let err = check(&v, &mut cutoffs).expect_err("256-byte progression");
            assert_eq!(err.sequence, Sequence::Differences, "at {start}");
            assert!(err.window.is_some());
        }
    }

    #[test]
    fn progressions_of_any_step_and_offset_fail() {
        let mut cutoffs = Cutoffs::default();
        for step in 0..=255u8 {
            for offset in [0u8, 1, 77, 255] {
                for n in [1024usize, 64 << 10] {
                    let v: Vec<u8> = (0..n)
                        .map(|i| offset.wrapping_add(step.wrapping_mul(i as u8)))
                        .collect();
                    assert!(
                        check(&v, &mut cutoffs).is_err(),
                        "step {step} offset {offset}"
                    );
                }
            }
        }
        // Progressions restarting every block (as an emulated bad source sends them).
        let v: Vec<u8> = (0..64 << 10)
            .map(|i: usize| ((i / 1024) as u8).wrapping_add(((i % 1024) as u8).wrapping_mul(5)))
            .collect();
        assert!(check(&v, &mut cutoffs).is_err());
    }

    #[test]
    fn biased_streams_fail_at_many_proportions() {
        let mut cutoffs = Cutoffs::default();
        // The proportion is spread at random positions, so window starts do not help.
        for percent in [83usize, 50, 20, 10, 5, 2, 1] {
            for n in [16usize << 10, 512 << 10] {
                let mut v = random(n);
                let r = random(n);
                for (b, &x) in v.iter_mut().zip(&r) {
                    if (x as usize * 100) < percent * 256 {
                        *b = 0xA5;
                    }
                }
                // Even 1% extra on one value (1.4% in all) is above every cutoff from 16 KiB.
                let e = check(&v, &mut cutoffs).expect_err("biased");
                assert_eq!((e.sequence, e.value), (Sequence::Bytes, 0xA5), "{percent}%");
                assert!(e.min_entropy() < 7.0);
            }
        }
        // 83% in a single 1 KiB response.
        let mut v = random(1024);
        v.iter_mut().take(850).for_each(|b| *b = 0x11);
        assert!(check(&v, &mut cutoffs).is_err());
    }
}
