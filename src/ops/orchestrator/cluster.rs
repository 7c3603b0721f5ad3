//! How replicas sharing one PostgreSQL database coordinate: unique node names, lease
//! heartbeats, takeover of a dead replica's operations, cancels passed between replicas (intents,
//! `LISTEN/NOTIFY` and polling), other replicas' writes brought into this one's change feed, and
//! handover on stopping.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use super::{CancelError, Cancelled, DEFAULT_CANCEL_REASON, Inner, Orchestrator, spawn};
use crate::metrics;
use crate::ops::job::Resumption;
use crate::ops::live::LiveOperation;
use crate::ops::record::{Outcome, Status};
use crate::ops::store::{Channel, Claimed, Replicas, Standing, StoreError};
use crate::time;

/// How replicas sharing one store coordinate, and the store's side of it (which only a
/// PostgreSQL store has: a cluster cannot be set up on SQLite).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub replicas: Replicas,
    /// A replica that has not renewed its leases for this long is presumed dead; survivors take
    /// its operations over.
    pub lease_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub takeover_scan_interval: Duration,
    /// Cancel intents for this replica's operations are also polled this often (in case an
    /// announcement was lost).
    pub cancel_poll_interval: Duration,
    /// Listen for cancel announcements (PostgreSQL `LISTEN`).
    pub cancel_notify: bool,
    /// This process among those that ever ran under this replica's name.
    pub instance: String,
}

/// Another process runs under this replica's name.
#[derive(Debug, thiserror::Error)]
#[error(
    "another running replica already uses the node id `{0}`: give each replica sharing the database its own \
     node.id (KTRDR_OPS__NODE__ID)"
)]
pub struct NodeIdInUse(pub String);

