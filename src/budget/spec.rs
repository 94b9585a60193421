//! `--budget SIZE/PERIOD`: what may be spent, per calendar period (UTC).
use std::fmt;

use serde::Serialize;

use qrypt_api::parse_size;

/// A calendar period in UTC. A budget renews at the start of the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Hour,
    Day,
    Month,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::Hour, Period::Day, Period::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    fn parse(s: &str) -> Option<Period> {
        Period::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// At most `limit` bytes requested from the upstream in each `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cap {
    pub limit: u64,
    pub period: Period,
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            crate::budget::human_bytes(self.limit),
            self.period
        )
    }
}

/// The smallest request the API serves; a cap below it could never be spent.
pub const MIN_CAP: u64 = 1024;

/// Parses one `--budget` value: `SIZE/PERIOD` or `off` (`Ok(None)`).
///
/// SIZE takes the units of `--buffer-size`, which are binary: `200M` and `200MiB` mean
/// 200 × 2^20 bytes, and `200MB` is refused as ambiguous (10^6 or 2^20?): a budget is money,
/// so it is never guessed. A unit is required (`1048576B` for plain bytes): `200/day` is far
/// more likely a slip than a budget of 200 bytes.
pub fn parse_budget(s: &str) -> Result<Option<Cap>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let usage = "expected SIZE/PERIOD with PERIOD hour, day or month (e.g. 200M/day), or off";
    let (size, period) = t
        .split_once('/')
        .ok_or_else(|| format!("budget {s:?}: missing /PERIOD; {usage}"))?;
    let size = size.trim();
    if size.starts_with('-') {
        return Err(format!("budget {s:?}: a budget cannot be negative"));
    }
    if size.is_empty() {
        return Err(format!("budget {s:?}: missing SIZE; {usage}"));
    }
    if size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "budget {s:?}: missing unit; write e.g. {size}M/{} (or {size}B for bytes)",
            period.trim()
        ));
    }
    let limit = parse_size(size).map_err(|e| format!("budget {s:?}: {e}"))?;
    let period = Period::parse(period)
        .ok_or_else(|| format!("budget {s:?}: unknown period {:?}; {usage}", period.trim()))?;
    if limit == 0 {
        return Err(format!(
            "budget {s:?}: zero would forbid every request (use a size of at least 1K)"
        ));
    }
    if limit < MIN_CAP {
        return Err(format!(
            "budget {s:?}: less than 1K, the smallest request the API serves"
        ));
    }
    Ok(Some(Cap { limit, period }))
}

/// The caps in force after all `--budget` values, in order: `off` drops the ones before it
/// (so a command line can lift an fstab budget), and of two caps on one period the smaller
/// holds (each holds, so only the smaller matters).
pub fn merge_caps<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Vec<Cap>, String> {
    let mut caps: Vec<Cap> = Vec::new();
    for v in values {
        match parse_budget(v)? {
            None => caps.clear(),
            Some(cap) => match caps.iter_mut().find(|c| c.period == cap.period) {
                Some(c) => c.limit = c.limit.min(cap.limit),
                None => caps.push(cap),
            },
        }
    }
    caps.sort_by_key(|c| c.period);
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(limit: u64, period: Period) -> Option<Cap> {
        Some(Cap { limit, period })
    }

    #[test]
    fn accepts() {
        assert_eq!(parse_budget("200M/day"), Ok(cap(200 << 20, Period::Day)));
        assert_eq!(parse_budget("200MiB/day"), Ok(cap(200 << 20, Period::Day)));
        assert_eq!(parse_budget("50M/hour"), Ok(cap(50 << 20, Period::Hour)));
        assert_eq!(
            parse_budget(" 1G / Month "),
            Ok(cap(1 << 30, Period::Month))
        );
        assert_eq!(parse_budget("1048576B/day"), Ok(cap(1 << 20, Period::Day)));
        assert_eq!(parse_budget("off"), Ok(None));
        assert_eq!(parse_budget("OFF"), Ok(None));
    }

    #[test]
    fn rejects_with_a_reason() {
        let err = |s: &str| parse_budget(s).expect_err(s);
        assert!(err("0M/day").contains("zero"));
        assert!(err("0/day").contains("unit"));
        assert!(err("-1M/day").contains("negative"));
        assert!(err("1M/week").contains("unknown period \"week\""));
        assert!(err("1M/").contains("unknown period"));
        assert!(err("200/day").contains("missing unit"));
        assert!(err("200M").contains("missing /PERIOD"));
        assert!(err("/day").contains("missing SIZE"));
        assert!(err("99999999999999G/day").contains("too large"));
        assert!(err("18446744073709551616B/day").contains("not a size"));
        assert!(err("1X/day").contains("unit"));
        assert!(err("200MB/day").contains("ambiguous"));
        assert!(err("512B/day").contains("less than 1K"));
        assert!(err("").contains("missing /PERIOD"));
    }

    #[test]
    fn merging() {
        assert_eq!(merge_caps([]), Ok(vec![]));
        assert_eq!(
            merge_caps(["1G/month", "50M/hour", "60M/hour"]),
            Ok(vec![
                Cap {
                    limit: 50 << 20,
                    period: Period::Hour
                },
                Cap {
                    limit: 1 << 30,
                    period: Period::Month
                },
            ])
        );
        assert_eq!(merge_caps(["1M/day", "off"]), Ok(vec![]));
        assert_eq!(
            merge_caps(["1M/day", "off", "2M/day"]),
            Ok(vec![Cap {
                limit: 2 << 20,
                period: Period::Day
            }])
        );
        assert!(merge_caps(["1M/day", "bad"]).is_err());
    }
}
