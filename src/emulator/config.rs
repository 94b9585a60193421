//! What an emulator starts with: address, tokens, rate limit, quota, TLS, recording.
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// At most `requests` accepted requests per token in any sliding `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub window: Duration,
}

/// Parses `R/W`: R requests per W seconds (`30/10`, `5/0.5`, `30/10s`).
impl FromStr for RateLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<RateLimit, String> {
        let bad = || format!("{s:?} is not a rate limit (REQUESTS/SECONDS, e.g. 30/10)");
        let (r, w) = s.split_once('/').ok_or_else(bad)?;
        let requests: u32 = r.trim().parse().map_err(|_| bad())?;
        let secs: f64 = w.trim().trim_end_matches('s').parse().map_err(|_| bad())?;
        if requests == 0 || !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
            return Err(bad());
        }
        Ok(RateLimit {
            requests,
            window: Duration::from_secs_f64(secs),
        })
    }
}

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Where to listen; port 0 picks a free one (see [`super::Emulator::addr`]).
    pub bind: SocketAddr,
    /// Accepted bearer tokens.
    pub tokens: Vec<String>,
    /// Per-token limit answered with 429 and `Retry-After`; `None`: no limit.
    pub rate_limit: Option<RateLimit>,
    /// Bytes each token may fetch before it gets 403; `None`: unlimited.
    pub quota_bytes: Option<u64>,
    /// HTTPS with a freshly generated CA and a leaf for `localhost`, 127.0.0.1 and ::1.
    pub tls: bool,
    /// Keep a copy of every response's blocks (see [`super::Emulator::records`]).
    pub record: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            tokens: vec!["emulator-token".into()],
            rate_limit: None,
            quota_bytes: None,
            tls: false,
            record: false,
        }
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
        assert_eq!("30/10".parse(), Ok(rl(30, 10_000)));
        assert_eq!("30/10s".parse(), Ok(rl(30, 10_000)));
        assert_eq!(" 5 / 0.5 ".parse(), Ok(rl(5, 500)));
        for bad in ["", "30", "0/10", "30/0", "30/-1", "x/10", "30/x", "30/inf"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad:?}");
        }
    }
}
