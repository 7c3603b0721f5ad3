//! Work on the registered workers (workers.md §4–5), whatever their type: a free worker of the
//! type is picked — GPU workers first, then the least recently selected — and claimed in the
//! database, so that two replicas never pick the same one; one pooled client per worker
//! endpoint; workers' reports delivered to the operation they are about; the worker freed when
//! its work ends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

use crate::backoff::Backoff;
use crate::fleet::CompletedReport;
use crate::hosts::training::{HostSnapshot, HostStatus, ProtocolChoice, TrainingClient};
use crate::hosts::{ClientBuildError, HostClient, HostSettings};
use crate::metrics::Metrics;
use crate::ops::store::StoredWorker;
use crate::ops::{JobError, OperationHandle, ProgressReporter};
use crate::ops::{Store, StoreError};

/// How often a training reads the registry's news of its worker (the health checks gave up on
/// it, it registered elsewhere, it reported at another replica).
pub const REGISTRY_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Pauses while no worker of the type is free.
const WAITING_FOR_WORKER: Backoff = Backoff::exponential(Duration::from_millis(250), Duration::from_secs(2));

/// A registered worker that work runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRef {
    pub worker_id: String,
    pub endpoint_url: String,
}

/// What a claim found.
pub enum Claim {
    /// This worker is ours until released.
    Got(Box<StoredWorker>),
    /// Workers of the type are registered, none is free: every one is busy (live) or
    /// unavailable (not answering its health checks).
    NoneFree { busy: usize, unavailable: usize },
    /// No worker of the type is registered.
    NoneRegistered,
}

pub struct WorkerPool {
    store: Store,
    /// Timeouts, retries and stall notice of every worker's client (the endpoint is the worker's).
    template: HostSettings,
    metrics: Metrics,
    clients: Mutex<HashMap<String, Arc<TrainingClient>>>,
    /// Where workers' reports reach the trainings followed in this process, by operation.
    mailboxes: Mutex<HashMap<String, Arc<Mailbox>>>,
}

/// A worker's report that it finished an operation (workers.md §2 `completed_operations`,
/// `COMPLETED` or `FAILED`) as the host's last word on the session.
fn reported_snapshot(report: CompletedReport) -> HostSnapshot {
    let completed = report.status == "COMPLETED";
    HostSnapshot {
        status: if completed { HostStatus::Completed } else { HostStatus::Failed },
        host_status: report.status.to_ascii_lowercase(),
        percentage: if completed { 100.0 } else { 0.0 },
        error: (!completed).then(|| report.error_message.unwrap_or_else(|| "Operation failed (no details)".into())),
        result: report.result,
        ..HostSnapshot::default()
    }
}

/// A report waiting for the training it is about.
#[derive(Default)]
pub struct Mailbox {
    report: Mutex<Option<CompletedReport>>,
    arrived: Notify,
}

/// A training's mailbox, open while it is followed here.
pub struct OpenMailbox<'a> {
    pool: &'a WorkerPool,
    operation_id: String,
    mailbox: Arc<Mailbox>,
}

impl OpenMailbox<'_> {
    /// The worker's report, as a snapshot of the session, once one came.
    pub fn take(&self) -> Option<HostSnapshot> {
        self.mailbox.report.lock().take().map(reported_snapshot)
    }

    /// Until a report comes.
    pub async fn arrived(&self) {
        self.mailbox.arrived.notified().await;
    }
}

impl Drop for OpenMailbox<'_> {
    fn drop(&mut self) {
        self.pool.mailboxes.lock().remove(&self.operation_id);
    }
}

impl WorkerPool {
    pub fn new(store: Store, template: HostSettings, metrics: Metrics) -> Self {
        WorkerPool { store, template, metrics, clients: Mutex::default(), mailboxes: Mutex::default() }
    }

