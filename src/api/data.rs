//! `/api/v1/data`: start data loads (api.md §5) and read the cache (api.md §6). Symbols and
//! timeframes are validated before they come near a path.

use std::fmt::Write as _;

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiPath as Path, ApiQuery as Query};
use crate::api::schemas::{BarsAnswer, DataInfo, DataLoadStarted, DataLoadStartedData, DownloadStarted, ErrorEnvelope};
use crate::api::{AppState, idempotency_key, replayed};
use crate::data::frame::Bars;
use crate::data::repository::{CacheError, push_ts};
use crate::data::request::{LoadBody, LoadSpec, Symbol, parse_timeframe};
use crate::ops::Submitted;
use crate::time;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(load)).routes(routes!(download)).routes(routes!(info)).routes(routes!(bars))
}

impl From<CacheError> for ApiError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::Unreadable { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "CACHE_FILE_UNREADABLE", e.to_string())
            }
            other => ApiError::internal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "CACHE_ERROR",
                "The data cache could not be read or written",
                &other,
            ),
        }
    }
}

/// Validates and starts a `data_load`; returns the operation id, whether it is a replay, and
/// whether a cache file existed.
async fn start(
    state: &AppState,
    headers: &HeaderMap,
    body: &LoadBody,
    scope: &str,
    download_only: bool,
) -> Result<(String, bool, LoadSpec), ApiError> {
    let spec = LoadSpec::from_body(body, download_only)?;
    let idempotency = idempotency_key(headers, scope, body)?;
    let submitted = state.orchestrator.submit(state.data.job(spec.clone()), &spec, idempotency).await?;
    Ok(match submitted {
        Submitted::Started(snapshot) => (snapshot.record.operation_id.clone(), false, spec),
        Submitted::Existing(id) => (id, true, spec),
    })
}

/// Starts a data load (ktrdr's answer shape).
#[utoipa::path(post, path = "/api/v1/data/load", tag = "data",
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe start")),
    request_body = LoadBody,
    responses(
        (status = 200, body = DataLoadStarted),
        (status = 400, description = "Unreadable JSON", body = ErrorEnvelope),
        (status = 413, description = "Body too large", body = ErrorEnvelope),
        (status = 415, description = "Body not JSON", body = ErrorEnvelope),
        (status = 422, description = "Invalid symbol, timeframe, mode or dates", body = ErrorEnvelope),
        (status = 429, description = "operations.max_active operations run or wait already; see Retry-After", body = ErrorEnvelope),
        (status = 503, description = "Shutting down, or the database is unavailable", body = ErrorEnvelope),
    ))]
async fn load(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoadBody>,
) -> Result<Response, ApiError> {
    let (operation_id, replay, spec) = start(&state, &headers, &body, "POST /api/v1/data/load", false).await?;
    let cached_before = state.data.repository.path(&spec.symbol, spec.timeframe).is_file();
    let answer = Json(DataLoadStarted {
        success: true,
        data: DataLoadStartedData {
            status: "started".into(),
            operation_id,
            fetched_bars: 0,
            cached_before,
            merged_file: String::new(),
            gaps_analyzed: 0,
            segments_fetched: 0,
            ib_requests_made: 0,
            execution_time_seconds: 0.0,
            error_message: None,
        },
        error: None,
    });
    Ok(replayed(answer.into_response(), replay))
}

/// Starts a download (`tail`, `backfill` or `full`), ktrdr's `acquire` answer shape.
#[utoipa::path(post, path = "/api/v1/data/acquire/download", tag = "data",
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe start")),
    request_body = LoadBody,
    responses(
        (status = 200, body = DownloadStarted),
        (status = 400, description = "Unreadable JSON", body = ErrorEnvelope),
        (status = 413, description = "Body too large", body = ErrorEnvelope),
        (status = 415, description = "Body not JSON", body = ErrorEnvelope),
        (status = 422, description = "Invalid symbol, timeframe, mode or dates", body = ErrorEnvelope),
        (status = 429, description = "operations.max_active operations run or wait already; see Retry-After", body = ErrorEnvelope),
        (status = 503, description = "Shutting down, or the database is unavailable", body = ErrorEnvelope),
    ))]
async fn download(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoadBody>,
) -> Result<Response, ApiError> {
    let (operation_id, replay, spec) =
        start(&state, &headers, &body, "POST /api/v1/data/acquire/download", true).await?;
    let answer = Json(DownloadStarted {
        success: true,
        operation_id,
        status: "started".into(),
        message: format!("Started {} download for {} {}", spec.mode.as_str(), spec.symbol, spec.timeframe),
    });
    Ok(replayed(answer.into_response(), replay))
}

