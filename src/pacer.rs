//! Client-side pacing under the service's rate limit (30 requests per 10 s per token by default).
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// At most `requests` requests in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub window: Duration,
}

impl RateLimit {
    /// Qrypt's documented limit.
    pub const QRYPT: RateLimit = RateLimit {
        requests: 30,
        window: Duration::from_secs(10),
    };
}

impl std::str::FromStr for RateLimit {
    type Err = String;
    /// `R/SECONDS`, e.g. `30/10`.
    fn from_str(s: &str) -> Result<RateLimit, String> {
        let (r, w) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected REQUESTS/SECONDS, e.g. 30/10"))?;
        let requests: u32 = r
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: {r:?} is not a whole number of requests"))?;
        let secs: f64 = w
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: {w:?} is not a number of seconds"))?;
        if requests == 0 || !(secs > 0.0 && secs <= 86_400.0) {
            return Err(format!(
                "{s:?}: need at least 1 request in 0 < SECONDS <= 86400"
            ));
        }
        Ok(RateLimit {
            requests,
            window: Duration::from_secs_f64(secs),
        })
    }
}

/// A sliding-window gate: allows a request when fewer than `requests` were started in the last
/// `window + margin`. The margin absorbs the difference between when we send and when the
/// server counts, so we never trip its limiter; bursts up to the full allowance go at once.
pub struct Pacer {
    limit: Option<RateLimit>,
    margin: Duration,
    started: VecDeque<Instant>,
}

impl Pacer {
    pub fn new(limit: Option<RateLimit>) -> Pacer {
        Pacer {
            limit,
            margin: Duration::from_millis(250),
            started: VecDeque::new(),
        }
    }

    /// Records a request start at `now` if allowed; otherwise says when the next one is.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Instant> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let span = limit.window + self.margin;
        while self
            .started
            .front()
            .is_some_and(|&t| now.duration_since(t) >= span)
        {
            self.started.pop_front();
        }
        if self.started.len() < limit.requests as usize {
            self.started.push_back(now);
            Ok(())
        } else {
            Err(self.started.front().map_or(now, |&t| t + span))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!("30/10".parse::<RateLimit>(), Ok(RateLimit::QRYPT));
        assert!("0/10".parse::<RateLimit>().is_err());
        assert!("30".parse::<RateLimit>().is_err());
        assert!("30/-1".parse::<RateLimit>().is_err());
    }

    #[test]
    fn burst_then_slide() {
        let mut p = Pacer::new(Some(RateLimit {
            requests: 3,
            window: Duration::from_secs(10),
        }));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(p.try_acquire(t0).is_ok());
        }
        let next = p
            .try_acquire(t0 + Duration::from_secs(5))
            .expect_err("4th in window");
        assert_eq!(next, t0 + Duration::from_millis(10_250));
        assert!(p.try_acquire(next).is_ok());
        assert!(p.try_acquire(next).is_ok());
        assert!(p.try_acquire(next).is_ok());
        assert!(p.try_acquire(next).is_err());
    }

    #[test]
    fn unlimited() {
        let mut p = Pacer::new(None);
        let t = Instant::now();
        for _ in 0..1000 {
            assert!(p.try_acquire(t).is_ok());
        }
    }
}
