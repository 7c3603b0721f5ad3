//! Gap analysis (data-load.md §2): two consecutive cached bars more than 1.5 bar intervals apart
//! leave a gap `(prev + interval, next)`, classified by the calendar. Only `unexpected` and
//! `market_closure` gaps are worth fetching; the rest are the market being closed.

use chrono::Duration;
use serde::Serialize;

use crate::data::calendar::{self, InstrumentKind};
use crate::data::frame::to_timestamp;
use crate::data::timeframe::Timeframe;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapClass {
    ExpectedWeekend,
    ExpectedTradingHours,
    ExpectedHoliday,
    MarketClosure,
    Unexpected,
}

impl GapClass {
    /// Missing data (as opposed to a closed market).
    pub fn is_fetched(self) -> bool {
        matches!(self, GapClass::MarketClosure | GapClass::Unexpected)
    }
}

/// A gap: bars are missing from `start` (inclusive) to `end` (exclusive), Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub start: i64,
    pub end: i64,
    pub class: GapClass,
}

/// Longer than this and not explained by the calendar: a market closure.
const MARKET_CLOSURE_SECONDS: i64 = 72 * 3600;

/// Classifies the missing span `[start, end)`.
pub fn classify(kind: InstrumentKind, timeframe: Timeframe, start: i64, end: i64) -> GapClass {
    let (from, to) = (to_timestamp(start), to_timestamp(end - 1));
    if calendar::first_bar_time(kind, timeframe, from, to).is_some() {
        return if end - start > MARKET_CLOSURE_SECONDS { GapClass::MarketClosure } else { GapClass::Unexpected };
    }
    if kind == InstrumentKind::Forex {
        return GapClass::ExpectedWeekend;
    }
    let (first_day, last_day) = (calendar::utc_to_new_york(from).date(), calendar::utc_to_new_york(to).date());
    let days = || first_day.iter_days().take_while(move |d| *d <= last_day);
    if days().any(|d| !calendar::is_weekend(d) && calendar::nyse_holiday(d).is_some()) {
        GapClass::ExpectedHoliday
    } else if days().any(calendar::is_weekend) {
        GapClass::ExpectedWeekend
    } else {
        GapClass::ExpectedTradingHours
    }
}

/// Every gap between consecutive bars of a sorted series, by consecutive differences.
pub fn find_gaps(ts: &[i64], timeframe: Timeframe, kind: InstrumentKind) -> Vec<Gap> {
    let interval = timeframe.interval().num_seconds();
    let threshold = interval * 3 / 2;
    let mut gaps = Vec::new();
    for pair in ts.windows(2) {
        if pair[1] - pair[0] > threshold {
            let start = to_timestamp(pair[0]);
            let start = timeframe.next_bar(start).timestamp();
            gaps.push(Gap { start, end: pair[1], class: classify(kind, timeframe, start, pair[1]) });
        }
    }
    gaps
}