/// Every cached series.
#[utoipa::path(get, path = "/api/v1/data/info", tag = "data", responses(
    (status = 200, body = DataInfo),
    (status = 500, description = "The data folder cannot be listed", body = ErrorEnvelope),
))]
async fn info(State(state): State<AppState>) -> Result<Response, ApiError> {
    let series = state.data.repository.info().await?;
    Ok(Json(DataInfo { success: true, data: series }).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct BarsQuery {
    /// `YYYY-MM-DD` or ISO 8601.
    start_date: Option<String>,
    /// Inclusive; a bare `YYYY-MM-DD` includes that whole day.
    end_date: Option<String>,
    /// The most recent N bars of the range.
    limit: Option<String>,
}

/// The most bars one answer carries.
const MAX_LIMIT: usize = 10_000_000;

/// Cached bars only, never a host call; no file → empty arrays.
#[utoipa::path(get, path = "/api/v1/data/{symbol}/{timeframe}", tag = "data", params(
    ("symbol" = String, Path, description = "1–20 characters of `A-Z a-z 0-9 . _ -`"),
    ("timeframe" = String, Path, description = "`1m 5m 15m 30m 1h 2h 4h 1d 1w 1M`"),
    BarsQuery,
), responses(
    (status = 200, body = BarsAnswer),
    (status = 422, description = "Invalid symbol, timeframe, dates or limit", body = ErrorEnvelope),
    (status = 500, description = "The cached file is unreadable", body = ErrorEnvelope),
))]
async fn bars(
    State(state): State<AppState>,
    Path((symbol, timeframe)): Path<(String, String)>,
    Query(query): Query<BarsQuery>,
) -> Result<Response, ApiError> {
    let symbol = Symbol::parse(&symbol)?;
    let timeframe = parse_timeframe(&timeframe)?;
    // The window's end is inclusive: a bare end date includes its whole day.
    let date = |field: &str, text: &Option<String>| -> Result<Option<i64>, ApiError> {
        let parse = if field == "end_date" { time::parse_end } else { time::parse_timestamp };
        match text.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(None),
            Some(t) => parse(t).map(|ts| Some(ts.timestamp())).ok_or_else(|| {
                ApiError::invalid(field, format!("{field} `{t}` is not a date (YYYY-MM-DD or ISO 8601)"))
            }),
        }
    };
    let (start, end) = (date("start_date", &query.start_date)?, date("end_date", &query.end_date)?);
    if let (Some(s), Some(e)) = (start, end)
        && s > e
    {
        return Err(ApiError::invalid("start_date", "start_date is after end_date"));
    }
    let limit = match query.limit.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => Some(t.parse::<usize>().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| {
            ApiError::invalid("limit", format!("limit must be a whole number from 1 to {MAX_LIMIT}, not `{t}`"))
        })?),
    };
    let frame = state.data.repository.read(&symbol, timeframe).await?;
    let rows = frame.window(start, end, limit);
    // Rendered piece by piece off the async threads and sent as it goes: an answer of millions
    // of bars costs a few chunks of memory, not the whole text at once.
    let (chunks, body) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        render(&frame, rows, symbol.as_str(), timeframe.as_str(), |chunk| chunks.blocking_send(Ok(chunk)).is_ok())
    });
    let body = axum::body::Body::from_stream(tokio_stream_of(body));
    Ok(([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

/// Chunks of an answer rendered but not yet sent.
const CHUNKS_IN_FLIGHT: usize = 4;
/// A chunk is sent once it holds this much text.
const CHUNK_BYTES: usize = 256 << 10;

/// The receiving end of a channel as a stream (one item at a time, awaited).
fn tokio_stream_of<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

/// Writes the answer directly, in chunks of about [`CHUNK_BYTES`] handed to `emit` (no
/// intermediate JSON tree; the same bytes as one piece). Stops when `emit` says the client is gone.
fn render(
    bars: &Bars,
    rows: std::ops::Range<usize>,
    symbol: &str,
    timeframe: &str,
    mut emit: impl FnMut(Bytes) -> bool,
) -> bool {
    let n = rows.len();
    let mut out = String::with_capacity(CHUNK_BYTES + 1024);
    let mut flush = |out: &mut String, at_least: usize| -> bool {
        if out.len() < at_least {
            return true;
        }
        let chunk = Bytes::from(std::mem::replace(out, String::with_capacity(CHUNK_BYTES + 1024)));
        emit(chunk)
    };
    out.push_str(r#"{"success":true,"data":{"dates":["#);
    for (k, i) in rows.clone().enumerate() {
        if k > 0 {
            out.push(',');
        }
        out.push('"');
        push_ts(bars.ts[i], &mut out);
        out.push('"');
        if !flush(&mut out, CHUNK_BYTES) {
            return false;
        }
    }
    out.push_str(r#"],"ohlcv":["#);
    let number = |out: &mut String, x: f64| {
        if x.is_finite() {
            let _ = write!(out, "{x}");
        } else {
            out.push_str("null");
        }
    };
    for (k, i) in rows.clone().enumerate() {
        if k > 0 {
            out.push(',');
        }
        out.push('[');
        for (j, x) in [bars.open[i], bars.high[i], bars.low[i], bars.close[i], bars.volume[i]].into_iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            number(&mut out, x);
        }
        out.push(']');
        if !flush(&mut out, CHUNK_BYTES) {
            return false;
        }
    }
    let stamp = |i: Option<usize>| -> String {
        i.map(|i| {
            let mut s = String::from("\"");
            push_ts(bars.ts[i], &mut s);
            s.push('"');
            s
        })
        .unwrap_or_else(|| "null".to_owned())
    };
    let _ = write!(
        out,
        r#"],"metadata":{{"symbol":"{symbol}","timeframe":"{timeframe}","start":{},"end":{},"points":{n}}}}}}}"#,
        stamp((n > 0).then_some(rows.start)),
        stamp((n > 0).then(|| rows.end - 1)),
    );
    flush(&mut out, 0)
}
