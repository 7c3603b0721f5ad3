//! The training host simulator: both protocol generations of hosts.md §2 (one at a time), a
//! session that runs `epochs × batches` steps at a set pace with falling losses and rising
//! accuracies, one session at a time (503 when busy), 409 on a reused id, the real host's
//! not-found answers, and knobs: pace, failure at epoch N, ignoring stop (the real host's
//! defect), and a crash that forgets every session. It checks its data directory as the real
//! host does: a missing `{SYMBOL}_{TF}.csv` fails the session.

use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::hosts::training::Protocol;
use crate::sim::fastapi::FastJson;
use crate::time;

mod checkpoint;
mod controls;
mod model_folder;
mod start;
mod wire;

use checkpoint::{SimCheckpoint, resume};
use wire::{operation_body, session_body};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingKnobs {
    /// Time per batch.
    pub pace_ms: u64,
    /// Used when the request names no epoch count.
    pub epochs: u32,
    pub batches: u32,
    /// Fail every session at this epoch (1-based).
    pub fail_at_epoch: Option<u32>,
    /// Acknowledge stops but keep training, then end `completed` (the real host's defect).
    pub ignore_cancel: bool,
    pub max_sessions: usize,
    /// Hold every stop/cancel call this long before answering (the real host may take 30 s).
    pub stop_delay_ms: u64,
    /// Hold every status answer (session status, operation) this long: a stalled host.
    pub status_delay_ms: u64,
    /// Take this long to start a session (after which it starts even if the caller hung up, as
    /// a real host's request handler does).
    pub start_delay_ms: u64,
    /// Save a `periodic` checkpoint every this many epochs (ktrdr's
    /// `KTRDR_CHECKPOINT_EPOCH_INTERVAL`); 0: only on cancel and failure.
    pub checkpoint_interval: u32,
    /// A folder shared with other workers to keep checkpoints in (ktrdr's
    /// `KTRDR_CHECKPOINT_DIR`): any of them can resume a training from it.
    pub checkpoint_dir: Option<PathBuf>,
}

impl Default for TrainingKnobs {
    fn default() -> Self {
        Self {
            pace_ms: 20,
            epochs: 10,
            batches: 10,
            fail_at_epoch: None,
            ignore_cancel: false,
            max_sessions: 1,
            stop_delay_ms: 0,
            status_delay_ms: 0,
            start_delay_ms: 0,
            checkpoint_interval: 10,
            checkpoint_dir: None,
        }
    }
}

/// What a training was started with: kept with its session and, as `original_request`, in a
/// shared checkpoint, so that another worker can resume it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunRequest {
    symbols: Vec<String>,
    timeframes: Vec<String>,
    model_type: String,
    /// The strategy's name (its YAML `name`, or the file a sessions-generation start names).
    strategy: String,
    total_epochs: u32,
    total_batches: u32,
}

#[derive(Debug, Clone)]
struct SimSession {
    id: String,
    request: RunRequest,
    /// The host's own word: initializing/running/completed/stopped/failed (sessions),
    /// pending/running/completed/cancelled/failed (operations).
    status: String,
    epoch: u32,
    batch: u32,
    epochs: Vec<Value>,
    error: Option<String>,
    created_at: String,
    last_updated: String,
    stop_requested: bool,
    /// Fired with `stop_requested`: wakes the run loop from a batch's pause, as a real host's
    /// training loop checks for a stop between steps rather than after an hour-long batch.
    stop_signal: CancellationToken,
    /// The run loop has ended (a session can read `cancelled` while still running).
    finished: bool,
    result: Option<Value>,
    /// The first epoch this run trains (1-based): after the checkpoint's on a resume.
    first_epoch: u32,
    abort: Option<AbortHandle>,
}

impl SimSession {
    /// A run of `request` about to train from `first_epoch` (1-based), reading `status`.
    fn starting(id: String, request: RunRequest, status: String, first_epoch: u32) -> SimSession {
        let now = time::format(&time::now());
        SimSession {
            id,
            request,
            status,
            epoch: first_epoch - 1,
            batch: 0,
            epochs: Vec::new(),
            error: None,
            created_at: now.clone(),
            last_updated: now,
            stop_requested: false,
            stop_signal: CancellationToken::new(),
            finished: false,
            result: None,
            first_epoch,
            abort: None,
        }
    }

    fn request_stop(&mut self) {
        self.stop_requested = true;
        self.stop_signal.cancel();
    }
}

#[derive(Debug, Default, Serialize)]
struct Stats {
    requests: BTreeMap<String, u64>,
    starts: u64,
    busy_rejections: u64,
    stops: u64,
    crashes: u64,
}

