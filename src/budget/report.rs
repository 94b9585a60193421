//! The budget as `/status`, `/status.json` and `/metrics` show it: what each cap allows,
//! what was spent, and when it renews (the status layer renders it).
use super::rate::runs_out_at;
use super::{Cap, Period, Spend, human_bytes};

/// One cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapReport {
    pub period: Period,
    pub limit_bytes: u64,
    pub spent_bytes: u64,
    pub remaining_bytes: u64,
    /// Unix time of the renewal.
    pub renews_at: u64,
    /// Unix time the cap runs out at the current rate; `None` if not before it renews.
    pub runs_out_at: Option<u64>,
}

/// Every cap, and the spend of the current day and month (shown even without a cap, so an
/// operator can alert before Qrypt answers 403).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetReport {
    pub caps: Vec<CapReport>,
    pub spent_day_bytes: u64,
    pub spent_month_bytes: u64,
    pub day_renews_at: u64,
    pub month_renews_at: u64,
    /// Bytes per second this process requested over the last hour and the last day.
    pub rate_hour: f64,
    pub rate_day: f64,
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
                        runs_out_at: None,
                    }
                })
                .collect(),
            spent_day_bytes: spend.day.spent,
            spent_month_bytes: spend.month.spent,
            day_renews_at: Period::Day.next_start(now),
            month_renews_at: Period::Month.next_start(now),
            rate_hour: 0.0,
            rate_day: 0.0,
            state_file: None,
        }
    }

    /// Sets the spend rates and, from them, when each cap runs out. The pace is the higher of
    /// the two rates, so a surge shows at once and a quiet hour does not hide a day's pace.
    pub fn set_rates(&mut self, hour: f64, day: f64, now: u64) {
        self.rate_hour = hour;
        self.rate_day = day;
        let pace = hour.max(day);
        for c in &mut self.caps {
            c.runs_out_at = runs_out_at(now, c.remaining_bytes, pace, c.renews_at);
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

    /// (period, spent, renewal) for each capped period and always for the day and the
    /// month, in period order.
    pub fn periods(&self) -> Vec<(Period, u64, u64)> {
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
        periods
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
        assert_eq!(r.caps[0].remaining_bytes, 49_283_072);
        assert_eq!(r.caps[0].renews_at, T + 3600);
        assert_eq!(r.caps[1].remaining_bytes, (1u64 << 30) - (3 << 20));
        // Spend and renewal for each cap, and always for the day and the month.
        assert_eq!(
            r.periods(),
            vec![
                (Period::Hour, 3 << 20, T + 3600),
                (Period::Day, 3 << 20, 1_795_910_400),
                (Period::Month, 3 << 20, Period::Month.next_start(T)),
            ]
        );
        let off = BudgetReport::new(&[], &spend, T);
        assert_eq!(off.summary(), "off");
    }
}
