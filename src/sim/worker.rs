//! Simulated workers (workers.md §6): training simulators of the operations generation and
//! backtest simulators that register themselves with the service as ktrdr's workers do — five
//! tries with doubling pauses at start, a monitor that registers again when the service stopped
//! checking on the worker and no longer knows it, and `POST /backend-shutdown`, after which the
//! worker tries every 2 s to register with the service once it is back. Operations the service
//! names in `stop_operations` are stopped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::hosts::backend::{BackendClient, RegisterError};
use crate::sim::backtest::BacktestSim;
use crate::sim::training::TrainingSim;

/// What a simulated worker runs: its routes, the operation it is busy with, and the stops the
/// service asks for when it registers.
pub trait WorkerSim: Send + Sync + 'static {
    /// Its `worker_type` (`training`, `backtesting`).
    const WORKER_TYPE: &'static str;
    /// Its id when none is given: `{type}-worker-<8 hex>`, as ktrdr's workers name themselves.
    const ID_PREFIX: &'static str;
    fn routes(self: &Arc<Self>) -> Router;
    fn current_operation(&self) -> Option<String>;
    fn stop_operations(&self, ids: &[String]);
}

impl WorkerSim for TrainingSim {
    const WORKER_TYPE: &'static str = "training";
    const ID_PREFIX: &'static str = "training-worker";
    fn routes(self: &Arc<Self>) -> Router {
        self.router()
    }
    fn current_operation(&self) -> Option<String> {
        TrainingSim::current_operation(self)
    }
    fn stop_operations(&self, ids: &[String]) {
        TrainingSim::stop_operations(self, ids)
    }
}

impl WorkerSim for BacktestSim {
    const WORKER_TYPE: &'static str = "backtesting";
    const ID_PREFIX: &'static str = "backtesting-worker";
    fn routes(self: &Arc<Self>) -> Router {
        self.router()
    }
    fn current_operation(&self) -> Option<String> {
        BacktestSim::current_operation(self)
    }
    fn stop_operations(&self, ids: &[String]) {
        BacktestSim::stop_operations(self, ids)
    }
}

/// How a simulated worker keeps in touch with the service.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The monitor's period (ktrdr: 10 s).
    pub monitor_interval: Duration,
    /// No health check for this long: ask whether the service still knows the worker (30 s).
    pub stale_after: Duration,
    /// After a shutdown notice, try to register every `retry_every` for at most `retry_for`.
    pub retry_every: Duration,
    pub retry_for: Duration,
    /// The service's worker token (`auth.worker_token`), sent as a bearer token when set.
    pub worker_token: Option<String>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            monitor_interval: Duration::from_secs(10),
            stale_after: Duration::from_secs(30),
            retry_every: Duration::from_secs(2),
            retry_for: Duration::from_secs(120),
            worker_token: None,
        }
    }
}

/// One simulated worker: what it registers as.
pub struct WorkerIdentity {
    pub worker_id: String,
    pub endpoint_url: String,
    pub gpu: bool,
}

/// The part of a simulated worker that talks to the service.
pub struct Agent<S = TrainingSim> {
    identity: WorkerIdentity,
    backend: BackendClient,
    sim: Arc<S>,
    settings: AgentSettings,
    last_checked: Mutex<Option<Instant>>,
    shutdown_notice: Notify,
    /// True once a registration took.
    registered: watch::Sender<bool>,
}

/// Pauses between the registration tries at start: 1 s, doubling, at most 30 s (ktrdr's).
const STARTUP_TRIES: u32 = 5;
const STARTUP_PAUSES: Backoff = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(30));

impl<S: WorkerSim> Agent<S> {
    pub fn new(identity: WorkerIdentity, backend_url: &str, sim: Arc<S>, settings: AgentSettings) -> Arc<Self> {
        Arc::new(Agent {
            identity,
            backend: BackendClient::new(backend_url, settings.worker_token.clone()),
            sim,
            settings,
            last_checked: Mutex::new(None),
            shutdown_notice: Notify::new(),
            registered: watch::Sender::new(false),
        })
    }

    pub fn worker_id(&self) -> &str {
        &self.identity.worker_id
    }

    /// The worker's routes: the training simulator's, `POST /backend-shutdown`, and its health
    /// checks noted (the monitor goes by them).
    pub fn router(self: &Arc<Self>) -> Router {
        let notice = self.clone();
        let checked = self.clone();
        Router::new()
            .route(
                "/backend-shutdown",
                post(move || async move {
                    notice.shutdown_notice.notify_one();
                    axum::Json(json!({ "acknowledged": true }))
                }),
            )
            .merge(self.sim.routes())
            .layer(axum::middleware::from_fn(move |request: Request, next: Next| {
                let checked = checked.clone();
                async move {
                    if request.uri().path() == "/health" {
                        *checked.last_checked.lock() = Some(Instant::now());
                    }
                    next.run(request).await
                }
            }))
    }

    /// Waits until the first registration took (or `deadline` passed); true if it did.
    pub async fn registered_by(&self, deadline: tokio::time::Instant) -> bool {
        let mut registered = self.registered.subscribe();
        tokio::time::timeout_at(deadline, registered.wait_for(|r| *r)).await.is_ok_and(|r| r.is_ok())
    }