/// Before a replica starts on a shared database: its name must not be one a live process uses
/// (both would take each other's operations for their own). A row renewed recently may be a
/// process killed a moment ago: it is watched for a heartbeat interval before deciding.
pub async fn claim_node_id(node: &str, cluster: &ClusterSettings) -> Result<(), StartupCheck> {
    let store = &cluster.replicas;
    let age = |seen: i64| Duration::from_micros((time::to_micros(&time::now()) - seen).max(0) as u64);
    if let Some((instance, seen)) = store.replica(node).await?
        && instance != cluster.instance
        && age(seen) < cluster.lease_timeout
    {
        tracing::info!(node, "this node id was in use a moment ago; checking whether that process is still alive");
        // Until its next renewal is due, and a little more.
        tokio::time::sleep(cluster.heartbeat_interval.saturating_sub(age(seen)) + Duration::from_millis(500)).await;
        if let Some((_, renewed)) = store.replica(node).await?
            && renewed != seen
        {
            return Err(StartupCheck::InUse(NodeIdInUse(node.to_owned())));
        }
    }
    // Free, or its holder is gone: take the name whatever its row says.
    let now = time::now();
    if !store.replica_alive(node, &cluster.instance, now, now).await? {
        return Err(StartupCheck::InUse(NodeIdInUse(node.to_owned())));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum StartupCheck {
    #[error(transparent)]
    InUse(#[from] NodeIdInUse),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Orchestrator {
    /// Cancels an operation another replica runs: the intent is stored (and announced); the
    /// answer waits for the owner to report the work stopped — for a bounded time, after which
    /// the cancel is recorded here and the owner's stop is left pending.
    pub(super) async fn cancel_remote(&self, operation_id: &str, reason: String) -> Result<Cancelled, CancelError> {
        let inner = &self.inner;
        let not_found = || CancelError::NotFound(operation_id.to_owned());
        // Subscribed before the intent is stored, so that the owner's announcement cannot be missed.
        let mut finished = inner.finished_elsewhere.subscribe();
        if !inner.store.request_cancel(operation_id, &reason).await? {
            let stored = inner.store.get(operation_id).await?.ok_or_else(not_found)?;
            return Err(CancelError::NotCancellable { id: operation_id.to_owned(), status: stored.record.status });
        }
        let deadline = Instant::now() + inner.settings.cancel_grace + Duration::from_secs(1);
        loop {
            let stored = inner.store.get(operation_id).await?.ok_or_else(not_found)?;
            let record = &stored.record;
            if record.status.is_terminal() {
                inner.remote_cache.forget(operation_id);
                inner.metrics.counter(metrics::REMOTE_CANCELS, &[("recorded_by", "owner")]).increment(1);
                return match record.status {
                    Status::Cancelled => Ok(Cancelled {
                        remote_cancelled: record.cancellation.as_ref().is_some_and(|c| c.remote.is_some()),
                        work_stopped: true,
                        snapshot: Arc::new(stored),
                    }),
                    status => Err(CancelError::NotCancellable { id: operation_id.to_owned(), status }),
                };
            }
            if Instant::now() >= deadline {
                tracing::warn!(operation_id, "the owner did not stop the operation in time; recording the cancel here");
                let op = inner.revive(&stored, CancellationToken::new());
                op.request_cancel(&reason);
                let snapshot =
                    op.finish(Outcome::Cancelled { reason: reason.clone() }, true, None).expect("it was unfinished");
                inner.store.force_finish(&snapshot).await?;
                inner.remote_cache.forget(operation_id);
                inner.metrics.counter(metrics::REMOTE_CANCELS, &[("recorded_by", "here")]).increment(1);
                return Ok(Cancelled { snapshot, remote_cancelled: false, work_stopped: false });
            }
            // Woken by the owner's announcement that it stored the operation finished; read
            // again every remote_poll_interval all the same, in case the announcement is lost.
            let announced = async {
                loop {
                    match finished.recv().await {
                        Ok(id) if &*id == operation_id => return,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending().await,
                    }
                }
            };
            let wait = inner.settings.remote_poll_interval.min(deadline.saturating_duration_since(Instant::now()));
            let _ = timeout(wait, announced).await;
        }
    }

    /// With several replicas, a replica that stops hands the operations another can resume (their
    /// type can take them over) to the others instead of cancelling them: it stops its copy
    /// without recording an outcome, then gives up their leases at once, so that the others'
    /// next takeover scan claims them. Alone, it leaves them to be cancelled as usual.
    pub(super) async fn hand_over(&self, within: Duration) {
        let inner = &self.inner;
        let Some(cluster) = &inner.settings.cluster else { return };
        let node = inner.settings.node_id.as_str();
        match cluster.replicas.others_alive(node, time::now() - cluster.lease_timeout).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell whether other replicas are alive; cancelling instead of handing over");
                return;
            }
        }
        let resumable = self.resumable_for(Resumption::Takeover);
        if resumable.is_empty() {
            return;
        }
        self.set_aside(&resumable, within).await;
        let ids: Vec<String> = resumable.iter().map(|op| op.id.clone()).collect();
        match cluster.replicas.release(node, &ids).await {
            Ok(released) => {
                inner.metrics.counter(metrics::HANDED_OVER, &[]).increment(released);
                tracing::info!(operations = released, "handed operations over to the other replicas");
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not hand operations over; they are taken over when the lease expires")
            }
        }
    }
}

/// Starts the replica's background loops.
pub(super) fn spawn_background(inner: &Arc<Inner>, cluster: ClusterSettings) {
    inner.loops.spawn(heartbeats(inner.clone(), cluster.clone()));
    let (doubt, stop) = (inner.doubt.clone(), inner.root.clone());
    inner.loops.spawn(async move { doubt.pulse(stop).await });
    inner.loops.spawn(takeovers(inner.clone(), cluster.clone()));
    inner.loops.spawn(finish_announcements(inner.clone(), cluster.replicas.clone()));
    inner.loops.spawn(cancel_intents(inner.clone(), cluster));
    inner.loops.spawn(remote_changes(inner.clone()));
}

/// Renews this replica's leases; an operation another replica took over (this one was paused or
/// cut off too long) is abandoned here: its work stops and nothing of it is written any more.
async fn heartbeats(inner: Arc<Inner>, cluster: ClusterSettings) {
    let mut tick = tokio::time::interval(cluster.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.doubt.renew_now.notified() => {}
            _ = inner.root.cancelled() => return,
        }
        let generation = inner.doubt.generation();
        let began = std::time::Instant::now();
        let now = time::now();
        let node = inner.settings.node_id.as_str();
        match cluster.replicas.replica_alive(node, &cluster.instance, now, now - cluster.lease_timeout).await {
            Ok(true) => {}
            Ok(false) => tracing::error!("{}", NodeIdInUse(node.to_owned())),
            Err(e) => tracing::warn!(error = %e, "could not renew this replica's presence"),
        }
        let owned = match inner.store.heartbeat(&inner.settings.node_id, now, now + cluster.lease_timeout).await {
            Ok(owned) => owned,
            Err(e) => {
                tracing::warn!(error = %e, "could not renew leases");
                inner.doubt.raise();
                // Back in touch soon, rather than a whole interval later.
                tick.reset_after(RENEWAL_RETRY.min(cluster.heartbeat_interval));
                continue;
            }
        };
        let mut settled = true;
        for op in inner.running().into_iter().filter(|op| !owned.contains(&op.id)) {
            settled &= settle_unowned(&inner, &op).await;
        }
        if settled {
            inner.doubt.clear_since(generation);
            // Only now: what was taken over is abandoned, so no call of it passes the fence.
            inner.fence.0.renewed(began);
        }
    }
}

