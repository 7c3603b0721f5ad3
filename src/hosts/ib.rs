//! The IB host service's protocol (hosts.md §1): historical bars (through the pacing limiter),
//! symbol validation, head timestamps, health and the state of the gateway behind the host.
//! Domain errors arrive as HTTP 200 with `"success": false`; they are classified here into what a
//! caller can act on.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::hosts::pacing::{PacingKey, PacingLimiter};
use crate::hosts::{Call, HostClient, HostError, HostErrorKind, Retry};

/// Said when the IB host reports its gateway disconnected: the cause, and what to do about it.
pub const GATEWAY_DOWN: &str = "the IB host reports its gateway is not connected — start or log in to TWS/IB Gateway";
use crate::time::{self, Timestamp};

/// One OHLCV bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub timestamp: Timestamp,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
}

/// What went wrong with an IB call, in the terms a data load acts on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IbError {
    /// IB had no bars for the window ("No data returned for …"): an empty segment, not a failure.
    #[error("{0}")]
    NoData(String),
    /// Permanent: the load fails with this message.
    #[error("{0}")]
    UnknownSymbol(String),
    /// The window starts before the first bar IB has; clamp to `head` and go on.
    #[error("{message}")]
    BeforeHead { head: Timestamp, message: String },
    /// IB pacing violation: the limiter now holds everything back for a while.
    #[error("{0}")]
    Pacing(String),
    /// Worth retrying later (connectivity, timeouts, 5xx, unknown host-side errors).
    #[error("{0}")]
    Transient(String),
    /// The request itself was refused (4xx, unreadable answer): retrying will not help.
    #[error("{0}")]
    Rejected(String),
    /// The IB host reports its gateway disconnected: nothing IB-side can succeed until it is back.
    #[error("{0}")]
    GatewayDown(String),
    #[error("cancelled")]
    Cancelled,
}

/// What the IB host says of its gateway (`/health/detailed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gateway {
    Connected,
    Disconnected,
    /// The host did not say (no answer in time, or a host without `/health/detailed`).
    Unknown,
}

impl Gateway {
    /// `ib_gateway_connected` as our health endpoint reports it.
    pub fn connected(self) -> Option<bool> {
        match self {
            Gateway::Connected => Some(true),
            Gateway::Disconnected => Some(false),
            Gateway::Unknown => None,
        }
    }
}

impl From<HostError> for IbError {
    fn from(e: HostError) -> Self {
        if e.is_cancelled() {
            IbError::Cancelled
        } else if e.is_transient() || matches!(e.kind, HostErrorKind::Status(500..)) {
            IbError::Transient(e.to_string())
        } else {
            IbError::Rejected(e.to_string())
        }
    }
}

/// Classifies the `error` text of a `"success": false` answer.
pub fn classify(error: &str) -> IbError {
    // The host's words go into records: capped, on one line.
    let error = &crate::hosts::cap_words(error);
    let lower = error.to_ascii_lowercase();
    if lower.starts_with("no data returned") || lower.contains("returned no data") {
        return IbError::NoData(error.to_owned());
    }
    if lower.contains("symbol validation failed") || (lower.contains("symbol") && lower.contains("not found")) {
        return IbError::UnknownSymbol(error.to_owned());
    }
    if lower.contains("pacing violation") || lower.contains("error 162") || lower.contains("error 420") {
        return IbError::Pacing(error.to_owned());
    }
    if let Some(at) = lower.find("head timestamp:") {
        let rest = error[at + "head timestamp:".len()..].trim().trim_end_matches('.');
        if let Some(head) = time::parse_timestamp(rest) {
            return IbError::BeforeHead { head, message: error.to_owned() };
        }
    }
    IbError::Transient(error.to_owned())
}

