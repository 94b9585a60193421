//! Most-common-value min-entropy estimate (NIST SP 800-90B §6.3.1) of one response, on its
//! bytes and on their first differences `b[i+1] - b[i]` (mod 256).
//!
//! The bytes catch bias (a stream that is 83% one value, wherever the values sit); the
//! differences catch structure with uniform-looking bytes: an arithmetic progression of any
//! step and offset has one difference value only, and so does any run of equal steps.
//!
//! # Cutoff and false-alarm rate
//! For full-entropy bytes the counts of each of the 256 values are Binomial(n, 2^-8). So are
//! the counts of differences, over n - 1 samples: `(b[0], d[0], .., d[n-2])` is a bijection of
//! `(b[0], .., b[n-1])`, hence uniform, so the differences are independent and uniform too.
//! A response is rejected when the most common value (of either) occurs `c(n)` times or more,
//! where `c(n)` is the least `c` with `256 * P[Binomial(n, 2^-8) >= c] <= 2^-50` (union bound
//! over the 256 values). Both tests together falsely reject a good response with probability
//! at most `2^-49`; per byte of the smallest response (1 KiB) that is `2^-59 ≈ 1.7e-18`, far
//! below the budget of 10^-12 per byte. Examples: c(1 KiB) = 32 (3.1%, where 4 are
//! expected), c(16 KiB) = 145 (0.89%, 64 expected), c(512 KiB) = 2450 (0.47%, 2048 expected). In SP 800-90B's terms the
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

/// Histograms of the bytes and of their differences, in one pass. Four interleaved tables
/// per histogram so consecutive equal values do not wait on each other's increment.
pub fn check(bytes: &[u8], cutoffs: &mut Cutoffs) -> Result<(), LowEntropy> {
    if bytes.len() < 2 {
        return Ok(());
    }
    let mut values = [[0u32; 256]; 4];
    let mut diffs = [[0u32; 256]; 4];
    let mut chunks = bytes.chunks_exact(4);
    let mut prev = bytes[0];
    for c in chunks.by_ref() {
        values[0][usize::from(c[0])] += 1;
        values[1][usize::from(c[1])] += 1;
        values[2][usize::from(c[2])] += 1;
        values[3][usize::from(c[3])] += 1;
        diffs[0][usize::from(c[0].wrapping_sub(prev))] += 1;
        diffs[1][usize::from(c[1].wrapping_sub(c[0]))] += 1;
        diffs[2][usize::from(c[2].wrapping_sub(c[1]))] += 1;
        diffs[3][usize::from(c[3].wrapping_sub(c[2]))] += 1;
        prev = c[3];
    }
    for &b in chunks.remainder() {
        values[0][usize::from(b)] += 1;
        diffs[0][usize::from(b.wrapping_sub(prev))] += 1;
        prev = b;
    }
    // The first "difference" was b[0] - b[0] = 0: take it back out.
    diffs[0][0] -= 1;
    let n = bytes.len();
    most_common(&values, n, Sequence::Bytes, cutoffs.get(n))?;
    most_common(&diffs, n - 1, Sequence::Differences, cutoffs.get(n - 1))
}

fn most_common(
    tables: &[[u32; 256]; 4],
    samples: usize,
    sequence: Sequence,
    cutoff: usize,
) -> Result<(), LowEntropy> {
    let (value, count) = (0..256)
        .map(|v| (v, tables.iter().map(|t| t[v] as usize).sum::<usize>()))
        .max_by_key(|&(_, c)| c)
        .unwrap_or((0, 0));
    if count >= cutoff {
        return Err(LowEntropy {
            sequence,
            value: value as u8,
            count,
            samples,
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
        let mut v = random(1027);
        v[..40].fill(9);
        let err = check(&v, &mut cutoffs).expect_err("40 nines");
        let plain = v.iter().filter(|&&b| b == 9).count();
        assert_eq!(
            (err.sequence, err.value, err.count),
            (Sequence::Bytes, 9, plain)
        );
        let steps: Vec<u8> = (0..1027u32).map(|i| (i * 3 + 1) as u8).collect();
        let err = check(&steps, &mut cutoffs).expect_err("progression");
        assert_eq!(
            (err.sequence, err.value, err.count),
            (Sequence::Differences, 3, 1026)
        );
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
