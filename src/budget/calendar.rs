//! Calendar periods in UTC, on Unix seconds: where the one holding an instant starts, and
//! where the next one starts. Pure arithmetic, so tests can stand at any instant.
use time::{Date, Month, OffsetDateTime};

use super::Period;

const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

/// Unix time of the first of the month holding `t`, or of the month after it (`next`), in
/// UTC. Past the calendar's range (year 9999): `u64::MAX`, a renewal that never comes.
fn month_start(t: u64, next: bool) -> u64 {
    let Some(date) = i64::try_from(t)
        .ok()
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
        .map(OffsetDateTime::date)
    else {
        return u64::MAX;
    };
    let (year, month) = match (next, date.month()) {
        (false, m) => (date.year(), m),
        (true, Month::December) => (date.year() + 1, Month::January),
        (true, m) => (date.year(), m.next()),
    };
    Date::from_calendar_date(year, month, 1)
        .ok()
        .and_then(|d| u64::try_from(d.midnight().assume_utc().unix_timestamp()).ok())
        .unwrap_or(u64::MAX)
}

impl Period {
    /// Unix time at which the period holding `t` started.
    pub fn start_of(self, t: u64) -> u64 {
        match self {
            Period::Hour => t - t % HOUR,
            Period::Day => t - t % DAY,
            Period::Month => month_start(t, false),
        }
    }

    /// Unix time at which the period after the one holding `t` starts: when it renews.
    pub fn next_start(self, t: u64) -> u64 {
        match self {
            Period::Hour => self.start_of(t).saturating_add(HOUR),
            Period::Day => self.start_of(t).saturating_add(DAY),
            Period::Month => month_start(t, true),
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
        let day = |y: i32, m: u8, d: u8| {
            let month = Month::try_from(m).expect("month");
            let date = Date::from_calendar_date(y, month, d).expect("date");
            date.midnight().assume_utc().unix_timestamp() as u64
        };
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
