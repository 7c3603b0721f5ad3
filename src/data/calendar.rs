//! Market calendars: which instruments are forex, New York time (America/New_York from the tz
//! database), the NYSE holiday calendar with its observed-day rules, the NYSE
//! session (09:30–16:00 New York, Mon–Fri; 13:00 on early-close days) and forex's 24/5 week (Sunday 17:00 to Friday 17:00
//! New York). Used by gap analysis and by the IB simulator, and the timestamps at which bars exist.

use chrono::{Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc, Weekday};
use chrono_tz::America::New_York;

use crate::data::timeframe::Timeframe;
use crate::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstrumentKind {
    Stock,
    Forex,
}

/// ISO codes that make a six-letter symbol a currency pair (`EURUSD`).
const CURRENCIES: &[&str] = &[
    "USD", "EUR", "GBP", "JPY", "CHF", "AUD", "NZD", "CAD", "SEK", "NOK", "DKK", "HKD", "SGD", "CNH", "MXN", "ZAR",
    "TRY", "PLN", "CZK", "HUF", "ILS", "KRW", "INR", "RUB",
];

/// A `.` (`EUR.USD`) or a six-letter pair of currency codes → forex; anything else is a stock.
pub fn instrument_kind(symbol: &str) -> InstrumentKind {
    let symbol = symbol.to_ascii_uppercase();
    if symbol.contains('.') {
        return InstrumentKind::Forex;
    }
    if symbol.len() == 6 && CURRENCIES.contains(&&symbol[..3]) && CURRENCIES.contains(&&symbol[3..]) {
        return InstrumentKind::Forex;
    }
    InstrumentKind::Stock
}

fn nth_weekday(year: i32, month: u32, weekday: Weekday, n: u8) -> NaiveDate {
    NaiveDate::from_weekday_of_month_opt(year, month, weekday, n).expect("the nth weekday exists for n ≤ 4")
}

fn last_weekday(year: i32, month: u32, weekday: Weekday) -> NaiveDate {
    NaiveDate::from_weekday_of_month_opt(year, month, weekday, 5)
        .unwrap_or_else(|| nth_weekday(year, month, weekday, 4))
}

/// A New York wall-clock time on `date` as UTC (for session times, far from the 02:00 switch:
/// a time the switch skips is read as after it, a repeated one as its first occurrence).
pub fn new_york_to_utc(date: NaiveDate, hour: u32, minute: u32) -> Timestamp {
    let local = date.and_hms_opt(hour, minute, 0).expect("valid wall-clock time");
    match New_York.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
        LocalResult::None => New_York
            .from_local_datetime(&(local + Duration::hours(1)))
            .earliest()
            .expect("an hour after a skipped time exists")
            .with_timezone(&Utc),
    }
}

/// `ts` as New York wall-clock time.
pub fn utc_to_new_york(ts: Timestamp) -> NaiveDateTime {
    ts.with_timezone(&New_York).naive_local()
}

/// Western Easter Sunday (anonymous Gregorian algorithm).
fn easter(year: i32) -> NaiveDate {
    let a = year % 19;
    let b = year / 100;
    let c = year % 100;
    let d = b / 4;
    let e = b % 4;
    let f = (b + 8) / 25;
    let g = (b - f + 1) / 3;
    let h = (19 * a + b - d - g + 15) % 30;
    let i = c / 4;
    let k = c % 4;
    let l = (32 + 2 * e + 2 * i - h - k) % 7;
    let m = (a + 11 * h + 22 * l) / 451;
    let month = (h + l - 7 * m + 114) / 31;
    let day = (h + l - 7 * m + 114) % 31 + 1;
    NaiveDate::from_ymd_opt(year, month as u32, day as u32).expect("Easter is a real date")
}

/// A fixed-date holiday moved to Friday when it falls on Saturday, Monday when on Sunday.
fn observed(date: NaiveDate) -> NaiveDate {
    match date.weekday() {
        Weekday::Sat => date - Duration::days(1),
        Weekday::Sun => date + Duration::days(1),
        _ => date,
    }
}

