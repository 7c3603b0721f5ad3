//! `/api/v1/operations`: list, get (with long-poll and ETag), cancel, per-operation SSE,
//! results and metrics (api.md §3–§4).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::error::ApiError;
use crate::api::extract::{ApiPath as Path, ApiQuery as Query, OptionalJson};
use crate::api::schemas::{
    CancelAnswer, CancelBody, Cancelled, ErrorEnvelope, MetricsAnswer, OperationEnvelope, OperationEvent,
    OperationList, OperationMetrics, OperationSummary, Results,
};
use crate::api::{AppState, sse};
use crate::ops::{ListFilter, Lookup, RowLabels, Snapshot, Status};
use crate::time;

/// Ids longer than this are not ours; answer 404 without asking the store.
pub(super) const MAX_ID_LEN: usize = 128;
const MAX_REASON_LEN: usize = 1_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one, cancel))
        .routes(routes!(events))
        .routes(routes!(all_events))
        .routes(routes!(results))
        .routes(routes!(metrics))
}

async fn find(state: &AppState, id: &str) -> Result<Lookup, ApiError> {
    if id.len() > MAX_ID_LEN {
        return Err(ApiError::operation_not_found(id));
    }
    state.orchestrator.get(id).await?.ok_or_else(|| ApiError::operation_not_found(id))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// `pending`, `running`, `completed`, `failed` or `cancelled`.
    status: Option<String>,
    /// E.g. `data_load`, `training`, `dummy`.
    operation_type: Option<String>,
    /// Only `pending` and `running` operations (`true`/`false`).
    active_only: Option<String>,
    /// 1–1000, default 100.
    limit: Option<String>,
    /// At least 0.
    offset: Option<String>,
    /// (ext) Every type but this one, e.g. `dummy`.
    exclude_type: Option<String>,
    /// (ext) Words the id, symbol, strategy or another request field contains (case-insensitive,
    /// at most 100 characters).
    q: Option<String>,
    /// (ext) `newest` (the default) or `oldest` first.
    sort: Option<String>,
}

/// The longest search a list takes.
const MAX_SEARCH_CHARS: usize = 100;

fn parse_bool(field: &str, text: &str) -> Result<bool, ApiError> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err(ApiError::invalid(field, format!("{field} must be true or false, not `{text}`"))),
    }
}

/// Every stored operation, newest first.
#[utoipa::path(get, path = "/api/v1/operations", tag = "operations", params(ListQuery), responses(
    (status = 200, body = OperationList),
    (status = 422, description = "A filter is invalid", body = ErrorEnvelope),
    (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
))]
async fn list(State(state): State<AppState>, Query(query): Query<ListQuery>) -> Result<Response, ApiError> {
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some(text) => Some(Status::parse(text).ok_or_else(|| {
            crate::invalid::Invalid::new("status", format!("status `{text}` is not one of the operation statuses"))
                .allowed(json!(Status::ALL.map(Status::as_str)))
        })?),
    };
    let limit = match query.limit.as_deref() {
        None | Some("") => 100,
        Some(text) => text.parse::<u32>().ok().filter(|l| (1..=1000).contains(l)).ok_or_else(|| {
            ApiError::invalid("limit", format!("limit must be a whole number from 1 to 1000, not `{text}`"))
        })?,
    };
    let offset = match query.offset.as_deref() {
        None | Some("") => 0,
        Some(text) => text.parse::<u64>().ok().filter(|o| *o <= i64::MAX as u64).ok_or_else(|| {
            ApiError::invalid("offset", format!("offset must be a whole number of at least 0, not `{text}`"))
        })?,
    };
    let active_only = query.active_only.as_deref().map(|t| parse_bool("active_only", t)).transpose()?.unwrap_or(false);
    let search = query.q.map(|q| q.trim().to_owned()).filter(|q| !q.is_empty());
    if search.as_ref().is_some_and(|q| q.chars().count() > MAX_SEARCH_CHARS) {
        return Err(ApiError::invalid("q", format!("q must be at most {MAX_SEARCH_CHARS} characters")));
    }
    let oldest_first = match query.sort.as_deref() {
        None | Some("" | "newest") => false,
        Some("oldest") => true,
        Some(other) => {
            return Err(crate::invalid::Invalid::new("sort", format!("sort `{other}` is not `newest` or `oldest`"))
                .allowed(json!(["newest", "oldest"]))
                .into());
        }
    };
    let filter = ListFilter {
        status,
        operation_type: query.operation_type.filter(|t| !t.is_empty()),
        exclude_type: query.exclude_type.filter(|t| !t.is_empty()),
        search,
        active_only,
        oldest_first,
        limit,
        offset,
    };
    let (operations, total_count, active_count) = state.orchestrator.list(&filter).await?;
    let data = operations.iter().map(|s| summary(s, state.orchestrator.labels(&s.record))).collect();
    Ok(Json(OperationList { success: true, data, total_count, active_count }).into_response())
}

