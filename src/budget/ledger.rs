//! What has been spent in the current hour, day and month, and what the caps still allow.
//! Pure: every function takes the time, so a test can stand before and after a renewal.
use serde::{Deserialize, Serialize};

use super::{Cap, Period};

/// Bytes spent in the period starting at `start` (Unix seconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    pub start: u64,
    pub spent: u64,
}

/// Spend in each period; every period is tracked whether or not it is capped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spend {
    pub hour: Slot,
    pub day: Slot,
    pub month: Slot,
}

/// Why no byte may be requested now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    /// The caps with less than 1 KiB left, tightest period first.
    pub caps: Vec<Cap>,
    /// When every one of them has renewed (Unix seconds): the earliest time a request can
    /// be allowed again.
    pub renews_at: u64,
}

impl Spend {
    pub fn slot(&self, p: Period) -> &Slot {
        match p {
            Period::Hour => &self.hour,
            Period::Day => &self.day,
            Period::Month => &self.month,
        }
    }

    fn slot_mut(&mut self, p: Period) -> &mut Slot {
        match p {
            Period::Hour => &mut self.hour,
            Period::Day => &mut self.day,
            Period::Month => &mut self.month,
        }
    }

    /// Starts a new count for each period that has renewed by `now`. A slot from the future
    /// (the clock went back) is kept as it is: forgetting it could only under-count.
    pub fn roll(&mut self, now: u64) {
        for p in Period::ALL {
            let start = p.start_of(now);
            let slot = self.slot_mut(p);
            if start > slot.start {
                *slot = Slot { start, spent: 0 };
            }
        }
    }

    /// Checks that every slot starts where its period would, as this program writes them.
    pub fn check(&self) -> Result<(), String> {
        for p in Period::ALL {
            let s = self.slot(p);
            if p.start_of(s.start) != s.start {
                return Err(format!("{} start {} is not the start of a {p}", p, s.start));
            }
        }
        Ok(())
    }

    /// Bytes that may still be requested under `caps` (after [`Spend::roll`]).
    pub fn room(&self, caps: &[Cap]) -> u64 {
        caps.iter()
            .map(|c| c.limit.saturating_sub(self.slot(c.period).spent))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The caps that leave less than `unit` bytes, and when they have all renewed.
    pub fn exhausted(&self, caps: &[Cap], unit: u64, now: u64) -> Option<Exhausted> {
        let caps: Vec<Cap> = caps
            .iter()
            .filter(|c| c.limit.saturating_sub(self.slot(c.period).spent) < unit)
            .copied()
            .collect();
        let renews_at = caps.iter().map(|c| c.period.next_start(now)).max()?;
        Some(Exhausted { caps, renews_at })
    }

    /// Counts `bytes` in every period.
    pub fn add(&mut self, bytes: u64) {
        for p in Period::ALL {
            let s = self.slot_mut(p);
            s.spent = s.spent.saturating_add(bytes);
        }
    }

    /// Takes back `bytes` counted in the periods that started at `starts` (hour, day, month),
    /// from those periods only: a refund never lowers a later period's count.
    pub fn refund(&mut self, bytes: u64, starts: [u64; 3]) {
        for (p, start) in Period::ALL.into_iter().zip(starts) {
            let s = self.slot_mut(p);
            if s.start == start {
                s.spent = s.spent.saturating_sub(bytes);
            }
        }
    }

    /// Raises each period's count to `other`'s where `other` knows more: a later period
    /// replaces an earlier one, the same period keeps the higher count. Never lowers a count.
    pub fn raise_to(&mut self, other: &Spend) {
        self.merge(other, u64::max);
    }

    /// Adds `other`'s counts of the same periods (a later period of `other` replaces ours):
    /// two records of one account's spend become one.
    pub fn absorb(&mut self, other: &Spend) {
        self.merge(other, u64::saturating_add);
    }

    fn merge(&mut self, other: &Spend, same: impl Fn(u64, u64) -> u64) {
        for p in Period::ALL {
            let theirs = *other.slot(p);
            let ours = self.slot_mut(p);
            if theirs.start > ours.start {
                *ours = theirs;
            } else if theirs.start == ours.start {
                ours.spent = same(ours.spent, theirs.spent);
            }
        }
    }

    pub fn starts(&self) -> [u64; 3] {
        [self.hour.start, self.day.start, self.month.start]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-28T12:00:00Z
    const T: u64 = 1_795_867_200;

    #[test]
    fn rolls_each_period_at_its_own_boundary() {
        let mut s = Spend::default();
        s.roll(T);
        s.add(100);
        s.roll(T + 3599);
        assert_eq!((s.hour.spent, s.day.spent, s.month.spent), (100, 100, 100));
        s.roll(T + 3600);
        assert_eq!((s.hour.spent, s.day.spent, s.month.spent), (0, 100, 100));
        s.roll(T + 12 * 3600);
        assert_eq!((s.hour.spent, s.day.spent, s.month.spent), (0, 0, 100));
        s.roll(Period::Month.next_start(T));
        assert_eq!(s.month.spent, 0);
        s.add(7);
        // The clock goes back an hour: the counts stay.
        s.roll(Period::Month.next_start(T) - 3600);
        assert_eq!((s.hour.spent, s.day.spent, s.month.spent), (7, 7, 7));
        assert_eq!(s.check(), Ok(()));
        s.day.start += 1;
        assert!(s.check().is_err());
    }

    #[test]
    fn room_and_exhaustion() {
        let caps = [
            Cap {
                limit: 4096,
                period: Period::Hour,
            },
            Cap {
                limit: 10_240,
                period: Period::Month,
            },
        ];
        let mut s = Spend::default();
        s.roll(T);
        assert_eq!(s.room(&caps), 4096);
        assert_eq!(s.room(&[]), u64::MAX);
        s.add(3072);
        assert_eq!(s.room(&caps), 1024);
        assert_eq!(s.exhausted(&caps, 1024, T), None);
        s.add(1024);
        let e = s.exhausted(&caps, 1024, T).expect("hour cap reached");
        assert_eq!(e.caps, vec![caps[0]]);
        assert_eq!(e.renews_at, T + 3600);
        // The next hour allows 4 KiB again; two hours later the month has 2 KiB left.
        s.roll(T + 3600);
        assert_eq!(s.room(&caps), 4096);
        s.add(4096);
        s.roll(T + 7200);
        assert_eq!(s.room(&caps), 2048);
        s.add(2048);
        let e = s.exhausted(&caps, 1024, T + 7200).expect("month");
        assert_eq!(e.caps, vec![caps[1]]);
        s.add(2048);
        let e = s.exhausted(&caps, 1024, T + 7200).expect("both");
        assert_eq!(e.caps, caps.to_vec());
        assert_eq!(
            e.renews_at,
            Period::Month.next_start(T),
            "waits for the later renewal"
        );
    }

    #[test]
    fn refunds_only_the_periods_charged() {
        let mut s = Spend::default();
        s.roll(T + 3000);
        s.add(2048);
        let starts = s.starts();
        s.roll(T + 3600);
        s.add(1024);
        s.refund(2048, starts);
        assert_eq!(
            (s.hour.spent, s.day.spent, s.month.spent),
            (1024, 1024, 1024)
        );
        s.refund(1_000_000, s.starts());
        assert_eq!((s.hour.spent, s.day.spent, s.month.spent), (0, 0, 0));
    }
}