pub struct TrainingSim {
    protocol: Protocol,
    data_dir: PathBuf,
    /// Where completed trainings leave their model folders, as ktrdr's hosts do.
    models_dir: Option<PathBuf>,
    knobs: RwLock<TrainingKnobs>,
    sessions: Mutex<BTreeMap<String, SimSession>>,
    /// One per operation; a save replaces it, a completed training deletes it.
    checkpoints: Mutex<BTreeMap<String, SimCheckpoint>>,
    stats: Mutex<Stats>,
}

type Sim = State<Arc<TrainingSim>>;

fn detail(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(json!({ "detail": text.into() }))).into_response()
}

impl TrainingSim {
    pub fn new(protocol: Protocol, data_dir: PathBuf, models_dir: Option<PathBuf>, knobs: TrainingKnobs) -> Arc<Self> {
        Arc::new(Self {
            protocol,
            data_dir,
            models_dir,
            knobs: RwLock::new(knobs),
            sessions: Mutex::new(BTreeMap::new()),
            checkpoints: Mutex::new(BTreeMap::new()),
            stats: Mutex::new(Stats::default()),
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        let mut router = Router::new()
            .route("/health", get(health))
            .route("/training/start", post(start::start))
            .route("/sim/stats", get(controls::stats))
            .route("/sim/knobs", put(controls::set_knobs).get(controls::get_knobs))
            .route("/sim/crash", post(controls::crash));
        router = match self.protocol {
            Protocol::Sessions => router
                .route("/training/status/{id}", get(session_status))
                .route("/training/stop", post(session_stop))
                .route("/training/result/{id}", get(session_result)),
            Protocol::Operations => router
                .route("/api/v1/operations", get(list_operations))
                .route("/api/v1/operations/{id}", get(operation))
                .route("/api/v1/operations/{id}/cancel", delete(cancel_operation))
                .route("/training/resume", post(resume)),
        };
        router.with_state(self.clone())
    }

    /// The operation it trains, if any (a worker's `current_operation`).
    pub fn current_operation(&self) -> Option<String> {
        self.sessions.lock().values().find(|s| !s.finished).map(|s| s.id.clone())
    }

    /// Stops these operations: the service they belong to says they are over.
    pub fn stop_operations(&self, ids: &[String]) {
        for id in ids {
            self.with_session(id, SimSession::request_stop);
        }
    }

    fn knobs(&self) -> TrainingKnobs {
        self.knobs.read().clone()
    }

    fn count(&self, endpoint: &str) {
        *self.stats.lock().requests.entry(endpoint.to_owned()).or_default() += 1;
    }

    fn with_session<R>(&self, id: &str, f: impl FnOnce(&mut SimSession) -> R) -> Option<R> {
        self.sessions.lock().get_mut(id).map(f)
    }

    fn word(&self, status: &str) -> String {
        match (self.protocol, status) {
            (Protocol::Sessions, "starting") => "initializing",
            (Protocol::Operations, "starting") => "pending",
            (Protocol::Sessions, "stopped") => "stopped",
            (Protocol::Operations, "stopped") => "cancelled",
            (_, other) => other,
        }
        .to_owned()
    }

    /// Runs the session `id` (just stored) in a task of its own, abortable by a crash.
    fn launch(self: &Arc<Self>, id: &str) {
        self.stats.lock().starts += 1;
        let handle = tokio::spawn(self.clone().run(id.to_owned()));
        self.with_session(id, |s| s.abort = Some(handle.abort_handle()));
    }

    /// Runs a session to its end: a data check, then epochs of batches at the knobs' pace.
    async fn run(self: Arc<Self>, id: String) {
        let knobs = self.knobs();
        let pace = Duration::from_millis(knobs.pace_ms);
        // A stop cuts a pause short, unless the host ignores stops.
        let Some(signal) = self.with_session(&id, |s| s.stop_signal.clone()) else { return };
        let signal = if knobs.ignore_cancel { CancellationToken::new() } else { signal };
        let pause = || async {
            tokio::select! {
                _ = tokio::time::sleep(pace) => {}
                _ = signal.cancelled() => {}
            }
        };
        pause().await;
        let Some((symbols, timeframes, total_epochs, total_batches, first_epoch)) = self.with_session(&id, |s| {
            (
                s.request.symbols.clone(),
                s.request.timeframes.clone(),
                s.request.total_epochs,
                s.request.total_batches,
                s.first_epoch,
            )
        }) else {
            return;
        };
        for symbol in &symbols {
            for timeframe in &timeframes {
                let file = self.data_dir.join(format!("{symbol}_{timeframe}.csv"));
                if !file.is_file() {
                    let error = format!(
                        "Training failed: No data found in cache for {symbol} {timeframe} (looked for {})",
                        file.display()
                    );
                    self.end(&id, "failed", Some(error), None);
                    return;
                }
            }
        }
        // Stopped before it ran: it ends without a batch (and without a checkpoint: nothing trained).
        let running = self.word("running");
        let stop_first = self.with_session(&id, |s| {
            if !s.stop_requested {
                s.status = running.clone();
            }
            s.stop_requested
        });
        if stop_first == Some(true) && !knobs.ignore_cancel {
            let stopped = self.word("stopped");
            self.end(&id, &stopped, None, None);
            return;
        }
        let mut last_saved = first_epoch - 1;
        for epoch in first_epoch..=total_epochs {
            for batch in 1..=total_batches {
                pause().await;
                let stop = self.with_session(&id, |s| {
                    s.epoch = epoch;
                    s.batch = batch;
                    s.last_updated = time::format(&time::now());
                    s.stop_requested
                });
                match stop {
                    None => return,
                    Some(true) if !self.knobs().ignore_cancel => {
                        self.save_checkpoint(&id, "cancellation").await;
                        let stopped = self.word("stopped");
                        self.end(&id, &stopped, None, None);
                        return;
                    }
                    Some(_) => {}
                }
            }
            // Plausible curves: losses fall, accuracies rise, with the epoch.
            let progress = f64::from(epoch) / f64::from(total_epochs);
            let metrics = json!({
                "epoch": epoch - 1,
                "train_loss": ((1.1 - 0.8 * progress) * 1000.0).round() / 1000.0,
                "train_accuracy": ((0.55 + 0.35 * progress) * 1000.0).round() / 1000.0,
                "val_loss": ((1.15 - 0.75 * progress) * 1000.0).round() / 1000.0,
                "val_accuracy": ((0.53 + 0.32 * progress) * 1000.0).round() / 1000.0,
                "learning_rate": 0.001,
                "duration": (pace.as_secs_f64() * f64::from(total_batches) * 1000.0).round() / 1000.0,
                "timestamp": time::format(&time::now()),
            });
            self.with_session(&id, |s| s.epochs.push(metrics));
            if knobs.fail_at_epoch == Some(epoch) {
                self.save_checkpoint(&id, "failure").await;
                let error = format!("Training failed: simulated failure at epoch {epoch} (CUDA out of memory)");
                self.end(&id, "failed", Some(error), None);
                return;
            }
            if knobs.checkpoint_interval > 0 && epoch - last_saved >= knobs.checkpoint_interval {
                self.save_checkpoint(&id, "periodic").await;
                last_saved = epoch;
            }
        }
        let model_path = match self.save_model(&id).await {
            Ok(path) => path,
            Err(e) => {
                self.end(&id, "failed", Some(format!("Training failed: could not save the model: {e}")), None);
                return;
            }
        };
        let result = self.with_session(&id, |s| {
            json!({
                "model_path": model_path.clone().unwrap_or_else(|| format!("models/sim/{}_{}.pt", s.request.model_type, s.id)),
                "training_metrics": { "final_train_loss": s.epochs.last().and_then(|e| e.get("train_loss")).cloned(), "epochs_trained": s.epochs.len() },
                "test_metrics": { "test_accuracy": 0.81, "test_loss": 0.42, "precision": 0.8, "recall": 0.79, "f1_score": 0.795 },
                "model_info": { "model_type": s.request.model_type, "parameters_count": 12_345 },
                "data_summary": { "symbols": s.request.symbols, "timeframes": s.request.timeframes },
            })
        });
        // A training that completed has nothing left to resume.
        self.delete_checkpoint(&id).await;
        self.end(&id, "completed", None, result);
    }

    /// Writes the session's model folder in ktrdr's layout — `{models_dir}/{strategy}/{tf}_v{N}/`
    /// with `metadata.json`, `metrics.json` and small weights, and the `{tf}_latest` link — into a
    /// temporary folder renamed into place, so a reader never sees half of one. The weights'
    /// path, or `None` without a models folder.
    async fn save_model(&self, id: &str) -> std::io::Result<Option<String>> {
        let Some(models_dir) = self.models_dir.clone() else { return Ok(None) };
        let Some(session) = self.with_session(id, |s| s.clone()) else { return Ok(None) };
        tokio::task::spawn_blocking(move || model_folder::write(&models_dir, &session).map(Some))
            .await
            .map_err(std::io::Error::other)?
    }

    fn end(&self, id: &str, status: &str, error: Option<String>, result: Option<Value>) {
        self.with_session(id, |s| {
            s.status = status.to_owned();
            s.error = error;
            s.result = result;
            s.finished = true;
            s.last_updated = time::format(&time::now());
        });
    }

    fn percentage(s: &SimSession) -> f64 {
        let total = f64::from(s.request.total_epochs * s.request.total_batches).max(1.0);
        let done = f64::from(s.epoch.saturating_sub(1) * s.request.total_batches + s.batch);
        if s.status == "completed" { 100.0 } else { (done / total * 1000.0).round() / 10.0 }
    }

    fn step_text(s: &SimSession) -> String {
        format!("Epoch {}/{} · Batch {}/{}", s.epoch, s.request.total_epochs, s.batch, s.request.total_batches)
    }
}

async fn health(State(sim): Sim) -> Json<Value> {
    sim.count("/health");
    let current = sim.current_operation();
    Json(json!({
        "healthy": true, "service": "training-worker", "status": "operational",
        "worker_status": if current.is_some() { "busy" } else { "idle" }, "current_operation": current,
    }))
}

async fn session_status(State(sim): Sim, Path(id): Path<String>) -> Response {
    sim.count("/training/status");
    status_delay(&sim).await;
    match sim.with_session(&id, |s| session_body(s)) {
        Some(body) => Json(body).into_response(),
        None => detail(StatusCode::NOT_FOUND, format!("Session {id} not found")),
    }
}

#[derive(Deserialize)]
struct StopBody {
    session_id: String,
    #[serde(default)]
    #[allow(dead_code)]
    save_checkpoint: bool,
}

/// Holds a stop call as long as the knobs say.
async fn stop_delay(sim: &TrainingSim) {
    hold(sim.knobs().stop_delay_ms).await;
}

/// Holds a status answer as long as the knobs say.
async fn status_delay(sim: &TrainingSim) {
    hold(sim.knobs().status_delay_ms).await;
}

async fn hold(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

async fn session_stop(State(sim): Sim, FastJson(body): FastJson<StopBody>) -> Response {
    sim.count("/training/stop");
    stop_delay(&sim).await;
    sim.stats.lock().stops += 1;
    match sim.with_session(&body.session_id, SimSession::request_stop) {
        Some(()) => Json(json!({
            "session_id": body.session_id, "status": "stopped",
            "message": "Training session stop requested", "checkpoint_saved": true,
        }))
        .into_response(),
        None => detail(StatusCode::NOT_FOUND, format!("Session {} not found", body.session_id)),
    }
}

async fn session_result(State(sim): Sim, Path(id): Path<String>) -> Response {
    sim.count("/training/result");
    match sim.with_session(&id, |s| (s.status.clone(), s.result.clone())) {
        Some((status, Some(result))) if status == "completed" => Json(result).into_response(),
        Some((status, _)) => detail(StatusCode::BAD_REQUEST, format!("Session {id} is {status}; no result")),
        None => detail(StatusCode::NOT_FOUND, format!("Session {id} not found")),
    }
}

async fn list_operations(State(sim): Sim) -> Json<Value> {
    sim.count("/api/v1/operations");
    let checkpoints = sim.checkpoints.lock().clone();
    let data: Vec<Value> = sim.sessions.lock().values().map(|s| operation_body(s, checkpoints.get(&s.id))).collect();
    Json(json!({ "success": true, "data": data, "total_count": data.len() }))
}

async fn operation(State(sim): Sim, Path(id): Path<String>) -> Response {
    sim.count("/api/v1/operations/{id}");
    status_delay(&sim).await;
    let checkpoint = sim.checkpoints.lock().get(&id).cloned();
    match sim.with_session(&id, |s| operation_body(s, checkpoint.as_ref())) {
        Some(body) => Json(json!({ "success": true, "data": body })).into_response(),
        None => detail(StatusCode::NOT_FOUND, format!("Operation not found: {id}")),
    }
}

async fn cancel_operation(
    State(sim): Sim,
    Path(id): Path<String>,
    Query(_query): Query<BTreeMap<String, String>>,
) -> Response {
    sim.count("/api/v1/operations/{id}/cancel");
    stop_delay(&sim).await;
    sim.stats.lock().stops += 1;
    let cancelled = sim.with_session(&id, |s| {
        s.request_stop();
        if !s.finished {
            // Like the real host: the record says cancelled at once, whatever the loop does.
            s.status = "cancelled".into();
        }
        s.status.clone()
    });
    match cancelled {
        Some(status) => {
            Json(json!({ "success": true, "data": { "operation_id": id, "status": status, "cancelled": true } }))
                .into_response()
        }
        None => detail(StatusCode::NOT_FOUND, format!("Operation not found: {id}")),
    }
}
