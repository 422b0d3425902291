//! Schedules: an interval (`6h`) or a five-field cron expression in UTC
//! (`minute hour day-of-month month day-of-week`, with `*`, `a-b`, `*/n`, `a-b/n` and lists).

use std::time::Duration;

use crate::config::parse_duration;
use crate::time::civil;

#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Every(Duration),
    Cron(Box<Cron>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cron {
    fields: [Vec<bool>; 5],
    /// Both day fields restricted (neither starts with `*`): a day matches if either does,
    /// as in every common cron (`0 3 1 * 1` is the 1st of each month and every Monday).
    either_day: bool,
    source: String,
}

/// How far ahead `next_after` looks: the Gregorian calendar's whole cycle of 400 years,
/// after which dates fall on the same weekdays again. A date that must also be a given
/// weekday can be 40 years away (the 29th of February on a Sunday: 2088, then 2128); any
/// day that comes at all comes within it. Only a schedule for such a day walks that far.
const HORIZON_DAYS: i64 = 146_097;

const RANGES: [(u32, u32); 5] = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
const NAMES: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];

fn parse_field(raw: &str, i: usize) -> Result<Vec<bool>, String> {
    let (lo, hi) = RANGES[i];
    let mut set = vec![false; hi as usize + 1];
    for part in raw.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().map_err(|_| format!("{}: bad step {s:?}", NAMES[i]))?),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("{}: a step of 0", NAMES[i]));
        }
        let (a, b) = match range {
            "*" => (lo, hi),
            r => match r.split_once('-') {
                Some((a, b)) => (
                    a.parse().map_err(|_| format!("{}: bad value {a:?}", NAMES[i]))?,
                    b.parse().map_err(|_| format!("{}: bad value {b:?}", NAMES[i]))?,
                ),
                None => {
                    let v: u32 = r.parse().map_err(|_| format!("{}: bad value {r:?}", NAMES[i]))?;
                    (v, if step > 1 { hi } else { v })
                }
            },
        };
        if a < lo || b > hi || a > b {
            return Err(format!("{}: {range} is outside {lo}-{hi}", NAMES[i]));
        }
        for v in (a..=b).step_by(step as usize) {
            set[v as usize] = true;
        }
    }
    Ok(set)
}

impl Cron {
    pub fn parse(raw: &str) -> Result<Cron, String> {
        let parts: Vec<&str> = raw.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!("cron expression {raw:?} needs 5 fields (minute hour day month weekday)"));
        }
        let mut fields: [Vec<bool>; 5] = Default::default();
        for (i, p) in parts.iter().enumerate() {
            fields[i] = parse_field(p, i)?;
        }
        // 7 is Sunday too.
        if fields[4][7] {
            fields[4][0] = true;
        }
        let either_day = !parts[2].starts_with('*') && !parts[4].starts_with('*');
        let cron = Cron { fields, either_day, source: raw.to_owned() };
        // Some dates never come (the 30th of February): such a schedule would never run.
        if cron.next_after(0).is_none() {
            return Err(format!("cron expression {raw:?} matches no date"));
        }
        Ok(cron)
    }

    /// Whether the day `days` after 1970-01-01 matches the day and month fields.
    fn matches_day(&self, days: i64) -> bool {
        let (_, month, day) = civil(days);
        let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
        let (by_date, by_weekday) = (self.fields[2][day as usize], self.fields[4][weekday]);
        let day_matches = if self.either_day { by_date || by_weekday } else { by_date && by_weekday };
        day_matches && self.fields[3][month as usize]
    }

    /// The first matching minute strictly after `after_ms`, if any within 400 years (every
    /// day that exists at all comes within them).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let start = after_ms.div_euclid(60_000) + 1;
        let first_day = start.div_euclid(1440);
        (first_day..first_day + HORIZON_DAYS).filter(|&day| self.matches_day(day)).find_map(|day| {
            let from = if day == first_day { start.rem_euclid(1440) } else { 0 };
            (from..1440)
                .find(|m| self.fields[0][(m % 60) as usize] && self.fields[1][(m / 60) as usize])
                .map(|m| (day * 1440 + m) * 60_000)
        })
    }
}

impl Schedule {
    pub fn parse(raw: &str) -> Result<Schedule, String> {
        if raw.split_whitespace().count() == 5 {
            return Cron::parse(raw).map(|c| Schedule::Cron(Box::new(c)));
        }
        let d = parse_duration(raw).map_err(|e| format!("{e:#} (or give a 5-field cron expression)"))?;
        if d.is_zero() {
            return Err("a schedule interval of 0".into());
        }
        Ok(Schedule::Every(d))
    }

