//! The IB host simulator: every endpoint of hosts.md §1 with the real host's bodies (domain
//! errors as HTTP 200 with `"success": false`, FastAPI 422s for malformed bodies), deterministic
//! bars on real calendars, and knobs — latency, transient failures, a failing symbol, IB pacing
//! emulation, a disconnected gateway (`POST /sim/gateway`) — plus `GET /sim/stats` so tests can
//! assert exactly what a client sent.

use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::data::calendar::InstrumentKind;
use crate::data::timeframe::Timeframe;
use crate::hosts::OPERATION_HEADER;
use crate::hosts::pacing::{PacingKey, PacingLimiter, PacingRules};
use crate::sim::fastapi::{FastJson, unprocessable};
use crate::sim::market::Instrument;
use crate::time;

/// Symbols the simulated IB knows.
pub const DEFAULT_SYMBOLS: &[&str] = &[
    "AAPL", "MSFT", "SPY", "QQQ", "TSLA", "NVDA", "GOOGL", "AMZN", "IBM", "EURUSD", "GBPUSD", "USDJPY", "AUDUSD",
    "USDCHF", "EURGBP", "EUR.USD", "GBP.USD",
];

/// Behaviour that tests may change at run time (`PUT /sim/knobs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IbKnobs {
    pub latency_ms: u64,
    pub latency_jitter_ms: u64,
    pub fail_rate: f64,
    pub fail_symbol: Option<String>,
    /// Answer with IB's pacing-violation error when a client breaks IB's rules.
    pub pacing: bool,
    /// Judge pacing by IB's rules with every duration multiplied by this (1.0: IB's own).
    pub pacing_scale: f64,
    /// Requests arriving up to this many milliseconds early are not a violation (the jitter a
    /// host sees between a client's clock and its own matters when rules are scaled to ms).
    pub pacing_tolerance_ms: u64,
    /// Historical requests whose window touches one of these days (`YYYY-MM-DD`) always fail
    /// with a transient error — to make one segment of a load fail.
    pub fail_dates: Vec<String>,
    /// Days (`YYYY-MM-DD`, UTC) on which the market traded by the calendar but IB has no bars
    /// (a halt, an unscheduled closure): their bars are left out of every answer.
    pub empty_dates: Vec<String>,
    /// The IB gateway behind the host. Disconnected, the host behaves as the real one does:
    /// `/health` healthy, `/health/detailed` disconnected, every data call hanging
    /// `gateway_hang_ms` before answering 200 `success: false`, "Symbol X not found".
    pub gateway_connected: bool,
    pub gateway_hang_ms: u64,
}

impl Default for IbKnobs {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            latency_jitter_ms: 0,
            fail_rate: 0.0,
            fail_symbol: None,
            pacing: false,
            pacing_scale: 1.0,
            pacing_tolerance_ms: 0,
            fail_dates: Vec::new(),
            empty_dates: Vec::new(),
            gateway_connected: true,
            gateway_hang_ms: 30_000,
        }
    }
}

/// One `/data/historical` request as the simulator saw it.
#[derive(Debug, Clone, Serialize)]
pub struct HistoricalLog {
    /// When the request arrived (RFC 3339, UTC).
    pub received_at: String,
    /// The `X-Operation-Id` the client sent, when it is a plausible id.
    pub operation_id: Option<String>,
    pub symbol: String,
    pub timeframe: String,
    pub start: String,
    pub end: String,
    pub rows: usize,
    pub outcome: String,
}

#[derive(Debug, Default, Serialize)]
struct Stats {
    requests: BTreeMap<String, u64>,
    historical: Vec<HistoricalLog>,
    pacing_violations: u64,
}

pub struct IbSim {
    knobs: RwLock<IbKnobs>,
    symbols: HashSet<String>,
    stats: Mutex<Stats>,
    pacing: Mutex<PacingLimiter>,
    in_flight: AtomicU64,
    /// Requests whose client went away before the answer (the connection was dropped).
    dropped: AtomicU64,
}

/// Counts a request in flight; when it is dropped before completing, the client hung up.
struct InFlight<'a> {
    sim: &'a IbSim,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.sim.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.done {
            self.sim.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

const HEAD_STOCK: &str = "2005-01-03T14:30:00+00:00";
const HEAD_FOREX: &str = "2005-03-01T00:00:00+00:00";