/// A list row (api.md §3), labelled by the operation's job.
pub(super) fn summary(snapshot: &Snapshot, labels: RowLabels) -> OperationSummary {
    let r = &snapshot.record;
    OperationSummary {
        operation_id: r.operation_id.clone(),
        operation_type: r.operation_type.clone(),
        status: r.status,
        created_at: time::format(&r.created_at),
        progress_percentage: r.progress.percentage,
        current_step: r.progress.current_step.clone(),
        eta_seconds: r.progress.eta_seconds,
        symbol: labels.summary,
        duration_seconds: r.duration_seconds(),
        subject: labels.subject,
        items_processed: r.progress.items_processed,
        started_at: r.started_at.as_ref().map(time::format),
        completed_at: r.completed_at.as_ref().map(time::format),
        error: r.error_message.as_deref().map(first_line),
        parent_operation_id: r.parent_operation_id.clone(),
    }
}

/// A message's first line, cut at a character boundary to fit a list row.
fn first_line(message: &str) -> String {
    const MAX_CHARS: usize = 200;
    let line = message.lines().next().unwrap_or_default().trim_end();
    match line.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

/// The version, quoted (`"42"`): written by hand, as `format!` costs on the hot path.
fn etag(snapshot: &Snapshot) -> HeaderValue {
    let mut tag = [b'"'; 22]; // u64::MAX has 20 digits
    let mut start = tag.len() - 1;
    let mut version = snapshot.version();
    loop {
        start -= 1;
        tag[start] = b'0' + (version % 10) as u8;
        version /= 10;
        if version == 0 {
            break;
        }
    }
    HeaderValue::from_bytes(&tag[start - 1..]).expect("digits are a valid header")
}

/// `GET /operations/{id}[?wait=30s&since=N]`: the record, from memory while it runs.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct GetQuery {
    /// Long-poll: wait up to this long (`30s`, `500ms`; at most 60 s) for a version above `since`.
    wait: Option<String>,
    /// The version the client has; default: the current one.
    since: Option<String>,
}

