//! The contract of Qrypt's Entropy-as-a-Service API, as both sides of this workspace see it:
//! the client in `qrypt-fs` and the server in `qrypt-emulator` take their numbers and their
//! rate-limit syntax from here, so the two cannot drift apart.
//!
//! `GET {endpoint}/api/v1/quantum-entropy?size=N` with `Authorization: Bearer TOKEN` answers
//! `{"random": [base64, ...], "size": N}`: N strings, each the base64 of [`BLOCK_LEN`] bytes.
use std::ops::RangeInclusive;
use std::time::Duration;

mod size;

pub use size::{check_range, format_size, parse_size};

/// The entropy endpoint, relative to the service's base URL.
pub const ENTROPY_PATH: &str = "/api/v1/quantum-entropy";
/// The API's per-request limit, in KiB.
pub const MAX_KIB_PER_REQUEST: u32 = 512;
/// The `size` values the API accepts (KiB).
pub const KIB_PER_REQUEST: RangeInclusive<u32> = 1..=MAX_KIB_PER_REQUEST;
/// Bytes in one block of the `random` array.
pub const BLOCK_LEN: usize = 1024;
/// Characters of one block in standard base64 with padding (1368).
pub const BLOCK_B64_LEN: usize = BLOCK_LEN.div_ceil(3) * 4;
/// Longest rate-limit window accepted on a command line: a day.
const MAX_WINDOW_SECS: f64 = 86_400.0;

/// At most `requests` requests per token in any sliding `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub window: Duration,
}

impl RateLimit {
    /// Qrypt's documented limit: 30 requests in 10 s.
    pub const QRYPT: RateLimit = RateLimit {
        requests: 30,
        window: Duration::from_secs(10),
    };

    /// `requests` per `window_secs`, if `requests >= 1` and `0 < window_secs <= 86400`.
    pub fn new(requests: u32, window_secs: f64) -> Option<RateLimit> {
        // The comparison is also false for NaN.
        (requests > 0 && window_secs > 0.0 && window_secs <= MAX_WINDOW_SECS).then(|| RateLimit {
            requests,
            window: Duration::from_secs_f64(window_secs),
        })
    }
}

/// Parses `R/W`: R requests per W seconds (`30/10`, `5/0.5`, `30/10s`), R >= 1,
/// 0 < W <= 86400.
impl std::str::FromStr for RateLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<RateLimit, String> {
        let bad = || {
            format!(
                "{s:?} is not a rate limit: expected REQUESTS/SECONDS, e.g. 30/10 \
                 (REQUESTS >= 1, 0 < SECONDS <= 86400)"
            )
        };
        let (r, w) = s.split_once('/').ok_or_else(bad)?;
        let requests: u32 = r.trim().parse().map_err(|_| bad())?;
        let secs: f64 = w.trim().trim_end_matches('s').parse().map_err(|_| bad())?;
        RateLimit::new(requests, secs).ok_or_else(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse() {
        let rl = |r, ms| RateLimit {
            requests: r,
            window: Duration::from_millis(ms),
        };
        assert_eq!("30/10".parse(), Ok(RateLimit::QRYPT));
        assert_eq!("30/10s".parse(), Ok(rl(30, 10_000)));
        assert_eq!(" 5 / 0.5 ".parse(), Ok(rl(5, 500)));
        assert_eq!("1/86400".parse(), Ok(rl(1, 86_400_000)));
        for bad in [
            "", "30", "0/10", "30/0", "30/-1", "x/10", "30/x", "30/inf", "30/NaN", "1/86401",
        ] {
            let err = bad.parse::<RateLimit>().expect_err(bad);
            assert!(err.contains("REQUESTS/SECONDS"), "{err}");
        }
    }

    #[test]
    fn block_shape() {
        assert_eq!(BLOCK_B64_LEN, 1368);
        assert!(KIB_PER_REQUEST.contains(&1) && KIB_PER_REQUEST.contains(&512));
        assert!(!KIB_PER_REQUEST.contains(&0) && !KIB_PER_REQUEST.contains(&513));
    }
}