/// After a failed renewal, the next try comes this soon.
const RENEWAL_RETRY: Duration = Duration::from_millis(500);

/// An operation this replica runs but no longer holds the lease of: another replica took it
/// over (abandoned here), or ended it (stopped here — with its remote work). False when its
/// standing could not be read.
async fn settle_unowned(inner: &Arc<Inner>, op: &Arc<LiveOperation>) -> bool {
    match inner.store.standing(&op.id).await {
        Ok(Some(Standing { owner: Some(owner), .. })) if owner != inner.settings.node_id => {
            tracing::warn!(operation_id = %op.id, new_owner = %owner, "lost the lease; abandoning the operation here");
            op.abandon();
            inner.registry.write().remove(&op.id);
            op.mark_settled();
        }
        // Another replica recorded the cancel it passed on, having waited for this one in vain:
        // the work (and any remote work) stops now.
        Ok(Some(Standing { finished: true, cancel_reason, .. })) => {
            tracing::warn!(operation_id = %op.id, "cancelled elsewhere while this replica was unresponsive; stopping it");
            op.overrule();
            Orchestrator { inner: inner.clone() }.cancel_in_background(op.id.clone(), cancel_reason);
        }
        // Stored after the renewal read the table: still ours.
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not check an operation's owner");
            return false;
        }
    }
    true
}

/// How many operations one takeover scan claims at a time.
const TAKEOVER_BATCH: i64 = 50;

/// Takes over the operations of replicas whose leases expired: re-attached or resumed by their
/// type, or failed as interrupted; the takeover is recorded on the operation.
async fn takeovers(inner: Arc<Inner>, cluster: ClusterSettings) {
    let mut tick = tokio::time::interval(cluster.takeover_scan_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.root.cancelled() => return,
        }
        if !inner.accepting.load(Ordering::Acquire) {
            return;
        }
        // Claimed in batches (other survivors claim other rows meanwhile); a full batch means
        // there may be more, so claim again at once rather than a scan interval later.
        loop {
            let stale_before = time::now() - cluster.lease_timeout;
            let claimed =
                match cluster.replicas.claim_stale(&inner.settings.node_id, stale_before, TAKEOVER_BATCH).await {
                    Ok(claimed) => claimed,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not look for operations to take over");
                        break;
                    }
                };
            let full = claimed.len() as i64 == TAKEOVER_BATCH;
            for claimed in claimed {
                take_over(&inner, claimed).await;
            }
            if !full {
                break;
            }
        }
    }
}

async fn take_over(inner: &Arc<Inner>, claimed: Claimed) {
    let Claimed { stored, previous_owner: previous, cancel_reason } = claimed;
    let note = format!(
        "{} took this operation over from {previous}, which had stopped or stopped renewing its lease",
        inner.settings.node_id
    );
    tracing::warn!(operation_id = %stored.record.operation_id, previous_owner = %previous, "taking over an operation");
    let job = inner.reattach(&stored, Resumption::Takeover);
    let op = inner.revive(&stored, inner.root.child_token());
    inner.remote_cache.forget(&op.id);
    let Some(job) = job else {
        // Asked to stop and cannot go on: it ends as asked.
        let outcome = match cancel_reason {
            Some(reason) => {
                op.request_cancel(&reason);
                Outcome::Cancelled { reason }
            }
            None => Outcome::Failed(format!("interrupted: replica {previous} stopped before the operation finished")),
        };
        let became = if matches!(outcome, Outcome::Failed(_)) { "failed" } else { "cancelled" };
        inner.metrics.counter(metrics::TAKEOVERS, &[("outcome", became)]).increment(1);
        if let Some(snapshot) = op.finish(outcome, false, None)
            && let Err(e) = inner.store.save(vec![snapshot], &inner.settings.node_id).await
        {
            tracing::warn!(error = %e, "could not store an interrupted operation");
        }
        return;
    };
    if let Some(snapshot) = op.edit(|r, _| r.warnings.push(note))
        && let Err(e) = inner.store.save(vec![snapshot], &inner.settings.node_id).await
    {
        tracing::warn!(error = %e, "could not record a takeover");
    }
    inner.registry.write().insert(op.id.clone(), op.clone());
    inner.metrics.counter(metrics::TAKEOVERS, &[("outcome", "resumed")]).increment(1);
    let id = op.id.clone();
    spawn(inner.clone(), op, job, stored.record.status == Status::Running);
    // A cancel asked of the dead replica is carried out here, through the job (which stops its
    // remote work as any cancel does).
    if let Some(reason) = cancel_reason {
        Orchestrator { inner: inner.clone() }.cancel_in_background(id, Some(reason));
    }
}