/// The NYSE full-day holiday on `date`, if any (rules of NYSE Rule 7.2 since 1998 for MLK,
/// 2022 for Juneteenth). New Year's Day on a Saturday is not observed on the Friday before.
pub fn nyse_holiday(date: NaiveDate) -> Option<&'static str> {
    let year = date.year();
    let ymd = |m, d| NaiveDate::from_ymd_opt(year, m, d).expect("valid date");
    let new_year = ymd(1, 1);
    if new_year.weekday() != Weekday::Sat && date == observed(new_year) {
        return Some("New Year's Day");
    }
    let mut fixed: Vec<(NaiveDate, &'static str)> =
        vec![(observed(ymd(7, 4)), "Independence Day"), (observed(ymd(12, 25)), "Christmas Day")];
    if year >= 2022 {
        fixed.push((observed(ymd(6, 19)), "Juneteenth"));
    }
    let mut floating = vec![
        (nth_weekday(year, 2, Weekday::Mon, 3), "Presidents' Day"),
        (easter(year) - Duration::days(2), "Good Friday"),
        (last_weekday(year, 5, Weekday::Mon), "Memorial Day"),
        (nth_weekday(year, 9, Weekday::Mon, 1), "Labor Day"),
        (nth_weekday(year, 11, Weekday::Thu, 4), "Thanksgiving Day"),
    ];
    if year >= 1998 {
        floating.push((nth_weekday(year, 1, Weekday::Mon, 3), "Martin Luther King Jr. Day"));
    }
    fixed.into_iter().chain(floating).find(|(d, _)| *d == date).map(|(_, name)| name)
}

/// Why NYSE closes early (13:00 New York) on `date`, if it does: the day after Thanksgiving, and
/// 3 July and 24 December when they fall on Monday to Thursday (on a Friday they are the observed
/// holiday, or the holiday follows a weekend).
pub fn nyse_early_close(date: NaiveDate) -> Option<&'static str> {
    let year = date.year();
    let monday_to_thursday = matches!(date.weekday(), Weekday::Mon | Weekday::Tue | Weekday::Wed | Weekday::Thu);
    if date == nth_weekday(year, 11, Weekday::Thu, 4) + Duration::days(1) {
        Some("the day after Thanksgiving")
    } else if (date.month(), date.day()) == (7, 3) && monday_to_thursday {
        Some("the eve of Independence Day")
    } else if (date.month(), date.day()) == (12, 24) && monday_to_thursday {
        Some("Christmas Eve")
    } else {
        None
    }
}

pub fn is_weekend(date: NaiveDate) -> bool {
    matches!(date.weekday(), Weekday::Sat | Weekday::Sun)
}

pub fn is_nyse_trading_day(date: NaiveDate) -> bool {
    !is_weekend(date) && nyse_holiday(date).is_none()
}

/// The regular NYSE session of `date` in UTC (ending at 13:00 New York on early-close days),
/// `None` on weekends and holidays.
pub fn nyse_session(date: NaiveDate) -> Option<(Timestamp, Timestamp)> {
    let close = if nyse_early_close(date).is_some() { 13 } else { 16 };
    is_nyse_trading_day(date).then(|| (new_york_to_utc(date, 9, 30), new_york_to_utc(date, close, 0)))
}

/// Forex trades from Sunday 17:00 to Friday 17:00 New York time.
pub fn forex_open(ts: Timestamp) -> bool {
    let local = utc_to_new_york(ts);
    match local.weekday() {
        Weekday::Sat => false,
        Weekday::Sun => local.hour() >= 17,
        Weekday::Fri => local.hour() < 17,
        _ => true,
    }
}

fn midnight(date: NaiveDate) -> Timestamp {
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight"))
}

