//! A data-load request, validated at the edge ("parse, don't validate"): a [`Symbol`] that can
//! safely become part of a file name, a [`Timeframe`], a [`Mode`] and a date range.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;

use crate::data::timeframe::Timeframe;
use crate::invalid::Invalid;
use crate::time::{self, Timestamp};

/// 1–20 characters of `A-Z a-z 0-9 . _ -`, upper-cased, not starting with `.` or `-` — so it can
/// never name a file outside the data folder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Symbol(String);

impl Symbol {
    pub const MAX_LEN: usize = 20;

    pub fn parse(text: &str) -> Result<Symbol, Invalid> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Invalid::new("symbol", "symbol must not be empty"));
        }
        if text.chars().count() > Self::MAX_LEN {
            return Err(Invalid::new("symbol", format!("symbol must be at most {} characters", Self::MAX_LEN)));
        }
        if !text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return Err(Invalid::new(
                "symbol",
                format!("symbol `{text}` may only contain letters, digits, '.', '_' and '-'"),
            ));
        }
        if text.starts_with(['.', '-']) {
            return Err(Invalid::new("symbol", format!("symbol `{text}` must start with a letter, digit or '_'")));
        }
        Ok(Symbol(text.to_ascii_uppercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Read back from stored metadata: validated again, so a hand-edited record cannot name a file
/// outside the data folder either.
impl<'de> Deserialize<'de> for Symbol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Symbol::parse(&text).map_err(|e| serde::de::Error::custom(e.message))
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn parse_timeframe(text: &str) -> Result<Timeframe, Invalid> {
    Timeframe::parse(text.trim()).ok_or_else(|| {
        Invalid::new("timeframe", format!("timeframe `{text}` is not supported")).allowed(json!(Timeframe::names()))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Read the cache only; no host calls.
    Local,
    /// From the end of the cache to now, before it when asked, and holes inside it.
    Tail,
    /// From the start (default: the head timestamp) up to the start of the cache.
    Backfill,
    /// Everything missing in the range.
    Full,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::Tail => "tail",
            Mode::Backfill => "backfill",
            Mode::Full => "full",
        }
    }

    fn parse(text: &str, allowed: &[Mode]) -> Result<Mode, Invalid> {
        allowed.iter().copied().find(|m| m.as_str() == text.trim()).ok_or_else(|| {
            Invalid::new("mode", format!("mode `{text}` is not one of {}", names(allowed)))
                .allowed(json!(allowed.iter().map(|m| m.as_str()).collect::<Vec<_>>()))
        })
    }
}

fn names(modes: &[Mode]) -> String {
    modes.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
}

/// `filters` of the request (kept in the metadata; `trading_hours_only` drops stock bars
/// outside the regular session).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Filters {
    pub trading_hours_only: bool,
    pub include_extended: bool,
}

/// The JSON body of `POST /data/load` and `/data/acquire/download`, as sent. A field we do not
/// know is refused (422 naming it) rather than silently ignored — a misspelt `start_dat` would
/// otherwise load a different range than asked for.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadBody {
    /// 1–20 characters of `A-Z a-z 0-9 . _ -`.
    #[schema(pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,19}$")]
    pub symbol: String,
    /// `1m 5m 15m 30m 1h 2h 4h 1d 1w 1M`.
    #[schema(pattern = "^(1m|5m|15m|30m|1h|2h|4h|1d|1w|1M)$")]
    pub timeframe: String,
    /// `local` (default), `tail`, `backfill` or `full`.
    #[schema(pattern = "^(local|tail|backfill|full)$")]
    #[serde(default)]
    pub mode: Option<String>,
    /// `YYYY-MM-DD` or ISO 8601; inclusive.
    #[serde(default)]
    pub start_date: Option<String>,
    /// `YYYY-MM-DD` (that whole day included) or ISO 8601 (inclusive).
    #[serde(default)]
    pub end_date: Option<String>,
    #[serde(default)]
    pub filters: Option<Filters>,
    /// Sent by ktrdr's data clients; accepted and not used (saves follow `data.save_interval`).
    #[serde(default, skip_serializing)]
    #[schema(ignore)]
    pub periodic_save_minutes: Option<f64>,
}

/// A validated data load. As JSON it is the operation's `metadata` (api.md), which is how a
/// replica that takes the load over reads it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadSpec {
    pub symbol: Symbol,
    pub timeframe: Timeframe,
    pub mode: Mode,
    #[serde(rename = "start_date", with = "time::rfc3339::option")]
    pub start: Option<Timestamp>,
    #[serde(rename = "end_date", with = "time::rfc3339::option")]
    pub end: Option<Timestamp>,
    #[serde(default)]
    pub parameters: LoadParameters,
}

/// `metadata.parameters` of a load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadParameters {
    #[serde(default)]
    pub filters: Filters,
}