    /// Registers once; the service's `stop_operations` are stopped here.
    async fn register(&self) -> Result<(), RegisterError> {
        let capabilities = match (S::WORKER_TYPE, self.identity.gpu) {
            ("training", true) => json!({ "gpu": true, "gpu_type": "CUDA", "gpu_count": 1 }),
            ("training", false) => json!({ "gpu": false }),
            // ktrdr's backtest workers probe nothing.
            _ => json!({}),
        };
        let body = json!({
            "worker_id": self.identity.worker_id, "worker_type": S::WORKER_TYPE,
            "endpoint_url": self.identity.endpoint_url, "capabilities": capabilities,
            "current_operation_id": self.sim.current_operation(), "completed_operations": [],
        });
        let answer = self.backend.register(&body).await?;
        let stop: Vec<String> = answer
            .get("stop_operations")
            .and_then(Value::as_array)
            .map(|ids| ids.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        if !stop.is_empty() {
            tracing::info!(worker_id = %self.identity.worker_id, ?stop, "the service says these operations are over");
            self.sim.stop_operations(&stop);
        }
        // Counts as being checked on: the monitor waits a full period before asking again.
        *self.last_checked.lock() = Some(Instant::now());
        self.registered.send_replace(true);
        tracing::info!(worker_id = %self.identity.worker_id, backend = %self.backend.base_url(), "registered");
        Ok(())
    }

    /// Five tries with doubling pauses (a 503 counts as a try and waits too).
    async fn register_at_start(&self, stop: &CancellationToken) {
        let mut pauses = STARTUP_PAUSES.pauses();
        for attempt in 1..=STARTUP_TRIES {
            match self.register().await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(worker_id = %self.identity.worker_id, attempt, error = %e, "registration failed")
                }
            }
            if attempt < STARTUP_TRIES && !pauses.sleep(stop).await {
                return;
            }
        }
    }

    /// After a shutdown notice: every `retry_every` until it takes, at most `retry_for`.
    async fn register_when_back(&self, stop: &CancellationToken) {
        let until = Instant::now() + self.settings.retry_for;
        while Instant::now() < until {
            tokio::select! {
                _ = tokio::time::sleep(self.settings.retry_every) => {}
                _ = stop.cancelled() => return,
            }
            if self.register().await.is_ok() {
                return;
            }
        }
    }

    /// Registers, then keeps the registration alive until `stop` fires.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        self.register_at_start(&stop).await;
        let mut tick = tokio::time::interval(self.settings.monitor_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.shutdown_notice.notified() => self.register_when_back(&stop).await,
                _ = tick.tick() => {
                    let stale = self.last_checked.lock().is_none_or(|t| t.elapsed() > self.settings.stale_after);
                    if stale && self.backend.knows(&self.identity.worker_id).await == Some(false) {
                        let _ = self.register().await;
                    }
                }
            }
        }
    }
}

/// The host name a worker listening on `listen` is reached at: its address, or this machine's
/// name when it listens on all of them.
pub fn advertised_host(listen: SocketAddr) -> String {
    if !listen.ip().is_unspecified() {
        return listen.ip().to_string();
    }
    crate::config::host_name().unwrap_or_else(|| "localhost".to_owned())
}

/// Simulated workers to serve.
#[derive(Debug, Clone)]
pub struct WorkerFleet {
    pub count: usize,
    /// The first this many advertise a GPU.
    pub gpu_workers: usize,
    /// Where the service is (with or without `/api/v1`).
    pub backend_url: String,
    /// The host name workers advertise in their `endpoint_url` (their address's IP when empty).
    pub advertised_host: String,
    pub agent: AgentSettings,
    /// Worker ids `{prefix}-{n}` (the built-in workers of `serve --sim`, which a restarted service
    /// recognises as its own); `None`: `training-worker-<8 hex>`, as ktrdr's workers name themselves.
    pub id_prefix: Option<String>,
}

/// A served simulator that registers itself as a worker.
pub struct ServedWorker<S = TrainingSim> {
    pub addr: SocketAddr,
    pub sim: Arc<S>,
    pub agent: Arc<Agent<S>>,
}

/// Binds `listen` (port 0: a free port), serves the worker and starts its agent; both end with
/// `stop`.
pub async fn serve_worker<S: WorkerSim>(
    sim: Arc<S>,
    listen: SocketAddr,
    fleet: &WorkerFleet,
    n: usize,
    stop: &CancellationToken,
) -> std::io::Result<(ServedWorker<S>, Vec<JoinHandle<()>>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let host = if fleet.advertised_host.is_empty() { addr.ip().to_string() } else { fleet.advertised_host.clone() };
    let gpu = n < fleet.gpu_workers;
    let worker_id = match &fleet.id_prefix {
        Some(prefix) => format!("{prefix}-{}", n + 1),
        None => format!("{}-{}", S::ID_PREFIX, &uuid::Uuid::new_v4().simple().to_string()[..8]),
    };
    let identity = WorkerIdentity { worker_id, endpoint_url: format!("http://{host}:{}", addr.port()), gpu };
    let agent = Agent::new(identity, &fleet.backend_url, sim.clone(), fleet.agent.clone());
    let router = crate::api::request_span::traced(agent.router());
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            let _ = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
        }
    });
    let keeper = tokio::spawn(agent.clone().run(stop.clone()));
    Ok((ServedWorker { addr, sim, agent }, vec![server, keeper]))
}