#[derive(Deserialize)]
struct HistoricalAnswer {
    success: bool,
    data: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct BarFields {
    open: Option<f64>,
    high: Option<f64>,
    low: Option<f64>,
    close: Option<f64>,
    volume: Option<f64>,
}

/// Decodes the `data` string of a historical answer: a JSON object keyed by timestamp. Bars
/// without prices are dropped; the result is sorted by time.
pub fn parse_bars(data: &str) -> Result<Vec<Bar>, String> {
    let map: Map<String, Value> = serde_json::from_str(data).map_err(|e| format!("bars are not a JSON object: {e}"))?;
    let mut bars = Vec::with_capacity(map.len());
    for (key, value) in map {
        let timestamp = time::parse_timestamp(&key)
            .or_else(|| key.parse::<i64>().ok().map(|ms| time::from_micros(ms.saturating_mul(1000))))
            .ok_or_else(|| format!("`{key}` is not a timestamp"))?;
        let f: BarFields = serde_json::from_value(value).map_err(|e| format!("bar {key}: {e}"))?;
        let (Some(open), Some(high), Some(low), Some(close)) = (f.open, f.high, f.low, f.close) else {
            continue;
        };
        bars.push(Bar { timestamp, open, high, low, close, volume: f.volume.unwrap_or(0.0) });
    }
    bars.sort_by_key(|b| b.timestamp);
    Ok(bars)
}

/// The answer of `/data/validate` and `/data/symbol-info/{symbol}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Validation {
    pub is_valid: bool,
    pub error_message: Option<String>,
    pub contract_info: Option<Value>,
    #[serde(default)]
    pub head_timestamps: std::collections::HashMap<String, Option<String>>,
}

impl Validation {
    /// The head timestamp IB reported for `timeframe`, if any.
    pub fn head(&self, timeframe: &str) -> Option<Timestamp> {
        self.head_timestamps.get(timeframe).and_then(|t| t.as_deref()).and_then(time::parse_timestamp).or_else(|| {
            self.contract_info
                .as_ref()
                .and_then(|c| c.get("head_timestamp"))
                .and_then(Value::as_str)
                .and_then(time::parse_timestamp)
        })
    }
}

#[derive(Deserialize)]
struct ValidationAnswer {
    success: bool,
    #[serde(flatten)]
    validation: Validation,
    error: Option<String>,
}

#[derive(Deserialize)]
struct HeadAnswer {
    success: bool,
    timestamp: Option<String>,
    error: Option<String>,
}

/// The IB host service, with our side's pacing.
#[derive(Clone)]
pub struct IbClient {
    host: HostClient,
    pacing: Arc<PacingLimiter>,
    /// The last gateway state the host reported, and when.
    gateway: Arc<Mutex<Option<(Instant, Gateway)>>>,
}

impl IbClient {
    pub fn new(host: HostClient, pacing: Arc<PacingLimiter>) -> Self {
        Self { host, pacing, gateway: Arc::new(Mutex::new(None)) }
    }

    /// Whether the host's gateway is connected, as `/health/detailed` says. The answer is reused
    /// for the health probes' `health_ttl` unless `fresh` asks for a new one (after a call
    /// stalled or failed). Asked with the health probes' short timeout: a host too slow to
    /// answer is `Unknown`, never a reason to wait.
    pub async fn gateway(&self, fresh: bool) -> Gateway {
        let settings = self.host.settings();
        if !fresh
            && let Some((at, state)) = *self.gateway.lock()
            && at.elapsed() < settings.health_ttl
        {
            return state;
        }
        let call =
            Call::get("/health/detailed", "/health/detailed").timeout(settings.health_timeout).retry(Retry::Never);
        let state = match self.host.json::<Value>(&call, &CancellationToken::new()).await {
            Ok(body) => match body.get("ib_gateway_connected").and_then(Value::as_bool) {
                Some(true) => Gateway::Connected,
                Some(false) => Gateway::Disconnected,
                None => Gateway::Unknown,
            },
            Err(e) => {
                tracing::debug!(error = %e, "IB gateway state unknown");
                Gateway::Unknown
            }
        };
        *self.gateway.lock() = Some((Instant::now(), state));
        state
    }

    pub fn host(&self) -> &HostClient {
        &self.host
    }

    pub fn pacing(&self) -> &PacingLimiter {
        &self.pacing
    }

