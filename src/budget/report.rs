//! The budget as `/status`, `/status.json` and `/metrics` show it.
use std::fmt::Write as _;

use serde::Serialize;

use super::{Cap, Period, Spend, human_bytes};

/// One cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapReport {
    pub period: Period,
    pub limit_bytes: u64,
    pub spent_bytes: u64,
    pub remaining_bytes: u64,
    /// Unix time of the renewal.
    pub renews_at: u64,
}

/// Every cap, and the spend of the current day and month (shown even without a cap, so an
/// operator can alert before Qrypt answers 403).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BudgetReport {
    #[serde(rename = "budget")]
    pub caps: Vec<CapReport>,
    pub spent_day_bytes: u64,
    pub spent_month_bytes: u64,
    #[serde(skip)]
    pub day_renews_at: u64,
    #[serde(skip)]
    pub month_renews_at: u64,
    #[serde(rename = "budget_state_file")]
    pub state_file: Option<String>,
}

impl BudgetReport {
    pub fn new(caps: &[Cap], spend: &Spend, now: u64) -> BudgetReport {
        BudgetReport {
            caps: caps
                .iter()
                .map(|c| {
                    let spent = spend.slot(c.period).spent;
                    CapReport {
                        period: c.period,
                        limit_bytes: c.limit,
                        spent_bytes: spent,
                        remaining_bytes: c.limit.saturating_sub(spent),
                        renews_at: c.period.next_start(now),
                    }
                })
                .collect(),
            spent_day_bytes: spend.day.spent,
            spent_month_bytes: spend.month.spent,
            day_renews_at: Period::Day.next_start(now),
            month_renews_at: Period::Month.next_start(now),
            state_file: None,
        }
    }

    /// `1M/day 1G/month`, or `off`.
    pub fn summary(&self) -> String {
        if self.caps.is_empty() {
            return "off".into();
        }
        self.caps
            .iter()
            .map(|c| format!("{}/{}", human_bytes(c.limit_bytes), c.period))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `key: value` lines; `time` formats a Unix time.
    pub fn write_text(&self, s: &mut String, time: impl Fn(u64) -> String) {
        let _ = writeln!(s, "budget: {}", self.summary());
        for c in &self.caps {
            let p = c.period;
            let _ = writeln!(s, "budget_{p}_limit_bytes: {}", c.limit_bytes);
            let _ = writeln!(s, "budget_{p}_spent_bytes: {}", c.spent_bytes);
            let _ = writeln!(s, "budget_{p}_remaining_bytes: {}", c.remaining_bytes);
            let _ = writeln!(s, "budget_{p}_renews_at: {}", time(c.renews_at));
        }
        let _ = writeln!(s, "spent_day_bytes: {}", self.spent_day_bytes);
        let _ = writeln!(s, "spent_month_bytes: {}", self.spent_month_bytes);
        let _ = writeln!(
            s,
            "budget_state_file: {}",
            self.state_file.as_deref().unwrap_or("none")
        );
    }

    /// Prometheus families `qrypt_fs_budget_*`, labelled by period. Spend and renewal are
    /// given for every capped period and always for the day and the month.
    pub fn write_prometheus(&self, s: &mut String) {
        let mut periods: Vec<(Period, u64, u64)> = self
            .caps
            .iter()
            .map(|c| (c.period, c.spent_bytes, c.renews_at))
            .collect();
        for (p, spent, renews) in [
            (Period::Day, self.spent_day_bytes, self.day_renews_at),
            (Period::Month, self.spent_month_bytes, self.month_renews_at),
        ] {
            if !periods.iter().any(|(q, _, _)| *q == p) {
                periods.push((p, spent, renews));
            }
        }
        periods.sort_by_key(|(p, _, _)| *p);
        let mut family = |name: &str, help: &str, values: Vec<(Period, u64)>| {
            let _ = writeln!(s, "# HELP qrypt_fs_{name} {help}");
            let _ = writeln!(s, "# TYPE qrypt_fs_{name} gauge");
            for (p, v) in values {
                let _ = writeln!(s, "qrypt_fs_{name}{{period=\"{p}\"}} {v}");
            }
        };
        family(
            "budget_limit_bytes",
            "The --budget cap per calendar period (UTC).",
            self.caps
                .iter()
                .map(|c| (c.period, c.limit_bytes))
                .collect(),
        );
        family(
            "budget_spent_bytes",
            "Bytes requested from the upstream in the current period (UTC), rejected ones included.",
            periods.iter().map(|(p, spent, _)| (*p, *spent)).collect(),
        );
        family(
            "budget_remaining_bytes",
            "Bytes the cap still allows in the current period.",
            self.caps
                .iter()
                .map(|c| (c.period, c.remaining_bytes))
                .collect(),
        );
        family(
            "budget_renews_timestamp_seconds",
            "Unix time at which the period's count starts over.",
            periods.iter().map(|(p, _, r)| (*p, *r)).collect(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-28T12:00:00Z
    const T: u64 = 1_795_867_200;

    #[test]
    fn renders() {
        let mut spend = Spend::default();
        spend.roll(T);
        spend.add(3 << 20);
        let caps = [
            Cap {
                limit: 50 << 20,
                period: Period::Hour,
            },
            Cap {
                limit: 1 << 30,
                period: Period::Month,
            },
        ];
        let r = BudgetReport::new(&caps, &spend, T);
        assert_eq!(r.summary(), "50M/hour 1G/month");
        let mut text = String::new();
        r.write_text(&mut text, |t| t.to_string());
        assert!(text.starts_with("budget: 50M/hour 1G/month\n"), "{text}");
        assert!(
            text.contains("budget_hour_remaining_bytes: 49283072\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!("budget_hour_renews_at: {}\n", T + 3600)),
            "{text}"
        );
        assert!(text.contains("spent_day_bytes: 3145728\n"), "{text}");
        assert!(text.contains("budget_state_file: none\n"), "{text}");
        let mut prom = String::new();
        r.write_prometheus(&mut prom);
        for line in [
            "qrypt_fs_budget_limit_bytes{period=\"hour\"} 52428800\n",
            "qrypt_fs_budget_limit_bytes{period=\"month\"} 1073741824\n",
            "qrypt_fs_budget_spent_bytes{period=\"hour\"} 3145728\n",
            "qrypt_fs_budget_spent_bytes{period=\"day\"} 3145728\n",
            "qrypt_fs_budget_spent_bytes{period=\"month\"} 3145728\n",
            "qrypt_fs_budget_renews_timestamp_seconds{period=\"day\"} 1795910400\n",
        ] {
            assert!(prom.contains(line), "{line}: {prom}");
        }
        assert!(!prom.contains("limit_bytes{period=\"day\"}"));
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["budget"][0]["period"], "hour");
        assert_eq!(
            json["budget"][1]["remaining_bytes"],
            (1u64 << 30) - (3 << 20)
        );
        assert_eq!(json["spent_month_bytes"], 3 << 20);
        let off = BudgetReport::new(&[], &spend, T);
        assert_eq!(off.summary(), "off");
    }
}