/// For reports: how long a gap is.
pub fn duration(gap: &Gap) -> Duration {
    Duration::seconds(gap.end - gap.start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::calendar::bar_times;
    use crate::data::repository::parse_ts;

    fn s(text: &str) -> i64 {
        parse_ts(text).unwrap()
    }

    fn series(kind: InstrumentKind, tf: Timeframe, from: &str, to: &str) -> Vec<i64> {
        bar_times(kind, tf, to_timestamp(s(from)), to_timestamp(s(to))).iter().map(|t| t.timestamp()).collect()
    }

    fn classes(ts: &[i64], tf: Timeframe, kind: InstrumentKind) -> Vec<GapClass> {
        find_gaps(ts, tf, kind).into_iter().map(|g| g.class).collect()
    }

    #[test]
    fn a_week_around_independence_day_has_only_expected_gaps() {
        let daily = series(InstrumentKind::Stock, Timeframe::D1, "2024-06-28", "2024-07-10");
        let gaps = find_gaps(&daily, Timeframe::D1, InstrumentKind::Stock);
        assert_eq!(
            gaps.iter().map(|g| g.class).collect::<Vec<_>>(),
            vec![GapClass::ExpectedWeekend, GapClass::ExpectedHoliday, GapClass::ExpectedWeekend,]
        );
        assert_eq!(gaps[1].start, s("2024-07-04"));
        let hourly = series(InstrumentKind::Stock, Timeframe::H1, "2024-07-01", "2024-07-08T23:00:00Z");
        let classes = classes(&hourly, Timeframe::H1, InstrumentKind::Stock);
        assert!(classes.contains(&GapClass::ExpectedHoliday));
        assert!(classes.contains(&GapClass::ExpectedTradingHours), "overnight");
        assert!(classes.iter().all(|c| !c.is_fetched()), "{classes:?}");
    }

    #[test]
    fn thanksgiving_and_good_friday_are_holidays() {
        let daily = series(InstrumentKind::Stock, Timeframe::D1, "2024-11-25", "2024-11-29");
        assert_eq!(classes(&daily, Timeframe::D1, InstrumentKind::Stock), vec![GapClass::ExpectedHoliday]);
        let hourly = series(InstrumentKind::Stock, Timeframe::H1, "2024-03-28", "2024-04-01T23:00:00Z");
        assert!(classes(&hourly, Timeframe::H1, InstrumentKind::Stock).contains(&GapClass::ExpectedHoliday));
    }

    #[test]
    fn the_afternoon_of_an_early_close_is_not_a_hole() {
        // Hourly bars as IB has them: Wednesday 27 November 2024 to 16:00, Friday 29th (after
        // Thanksgiving) to 13:00 New York, then Monday 2 December.
        let bars = [
            "2024-11-27T20:30:00Z",
            "2024-11-29T14:30:00Z",
            "2024-11-29T15:30:00Z",
            "2024-11-29T16:30:00Z",
            "2024-11-29T17:30:00Z",
            "2024-12-02T14:30:00Z",
        ]
        .map(s);
        assert_eq!(
            classes(&bars, Timeframe::H1, InstrumentKind::Stock),
            vec![GapClass::ExpectedHoliday, GapClass::ExpectedWeekend]
        );
    }

    #[test]
    fn a_forex_weekend_is_expected_and_a_weekday_hole_is_not() {
        let hourly = series(InstrumentKind::Forex, Timeframe::H1, "2024-01-05", "2024-01-09");
        assert_eq!(classes(&hourly, Timeframe::H1, InstrumentKind::Forex), vec![GapClass::ExpectedWeekend]);
        let mut holed = hourly.clone();
        holed.retain(|t| !(s("2024-01-08T10:00:00Z")..=s("2024-01-08T12:00:00Z")).contains(t));
        let gaps = find_gaps(&holed, Timeframe::H1, InstrumentKind::Forex);
        let hole = gaps.iter().find(|g| g.class == GapClass::Unexpected).unwrap();
        assert_eq!((hole.start, hole.end), (s("2024-01-08T10:00:00Z"), s("2024-01-08T13:00:00Z")));
    }

    #[test]
    fn an_intraday_session_edge_is_expected_but_a_missing_hour_is_not() {
        let hourly = series(InstrumentKind::Stock, Timeframe::H1, "2024-01-02", "2024-01-03T23:00:00Z");
        assert_eq!(classes(&hourly, Timeframe::H1, InstrumentKind::Stock), vec![GapClass::ExpectedTradingHours]);
        let mut holed = hourly;
        holed.retain(|t| *t != s("2024-01-02T16:30:00Z"));
        assert_eq!(
            classes(&holed, Timeframe::H1, InstrumentKind::Stock),
            vec![GapClass::Unexpected, GapClass::ExpectedTradingHours]
        );
    }

    #[test]
    fn a_long_unexplained_hole_is_a_market_closure() {
        let daily = series(InstrumentKind::Stock, Timeframe::D1, "2024-01-02", "2024-01-31");
        let holed: Vec<i64> = daily.into_iter().filter(|t| !(s("2024-01-08")..=s("2024-01-12")).contains(t)).collect();
        let gaps = find_gaps(&holed, Timeframe::D1, InstrumentKind::Stock);
        assert!(gaps.iter().any(|g| g.class == GapClass::MarketClosure && duration(g) > Duration::hours(72)));
    }
}