    /// Bars of `symbol`/`timeframe` in `[start, end]` (both inclusive), fetched for `operation_id`.
    /// Waits for the pacing limiter first, reporting the time left through `on_wait`; a pacing
    /// violation from the host makes the limiter hold back. Not retried here: a repeat must go
    /// through the limiter.
    #[allow(clippy::too_many_arguments)]
    pub async fn historical(
        &self,
        operation_id: &str,
        symbol: &str,
        timeframe: &str,
        start: Timestamp,
        end: Timestamp,
        token: &CancellationToken,
        on_wait: impl FnMut(Duration),
    ) -> Result<Vec<Bar>, IbError> {
        let (start, end) = (time::format_for_host(&start), time::format_for_host(&end));
        let key =
            PacingKey { contract: symbol.to_ascii_uppercase(), request: format!("{symbol}|{timeframe}|{start}|{end}") };
        self.pacing.acquire(&key, token, on_wait).await.map_err(|_| IbError::Cancelled)?;
        let body =
            json!({ "symbol": symbol, "timeframe": timeframe, "start": start, "end": end, "instrument_type": null });
        let call = Call::post("/data/historical", "/data/historical", &body)
            .retry(Retry::ConnectOnly)
            .for_operation(operation_id);
        let answer: HistoricalAnswer = self.host.json(&call, token).await?;
        if !answer.success {
            let error = classify(answer.error.as_deref().unwrap_or("the IB host failed without a message"));
            if matches!(error, IbError::Pacing(_)) {
                self.pacing.penalize();
            }
            return Err(error);
        }
        parse_bars(answer.data.as_deref().unwrap_or("{}"))
            .map_err(|e| IbError::Rejected(format!("IB host answer: {e}")))
    }

    /// Validates a symbol and fetches its contract and head timestamps.
    pub async fn validate(
        &self,
        symbol: &str,
        timeframes: &[&str],
        token: &CancellationToken,
    ) -> Result<Validation, IbError> {
        let call =
            Call::post("/data/validate", "/data/validate", &json!({ "symbol": symbol, "timeframes": timeframes }))
                .retry(Retry::Safe);
        let answer: ValidationAnswer = self.host.json(&call, token).await?;
        if !answer.success {
            return Err(classify(answer.error.as_deref().unwrap_or("symbol validation failed")));
        }
        Ok(answer.validation)
    }

    /// `GET /data/symbol-info/{symbol}`: like [`validate`](Self::validate) for `1h`.
    pub async fn symbol_info(&self, symbol: &str, token: &CancellationToken) -> Result<Validation, IbError> {
        let call = Call::get("/data/symbol-info/{symbol}", format!("/data/symbol-info/{symbol}"));
        let answer: ValidationAnswer = self.host.json(&call, token).await?;
        if !answer.success {
            return Err(classify(answer.error.as_deref().unwrap_or("symbol lookup failed")));
        }
        Ok(answer.validation)
    }

    /// The earliest bar IB has. A host-side failure means "unknown" (`None`), not an error.
    pub async fn head_timestamp(
        &self,
        symbol: &str,
        timeframe: &str,
        instrument_type: Option<&str>,
        token: &CancellationToken,
    ) -> Result<Option<Timestamp>, IbError> {
        let mut call = Call::get("/data/head-timestamp", "/data/head-timestamp")
            .query("symbol", symbol)
            .query("timeframe", timeframe);
        if let Some(kind) = instrument_type {
            call = call.query("instrument_type", kind);
        }
        let answer: HeadAnswer = self.host.json(&call, token).await?;
        if !answer.success {
            tracing::info!(symbol, error = answer.error.as_deref().unwrap_or(""), "IB head timestamp unknown");
            return Ok(None);
        }
        Ok(answer.timestamp.as_deref().and_then(time::parse_timestamp))
    }