    /// Whether a run is due at `now_ms` when the last one (or the last check after the
    /// process started) was at `last_ms`. An interval runs at its multiples since
    /// 1970-01-01 UTC (`6h`: 00:00, 06:00, 12:00, 18:00), so, like a cron expression, it
    /// keeps its times across restarts; counted from each start, a weekly policy on a
    /// registry restarted more often than weekly would never run.
    pub fn due(&self, last_ms: i64, now_ms: i64) -> bool {
        match self {
            Schedule::Every(d) => {
                let d = d.as_millis() as i64;
                now_ms.div_euclid(d) > last_ms.div_euclid(d)
            }
            Schedule::Cron(c) => c.next_after(last_ms).is_some_and(|next| next <= now_ms),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Schedule::Every(d) => format!("every {}", super::rules::fmt_duration(*d)),
            Schedule::Cron(c) => format!("cron {:?} (UTC)", c.source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn cron_next() {
        // 2026-11-23 was a Monday. 1795392000000 ms = 2026-11-23T00:00:00Z.
        let monday = 1_795_392_000_000;
        assert_eq!(civil(monday / 86_400_000), (2026, 11, 23));
        let c = Cron::parse("30 3 * * *").unwrap();
        assert_eq!(c.next_after(monday), Some(monday + (3 * 60 + 30) * MIN));
        let c = Cron::parse("0 0 * * 0").unwrap(); // Sundays
        assert_eq!(c.next_after(monday), Some(monday + 6 * 1440 * MIN));
        let c = Cron::parse("0 0 * * 7").unwrap(); // Sundays too
        assert_eq!(c.next_after(monday), Some(monday + 6 * 1440 * MIN));
        let c = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(c.next_after(monday), Some(monday + 15 * MIN));
        // A step from a start runs to the end of the field's range: 5, 20, 35, 50.
        let c = Cron::parse("5/15 * * * *").unwrap();
        assert_eq!(c.next_after(monday + 5 * MIN), Some(monday + 20 * MIN));
        assert_eq!(c.next_after(monday + 50 * MIN), Some(monday + 65 * MIN));
        let c = Cron::parse("0 12 1 1 *").unwrap();
        assert_eq!(c.next_after(monday).map(|m| civil(m / 86_400_000)), Some((2027, 1, 1)));
    }

    #[test]
    fn schedules() {
        assert_eq!(Schedule::parse("6h").unwrap(), Schedule::Every(Duration::from_secs(6 * 3600)));
        assert!(Schedule::parse("0 3 * * *").is_ok());
        for bad in ["0 25 * * *", "* * *", "61 * * * *", "*/0 * * * *", "soon", "0"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
        let every = Schedule::parse("1h").unwrap();
        assert!(every.due(0, 3_600_000));
        assert!(!every.due(0, 3_599_999));
        // On the hour, however long the process has been up.
        assert!(every.due(3_599_999, 3_600_000));
        assert!(!every.due(3_600_000, 7_199_999));
    }

    #[test]
    fn day_fields() {
        let monday = 1_795_392_000_000; // 2026-11-23T00:00:00Z
        let day = |ms: i64| civil(ms / 86_400_000);
        // Both restricted: the 1st of a month or a Monday, whichever comes first.
        let c = Cron::parse("0 3 1 * 1").unwrap();
        assert_eq!(c.next_after(monday).map(day), Some((2026, 11, 23)));
        assert_eq!(c.next_after(monday + 1440 * MIN).map(day), Some((2026, 11, 30)));
        let c = Cron::parse("0 3 1 12 1").unwrap();
        assert_eq!(c.next_after(monday + 8 * 1440 * MIN).map(day), Some((2026, 12, 1)));
        // So "Friday the 13th" is any 13th and any Friday, as in Vixie cron.
        let c = Cron::parse("0 0 13 * 5").unwrap();
        assert_eq!(c.next_after(monday).map(day), Some((2026, 11, 27)));
        // A field written from `*` leaves the other to decide alone: both must hold.
        let c = Cron::parse("0 0 */10 * 5").unwrap();
        assert_eq!(c.next_after(monday).map(day), Some((2026, 12, 11)));
        // Leap days, found however far: from 2096 to 2104.
        let c = Cron::parse("0 0 29 2 *").unwrap();
        let after_2096 = 4_012_416_000_000; // 2097-02-23
        assert_eq!(c.next_after(after_2096).map(day), Some((2104, 2, 29)));
        // A leap day that must be a Sunday: 2032, 2060, 2088, then 2128 (2100 is no leap
        // year). It ran once and never again when the search stopped at eight years.
        let c = Cron::parse("0 0 29 2 */7").unwrap();
        let after_2088 = 3_793_478_400_001; // 2090-03-18
        assert_eq!(c.next_after(after_2088).map(day), Some((2128, 2, 29)));
        for never in ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *"] {
            assert!(Cron::parse(never).unwrap_err().contains("matches no date"), "{never}");
        }
    }
}