impl IbSim {
    pub fn new(knobs: IbKnobs) -> Arc<Self> {
        let rules = PacingRules::ib().scaled(knobs.pacing_scale);
        Arc::new(Self {
            knobs: RwLock::new(knobs),
            symbols: DEFAULT_SYMBOLS.iter().map(|s| s.to_string()).collect(),
            stats: Mutex::new(Stats::default()),
            pacing: Mutex::new(PacingLimiter::new(Some(rules))),
            in_flight: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/health", get(health))
            .route("/health/detailed", get(health_detailed))
            .route("/data/historical", post(historical))
            .route("/data/validate", post(validate))
            .route("/data/symbol-info/{symbol}", get(symbol_info))
            .route("/data/head-timestamp", get(head_timestamp))
            .route("/sim/stats", get(stats))
            .route("/sim/reset", post(reset))
            .route("/sim/knobs", put(set_knobs).get(get_knobs))
            .route("/sim/gateway", post(set_gateway))
            .with_state(self.clone())
    }

    fn knobs(&self) -> IbKnobs {
        self.knobs.read().clone()
    }

    fn count(&self, endpoint: &str) {
        *self.stats.lock().requests.entry(endpoint.to_owned()).or_default() += 1;
    }

    fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { sim: self, done: false }
    }

    async fn latency(&self) {
        let knobs = self.knobs();
        let jitter = if knobs.latency_jitter_ms > 0 { fastrand::u64(0..=knobs.latency_jitter_ms) } else { 0 };
        let total = knobs.latency_ms + jitter;
        if total > 0 {
            tokio::time::sleep(Duration::from_millis(total)).await;
        }
    }

    /// With the gateway disconnected, holds the call as the real host does and returns the
    /// "not found" text it then answers with; `None` while the gateway is connected.
    async fn gateway_down(&self, symbol: &str) -> Option<String> {
        let knobs = self.knobs();
        if knobs.gateway_connected {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(knobs.gateway_hang_ms)).await;
        Some(format!("Symbol {} not found", symbol.to_ascii_uppercase()))
    }

    fn known(&self, symbol: &str) -> bool {
        self.symbols.contains(&symbol.to_ascii_uppercase())
    }

    fn head(symbol: &str) -> &'static str {
        match Instrument::new(symbol).kind {
            InstrumentKind::Stock => HEAD_STOCK,
            InstrumentKind::Forex => HEAD_FOREX,
        }
    }

    fn contract_info(symbol: &str) -> Value {
        let upper = symbol.to_ascii_uppercase();
        let hours = json!({
            "timezone": "US/Eastern",
            "regular_hours": { "start": "09:30", "end": "16:00", "name": "Regular" },
            "extended_hours": [], "trading_days": [0, 1, 2, 3, 4], "holidays": [],
        });
        match Instrument::new(symbol).kind {
            InstrumentKind::Stock => json!({
                "symbol": upper, "asset_type": "STK", "exchange": "SMART", "currency": "USD",
                "description": format!("{upper} (simulated)"), "trading_hours": hours, "head_timestamp": HEAD_STOCK,
            }),
            InstrumentKind::Forex => {
                let pair = upper.replace('.', "");
                json!({
                    "symbol": &pair[..3], "asset_type": "CASH", "exchange": "IDEALPRO", "currency": &pair[3..],
                    "description": format!("{pair} (simulated)"), "trading_hours": hours, "head_timestamp": HEAD_FOREX,
                })
            }
        }
    }

    fn validation(&self, symbol: &str, timeframes: &[String]) -> Value {
        if !self.known(symbol) {
            return json!({
                "success": true, "is_valid": false, "error_message": format!("Symbol {symbol} not found"),
                "contract_info": null, "head_timestamps": {}, "error": null,
            });
        }
        let heads: Map<String, Value> = timeframes.iter().map(|tf| (tf.clone(), json!(Self::head(symbol)))).collect();
        json!({
            "success": true, "is_valid": true, "error_message": null,
            "contract_info": Self::contract_info(symbol), "head_timestamps": heads, "error": null,
        })
    }
}

type Sim = State<Arc<IbSim>>;

fn failure(error: impl Into<String>) -> Json<Value> {
    Json(json!({ "success": false, "data": null, "rows": null, "error": error.into() }))
}

async fn health(State(sim): Sim) -> Json<Value> {
    sim.count("/health");
    sim.latency().await;
    Json(
        json!({ "healthy": true, "service": "ib-connector", "timestamp": time::format_for_host(&time::now()), "status": "operational" }),
    )
}

