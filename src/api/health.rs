//! `GET /api/v1/health`: 200 while the service itself works, with the database's state, each
//! host's reachability (probed with a short timeout, cached), whether the IB host's gateway is
//! connected, and the number of active operations
//! (api.md §7).

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::api::auth::Anonymous;
use crate::api::schemas::{ActiveOperations, Health, HostsHealth, IbHealth, TrainingHealth};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

/// The service, its database and its hosts. Needs no token; with `auth.api_token` set, a caller
/// without it is told only `{"status": "ok"}` (no hosts, node or replica names).
#[utoipa::path(get, path = "/api/v1/health", tag = "service", security(()), responses((status = 200, body = Health)))]
async fn health(State(state): State<AppState>, anonymous: Option<Extension<Anonymous>>) -> Response {
    if anonymous.is_some() {
        return Json(json!({ "status": "ok" })).into_response();
    }
    details(state).await.into_response()
}

async fn details(state: AppState) -> Json<Health> {
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
    let (database, ib, gateway, training_health, protocol, replicas) = tokio::join!(
        store.ping(),
        state.hosts.ib.host().health(),
        state.hosts.ib.gateway(false),
        training.host().health(),
        protocol,
        state.orchestrator.replicas()
    );
    let database = match database {
        Ok(()) => "ok",
        Err(e) => {
            tracing::warn!(error = %e, "health: database check failed");
            "unavailable"
        }
    };
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        database: database.into(),
        database_kind: store.backend().as_str().into(),
        node_id: state.orchestrator.settings().node_id.clone(),
        replicas: replicas.unwrap_or_default(),
        hosts: HostsHealth {
            ib: IbHealth { report: ib, gateway_connected: gateway.connected() },
            training: TrainingHealth { report: training_health, protocol: protocol.map(str::to_owned) },
        },
        operations: ActiveOperations { active: state.orchestrator.active_count() as u64 },
    })
}