/// The hot path of every client that follows an operation: no header map copy, no allocation
/// beyond the id, the body serialised once per version.
#[utoipa::path(get, path = "/api/v1/operations/{id}", tag = "operations", params(
    ("id" = String, Path, description = "Operation id"),
    GetQuery,
    ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer"),
), responses(
    (status = 200, body = OperationEnvelope, headers(("ETag" = String, description = "The record's version, quoted"))),
    (status = 304, description = "Unchanged since the ETag in If-None-Match"),
    (status = 404, description = "No such operation", body = ErrorEnvelope),
    (status = 422, description = "`wait` or `since` is invalid", body = ErrorEnvelope),
    (status = 503, description = "The database is unavailable, or too many long-polls open (`server.max_streams`)", body = ErrorEnvelope),
))]
async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<GetQuery>,
    IfNoneMatch(if_none_match): IfNoneMatch,
) -> Result<Response, ApiError> {
    let mut lookup = find(&state, &id).await?;
    let snapshot = match &query.wait {
        None => lookup.snapshot(),
        Some(wait) => {
            let wait = time::parse_duration(wait)
                .map_err(|e| ApiError::invalid("wait", format!("wait: {e}")))?
                .min(state.config.operations.long_poll_max.0);
            let since = match &query.since {
                Some(text) => text
                    .parse::<u64>()
                    .map_err(|_| ApiError::invalid("since", format!("since must be a version number, not `{text}`")))?,
                None => lookup.snapshot().version(),
            };
            let _slot = state.stream_slot()?;
            let shutdown = state.orchestrator.shutdown_token();
            let fresh = tokio::select! {
                snapshot = lookup.wait_newer(since, wait) => Some(snapshot),
                _ = shutdown.cancelled() => None,
            };
            fresh.unwrap_or_else(|| lookup.snapshot())
        }
    };
    Ok(record_answer(&snapshot, if_none_match.as_ref()))
}

/// An operation's record, or 304 when `if_none_match` is its ETag (the routed handler's answer
/// and the hot path's, `hot_path.rs`).
pub(super) fn record_answer(snapshot: &Snapshot, if_none_match: Option<&HeaderValue>) -> Response {
    let tag = etag(snapshot);
    if if_none_match.is_some_and(|v| *v == tag) {
        return (StatusCode::NOT_MODIFIED, [(ETAG, tag)]).into_response();
    }
    let body = snapshot.envelope_json();
    let mut response = Response::new(axum::body::Body::from(body.clone()));
    // Five with the layers' `Vary`: within the first allocation (six), so no room is reserved.
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(ETAG, tag);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Just the `If-None-Match` header (copying the whole header map costs on the hot path).
struct IfNoneMatch(Option<HeaderValue>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IfNoneMatch {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(IfNoneMatch(parts.headers.get(IF_NONE_MATCH).cloned()))
    }
}

/// Cancels an operation; answers once its work has stopped and `cancelled` is stored (api.md §4).
#[utoipa::path(delete, path = "/api/v1/operations/{id}", tag = "operations",
    params(("id" = String, Path, description = "Operation id")),
    request_body(content = Option<CancelBody>, content_type = "application/json"),
    responses(
        (status = 200, body = CancelAnswer),
        (status = 400, description = "Already finished (or an unreadable body)", body = ErrorEnvelope),
        (status = 404, description = "No such operation", body = ErrorEnvelope),
        (status = 409, description = "Running on another replica", body = ErrorEnvelope),
        (status = 413, description = "Body too large", body = ErrorEnvelope),
        (status = 415, description = "Body not JSON", body = ErrorEnvelope),
        (status = 422, description = "Invalid body", body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    ))]
async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<CancelBody>,
) -> Result<Response, ApiError> {
    let reason = body.and_then(|b| b.reason);
    if reason.as_ref().is_some_and(|r| r.chars().count() > MAX_REASON_LEN) {
        return Err(ApiError::invalid("reason", format!("reason must be at most {MAX_REASON_LEN} characters")));
    }
    if id.len() > MAX_ID_LEN {
        return Err(ApiError::operation_not_found(&id));
    }
    let cancelled = state.orchestrator.cancel(&id, reason).await?;
    let record = &cancelled.snapshot.record;
    Ok(Json(CancelAnswer {
        success: true,
        data: Cancelled {
            success: true,
            operation_id: record.operation_id.clone(),
            status: record.status,
            cancelled_at: record.completed_at.as_ref().map(time::format),
            cancellation_reason: record.cancellation.as_ref().map(|c| c.reason.clone()),
            task_cancelled: cancelled.work_stopped,
            remote_cancelled: cancelled.remote_cancelled,
        },
    })
    .into_response())
}

