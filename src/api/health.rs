//! `GET /api/v1/health`: 200 while the service itself works, with the database's state, each
//! host's reachability (probed with a short timeout, cached) and the number of active operations
//! (api.md §7).

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/health", get(health))
}

async fn health(State(state): State<AppState>) -> Json<Value> {
    let store = state.orchestrator.store();
    let training = &state.hosts.training;
    let protocol = async {
        // Under `auto` the protocol is known after the first probe; give that probe a moment only.
        let token = CancellationToken::new();
        let deadline = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            deadline.cancel();
        });
        training.protocol(&token).await.ok().map(|p| p.as_str())
    };
    let (database, ib, training_health, protocol) =
        tokio::join!(store.ping(), state.hosts.ib.host().health(), training.host().health(), protocol);
    let database = match database {
        Ok(()) => "ok",
        Err(e) => {
            tracing::warn!(error = %e, "health: database check failed");
            "unavailable"
        }
    };
    let mut training_json = json!(training_health);
    training_json["protocol"] = json!(protocol);
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "database": database,
        "database_kind": store.kind(),
        "node_id": state.orchestrator.settings().node_id,
        "hosts": { "ib": ib, "training": training_json },
        "operations": { "active": state.orchestrator.active_count() },
    }))
}
