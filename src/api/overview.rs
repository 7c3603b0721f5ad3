//! `GET /operations/stats`: how many operations of each type stand in each status over a recent
//! window — the dashboard's overview strip, without listing them.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::ApiQuery as Query;
use crate::api::schemas::ErrorEnvelope;
use crate::ops::Status;
use crate::time;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stats))
}

const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);
const MAX_WINDOW: Duration = Duration::from_secs(90 * 24 * 3600);

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StatsQuery {
    /// How far back, by creation time: `24h` (the default), `7d`, `30m`; 1 minute to 90 days.
    window: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct OperationStats {
    /// The window's start: operations created since then are counted.
    #[schema(format = DateTime)]
    pub since: String,
    pub window_seconds: u64,
    /// Every operation in the window.
    pub total: u64,
    /// Counts by status, every status present (0 when none).
    pub by_status: BTreeMap<String, u64>,
    /// Counts by type, then by status (only the statuses some operation of the type has).
    pub by_type: BTreeMap<String, BTreeMap<String, u64>>,
}

#[derive(Serialize, ToSchema)]
pub struct StatsEnvelope {
    pub success: bool,
    pub data: OperationStats,
}

/// Operations created in the window, counted by status and by type.
#[utoipa::path(get, path = "/api/v1/operations/stats", tag = "operations", params(StatsQuery), responses(
    (status = 200, body = StatsEnvelope),
    (status = 422, description = "`window` is invalid", body = ErrorEnvelope),
    (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
))]
async fn stats(
    State(state): State<AppState>,
    Query(query): Query<StatsQuery>,
) -> Result<Json<StatsEnvelope>, ApiError> {
    let window = match query.window.as_deref() {
        None | Some("") => DEFAULT_WINDOW,
        Some(text) => {
            time::parse_duration(text).ok().filter(|w| (Duration::from_secs(60)..=MAX_WINDOW).contains(w)).ok_or_else(
                || ApiError::invalid("window", "window must be a duration from 1m to 90d, such as 24h or 7d"),
            )?
        }
    };
    let since = time::now() - chrono::Duration::from_std(window).expect("at most 90 days");
    let counts = state.orchestrator.store().count_by_status(since).await?;
    let mut by_status: BTreeMap<String, u64> = Status::ALL.iter().map(|s| (s.as_str().to_owned(), 0)).collect();
    let mut by_type: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for c in &counts {
        *by_status.entry(c.status.clone()).or_default() += c.count;
        *by_type.entry(c.operation_type.clone()).or_default().entry(c.status.clone()).or_default() += c.count;
    }
    Ok(Json(StatsEnvelope {
        success: true,
        data: OperationStats {
            since: time::format(&since),
            window_seconds: window.as_secs(),
            total: counts.iter().map(|c| c.count).sum(),
            by_status,
            by_type,
        },
    }))
}
