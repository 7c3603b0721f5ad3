//! Training on the registered workers (workers.md §4–5): a free `training` worker is picked —
//! GPU workers first, then the least recently selected — and claimed in the database, so that
//! two replicas never pick the same one; one pooled client per worker endpoint; the worker is
//! freed when its training ends. With no worker registered, trainings go to the configured
//! training host as before.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;

use crate::hosts::training::{ProtocolChoice, TrainingClient};
use crate::hosts::{ClientBuildError, HostClient, HostSettings};
use crate::metrics::Metrics;
use crate::ops::store::StoredWorker;
use crate::ops::{Store, StoreError};

/// The worker type trainings go to.
pub const TRAINING_WORKER: &str = "training";

/// What a claim found.
pub enum Claim {
    /// This worker is ours until released.
    Got(Box<StoredWorker>),
    /// Training workers are registered, none is free: this many are busy (or unavailable).
    NoneFree { busy: usize },
    /// No training worker is registered: use the configured training host.
    NoWorkers,
}

pub struct WorkerPool {
    store: Store,
    /// Timeouts, retries and stall notice of every worker's client (the endpoint is the worker's).
    template: HostSettings,
    metrics: Metrics,
    clients: Mutex<HashMap<String, Arc<TrainingClient>>>,
}

impl WorkerPool {
    pub fn new(store: Store, template: HostSettings, metrics: Metrics) -> Self {
        WorkerPool { store, template, metrics, clients: Mutex::new(HashMap::new()) }
    }

    /// The pooled client of the worker at `endpoint` (the operations generation: ktrdr's workers).
    pub fn client_for(&self, endpoint: &str) -> Result<Arc<TrainingClient>, ClientBuildError> {
        if let Some(client) = self.clients.lock().get(endpoint) {
            return Ok(client.clone());
        }
        let settings = HostSettings { base_url: endpoint.trim_end_matches('/').to_owned(), ..self.template.clone() };
        let host = HostClient::new(settings, self.metrics.clone())?;
        let choice = ProtocolChoice::Fixed(crate::hosts::training::Protocol::Operations);
        let client = Arc::new(TrainingClient::new(host, choice));
        Ok(self.clients.lock().entry(endpoint.to_owned()).or_insert(client).clone())
    }

    /// Claims a free training worker for `operation_id`, skipping `tried` ones.
    pub async fn claim(&self, operation_id: &str, tried: &HashSet<String>) -> Result<Claim, StoreError> {
        let workers = self.store.workers(Some(TRAINING_WORKER), None).await?;
        if workers.is_empty() {
            return Ok(Claim::NoWorkers);
        }
        let mut free: Vec<&StoredWorker> =
            workers.iter().filter(|w| w.status == "available" && !tried.contains(&w.worker_id)).collect();
        let gpu = |w: &StoredWorker| w.capabilities.get("gpu").and_then(Value::as_bool).unwrap_or(false);
        let selected = |w: &StoredWorker| w.metadata.get("last_selected").and_then(Value::as_f64).unwrap_or(0.0);
        free.sort_by(|a, b| gpu(b).cmp(&gpu(a)).then(selected(a).total_cmp(&selected(b))));
        for worker in free {
            if self.store.claim_worker(&worker.worker_id, operation_id).await? {
                return Ok(Claim::Got(Box::new(worker.clone())));
            }
        }
        Ok(Claim::NoneFree { busy: workers.len() })
    }

    /// Counts one dispatch decision: `worker` (started on a registered worker), `host` (none
    /// registered: the configured host), `passed_over` (a worker busy or gone), `waited` (none free).
    pub fn count(&self, outcome: &'static str) {
        self.metrics.counter(crate::metrics::DISPATCHES, &[("outcome", outcome)]).increment(1);
    }

    /// The worker is free again (if it still runs `operation_id`).
    pub async fn release(&self, worker_id: &str, operation_id: &str) {
        if let Err(e) = self.store.release_worker(worker_id, operation_id).await {
            tracing::warn!(worker_id, operation_id, error = %e, "could not free a worker");
        }
    }
}
