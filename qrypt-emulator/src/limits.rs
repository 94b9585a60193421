//! Who may ask and how much: accepted tokens, the per-token sliding-window rate limit and the
//! per-token quota.
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::RateLimit;

/// Why a request is refused before any fault or body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// 401.
    Unauthorized,
    /// 429 with `Retry-After: retry_after_secs`.
    RateLimited { retry_after_secs: u64 },
    /// 403.
    QuotaExhausted,
}

pub(super) struct Limits {
    tokens: Vec<String>,
    rate_limit: Option<RateLimit>,
    quota: Option<u64>,
    /// Bytes charged per token.
    used: HashMap<String, u64>,
    /// When each token's accepted requests arrived, oldest first, at most `requests` of them.
    accepted: HashMap<String, VecDeque<Instant>>,
}

impl Limits {
    pub fn new(tokens: Vec<String>, rate_limit: Option<RateLimit>, quota: Option<u64>) -> Self {
        Limits {
            tokens,
            rate_limit,
            quota,
            used: HashMap::new(),
            accepted: HashMap::new(),
        }
    }

    pub fn set_tokens(&mut self, tokens: Vec<String>) {
        self.tokens = tokens;
    }

    /// A new limit starts with empty windows.
    pub fn set_rate_limit(&mut self, rl: Option<RateLimit>) {
        self.rate_limit = rl;
        self.accepted.clear();
    }

    /// A new quota starts with nothing used.
    pub fn set_quota(&mut self, quota: Option<u64>) {
        self.quota = quota;
        self.used.clear();
    }

    /// The token if it is one of the accepted ones (empty tokens never are).
    pub fn authorize<'t>(&self, token: Option<&'t str>) -> Result<&'t str, Refusal> {
        token
            .filter(|t| !t.is_empty() && self.tokens.iter().any(|a| a == t))
            .ok_or(Refusal::Unauthorized)
    }

    /// Applies the rate limit, then the quota; on success charges `bytes` to the token.
    ///
    /// A request that passes the rate limit counts in its window even if the quota then
    /// refuses it: only 429s are "not accepted".
    pub fn admit(&mut self, token: &str, bytes: u64, now: Instant) -> Result<(), Refusal> {
        if let Some(rl) = self.rate_limit {
            let window = self.accepted.entry(token.to_owned()).or_default();
            while window
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) >= rl.window)
            {
                window.pop_front();
            }
            if window.len() >= rl.requests as usize {
                let frees_in = window.front().map_or(Duration::ZERO, |&oldest| {
                    (oldest + rl.window).saturating_duration_since(now)
                });
                return Err(Refusal::RateLimited {
                    retry_after_secs: ceil_secs(frees_in),
                });
            }
            window.push_back(now);
        }
        if let Some(quota) = self.quota {
            let used = self.used.get(token).copied().unwrap_or(0);
            if used.saturating_add(bytes) > quota {
                return Err(Refusal::QuotaExhausted);
            }
        }
        *self.used.entry(token.to_owned()).or_default() += bytes;
        Ok(())
    }

    /// Gives back a charge for a request that was answered without entropy (a fault).
    pub fn refund(&mut self, token: &str, bytes: u64) {
        if let Some(u) = self.used.get_mut(token) {
            *u = u.saturating_sub(bytes);
        }
    }
}

/// Whole seconds, rounded up, at least 1: a client told 0 would retry at once into another 429.
fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rl: Option<RateLimit>, quota: Option<u64>) -> Limits {
        Limits::new(vec!["a".into(), "b".into()], rl, quota)
    }

    #[test]
    fn tokens() {
        let l = limits(None, None);
        assert_eq!(l.authorize(Some("a")), Ok("a"));
        assert_eq!(l.authorize(Some("c")), Err(Refusal::Unauthorized));
        assert_eq!(l.authorize(Some("")), Err(Refusal::Unauthorized));
        assert_eq!(l.authorize(None), Err(Refusal::Unauthorized));
    }

    #[test]
    fn sliding_window_per_token() {
        let mut l = limits(
            Some(RateLimit {
                requests: 2,
                window: Duration::from_secs(10),
            }),
            None,
        );
        let t0 = Instant::now();
        assert_eq!(l.admit("a", 1, t0), Ok(()));
        assert_eq!(l.admit("a", 1, t0 + Duration::from_secs(4)), Ok(()));
        assert_eq!(
            l.admit("a", 1, t0 + Duration::from_millis(4500)),
            Err(Refusal::RateLimited {
                retry_after_secs: 6
            })
        );
        assert_eq!(l.admit("b", 1, t0 + Duration::from_secs(5)), Ok(()));
        // The 429 did not take a slot: the first one frees at 10 s.
        assert_eq!(l.admit("a", 1, t0 + Duration::from_secs(10)), Ok(()));
        assert_eq!(
            l.admit("a", 1, t0 + Duration::from_secs(10)),
            Err(Refusal::RateLimited {
                retry_after_secs: 4
            })
        );
    }

    #[test]
    fn quota_and_refund() {
        let mut l = limits(None, Some(4096));
        let now = Instant::now();
        assert_eq!(l.admit("a", 3072, now), Ok(()));
        assert_eq!(l.admit("a", 2048, now), Err(Refusal::QuotaExhausted));
        assert_eq!(l.admit("b", 4096, now), Ok(()));
        l.refund("a", 3072);
        assert_eq!(l.admit("a", 4096, now), Ok(()));
        assert_eq!(l.admit("a", 1024, now), Err(Refusal::QuotaExhausted));
        l.set_quota(Some(1024));
        assert_eq!(l.admit("a", 1024, now), Ok(()));
    }

    #[test]
    fn rounding() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
        assert_eq!(ceil_secs(Duration::ZERO), 1);
    }
}