/// Whether instruments of `kind` trade at some point on `date`.
fn trades_on(kind: InstrumentKind, date: NaiveDate) -> bool {
    match kind {
        InstrumentKind::Stock => is_nyse_trading_day(date),
        InstrumentKind::Forex => !is_weekend(date),
    }
}

/// Whether instruments of `kind` trade on some day of the month starting on `first`.
fn month_trades(kind: InstrumentKind, first: NaiveDate) -> bool {
    let next = Timeframe::Mo1.next_bar(midnight(first)).date_naive();
    first.iter_days().take_while(|d| *d < next).any(|d| trades_on(kind, d))
}

/// Rounds `t` up to a multiple of `step` seconds counted from `origin`.
fn align_up(t: Timestamp, origin: Timestamp, step: Duration) -> Timestamp {
    let step = step.num_seconds();
    let offset = (t - origin).num_seconds();
    origin + Duration::seconds(offset.div_euclid(step) * step + if offset.rem_euclid(step) > 0 { step } else { 0 })
}

/// The next moment forex opens at or after `t` (Sunday 17:00 New York).
fn next_forex_open(t: Timestamp) -> Timestamp {
    if forex_open(t) {
        return t;
    }
    let local = utc_to_new_york(t);
    let days_to_sunday = match local.weekday() {
        Weekday::Fri => 2,
        Weekday::Sat => 1,
        _ => 0,
    };
    new_york_to_utc(local.date() + Duration::days(days_to_sunday), 17, 0)
}

/// The first bar time at or after `t`, as IB keys bars (see [`bar_times`]); `None` past 2200.
pub fn next_bar_time(kind: InstrumentKind, timeframe: Timeframe, t: Timestamp) -> Option<Timestamp> {
    let horizon = NaiveDate::from_ymd_opt(2200, 1, 1)?;
    let step = timeframe.interval();
    match (kind, timeframe.is_intraday()) {
        (InstrumentKind::Stock, true) => {
            let mut day = utc_to_new_york(t).date();
            while day < horizon {
                if let Some((open, close)) = nyse_session(day) {
                    let candidate = if t <= open { open } else { align_up(t, open, step) };
                    if candidate < close {
                        return Some(candidate);
                    }
                }
                day += Duration::days(1);
            }
            None
        }
        (InstrumentKind::Forex, true) => {
            let epoch = Utc.timestamp_opt(0, 0).single()?;
            let mut candidate = align_up(t, epoch, step);
            while candidate.date_naive() < horizon {
                if forex_open(candidate) {
                    return Some(candidate);
                }
                candidate = align_up(next_forex_open(candidate), epoch, step);
            }
            None
        }
        (_, false) => {
            let mut day = t.date_naive();
            if midnight(day) < t {
                day += Duration::days(1);
            }
            while day < horizon {
                let is_bar = match timeframe {
                    Timeframe::D1 => trades_on(kind, day),
                    Timeframe::W1 => {
                        day.weekday() == Weekday::Mon && (0..5).any(|i| trades_on(kind, day + Duration::days(i)))
                    }
                    _ => day.day() == 1 && month_trades(kind, day),
                };
                if is_bar {
                    return Some(midnight(day));
                }
                day += Duration::days(1);
            }
            None
        }
    }
}

/// The first bar time in `[start, end]`, if any.
pub fn first_bar_time(
    kind: InstrumentKind,
    timeframe: Timeframe,
    start: Timestamp,
    end: Timestamp,
) -> Option<Timestamp> {
    next_bar_time(kind, timeframe, start).filter(|t| *t <= end)
}

