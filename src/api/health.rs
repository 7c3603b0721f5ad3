//! `GET /api/v1/health`: 200 while the service itself works, with the database's state and the
//! number of active operations (api.md §7).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::api::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/health", get(health))
}

async fn health(State(state): State<AppState>) -> Json<Value> {
    let database = match state.orchestrator.store().ping().await {
        Ok(()) => "ok".to_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "health: database check failed");
            "unavailable".to_owned()
        }
    };
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "database": database,
        "database_kind": state.orchestrator.store().kind(),
        "node_id": state.orchestrator.settings().node_id,
        "hosts": {},
        "operations": { "active": state.orchestrator.active_count() },
    }))
}
