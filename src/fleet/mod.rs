//! The worker fleet (workers.md): workers of every type — training and backtesting alike — that
//! register themselves, kept in the database (the store's `workers` table) so that the fleet
//! survives restarts and every replica sees the same one, health-checked concurrently by one
//! replica at a time, claimed one operation at a time ([`pool`]), followed and stopped
//! ([`stop`]). A registration never reopens an operation that is terminal here: the answer
//! names it in `stop_operations` instead. What a type does on its worker lives in its domain; the
//! HTTP calls to workers live with the other host clients (`hosts::workers`, `hosts::training`).

pub mod follow;
pub mod pool;
pub mod registration;
pub mod stop;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::hosts::endpoints::EndpointPolicy;
use crate::hosts::workers::WorkerProbe;
use crate::ops::store::{HealthOutcome, StoredWorker};
use crate::ops::{Store, StoreError};
use crate::time;
pub use registration::{
    CompletedReport, MAX_CAPABILITIES_BYTES, MAX_WORKER_WORDS, Registration, WORKER_STATUSES, WORKER_TYPES,
    cap_worker_words, check_worker_type,
};

/// Tunables of the fleet (config `[workers]`).
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub health_check_interval: Duration,
    pub health_check_timeout: Duration,
    pub health_check_failures: u32,
    pub removal_threshold: Duration,
    /// Where workers may point: every health check and shutdown notice resolves through it.
    pub endpoint_policy: Arc<EndpointPolicy>,
}

/// A worker, as ktrdr's API shows it: a bare record (workers.md §1).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WorkerRecord {
    pub worker_id: String,
    /// `training`, `backtesting`, …
    pub worker_type: String,
    pub endpoint_url: String,
    /// `available`, `busy` or `temporarily_unavailable`.
    pub status: String,
    pub current_operation_id: Option<String>,
    #[schema(value_type = Object)]
    pub capabilities: Value,
    /// `…+00:00`; null until first checked.
    pub last_health_check: Option<String>,
    pub last_healthy_at: String,
    pub health_check_failures: u32,
    #[schema(value_type = Object)]
    pub metadata: Value,
}

/// ktrdr writes worker times with `+00:00`.
fn worker_time(t: &time::Timestamp) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

impl From<StoredWorker> for WorkerRecord {
    fn from(w: StoredWorker) -> Self {
        WorkerRecord {
            worker_id: w.worker_id,
            worker_type: w.worker_type,
            endpoint_url: w.endpoint_url,
            status: w.status,
            current_operation_id: w.current_operation_id,
            capabilities: w.capabilities,
            last_health_check: w.last_health_check.as_ref().map(worker_time),
            last_healthy_at: worker_time(&w.last_healthy_at),
            health_check_failures: w.health_check_failures,
            metadata: w.metadata,
        }
    }
}

/// The registry and its health checks.
#[derive(Clone)]
pub struct Fleet {
    store: Store,
    probe: WorkerProbe,
    settings: Arc<FleetSettings>,
}

/// The lease under which one replica checks the workers.
const HEALTH_LEASE: &str = "workers.health_checks";
/// Health checks in flight at once.
const CONCURRENT_CHECKS: usize = 1024;
/// How long a worker is given to take the shutdown notice.
const SHUTDOWN_NOTICE: Duration = Duration::from_secs(2);

/// How long after its operation ended a worker still held by it is freed by the health checks
/// (longer than any stop confirmation takes).
pub const LOST_RELEASE_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

impl Fleet {
    pub fn new(store: Store, settings: FleetSettings) -> Self {
        let probe = WorkerProbe::new(settings.health_check_timeout, SHUTDOWN_NOTICE, settings.endpoint_policy.clone());
        Fleet { store, probe, settings: Arc::new(settings) }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn settings(&self) -> &FleetSettings {
        &self.settings
    }

    /// Checks every registered worker, all at once: `GET {endpoint_url}/health`; frees a worker
    /// still held by an operation that ended [`LOST_RELEASE_AFTER`] ago.
    pub async fn check_all(&self) -> Result<(usize, u64), StoreError> {
        let workers = self.store.workers(None, None).await?;
        let checked = workers.len();
        let failures = self.settings.health_check_failures.max(1);
        let mut checks = futures_util::stream::iter(workers)
            .map(|w| async move {
                let outcome = match self.probe.health(&w.endpoint_url).await {
                    Some(h) => HealthOutcome::Answered { busy_with: h.current_operation, busy: h.busy },
                    None => HealthOutcome::Failed { unavailable_after: failures },
                };
                (w.worker_id, outcome)
            })
            .buffer_unordered(CONCURRENT_CHECKS);
        while let Some((id, outcome)) = checks.next().await {
            self.store.record_worker_health(&id, &outcome).await?;
        }
        // A training that ended frees its worker (a cancelled one once its host confirmed the
        // stop); when that release was lost, this does, a while later.
        let freed = self.store.free_workers_of_finished_operations(time::now() - LOST_RELEASE_AFTER).await?;
        if freed > 0 {
            tracing::warn!(freed, "freed workers whose operation had ended without freeing them");
        }
        let removed = self.store.remove_dead_workers(time::now() - self.settings.removal_threshold).await?;
        if removed > 0 {
            tracing::warn!(removed, "removed workers that stopped answering their health checks");
        }
        Ok((checked, removed))
    }

    /// Whether the worker `worker_id` at `endpoint` is gone: its health check fails now. A gone
    /// worker is marked `temporarily_unavailable` at once (so that a registration claiming its id
    /// or its endpoint may replace it, rather than wait for the periodic checks to notice).
    pub async fn gone(&self, worker_id: &str, endpoint: &str) -> Result<bool, StoreError> {
        if self.probe.health(endpoint).await.is_some() {
            return Ok(false);
        }
        self.store.record_worker_health(worker_id, &HealthOutcome::Failed { unavailable_after: 1 }).await?;
        Ok(true)
    }

    /// Tells every registered worker the service is stopping (`POST {endpoint}/backend-shutdown`,
    /// workers.md §6): they register again once it is back. Best effort, all at once, 2 s each.
    pub async fn announce_shutdown(&self) {
        let Ok(workers) = self.store.workers(None, None).await else { return };
        let told = futures_util::stream::iter(workers)
            .map(|w| async move { self.probe.announce_shutdown(&w.endpoint_url).await })
            .buffer_unordered(CONCURRENT_CHECKS)
            .filter(|told| std::future::ready(*told))
            .count()
            .await;
        if told > 0 {
            tracing::info!(workers = told, "told the workers the service is shutting down");
        }
    }

    /// Checks the fleet every `health_check_interval` while this replica holds the health-check
    /// lease (one replica at a time), until `stop` fires.
    pub async fn check_periodically(self, node: String, stop: CancellationToken) {
        let interval = self.settings.health_check_interval;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            // Held for two intervals: a holder that stops renewing hands over after that.
            let until = time::now() + interval * 2;
            match self.store.hold_lease(HEALTH_LEASE, &node, until).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "could not take the workers' health-check lease");
                    continue;
                }
            }
            tokio::select! {
                checked = self.check_all() => if let Err(e) = checked {
                    tracing::warn!(error = %e, "a workers' health round failed");
                },
                _ = stop.cancelled() => return,
            }
        }
    }
}