/// Every timestamp in `[start, end]` at which a bar of `timeframe` exists for an instrument of
/// `kind`, as IB keys them: intraday stock bars from the 09:30 open on the session's grid,
/// intraday forex bars on the UTC grid while the market is open, daily bars at midnight UTC of
/// trading days, weekly bars on Mondays and monthly bars on the 1st of periods with trading.
pub fn bar_times(kind: InstrumentKind, timeframe: Timeframe, start: Timestamp, end: Timestamp) -> Vec<Timestamp> {
    let mut out = Vec::new();
    let mut from = start;
    while let Some(t) = first_bar_time(kind, timeframe, from, end) {
        out.push(t);
        from = t + Duration::seconds(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn t(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn nyse_holidays_follow_the_observed_day_rules() {
        assert_eq!(nyse_holiday(d(2024, 7, 4)), Some("Independence Day"));
        assert_eq!(nyse_holiday(d(2024, 11, 28)), Some("Thanksgiving Day"));
        assert_eq!(nyse_holiday(d(2024, 3, 29)), Some("Good Friday"));
        assert_eq!(nyse_holiday(d(2024, 1, 15)), Some("Martin Luther King Jr. Day"));
        assert_eq!(nyse_holiday(d(2024, 6, 19)), Some("Juneteenth"));
        assert_eq!(nyse_holiday(d(2021, 6, 18)), None, "Juneteenth began in 2022");
        // July 4th 2026 is a Saturday: observed Friday the 3rd.
        assert_eq!(nyse_holiday(d(2026, 7, 3)), Some("Independence Day"));
        // Christmas 2022 was a Sunday: observed Monday the 26th.
        assert_eq!(nyse_holiday(d(2022, 12, 26)), Some("Christmas Day"));
        // New Year's Day 2022 was a Saturday: NYSE did not close on Friday 31 December 2021.
        assert_eq!(nyse_holiday(d(2021, 12, 31)), None);
        assert_eq!(nyse_holiday(d(2023, 1, 2)), Some("New Year's Day"));
        assert_eq!(nyse_holiday(d(2024, 7, 5)), None);
        assert_eq!(easter(2024), d(2024, 3, 31));
        assert_eq!(easter(2025), d(2025, 4, 20));
    }

    #[test]
    fn the_session_is_0930_to_1600_new_york_in_summer_and_winter() {
        assert_eq!(nyse_session(d(2024, 1, 2)).unwrap(), (t("2024-01-02T14:30:00Z"), t("2024-01-02T21:00:00Z")));
        assert_eq!(nyse_session(d(2024, 7, 2)).unwrap(), (t("2024-07-02T13:30:00Z"), t("2024-07-02T20:00:00Z")));
        assert!(nyse_session(d(2024, 7, 6)).is_none());
        assert_eq!(utc_to_new_york(t("2024-03-10T06:59:00Z")).hour(), 1);
        assert_eq!(utc_to_new_york(t("2024-03-10T07:00:00Z")).hour(), 3);
        assert_eq!(utc_to_new_york(t("2024-11-03T05:59:00Z")).hour(), 1);
        assert_eq!(utc_to_new_york(t("2024-11-03T06:00:00Z")).hour(), 1);
    }

    #[test]
    fn every_trading_session_1990_to_2035_opens_at_0930_new_york_time_by_the_tz_database() {
        let mut sessions = 0;
        for date in d(1990, 1, 1).iter_days().take_while(|d| *d < d_end()) {
            let Some((open, close)) = nyse_session(date) else { continue };
            let (open, close) = (open.with_timezone(&New_York), close.with_timezone(&New_York));
            assert_eq!((open.date_naive(), open.hour(), open.minute()), (date, 9, 30), "{date}");
            let closes_at = if nyse_early_close(date).is_some() { 13 } else { 16 };
            assert_eq!((close.hour(), close.minute()), (closes_at, 0), "{date}");
            sessions += 1;
        }
        assert!(sessions > 11_000, "{sessions} sessions");
    }

    fn d_end() -> NaiveDate {
        d(2036, 1, 1)
    }

    #[test]
    fn the_session_ends_at_1300_on_early_close_days() {
        // Friday after Thanksgiving 2024 (EST), Wednesday 3 July 2024 and Tuesday 24 December 2024.
        assert_eq!(nyse_session(d(2024, 11, 29)).unwrap().1, t("2024-11-29T18:00:00Z"));
        assert_eq!(nyse_session(d(2024, 7, 3)).unwrap().1, t("2024-07-03T17:00:00Z"));
        assert_eq!(nyse_session(d(2024, 12, 24)).unwrap().1, t("2024-12-24T18:00:00Z"));
        // 3 July 2026 is a Friday: the observed Independence Day, closed all day.
        assert!(nyse_session(d(2026, 7, 3)).is_none());
        // 24 December 2021 was a Friday: the observed Christmas Day.
        assert!(nyse_session(d(2021, 12, 24)).is_none());
        // 3 July 2025 (Thursday) closes early; 2 July 2024 does not.
        assert_eq!(nyse_early_close(d(2025, 7, 3)), Some("the eve of Independence Day"));
        assert_eq!(nyse_session(d(2024, 7, 2)).unwrap().1, t("2024-07-02T20:00:00Z"));
    }

    #[test]
    fn forex_trades_sunday_evening_to_friday_evening() {
        assert!(forex_open(t("2024-01-08T03:00:00Z")), "Monday 03:00 UTC");
        assert!(!forex_open(t("2024-01-06T12:00:00Z")), "Saturday");
        assert!(!forex_open(t("2024-01-07T21:00:00Z")), "Sunday 16:00 New York");
        assert!(forex_open(t("2024-01-07T22:00:00Z")), "Sunday 17:00 New York");
        assert!(forex_open(t("2024-01-05T21:59:00Z")), "Friday 16:59 New York");
        assert!(!forex_open(t("2024-01-05T22:00:00Z")), "Friday 17:00 New York");
    }

    #[test]
    fn instruments_are_classified_by_symbol() {
        assert_eq!(instrument_kind("EURUSD"), InstrumentKind::Forex);
        assert_eq!(instrument_kind("EUR.USD"), InstrumentKind::Forex);
        assert_eq!(instrument_kind("AAPL"), InstrumentKind::Stock);
        assert_eq!(instrument_kind("GOOGLE"), InstrumentKind::Stock);
    }

    #[test]
    fn bars_exist_only_when_the_market_trades() {
        let week =
            bar_times(InstrumentKind::Stock, Timeframe::H1, t("2024-07-01T00:00:00Z"), t("2024-07-07T23:59:00Z"));
        assert_eq!(
            week.len(),
            3 * 7 + 4,
            "three days of seven hourly bars, four on 3 July (13:00 close), none on 4 July"
        );
        assert!(week.iter().all(|b| b.date_naive() != d(2024, 7, 4)));
        assert_eq!(week[0], t("2024-07-01T13:30:00Z"));
        let daily =
            bar_times(InstrumentKind::Stock, Timeframe::D1, t("2024-07-01T00:00:00Z"), t("2024-07-07T00:00:00Z"));
        assert_eq!(daily.len(), 4);
        let fx = bar_times(InstrumentKind::Forex, Timeframe::H1, t("2024-01-05T00:00:00Z"), t("2024-01-08T23:00:00Z"));
        assert!(fx.contains(&t("2024-01-08T03:00:00Z")));
        assert!(!fx.iter().any(|b| b.date_naive() == d(2024, 1, 6)));
        assert_eq!(fx.iter().filter(|b| b.date_naive() == d(2024, 1, 7)).count(), 2, "22:00 and 23:00 UTC on Sunday");
        let minutes =
            bar_times(InstrumentKind::Stock, Timeframe::M1, t("2024-01-02T00:00:00Z"), t("2024-01-02T23:59:00Z"));
        assert_eq!(minutes.len(), 390);
        let weeks =
            bar_times(InstrumentKind::Stock, Timeframe::W1, t("2024-01-01T00:00:00Z"), t("2024-01-31T00:00:00Z"));
        assert_eq!(weeks.len(), 5);
        let months =
            bar_times(InstrumentKind::Forex, Timeframe::Mo1, t("2024-01-01T00:00:00Z"), t("2024-12-31T00:00:00Z"));
        assert_eq!(months.len(), 12);
    }
}