/// A start or end date; a bare end date includes its whole day ([`time::parse_end`]).
fn parse_date(field: &str, text: Option<&str>) -> Result<Option<Timestamp>, Invalid> {
    let parse = if field == "end_date" { time::parse_end } else { time::parse_timestamp };
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(text) => parse(text).map(Some).ok_or_else(|| {
            Invalid::new(field, format!("{field} `{text}` is not a date (use YYYY-MM-DD or an ISO 8601 date-time)"))
        }),
    }
}

impl LoadSpec {
    /// `download_only`: `/data/acquire/download` requires one of the three download modes.
    pub fn from_body(body: &LoadBody, download_only: bool) -> Result<LoadSpec, Invalid> {
        let symbol = Symbol::parse(&body.symbol)?;
        let timeframe = parse_timeframe(&body.timeframe)?;
        let mode = match (body.mode.as_deref(), download_only) {
            (None, false) => Mode::Local,
            (None, true) => return Err(Invalid::new("mode", "mode is required: tail, backfill or full")),
            (Some(text), false) => Mode::parse(text, &[Mode::Local, Mode::Tail, Mode::Backfill, Mode::Full])?,
            (Some(text), true) => Mode::parse(text, &[Mode::Tail, Mode::Backfill, Mode::Full])?,
        };
        let start = parse_date("start_date", body.start_date.as_deref())?;
        let end = parse_date("end_date", body.end_date.as_deref())?;
        if let (Some(s), Some(e)) = (start, end)
            && s > e
        {
            return Err(Invalid::new(
                "start_date",
                format!("start_date ({}) is after end_date ({})", time::format(&s), time::format(&e)),
            ));
        }
        let parameters = LoadParameters { filters: body.filters.unwrap_or_default() };
        Ok(LoadSpec { symbol, timeframe, mode, start, end, parameters })
    }

    /// `{SYMBOL}_{tf}.csv`
    pub fn file_name(&self) -> String {
        file_name(&self.symbol, self.timeframe)
    }
}

pub fn file_name(symbol: &Symbol, timeframe: Timeframe) -> String {
    format!("{}_{}.csv", symbol.as_str(), timeframe.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(symbol: &str, timeframe: &str) -> LoadBody {
        LoadBody {
            symbol: symbol.into(),
            timeframe: timeframe.into(),
            mode: None,
            start_date: None,
            end_date: None,
            filters: None,
            periodic_save_minutes: None,
        }
    }

    #[test]
    fn symbols_that_could_escape_the_data_folder_are_refused() {
        for bad in
            ["../../etc/passwd", "AAPL/../x", "..", ".hidden", "-x", "a b", "AAPL\0", "", &"A".repeat(500), "ÄPL"]
        {
            assert!(Symbol::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(Symbol::parse("eur.usd").unwrap().as_str(), "EUR.USD");
        assert_eq!(Symbol::parse("BRK-B").unwrap().as_str(), "BRK-B");
    }

    #[test]
    fn bodies_are_validated_field_by_field() {
        assert_eq!(LoadSpec::from_body(&body("AAPL", "3h"), false).unwrap_err().field, "timeframe");
        let mut b = body("AAPL", "1h");
        b.mode = Some("sideways".into());
        assert_eq!(LoadSpec::from_body(&b, false).unwrap_err().field, "mode");
        b.mode = Some("local".into());
        assert_eq!(LoadSpec::from_body(&b, true).unwrap_err().field, "mode", "download needs a download mode");
        b.mode = Some("tail".into());
        b.start_date = Some("2024-03-01".into());
        b.end_date = Some("2024-01-01T00:00:00Z".into());
        assert_eq!(LoadSpec::from_body(&b, true).unwrap_err().field, "start_date");
        b.end_date = Some("not a date".into());
        assert_eq!(LoadSpec::from_body(&b, true).unwrap_err().field, "end_date");
        b.end_date = Some("2024-04-01".into());
        let spec = LoadSpec::from_body(&b, true).unwrap();
        assert_eq!(spec.mode, Mode::Tail);
        assert_eq!(spec.end, time::parse_timestamp("2024-04-01T23:59:59Z"), "a bare end date includes its day");
        assert_eq!(spec.file_name(), "AAPL_1h.csv");
    }

    #[test]
    fn metadata_written_by_earlier_versions_reads_back_as_the_same_request() {
        // As `LoadSpec::metadata()` wrote it by hand before the request became a typed one.
        let stored = json!({
            "symbol": "AAPL", "timeframe": "1h", "mode": "tail",
            "start_date": "2024-03-01T00:00:00.000000Z", "end_date": null,
            "parameters": { "filters": { "trading_hours_only": true, "include_extended": false } },
        });
        let spec: LoadSpec = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(spec.symbol.as_str(), "AAPL");
        assert_eq!(spec.mode, Mode::Tail);
        assert!(spec.parameters.filters.trading_hours_only);
        assert_eq!(serde_json::to_value(&spec).unwrap(), stored, "the wire shape of metadata is unchanged");
        let escaping =
            json!({ "symbol": "../etc", "timeframe": "1h", "mode": "tail", "start_date": null, "end_date": null });
        assert!(serde_json::from_value::<LoadSpec>(escaping).is_err());
    }
}