/// Server-Sent Events: `event: operation` with the record on connect and on every change,
/// `id:` = version; resumes after `Last-Event-ID`; ends after the terminal event.
#[utoipa::path(get, path = "/api/v1/operations/{id}/events", tag = "operations", params(
    ("id" = String, Path, description = "Operation id"),
    ("Last-Event-ID" = Option<String>, Header, description = "The last version received"),
), responses(
    (status = 200, description = "A stream of `operation` events, each carrying the record", content_type = "text/event-stream", body = OperationEvent),
    (status = 404, description = "No such operation", body = ErrorEnvelope),
    (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
))]
async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let lookup = find(&state, &id).await?;
    let slot = state.stream_slot()?;
    let last_seen =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let stream = sse::holding(slot, operation_events(lookup, last_seen, state.orchestrator.shutdown_token()));
    Ok(sse::respond(&headers, stream))
}

/// The least time between two batches of the list-wide stream's rows.
const ROW_PACE: Duration = Duration::from_millis(250);

/// What each event of the list-wide stream carries.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AllEventsQuery {
    /// `record` (the default): the whole record; `row`: the list row (`GET /operations`'
    /// `data[]`: id, type, status, percentage, step, ETA, subject, duration…) — a few hundred
    /// bytes whatever the record holds, at most one per operation every 250 ms, for lists that
    /// read the whole record only when asked.
    view: Option<String>,
}

/// Every change of every operation, one stream: `event: operation` with the record (or its list
/// row, `?view=row`), `id:` = a global sequence number; resumes after `Last-Event-ID` (an
/// `event: reset` says changes were missed and the client should reload the list). Bursts are
/// coalesced to each operation's latest version. Feeds the dashboard.
#[utoipa::path(get, path = "/api/v1/operations/events", tag = "operations", params(
    ("Last-Event-ID" = Option<String>, Header, description = "The last sequence number received"),
    AllEventsQuery,
), responses(
    (status = 200, description = "A stream of `operation` (and `reset`) events", content_type = "text/event-stream", body = OperationEvent),
    (status = 422, description = "An unknown view", body = ErrorEnvelope),
    (status = 503, description = "Too many streams open (`server.max_streams`); see Retry-After", body = ErrorEnvelope),
))]
async fn all_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<AllEventsQuery>,
) -> Result<Response, ApiError> {
    let rows = match query.view.as_deref() {
        None | Some("" | "record") => false,
        Some("row") => true,
        Some(other) => {
            return Err(crate::invalid::Invalid::new("view", format!("view `{other}` is not `record` or `row`"))
                .allowed(json!(["record", "row"]))
                .into());
        }
    };
    let slot = state.stream_slot()?;
    let feed_now = state.orchestrator.feed().current();
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        // A number from before a restart means nothing now: start from the present.
        .filter(|seq| *seq <= feed_now)
        .unwrap_or(feed_now);
    struct Follow {
        state: AppState,
        rows: bool,
        last: u64,
        changes: tokio::sync::watch::Receiver<u64>,
        ready: std::collections::VecDeque<Event>,
        shutdown: tokio_util::sync::CancellationToken,
    }
    let start = Follow {
        changes: state.orchestrator.feed().subscribe(),
        shutdown: state.orchestrator.shutdown_token(),
        state,
        rows,
        last,
        ready: Default::default(),
    };
    let stream = futures_util::stream::unfold(start, |mut f| async move {
        loop {
            if let Some(event) = f.ready.pop_front() {
                return Some((Ok(event), f));
            }
            let (changed, lost) = f.state.orchestrator.feed().since(f.last);
            if lost {
                let seq = changed.first().map_or(f.last, |(s, _)| s - 1);
                f.ready.push_back(Event::default().event("reset").id(seq.to_string()).data("{}"));
            }
            for (seq, id) in changed {
                f.last = seq;
                if let Ok(Some(lookup)) = f.state.orchestrator.get(&id).await {
                    let snapshot = lookup.snapshot();
                    let event = Event::default().event("operation").id(seq.to_string());
                    f.ready.push_back(if f.rows {
                        let row = summary(&snapshot, f.state.orchestrator.labels(&snapshot.record));
                        event.json_data(row).expect("a list row serialises")
                    } else {
                        let json = snapshot.record_json();
                        event.data(std::str::from_utf8(&json).expect("serde_json writes UTF-8"))
                    });
                }
            }
            if !f.ready.is_empty() {
                continue;
            }
            tokio::select! {
                changed = f.changes.changed() => changed.ok()?,
                _ = f.shutdown.cancelled() => return None,
            }
            if f.rows {
                // Rows are for eyes: one batch per pace, each operation once in it at its latest.
                // A hundred running loads then cost a list a few hundred KB/s, not megabytes.
                tokio::select! {
                    _ = tokio::time::sleep(ROW_PACE) => {}
                    _ = f.shutdown.cancelled() => return None,
                }
            }
        }
    });
    Ok(sse::respond(&headers, sse::holding(slot, stream)))
}

