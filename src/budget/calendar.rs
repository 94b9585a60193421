//! Calendar periods in UTC, on Unix seconds: where the one holding an instant starts, and
//! where the next one starts. Pure arithmetic, so tests can stand at any instant.
use super::Period;

const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

/// (year, month 1-12) of the day `days` after 1970-01-01 (H. Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m as u32)
}

/// Days from 1970-01-01 to the first of (year, month) (H. Hinnant's days_from_civil).
fn days_from_civil(year: i64, month: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Period {
    /// Unix time at which the period holding `t` started.
    pub fn start_of(self, t: u64) -> u64 {
        match self {
            Period::Hour => t - t % HOUR,
            Period::Day => t - t % DAY,
            Period::Month => {
                let (y, m) = civil_from_days((t / DAY) as i64);
                (days_from_civil(y, m).max(0) as u64) * DAY
            }
        }
    }

    /// Unix time at which the period after the one holding `t` starts: when it renews.
    pub fn next_start(self, t: u64) -> u64 {
        match self {
            Period::Hour => self.start_of(t).saturating_add(HOUR),
            Period::Day => self.start_of(t).saturating_add(DAY),
            Period::Month => {
                let (y, m) = civil_from_days((t / DAY) as i64);
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (days_from_civil(y, m).max(0) as u64) * DAY
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-28T12:00:00Z
    const T: u64 = 1_795_867_200;

    #[test]
    fn hours_and_days() {
        assert_eq!(Period::Hour.start_of(T + 59 * 60 + 59), T);
        assert_eq!(Period::Hour.next_start(T), T + 3600);
        assert_eq!(Period::Day.start_of(T), T - 12 * 3600);
        assert_eq!(Period::Day.next_start(T - 1), T + 12 * 3600);
        // The last second of a day belongs to it; the next second is the next day.
        let midnight = T + 12 * 3600;
        assert_eq!(Period::Day.start_of(midnight - 1), T - 12 * 3600);
        assert_eq!(Period::Day.start_of(midnight), midnight);
    }

    #[test]
    fn months_of_every_length() {
        let day = |y: i64, m: u32, d: u64| days_from_civil(y, m) as u64 * DAY + (d - 1) * DAY;
        assert_eq!(day(2026, 11, 28), T - 12 * 3600);
        assert_eq!(Period::Month.start_of(T), day(2026, 11, 1));
        assert_eq!(Period::Month.next_start(T), day(2026, 12, 1));
        assert_eq!(Period::Month.next_start(day(2026, 12, 31)), day(2027, 1, 1));
        assert_eq!(
            Period::Month.start_of(day(2027, 1, 1) - 1),
            day(2026, 12, 1)
        );
        // Leap years: 2028-02 has 29 days, 2100-02 has 28, 2000-02 had 29.
        assert_eq!(
            Period::Month.next_start(day(2028, 2, 1)) - day(2028, 2, 1),
            29 * DAY
        );
        assert_eq!(
            Period::Month.next_start(day(2100, 2, 1)) - day(2100, 2, 1),
            28 * DAY
        );
        assert_eq!(
            Period::Month.next_start(day(2000, 2, 1)) - day(2000, 2, 1),
            29 * DAY
        );
        assert_eq!(Period::Month.start_of(0), 0);
        assert_eq!(Period::Month.next_start(0), 31 * DAY);
        // Every month of a decade: starts are firsts, and next_start of a start is the next one.
        let mut start = day(2025, 1, 1);
        for _ in 0..120 {
            let next = Period::Month.next_start(start);
            assert_eq!(Period::Month.start_of(next - 1), start);
            assert!((28 * DAY..=31 * DAY).contains(&(next - start)));
            start = next;
        }
        assert_eq!(start, day(2035, 1, 1));
    }
}