    /// `GET /health/detailed`: the host's view of its gateway connection.
    pub async fn health_detailed(&self, token: &CancellationToken) -> Result<Value, IbError> {
        Ok(self.host.json(&Call::get("/health/detailed", "/health/detailed"), token).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> Timestamp {
        time::parse_timestamp(text).unwrap()
    }

    #[test]
    fn the_documented_success_body_decodes_into_sorted_bars() {
        let body = r#"{"success":true,"rows":2,"error":null,
 "data":"{\"2024-01-02T15:30:00.000Z\":{\"open\":185.6,\"high\":186.1,\"low\":185.0,\"close\":185.9,\"volume\":1200.0},\"2024-01-02T14:30:00.000Z\":{\"open\":187.15,\"high\":188.44,\"low\":183.89,\"close\":185.64,\"volume\":82488700.0}}"}"#;
        let answer: HistoricalAnswer = serde_json::from_str(body).unwrap();
        let bars = parse_bars(answer.data.as_deref().unwrap()).unwrap();
        assert_eq!(bars.len(), 2);
        assert_eq!(
            bars[0],
            Bar {
                timestamp: t("2024-01-02T14:30:00Z"),
                open: 187.15,
                high: 188.44,
                low: 183.89,
                close: 185.64,
                volume: 82488700.0
            }
        );
        assert_eq!(bars[1].timestamp, t("2024-01-02T15:30:00Z"));
        assert!(parse_bars("{}").unwrap().is_empty());
        let naive =
            parse_bars(r#"{"2024-01-02 14:30:00":{"open":1,"high":2,"low":0.5,"close":1.5,"volume":null}}"#).unwrap();
        assert_eq!(naive[0].volume, 0.0);
    }

    #[test]
    fn every_documented_error_body_is_classified() {
        let error = |body: &str| {
            let answer: HistoricalAnswer = serde_json::from_str(body).unwrap();
            assert!(!answer.success);
            classify(answer.error.as_deref().unwrap())
        };
        assert!(matches!(
            error(r#"{"success":false,"data":null,"rows":null,"error":"No data returned for AAPL 1h"}"#),
            IbError::NoData(_)
        ));
        assert!(matches!(
            error(r#"{"success":false,"data":null,"rows":null,"error":"Symbol validation failed: Symbol XYZ not found"}"#),
            IbError::UnknownSymbol(m) if m == "Symbol validation failed: Symbol XYZ not found"
        ));
        match error(
            r#"{"success":false,"data":null,"rows":null,"error":"Data not available before 2005-01-03T14:30:00+00:00. Requested start: 2001-01-01T00:00:00+00:00. Head timestamp: 2005-01-03T14:30:00+00:00"}"#,
        ) {
            IbError::BeforeHead { head, .. } => assert_eq!(head, t("2005-01-03T14:30:00Z")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            error(
                r#"{"success":false,"error":"Historical Market Data Service error message:Pacing violation (error 162)"}"#
            ),
            IbError::Pacing(_)
        ));
        assert!(matches!(
            error(r#"{"success":false,"error":"Error 420: Invalid real-time query"}"#),
            IbError::Pacing(_)
        ));
        assert!(matches!(
            error(r#"{"success":false,"error":"Error 1100: Connectivity between IB and TWS has been lost"}"#),
            IbError::Transient(_)
        ));
    }

    #[test]
    fn validation_answers_decode_with_heads() {
        let valid: ValidationAnswer = serde_json::from_str(
            r#"{"success":true,"is_valid":true,"error_message":null,
 "contract_info":{"symbol":"EUR","asset_type":"CASH","exchange":"IDEALPRO","currency":"USD","description":"European Monetary Union Euro",
   "trading_hours":{"timezone":"US/Eastern","regular_hours":{"start":"09:30","end":"16:00","name":"Regular"},"extended_hours":[],"trading_days":[0,1,2,3,4],"holidays":[]},
   "head_timestamp":"2005-03-01T00:00:00+00:00"},
 "head_timestamps":{"1h":"2005-03-01T00:00:00+00:00"},"error":null}"#,
        )
        .unwrap();
        assert!(valid.success && valid.validation.is_valid);
        assert_eq!(valid.validation.head("1h"), Some(t("2005-03-01T00:00:00Z")));
        assert_eq!(valid.validation.head("1d"), Some(t("2005-03-01T00:00:00Z")), "falls back to the contract's head");
        let unknown: ValidationAnswer = serde_json::from_str(
            r#"{"success":true,"is_valid":false,"error_message":"Symbol XYZ not found","contract_info":null,"head_timestamps":{},"error":null}"#,
        )
        .unwrap();
        assert!(!unknown.validation.is_valid);
        assert_eq!(unknown.validation.error_message.as_deref(), Some("Symbol XYZ not found"));
        let head: HeadAnswer =
            serde_json::from_str(r#"{"success":true,"timestamp":"1980-12-12T14:30:00+00:00","error":null}"#).unwrap();
        assert_eq!(head.timestamp.as_deref().and_then(time::parse_timestamp), Some(t("1980-12-12T14:30:00Z")));
        let failed: HeadAnswer =
            serde_json::from_str(r#"{"success":false,"timestamp":null,"error":"IB not connected"}"#).unwrap();
        assert!(!failed.success && failed.error.is_some());
    }
}
