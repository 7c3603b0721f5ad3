//! The simulated backtest worker (backtesting.md §3): ktrdr's routes — `POST /backtests/start`,
//! `POST /backtests/resume`, the operations API (`GET /api/v1/operations/{id}`, `DELETE
//! …/cancel`), `GET /health` — over a real engine ([`engine`]) run on the cached CSV. Better
//! than ktrdr's worker: a start while it runs a backtest is refused 503 (one at a time) and a
//! reused id 409; `progress.context` says bars, trades and equity; a cancel answers once the run
//! has stopped; checkpoints go to a folder workers share, so another worker can resume a run.

pub mod engine;
pub mod metrics;
mod run;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::hosts::workers::plain_id;
use crate::sim::fastapi::FastJson;
use crate::time;

/// How the simulated backtest worker behaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BacktestKnobs {
    /// Bars simulated per second (0: as fast as the engine goes).
    pub bars_per_second: u64,
    /// Progress (and the cancel check) every this many bars (ktrdr: 50).
    pub progress_every: usize,
    /// A `periodic` checkpoint every this many bars (ktrdr: 10,000).
    pub checkpoint_every: usize,
    /// Where checkpoints are kept (`{dir}/{operation_id}.json`), shared by the workers.
    pub checkpoint_dir: Option<PathBuf>,
}

impl Default for BacktestKnobs {
    fn default() -> Self {
        BacktestKnobs { bars_per_second: 0, progress_every: 50, checkpoint_every: 10_000, checkpoint_dir: None }
    }
}

/// The body of `POST /backtests/start` (backtesting.md §2.2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BacktestOrder {
    #[serde(default)]
    pub task_id: Option<String>,
    pub strategy_name: String,
    pub symbol: String,
    pub timeframe: String,
    pub start_date: String,
    pub end_date: String,
    #[serde(default = "crate::backtest::default_capital")]
    pub initial_capital: f64,
    #[serde(default = "crate::backtest::default_commission")]
    pub commission: f64,
    #[serde(default = "crate::backtest::default_slippage")]
    pub slippage: f64,
    #[serde(default)]
    pub model_path: Option<String>,
    #[serde(default)]
    pub timeframes: Vec<String>,
}

/// One run as the operations API shows it.
#[derive(Debug, Clone)]
struct RunView {
    status: &'static str,
    created_at: String,
    started_at: Option<String>,
    completed_at: Option<String>,
    percentage: f64,
    current_step: String,
    context: Value,
    result: Option<Value>,
    error: Option<String>,
    checkpoint: Option<Value>,
}

/// A run: its order, what it shows, and its stop.
struct Run {
    id: String,
    order: BacktestOrder,
    view: Mutex<RunView>,
    stop: CancellationToken,
    /// Fires once the run has ended (completed, failed or stopped).
    ended: CancellationToken,
}

impl Run {
    fn finished(&self) -> bool {
        self.ended.is_cancelled()
    }
}

/// What the simulator counted (`GET /sim/stats`).
#[derive(Debug, Default, Clone, Serialize)]
struct Stats {
    starts: u64,
    resumes: u64,
    cancels: u64,
    /// Milliseconds from each cancel call to its run's stop.
    stop_ms: Vec<f64>,
}

/// One simulated backtest worker.
pub struct BacktestSim {
    data_dir: PathBuf,
    models_dir: PathBuf,
    knobs: RwLock<BacktestKnobs>,
    runs: Mutex<BTreeMap<String, Arc<Run>>>,
    stats: Mutex<Stats>,
}

type Sim = State<Arc<BacktestSim>>;

fn detail(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(json!({ "detail": text.into() }))).into_response()
}