fn operation_event(snapshot: &Snapshot) -> Event {
    let json = snapshot.record_json();
    Event::default()
        .event("operation")
        .id(snapshot.version().to_string())
        .data(std::str::from_utf8(&json).expect("serde_json writes UTF-8"))
}

fn operation_events(
    lookup: Lookup,
    last_seen: Option<u64>,
    shutdown: tokio_util::sync::CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    struct Follow {
        lookup: Lookup,
        last_sent: Option<u64>,
        done: bool,
        shutdown: tokio_util::sync::CancellationToken,
    }
    let start = Follow { lookup, last_sent: last_seen, done: false, shutdown };
    futures_util::stream::unfold(start, |mut f| async move {
        if f.done {
            return None;
        }
        let snapshot: Arc<Snapshot> = match f.last_sent {
            None => f.lookup.snapshot(),
            Some(last) => tokio::select! {
                next = f.lookup.newer_than(last) => next?,
                _ = f.shutdown.cancelled() => return None,
            },
        };
        f.last_sent = Some(snapshot.version());
        f.done = snapshot.is_terminal();
        Some((Ok(operation_event(&snapshot)), f))
    })
}

/// The result of a completed or failed operation.
#[utoipa::path(get, path = "/api/v1/operations/{id}/results", tag = "operations",
    params(("id" = String, Path, description = "Operation id")),
    responses(
        (status = 200, body = Results),
        (status = 400, description = "Not finished (or cancelled)", body = ErrorEnvelope),
        (status = 404, description = "No such operation", body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    ))]
async fn results(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let snapshot = find(&state, &id).await?.snapshot();
    let r = &snapshot.record;
    if !matches!(r.status, Status::Completed | Status::Failed) {
        let message = match r.status {
            Status::Cancelled => {
                format!("Operation {id} was cancelled; results exist only for completed or failed operations")
            }
            status => format!("Operation {id} is still {status}; results are available once it has finished"),
        };
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "OPERATION_NOT_FINISHED", message)
            .details(json!({ "operation_id": id, "status": r.status })));
    }
    Ok(Json(Results {
        success: true,
        operation_id: r.operation_id.clone(),
        operation_type: r.operation_type.clone(),
        status: r.status,
        results: r.result_summary.clone().unwrap_or_else(|| json!({})),
    })
    .into_response())
}

/// The operation's domain metrics (e.g. a training's epochs).
#[utoipa::path(get, path = "/api/v1/operations/{id}/metrics", tag = "operations",
    params(("id" = String, Path, description = "Operation id")),
    responses(
        (status = 200, body = MetricsAnswer),
        (status = 404, description = "No such operation", body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    ))]
async fn metrics(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let snapshot = find(&state, &id).await?.snapshot();
    let r = &snapshot.record;
    Ok(Json(MetricsAnswer {
        success: true,
        data: OperationMetrics {
            operation_id: r.operation_id.clone(),
            operation_type: r.operation_type.clone(),
            metrics: r.metrics.clone().unwrap_or_else(|| json!({})),
        },
    })
    .into_response())
}