async fn health_detailed(State(sim): Sim) -> Json<Value> {
    sim.count("/health/detailed");
    let total: u64 = sim.stats.lock().requests.values().sum();
    let connected = sim.knobs().gateway_connected;
    let last_error = (!connected).then_some("Not connected to IB Gateway");
    Json(json!({
        "healthy": true, "service": "ib-connector", "timestamp": time::format_for_host(&time::now()),
        "ib_gateway_connected": connected, "active_connections": sim.in_flight.load(Ordering::Relaxed),
        "total_requests": total, "error_count": u64::from(!connected), "last_error": last_error, "uptime_seconds": 0,
        "connection_pool_status": { "simulated": true },
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayBody {
    connected: bool,
}

/// `POST /sim/gateway {"connected": bool}`: the gateway goes down or comes back.
async fn set_gateway(State(sim): Sim, FastJson(body): FastJson<GatewayBody>) -> Json<Value> {
    sim.knobs.write().gateway_connected = body.connected;
    Json(json!({ "connected": body.connected }))
}

#[derive(Deserialize)]
struct HistoricalBody {
    symbol: String,
    timeframe: String,
    start: String,
    end: String,
    #[serde(default)]
    #[allow(dead_code)]
    instrument_type: Option<String>,
}

async fn historical(State(sim): Sim, headers: HeaderMap, FastJson(body): FastJson<HistoricalBody>) -> Response {
    sim.count("/data/historical");
    let received_at = time::format(&time::now());
    // Logged, so only what looks like one of our ids (a client may send anything).
    let operation_id = headers
        .get(OPERATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| id.len() <= 100 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        .map(str::to_owned);
    let mut guard = sim.enter();
    sim.latency().await;
    let (answer, rows, outcome) = match sim.gateway_down(&body.symbol).await {
        Some(not_found) => (failure(not_found), 0, "gateway down".to_owned()),
        None => historical_answer(&sim, &body),
    };
    sim.stats.lock().historical.push(HistoricalLog {
        received_at,
        operation_id,
        symbol: body.symbol.clone(),
        timeframe: body.timeframe.clone(),
        start: body.start.clone(),
        end: body.end.clone(),
        rows,
        outcome,
    });
    guard.done = true;
    answer.into_response()
}

fn historical_answer(sim: &IbSim, body: &HistoricalBody) -> (Json<Value>, usize, String) {
    let knobs = sim.knobs();
    let symbol = body.symbol.to_ascii_uppercase();
    let (Some(start), Some(end)) = (time::parse_timestamp(&body.start), time::parse_timestamp(&body.end)) else {
        return (failure(format!("Invalid date range: {} to {}", body.start, body.end)), 0, "bad dates".into());
    };
    let Some(timeframe) = Timeframe::parse(&body.timeframe) else {
        return (failure(format!("Unsupported timeframe: {}", body.timeframe)), 0, "bad timeframe".into());
    };
    if knobs.pacing {
        let key = PacingKey {
            contract: symbol.clone(),
            request: format!("{symbol}|{}|{}|{}", body.timeframe, body.start, body.end),
        };
        if sim.pacing.lock().try_acquire(&key, Duration::from_millis(knobs.pacing_tolerance_ms)).is_err() {
            sim.stats.lock().pacing_violations += 1;
            return (
                failure("Historical Market Data Service error message:Pacing violation (error 162)"),
                0,
                "pacing violation".into(),
            );
        }
    }
    let touches_failing_date = knobs.fail_dates.iter().filter_map(|d| time::parse_timestamp(d)).any(|day| {
        let day_end = day + chrono::Duration::days(1);
        start < day_end && end >= day
    });
    if knobs.fail_symbol.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(&symbol))
        || touches_failing_date
        || (knobs.fail_rate > 0.0 && fastrand::f64() < knobs.fail_rate)
    {
        return (failure("Error 1100: Connectivity between IB and TWS has been lost"), 0, "transient failure".into());
    }
    if !sim.known(&symbol) {
        return (failure(format!("Symbol validation failed: Symbol {symbol} not found")), 0, "unknown symbol".into());
    }
    let head = time::parse_timestamp(IbSim::head(&symbol)).expect("a valid constant");
    if start < head {
        let message = format!(
            "Data not available before {}. Requested start: {}. Head timestamp: {}",
            IbSim::head(&symbol),
            time::format_for_host(&start),
            IbSim::head(&symbol)
        );
        return (failure(message), 0, "before head".into());
    }
    if end - start > timeframe.max_span() + chrono::Duration::hours(1) {
        return (
            failure(format!(
                "Requested duration exceeds the maximum of {} days for {timeframe} bars",
                timeframe.max_span().num_days()
            )),
            0,
            "span too long".into(),
        );
    }
    let end = end.min(time::now());
    let mut bars = Instrument::new(&symbol).bars(timeframe, start, end);
    bars.retain(|b| !knobs.empty_dates.contains(&b.timestamp.format("%Y-%m-%d").to_string()));
    if bars.is_empty() {
        return (failure(format!("No data returned for {symbol} {timeframe}")), 0, "no data".into());
    }
    let data: Map<String, Value> = bars
        .iter()
        .map(|b| {
            let key = b.timestamp.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
            (key, json!({ "open": b.open, "high": b.high, "low": b.low, "close": b.close, "volume": b.volume }))
        })
        .collect();
    let rows = bars.len();
    let data = Value::Object(data).to_string();
    (Json(json!({ "success": true, "data": data, "rows": rows, "error": null })), rows, "ok".into())
}

#[derive(Deserialize)]
struct ValidateBody {
    symbol: String,
    #[serde(default)]
    timeframes: Vec<String>,
}

/// What the validation endpoints answer after a hang while the gateway is down.
fn validation_failure(not_found: String) -> Json<Value> {
    Json(json!({
        "success": false, "is_valid": false, "error_message": &not_found, "contract_info": null,
        "head_timestamps": {}, "error": not_found,
    }))
}

async fn validate(State(sim): Sim, FastJson(body): FastJson<ValidateBody>) -> Json<Value> {
    sim.count("/data/validate");
    let mut guard = sim.enter();
    sim.latency().await;
    let answer = match sim.gateway_down(&body.symbol).await {
        Some(not_found) => validation_failure(not_found),
        None => {
            let timeframes = if body.timeframes.is_empty() { vec!["1h".to_owned()] } else { body.timeframes };
            Json(sim.validation(&body.symbol, &timeframes))
        }
    };
    guard.done = true;
    answer
}

async fn symbol_info(State(sim): Sim, Path(symbol): Path<String>) -> Json<Value> {
    sim.count("/data/symbol-info");
    let mut guard = sim.enter();
    sim.latency().await;
    let answer = match sim.gateway_down(&symbol).await {
        Some(not_found) => validation_failure(not_found),
        None => Json(sim.validation(&symbol, &["1h".to_owned()])),
    };
    guard.done = true;
    answer
}

async fn head_timestamp(State(sim): Sim, Query(query): Query<BTreeMap<String, String>>) -> Response {
    sim.count("/data/head-timestamp");
    sim.latency().await;
    let Some(symbol) = query.get("symbol") else {
        return unprocessable(&["query", "symbol"], "field required");
    };
    if let Some(not_found) = sim.gateway_down(symbol).await {
        return Json(json!({ "success": false, "timestamp": null, "error": not_found })).into_response();
    }
    let timestamp = sim.known(symbol).then(|| IbSim::head(symbol));
    Json(json!({ "success": true, "timestamp": timestamp, "error": null })).into_response()
}

async fn stats(State(sim): Sim) -> Json<Value> {
    let stats = sim.stats.lock();
    Json(json!({
        "requests": stats.requests,
        "historical": stats.historical,
        "pacing_violations": stats.pacing_violations,
        "in_flight": sim.in_flight.load(Ordering::Relaxed),
        "dropped_requests": sim.dropped.load(Ordering::Relaxed),
    }))
}

async fn reset(State(sim): Sim) -> StatusCode {
    *sim.stats.lock() = Stats::default();
    let rules = PacingRules::ib().scaled(sim.knobs().pacing_scale);
    *sim.pacing.lock() = PacingLimiter::new(Some(rules));
    sim.dropped.store(0, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

async fn get_knobs(State(sim): Sim) -> Json<IbKnobs> {
    Json(sim.knobs())
}

async fn set_knobs(State(sim): Sim, FastJson(knobs): FastJson<IbKnobs>) -> Json<IbKnobs> {
    let rules = PacingRules::ib().scaled(knobs.pacing_scale);
    *sim.pacing.lock() = PacingLimiter::new(Some(rules));
    *sim.knobs.write() = knobs.clone();
    Json(knobs)
}