impl BacktestSim {
    pub fn new(data_dir: PathBuf, models_dir: PathBuf, mut knobs: BacktestKnobs) -> Arc<Self> {
        knobs.checkpoint_dir.get_or_insert_with(|| data_dir.join("checkpoints").join("backtests"));
        Arc::new(BacktestSim {
            data_dir,
            models_dir,
            knobs: RwLock::new(knobs),
            runs: Mutex::default(),
            stats: Mutex::default(),
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/health", get(health))
            .route("/backtests/start", post(start))
            .route("/backtests/resume", post(resume))
            .route("/api/v1/operations", get(list))
            .route("/api/v1/operations/{id}", get(operation))
            .route("/api/v1/operations/{id}/cancel", delete(cancel))
            .route("/sim/stats", get(stats))
            .route("/sim/knobs", put(set_knobs).get(get_knobs))
            .with_state(self.clone())
    }

    /// The backtest it runs, if any (a worker's `current_operation`).
    pub fn current_operation(&self) -> Option<String> {
        self.runs.lock().values().find(|r| !r.finished()).map(|r| r.id.clone())
    }

    /// Stops these operations: the service they belong to says they are over.
    pub fn stop_operations(&self, ids: &[String]) {
        let runs = self.runs.lock();
        for id in ids {
            if let Some(run) = runs.get(id) {
                run.stop.cancel();
            }
        }
    }

    fn knobs(&self) -> BacktestKnobs {
        self.knobs.read().clone()
    }

    fn checkpoint_path(&self, id: &str) -> PathBuf {
        self.knobs().checkpoint_dir.unwrap_or_default().join(format!("{id}.json"))
    }

    /// Stores a new run and starts it in a task of its own (`from`: a checkpoint's state).
    fn launch(self: &Arc<Self>, order: BacktestOrder, id: String, from: Option<Value>) -> Response {
        let mut runs = self.runs.lock();
        if let Some(current) = runs.values().find(|r| !r.finished()) {
            let current = current.id.clone();
            let body = json!({ "detail": {
                "error": "Worker busy", "message": format!("Worker is currently executing operation {current}"),
                "current_operation": current, "active_operations_count": 1,
            }});
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
        if from.is_none() && runs.contains_key(&id) {
            return detail(StatusCode::CONFLICT, format!("Operation ID already exists: {id}"));
        }
        let view = RunView {
            status: "pending",
            created_at: time::format(&time::now()),
            started_at: None,
            completed_at: None,
            percentage: 0.0,
            current_step: String::new(),
            context: json!({}),
            result: None,
            error: None,
            checkpoint: None,
        };
        let run = Arc::new(Run {
            id: id.clone(),
            order,
            view: Mutex::new(view),
            stop: CancellationToken::new(),
            ended: CancellationToken::new(),
        });
        runs.insert(id.clone(), run.clone());
        drop(runs);
        tokio::spawn(run::execute(self.clone(), run, from));
        Json(json!({ "success": true, "operation_id": id, "status": "started" })).into_response()
    }
}

async fn health(State(sim): Sim) -> Json<Value> {
    let current = sim.current_operation();
    Json(json!({
        "healthy": true, "service": "backtesting-worker", "timestamp": time::format(&time::now()),
        "status": "operational", "worker_status": if current.is_some() { "busy" } else { "idle" },
        "current_operation": current,
    }))
}

async fn start(State(sim): Sim, FastJson(order): FastJson<BacktestOrder>) -> Response {
    sim.stats.lock().starts += 1;
    let id = match order.task_id.clone() {
        Some(id) if plain_id(&id) => id,
        Some(_) => return crate::sim::fastapi::unprocessable(&["body", "task_id"], "not an operation id"),
        None => format!("worker_backtest_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
    };
    sim.launch(order, id, None)
}

#[derive(Deserialize)]
struct ResumeBody {
    operation_id: String,
}

async fn resume(State(sim): Sim, FastJson(body): FastJson<ResumeBody>) -> Response {
    sim.stats.lock().resumes += 1;
    let id = body.operation_id;
    let no_checkpoint = || detail(StatusCode::NOT_FOUND, format!("No checkpoint available for operation {id}"));
    if !plain_id(&id) {
        return no_checkpoint();
    }
    let path = sim.checkpoint_path(&id);
    let Some(saved) = tokio::fs::read(&path).await.ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()) else {
        return no_checkpoint();
    };
    let Some(order) = saved.get("original_request").and_then(|o| serde_json::from_value(o.clone()).ok()) else {
        return no_checkpoint();
    };
    // The same id: a finished earlier run of it gives way to the continuation.
    sim.runs.lock().retain(|run_id, run| run_id != &id || !run.finished());
    sim.launch(order, id, Some(saved))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
}

async fn list(State(sim): Sim, Query(query): Query<ListQuery>) -> Json<Value> {
    let runs: Vec<Arc<Run>> = sim.runs.lock().values().cloned().collect();
    let active = runs.iter().filter(|r| !r.finished()).count();
    let data: Vec<Value> = runs.iter().rev().take(query.limit.unwrap_or(10)).map(|r| record(r)).collect();
    Json(json!({ "success": true, "data": data, "total_count": runs.len(), "active_count": active }))
}

/// ktrdr's operation record of a run (backtesting.md §1.2), plus `checkpoint` and the context.
fn record(run: &Run) -> Value {
    let v = run.view.lock().clone();
    let o = &run.order;
    let done = matches!(v.status, "completed" | "failed" | "cancelled");
    json!({
        "operation_id": run.id, "parent_operation_id": null, "operation_type": "backtesting", "status": v.status,
        "created_at": v.created_at, "started_at": v.started_at, "completed_at": v.completed_at,
        "progress": {
            "percentage": if v.status == "completed" { 100.0 } else { v.percentage },
            "current_step": if done { Value::Null } else { json!(v.current_step) },
            "steps_completed": 0, "steps_total": 0, "items_processed": 0, "items_total": null,
            "current_item": null, "context": v.context,
        },
        "metadata": {
            "symbol": o.symbol, "timeframe": o.timeframe, "mode": "backtesting",
            "start_date": o.start_date, "end_date": o.end_date,
            "parameters": {
                "strategy_name": o.strategy_name, "initial_capital": o.initial_capital,
                "commission": o.commission, "slippage": o.slippage,
            },
        },
        "error_message": v.error, "warnings": [], "errors": [], "result_summary": v.result, "metrics": {},
        "is_backend_local": false, "checkpoint": v.checkpoint,
    })
}

async fn operation(State(sim): Sim, Path(id): Path<String>) -> Response {
    let run = sim.runs.lock().get(&id).cloned();
    match run {
        Some(run) => Json(json!({ "success": true, "data": record(&run) })).into_response(),
        None => detail(StatusCode::NOT_FOUND, format!("Operation not found: {id}")),
    }
}

/// How long a cancel waits for its run to stop before it answers.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

async fn cancel(State(sim): Sim, Path(id): Path<String>) -> Response {
    let Some(run) = sim.runs.lock().get(&id).cloned() else {
        return detail(StatusCode::NOT_FOUND, format!("Operation not found: {id}"));
    };
    sim.stats.lock().cancels += 1;
    let asked = tokio::time::Instant::now();
    let was_running = !run.finished();
    run.stop.cancel();
    let _ = tokio::time::timeout(CANCEL_WAIT, run.ended.cancelled()).await;
    if was_running && run.finished() {
        sim.stats.lock().stop_ms.push(asked.elapsed().as_secs_f64() * 1e3);
    }
    let status = run.view.lock().status;
    Json(json!({ "success": true, "data": { "operation_id": id, "status": status, "cancelled": status == "cancelled" } }))
        .into_response()
}

async fn stats(State(sim): Sim) -> Json<Value> {
    Json(serde_json::to_value(sim.stats.lock().clone()).unwrap_or_default())
}

async fn get_knobs(State(sim): Sim) -> Json<BacktestKnobs> {
    Json(sim.knobs())
}

async fn set_knobs(State(sim): Sim, FastJson(mut knobs): FastJson<BacktestKnobs>) -> Json<BacktestKnobs> {
    let mut current = sim.knobs.write();
    // The checkpoint folder is shared with the other workers: kept unless another is named.
    if knobs.checkpoint_dir.is_none() {
        knobs.checkpoint_dir = current.checkpoint_dir.clone();
    }
    *current = knobs.clone();
    Json(knobs)
}
