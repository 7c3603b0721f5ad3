//! Bar timeframes (`1m` … `1M`): parsing, bar interval, and the longest window one IB historical
//! request may span (hosts.md §1.5).

use std::fmt;

use chrono::{Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timeframe {
    M1,
    M5,
    M15,
    M30,
    H1,
    H2,
    H4,
    D1,
    W1,
    Mo1,
}

impl Timeframe {
    pub const ALL: [Timeframe; 10] = [
        Timeframe::M1,
        Timeframe::M5,
        Timeframe::M15,
        Timeframe::M30,
        Timeframe::H1,
        Timeframe::H2,
        Timeframe::H4,
        Timeframe::D1,
        Timeframe::W1,
        Timeframe::Mo1,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Timeframe::M1 => "1m",
            Timeframe::M5 => "5m",
            Timeframe::M15 => "15m",
            Timeframe::M30 => "30m",
            Timeframe::H1 => "1h",
            Timeframe::H2 => "2h",
            Timeframe::H4 => "4h",
            Timeframe::D1 => "1d",
            Timeframe::W1 => "1w",
            Timeframe::Mo1 => "1M",
        }
    }

    /// Exact spelling only (`1M` is a month, `1m` a minute).
    pub fn parse(text: &str) -> Option<Timeframe> {
        Timeframe::ALL.into_iter().find(|t| t.as_str() == text)
    }

    pub fn names() -> Vec<&'static str> {
        Timeframe::ALL.iter().map(|t| t.as_str()).collect()
    }

    /// The nominal bar length (a month counts as 30 days; use [`Timeframe::next_bar`] to step).
    pub fn interval(self) -> Duration {
        match self {
            Timeframe::M1 => Duration::minutes(1),
            Timeframe::M5 => Duration::minutes(5),
            Timeframe::M15 => Duration::minutes(15),
            Timeframe::M30 => Duration::minutes(30),
            Timeframe::H1 => Duration::hours(1),
            Timeframe::H2 => Duration::hours(2),
            Timeframe::H4 => Duration::hours(4),
            Timeframe::D1 => Duration::days(1),
            Timeframe::W1 => Duration::weeks(1),
            Timeframe::Mo1 => Duration::days(30),
        }
    }

    pub fn is_intraday(self) -> bool {
        self < Timeframe::D1
    }

    /// The longest window one IB historical request may ask for.
    pub fn max_span(self) -> Duration {
        Duration::days(match self {
            Timeframe::M1 => 1,
            Timeframe::M5 => 7,
            Timeframe::M15 => 14,
            Timeframe::M30 | Timeframe::H1 => 30,
            Timeframe::H2 => 60,
            Timeframe::H4 => 120,
            Timeframe::D1 => 365,
            Timeframe::W1 => 730,
            Timeframe::Mo1 => 3650,
        })
    }

    /// The start of the bar after the one starting at `ts` (months step by calendar month).
    pub fn next_bar(self, ts: Timestamp) -> Timestamp {
        match self {
            Timeframe::Mo1 => {
                let (y, m) = if ts.month() == 12 { (ts.year() + 1, 1) } else { (ts.year(), ts.month() + 1) };
                let date = NaiveDate::from_ymd_opt(y, m, 1).expect("first of a month exists");
                Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight exists"))
            }
            other => ts + other.interval(),
        }
    }
}

impl fmt::Display for Timeframe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Timeframe {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Timeframe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Timeframe::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("`{text}` is not a timeframe (one of {})", Timeframe::names().join(", ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeframes_parse_exactly_and_step_by_month() {
        assert_eq!(Timeframe::parse("1M"), Some(Timeframe::Mo1));
        assert_eq!(Timeframe::parse("1m"), Some(Timeframe::M1));
        assert_eq!(Timeframe::parse("1H"), None);
        let jan31 = Utc.with_ymd_and_hms(2024, 12, 1, 0, 0, 0).unwrap();
        assert_eq!(Timeframe::Mo1.next_bar(jan31), Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap());
        assert_eq!(Timeframe::H1.max_span(), Duration::days(30));
    }
}
