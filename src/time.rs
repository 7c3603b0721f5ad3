//! Time helpers shared by every layer: UTC timestamps in the API's RFC 3339 form (`...Z`,
//! microseconds), and human durations (`500ms`, `2s`, `30d`) as used in config and query strings.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, SubsecRound, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// A point in time, always UTC.
pub type Timestamp = DateTime<Utc>;

/// The current time, to the microsecond (what the API shows and the store keeps).
pub fn now() -> Timestamp {
    Utc::now().trunc_subsecs(6)
}

/// `2026-11-26T19:08:22.512345Z` — the one spelling the API uses.
pub fn format(ts: &Timestamp) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Microseconds since the Unix epoch: how the store keeps time (sortable, portable integers).
pub fn to_micros(ts: &Timestamp) -> i64 {
    ts.timestamp_micros()
}

/// The inverse of [`to_micros`]; out-of-range values clamp to the epoch rather than panic.
pub fn from_micros(micros: i64) -> Timestamp {
    Utc.timestamp_micros(micros).single().unwrap_or_default()
}

/// Reads a timestamp in any spelling the hosts and clients use: RFC 3339 with `Z` or an offset,
/// with or without fractional seconds, a space instead of `T`, naive (meaning UTC), or a bare
/// date (midnight UTC).
pub fn parse_timestamp(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc).trunc_subsecs(6));
    }
    let spaced = text.replacen(' ', "T", 1);
    if let Ok(t) = DateTime::parse_from_rfc3339(&spaced) {
        return Some(t.with_timezone(&Utc).trunc_subsecs(6));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(&spaced, format) {
            return Some(Utc.from_utc_datetime(&t).trunc_subsecs(6));
        }
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| Utc.from_utc_datetime(&t))
}

/// An end date as people mean it (ends are inclusive): a bare date (`2025-12-31`) includes that
/// whole day, so it ends at its last second (`2025-12-31T23:59:59Z`); a date-time is as written.
pub fn parse_end(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    match chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        Ok(day) => day.and_hms_opt(23, 59, 59).map(|t| Utc.from_utc_datetime(&t)),
        Err(_) => parse_timestamp(text),
    }
}

/// `2024-01-02T00:00:00+00:00`: how we send times to the hosts (aware UTC).
pub fn format_for_host(ts: &Timestamp) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// Serde adapter for `Timestamp` fields in the API's spelling.
pub mod rfc3339 {
    use super::*;

    pub fn serialize<S: Serializer>(ts: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(ts))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text).map(|t| t.with_timezone(&Utc)).map_err(serde::de::Error::custom)
    }

    /// The same for `Option<Timestamp>` (`null` when absent).
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(ts: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
            match ts {
                Some(ts) => s.serialize_str(&format(ts)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
            let text = Option::<String>::deserialize(d)?;
            text.map(|t| {
                DateTime::parse_from_rfc3339(&t).map(|t| t.with_timezone(&Utc)).map_err(serde::de::Error::custom)
            })
            .transpose()
        }
    }
}

/// Parses `250ms`, `2s`, `1.5s`, `5m`, `1h`, `30d`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("`{text}` is not a duration (examples: 500ms, 2s, 5m, 1h, 30d)"))?;
    let seconds_per_unit = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3_600.0,
        "d" => 86_400.0,
        other => {
            return Err(format!("`{other}` is not a duration unit in `{text}` (use ms, s, m, h or d)"));
        }
    };
    let seconds = value * seconds_per_unit;
    if !seconds.is_finite() || seconds > 10.0 * 365.0 * 86_400.0 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A [`Duration`] that config files spell as text (`"2s"`), see [`parse_duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(HumanDuration).map_err(serde::de::Error::custom)
    }
}

impl From<HumanDuration> for Duration {
    fn from(value: HumanDuration) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn every_host_timestamp_spelling_is_accepted() {
        let expected = from_micros(1_704_205_800_000_000); // 2024-01-02T14:30:00Z
        for text in [
            "2024-01-02T14:30:00Z",
            "2024-01-02T14:30:00.000Z",
            "2024-01-02T14:30:00+00:00",
            "2024-01-02T14:30:00.000000+00:00",
            "2024-01-02T09:30:00-05:00",
            "2024-01-02T14:30:00",
            "2024-01-02 14:30:00",
            "2024-01-02T14:30:00.000",
        ] {
            assert_eq!(parse_timestamp(text), Some(expected), "{text}");
        }
        assert_eq!(parse_timestamp("2024-01-02"), Some(from_micros(1_704_153_600_000_000)));
        assert_eq!(parse_timestamp("yesterday"), None);
        // A bare end date includes its day; a date-time end is as written.
        assert_eq!(parse_end("2025-12-31"), parse_timestamp("2025-12-31T23:59:59Z"));
        assert_eq!(parse_end("2025-12-31T12:00:00Z"), parse_timestamp("2025-12-31T12:00:00Z"));
        assert_eq!(format_for_host(&expected), "2024-01-02T14:30:00+00:00");
    }

    #[test]
    fn timestamps_round_trip_through_micros_and_text() {
        let ts = DateTime::parse_from_rfc3339("2026-11-26T19:08:22.512345Z").unwrap().with_timezone(&Utc);
        assert_eq!(from_micros(to_micros(&ts)), ts);
        assert_eq!(format(&ts), "2026-11-26T19:08:22.512345Z");
    }
}