/// Brings other replicas' changes into this one's change feed, so that the stream of every
/// operation's changes shows the whole cluster: while a stream follows the feed, the database is
/// read every `remote_poll_interval` for operations written elsewhere since the last read.
async fn remote_changes(inner: Arc<Inner>) {
    // Reads reach this far back before the newest write seen: a write that commits late with an
    // earlier `updated_at` (the owner's batching, a clock slightly behind) is still found.
    const OVERLAP_MICROS: i64 = 2_000_000;
    const PAGE: i64 = 1000;
    let mut tick = tokio::time::interval(inner.settings.remote_poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut newest_seen: Option<i64> = None;
    // The versions already fed, of operations written within the overlap.
    let mut fed: HashMap<Arc<str>, (i64, u64)> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.root.cancelled() => return,
        }
        if !inner.feed.is_followed() {
            newest_seen = None;
            fed.clear();
            continue;
        }
        let mut cursor = newest_seen.unwrap_or_else(|| time::to_micros(&time::now())) - OVERLAP_MICROS;
        loop {
            let page = match inner.store.changed_elsewhere(&inner.settings.node_id, cursor, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read other replicas' changes");
                    break;
                }
            };
            let full = page.len() as i64 == PAGE;
            for (written, stored) in page {
                cursor = cursor.max(written);
                let id: Arc<str> = Arc::from(stored.record.operation_id.as_str());
                let version = stored.version();
                if fed.get(&id).is_some_and(|(_, fed_version)| *fed_version >= version) {
                    continue;
                }
                fed.insert(id.clone(), (written, version));
                inner.remote_cache.put(&id, Arc::new(stored));
                inner.feed.push(&id);
            }
            if !full {
                break;
            }
        }
        let newest = newest_seen.map_or(cursor, |n| n.max(cursor));
        newest_seen = Some(newest);
        fed.retain(|_, (written, _)| *written >= newest - OVERLAP_MICROS);
    }
}

/// Passes on PostgreSQL's announcements of operations stored finished, to the cancels this
/// replica is waiting on.
async fn finish_announcements(inner: Arc<Inner>, replicas: Replicas) {
    let mut announcements = match replicas.announcements(Channel::Finished).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for finished operations; cross-replica cancels will poll");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = inner.root.cancelled() => return,
            id = announcements.next() => match id {
                Ok(id) => {
                    // Still running here: another replica ended it (a cancel it recorded, having
                    // waited for this one in vain) — it stops here at once, not at the next renewal.
                    if let Some(op) = inner.live(&id)
                        && !op.snapshot().is_terminal()
                    {
                        settle_unowned(&inner, &op).await;
                    }
                    // Nobody waiting is the common case.
                    let _ = inner.finished_elsewhere.send(Arc::from(id));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the finished-operations announcement connection failed; reconnecting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    }
}

/// Cancels this replica's operations whose cancel another replica recorded: woken by
/// PostgreSQL's announcements, and polling as well (an announcement can be lost).
async fn cancel_intents(inner: Arc<Inner>, cluster: ClusterSettings) {
    let orchestrator = Orchestrator { inner: inner.clone() };
    let act = |id: String, reason: String| {
        if let Some(op) = orchestrator.live(&id)
            && op.snapshot().record.cancellation.is_none()
        {
            orchestrator.cancel_in_background(id, Some(reason));
        }
    };
    let mut announcements = None;
    if cluster.cancel_notify {
        match cluster.replicas.announcements(Channel::CancelRequested).await {
            Ok(listener) => announcements = Some(listener),
            Err(e) => tracing::warn!(error = %e, "cannot listen for cancel announcements; polling only"),
        }
    }
    let mut tick = tokio::time::interval(cluster.cancel_poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let announced = async {
            match announcements.as_mut() {
                Some(listener) => listener.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = inner.root.cancelled() => return,
            id = announced => match id {
                Ok(id) => {
                    let reason = inner.store.standing(&id).await.ok().flatten().and_then(|s| s.cancel_reason);
                    act(id, reason.unwrap_or_else(|| DEFAULT_CANCEL_REASON.to_owned()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the cancel announcement connection failed; reconnecting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            _ = tick.tick() => match inner.store.requested_cancels(&inner.settings.node_id).await {
                Ok(intents) => intents.into_iter().for_each(|(id, reason)| act(id, reason)),
                Err(e) => tracing::warn!(error = %e, "could not poll for cancel intents"),
            },
        }
    }
}
