//! The training simulator's controls for tests and demos: its request log and sessions
//! (`GET /sim/stats`), its knobs (`GET`/`PUT /sim/knobs`) and a crash that forgets every session.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{Sim, TrainingKnobs};
use crate::sim::fastapi::FastJson;

pub(super) async fn stats(State(sim): Sim) -> Json<Value> {
    let stats = sim.stats.lock();
    let sessions: Vec<Value> = sim
        .sessions
        .lock()
        .values()
        .map(|s| {
            json!({
                "id": s.id, "status": s.status, "finished": s.finished, "stop_requested": s.stop_requested,
                "epochs": s.epochs.len(), "created_at": s.created_at, "last_updated": s.last_updated,
            })
        })
        .collect();
    Json(json!({
        "protocol": sim.protocol, "requests": stats.requests, "starts": stats.starts,
        "busy_rejections": stats.busy_rejections, "stops": stats.stops, "crashes": stats.crashes, "sessions": sessions,
    }))
}

pub(super) async fn get_knobs(State(sim): Sim) -> Json<TrainingKnobs> {
    Json(sim.knobs())
}

pub(super) async fn set_knobs(State(sim): Sim, FastJson(knobs): FastJson<TrainingKnobs>) -> Json<TrainingKnobs> {
    *sim.knobs.write() = knobs.clone();
    Json(knobs)
}

/// Forgets every session, as a restarted host would.
pub(super) async fn crash(State(sim): Sim) -> StatusCode {
    let sessions = std::mem::take(&mut *sim.sessions.lock());
    for session in sessions.values() {
        if let Some(abort) = &session.abort {
            abort.abort();
        }
    }
    sim.stats.lock().crashes += 1;
    StatusCode::NO_CONTENT
}