    /// Opens the mailbox of a training followed here.
    pub fn open_mailbox(&self, operation_id: &str) -> OpenMailbox<'_> {
        let mailbox = Arc::new(Mailbox::default());
        self.mailboxes.lock().insert(operation_id.to_owned(), mailbox.clone());
        OpenMailbox { pool: self, operation_id: operation_id.to_owned(), mailbox }
    }

    /// Hands a worker's report to the training that follows `operation_id` in this process;
    /// false when none does here.
    pub fn deliver(&self, operation_id: &str, report: CompletedReport) -> bool {
        let Some(mailbox) = self.mailboxes.lock().get(operation_id).cloned() else { return false };
        *mailbox.report.lock() = Some(report);
        mailbox.arrived.notify_one();
        true
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

    /// Claims a free worker of `worker_type` for `operation_id`, skipping `tried` ones: GPU
    /// workers first (they say so in their capabilities), then the least recently selected.
    pub async fn claim(
        &self,
        worker_type: &str,
        operation_id: &str,
        tried: &HashSet<String>,
    ) -> Result<Claim, StoreError> {
        let workers = self.store.workers(Some(worker_type), None).await?;
        if workers.is_empty() {
            return Ok(Claim::NoneRegistered);
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
        let count = |status: &str| workers.iter().filter(|w| w.status == status).count();
        Ok(Claim::NoneFree { busy: count("busy"), unavailable: count("temporarily_unavailable") })
    }

    /// Claims a free worker of `worker_type` for the operation, skipping `tried` ones and waiting —
    /// cancellably, its step saying why ("waiting for a free {noun} worker (2 busy)") — while none
    /// is free. With none registered it waits too, saying `none_registered`, or — `None` — gives
    /// up at once (`Ok(None)`: the caller has somewhere else to go).
    pub async fn claim_waiting(
        &self,
        worker_type: &str,
        noun: &str,
        none_registered: Option<&str>,
        tried: &mut HashSet<String>,
        ctx: &OperationHandle,
        progress: &ProgressReporter,
    ) -> Result<Option<StoredWorker>, JobError> {
        let mut pauses = WAITING_FOR_WORKER.pauses();
        loop {
            let claim = match self.claim(worker_type, ctx.operation_id(), tried).await {
                Ok(claim) => claim,
                // A database restarting or out of reach for a moment: the work waits for it.
                Err(e) if e.is_transient() => {
                    progress.detail(format!("waiting for the database to read the registered workers ({e})"));
                    if !pauses.sleep(ctx.token()).await {
                        return Err(JobError::Cancelled);
                    }
                    continue;
                }
                Err(e) => return Err(JobError::failed_by(format!("could not read the registered workers: {e}"), e)),
            };
            progress.detail(match claim {
                Claim::Got(worker) => return Ok(Some(*worker)),
                Claim::NoneRegistered if none_registered.is_none() => return Ok(None),
                Claim::NoneFree { busy, unavailable: 0 } => format!("waiting for a free {noun} worker ({busy} busy)"),
                Claim::NoneFree { busy, unavailable } => {
                    format!("waiting for a free {noun} worker ({busy} busy, {unavailable} unavailable)")
                }
                Claim::NoneRegistered => {
                    format!("waiting for a {noun} worker to register ({})", none_registered.unwrap_or_default())
                }
            });
            self.count("waited");
            // Every worker may be tried again once free, a lost one too once its health checks
            // find it back.
            tried.clear();
            if !pauses.sleep(ctx.token()).await {
                return Err(JobError::Cancelled);
            }
        }
    }

    /// Counts one dispatch decision: `worker` (started on a registered worker), `host` (none
    /// registered: the configured host), `passed_over` (a worker busy or gone), `waited` (none free).
    pub fn count(&self, outcome: &'static str) {
        self.metrics.counter(crate::metrics::DISPATCHES, &[("outcome", outcome)]).increment(1);
    }

    /// A training moved off `worker_id`, which stopped answering: counted, and the worker marked
    /// unavailable (a health check that hears from it again frees it).
    pub async fn lose(&self, worker_id: &str, operation_id: &str) {
        self.metrics.counter(crate::metrics::WORKER_MOVES, &[]).increment(1);
        if let Err(e) = self.store.lose_worker(worker_id, operation_id).await {
            tracing::warn!(worker_id, operation_id, error = %e, "could not mark a lost worker");
        }
    }

    /// Where `worker` answers now when it registered again at another endpoint (a restart at a
    /// new address) and is live there; `None` while it is where we follow it, or is gone.
    pub async fn moved_to(&self, worker: &WorkerRef) -> Option<String> {
        match self.store.worker(&worker.worker_id).await {
            Ok(Some(w)) if w.status != "temporarily_unavailable" && w.endpoint_url != worker.endpoint_url => {
                Some(w.endpoint_url)
            }
            _ => None,
        }
    }

    /// Watches the registry for news of the training on `worker`: `Err(why)` once the health
    /// checks found it unavailable, or removed it, or it registered again at another endpoint;
    /// `Ok(last word)` once it reported the operation finished at another replica. The checks
    /// and reports may reach any replica, so this reads the database, once a second (a training
    /// follows one worker; these are two small reads).
    pub async fn watch(&self, worker: &WorkerRef, operation_id: &str) -> Result<HostSnapshot, String> {
        loop {
            tokio::time::sleep(REGISTRY_CHECK).await;
            if let Some(reported) = self.report_left_for(operation_id).await {
                return Ok(reported);
            }
            match self.store.worker(&worker.worker_id).await {
                Ok(Some(w)) if w.status == "temporarily_unavailable" => {
                    return Err(format!("its health checks failed {} times", w.health_check_failures));
                }
                Ok(Some(w)) if w.endpoint_url != worker.endpoint_url => {
                    return Err(format!("it registered again at {}", w.endpoint_url));
                }
                Ok(None) => return Err("it was removed from the registry".to_owned()),
                // The database, not the worker, is in trouble: no reason to move.
                Ok(Some(_)) | Err(_) => {}
            }
        }
    }

    /// Hands a worker's report to the training that follows `operation_id`: at once when it is
    /// followed in this process, else through the database to the replica that follows it.
    pub async fn hand_over(&self, operation_id: &str, report: CompletedReport) {
        let kept = serde_json::to_value(&report).expect("a report serialises");
        if !self.deliver(operation_id, report)
            && let Err(e) = self.store.leave_worker_report(operation_id, &kept).await
        {
            tracing::warn!(operation_id, error = %e, "could not keep a worker's report for the replica following it");
        }
    }

    /// The report a worker left at another replica for `operation_id`, as the session's last word.
    pub async fn report_left_for(&self, operation_id: &str) -> Option<HostSnapshot> {
        let kept = self.store.take_worker_report(operation_id).await.ok().flatten()?;
        serde_json::from_value::<CompletedReport>(kept).ok().map(reported_snapshot)
    }

    /// The worker is free again (if it still runs `operation_id`).
    /// Marks the worker as running `operation_id`, whose session already runs there (resumed or
    /// taken over), so that nothing else is sent to it meanwhile.
    pub async fn hold(&self, worker_id: &str, operation_id: &str) {
        match self.store.hold_worker(worker_id, operation_id).await {
            Ok(true) => {}
            Ok(false) => tracing::info!(worker_id, operation_id, "the worker was sent another operation meanwhile"),
            Err(e) => tracing::warn!(worker_id, operation_id, error = %e, "could not mark a worker busy"),
        }
    }

    pub async fn release(&self, worker_id: &str, operation_id: &str) {
        if let Err(e) = self.store.release_worker(worker_id, operation_id).await {
            tracing::warn!(worker_id, operation_id, error = %e, "could not free a worker");
        }
    }
}
