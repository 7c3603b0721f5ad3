//! Reading one operation by id, wherever it is: from memory while this replica runs it, through
//! the store (and this replica's change feed) while another does, or as stored once finished —
//! and waiting for its next version.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Inner, Orchestrator};
use crate::ops::live::LiveOperation;
use crate::ops::snapshot::Snapshot;
use crate::ops::store::{ListFilter, StoreError};

/// An operation found by id: running here, running on another replica, or finished.
pub enum Lookup {
    /// Running in this process: followed from memory.
    Live(LiveView),
    /// Running on another replica: followed through the store.
    Remote(RemoteView),
    /// Finished (it will not change status again).
    Stored(Arc<Snapshot>),
}

/// A running operation, for readers that want to follow its changes.
pub struct LiveView {
    pub(super) op: Arc<LiveOperation>,
    /// Subscribed when first waited on: a plain read (most of them) needs none.
    pub(super) changes: Option<watch::Receiver<u64>>,
}

impl LiveView {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.op.snapshot()
    }
}

/// An operation another replica runs: its stored version, followed through this replica's
/// change feed — while anyone follows the feed, one reader brings every other replica's writes in
/// (`remote_changes`), so that followers share one read of the database per poll interval.
pub struct RemoteView {
    pub(super) inner: Arc<Inner>,
    pub(super) snapshot: Arc<Snapshot>,
    pub(super) changes: watch::Receiver<u64>,
    /// The last change of the feed looked at.
    pub(super) seen: u64,
}

impl Lookup {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self {
            Lookup::Live(view) => view.snapshot(),
            Lookup::Remote(view) => view.snapshot.clone(),
            Lookup::Stored(snapshot) => snapshot.clone(),
        }
    }

    /// Waits for a version above `after` and returns it; `None` once the operation can change no
    /// more (it is terminal and at or below `after`).
    pub async fn newer_than(&mut self, after: u64) -> Option<Arc<Snapshot>> {
        loop {
            let snapshot = self.snapshot();
            if snapshot.version() > after {
                return Some(snapshot);
            }
            if snapshot.is_terminal() {
                return None;
            }
            match self {
                Lookup::Live(view) => {
                    let Some(changes) = &mut view.changes else {
                        // Subscribed now, then the version looked at again: a change in between
                        // is not missed.
                        view.changes = Some(view.op.subscribe());
                        continue;
                    };
                    // The sender lives as long as the operation; an error means it has nothing more.
                    if changes.changed().await.is_err() {
                        let last = view.snapshot();
                        return (last.version() > after).then_some(last);
                    }
                }
                Lookup::Remote(view) => {
                    if view.changes.changed().await.is_err() {
                        return None;
                    }
                    let id = view.snapshot.record.operation_id.as_str();
                    let (changed, lost) = view.inner.feed.since(view.seen);
                    view.seen = view.inner.feed.current();
                    if !lost && !changed.iter().any(|(_, changed)| &**changed == id) {
                        continue;
                    }
                    // Taken over by this replica: followed from memory from now on.
                    if let Some(op) = view.inner.live(id) {
                        *self = Lookup::Live(LiveView { op, changes: None });
                        continue;
                    }
                    // Usually in the read cache, put there by the reader that noticed the change.
                    let fresh = match view.inner.remote_cache.get(id) {
                        Some(fresh) => Some(fresh),
                        None => match view.inner.store.get(id).await {
                            Ok(stored) => stored.map(Arc::new),
                            Err(e) => {
                                tracing::warn!(error = %e, "could not re-read a remote operation");
                                continue;
                            }
                        },
                    };
                    match fresh {
                        Some(fresh) => view.snapshot = fresh,
                        None => return None,
                    }
                }
                Lookup::Stored(_) => return None,
            }
        }
    }

    /// Waits until the version is above `since`, the operation is terminal, or `wait` passed;
    /// then returns the latest snapshot.
    pub async fn wait_newer(&mut self, since: u64, wait: Duration) -> Arc<Snapshot> {
        match tokio::time::timeout(wait, self.newer_than(since)).await {
            Ok(Some(snapshot)) => snapshot,
            _ => self.snapshot(),
        }
    }
}

/// Other replicas' operations as last read, for a short while.
pub(super) struct RemoteCache {
    pub(super) ttl: Duration,
    pub(super) entries: parking_lot::Mutex<HashMap<String, (Instant, Arc<Snapshot>)>>,
}

impl RemoteCache {
    /// More entries than this and the expired ones are dropped.
    const TIDY_ABOVE: usize = 10_000;

    pub(super) fn get(&self, id: &str) -> Option<Arc<Snapshot>> {
        let entries = self.entries.lock();
        entries.get(id).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, s)| s.clone())
    }

    pub(super) fn put(&self, id: &str, snapshot: Arc<Snapshot>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock();
        if entries.len() > Self::TIDY_ABOVE {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
        }
        entries.insert(id.to_owned(), (Instant::now(), snapshot));
    }

    pub(super) fn forget(&self, id: &str) {
        self.entries.lock().remove(id);
    }
}

impl Orchestrator {
    /// The snapshot of an operation this replica runs, when memory is the whole truth about it;
    /// `None` when it does not run here or the store may say otherwise ([`Orchestrator::get`]
    /// then knows). Never waits: for the hot path of reads.
    pub fn running_snapshot(&self, operation_id: &str) -> Option<Arc<Snapshot>> {
        let op = self.live(operation_id)?;
        (!self.store_may_differ(&op)).then(|| op.snapshot())
    }

    /// Whether the store's copy of an operation running here may be truer than memory's.
    fn store_may_differ(&self, op: &LiveOperation) -> bool {
        // Ended by another replica (a cancel it recorded, having waited for this one in vain),
        // or maybe, this replica having been out of reach a moment ago: the stored end is
        // final, whatever this copy still shows while it stops.
        // In a cluster an end is shown once stored (a live copy that ended is being written):
        // until then another replica may take the operation on and end it otherwise.
        let unstored_end = self.inner.settings.cluster.is_some() && op.snapshot().is_terminal();
        op.is_overruled() || unstored_end || self.inner.doubt.now()
    }

    /// Finds an operation: from memory while it runs here, else from the store.
    pub async fn get(&self, operation_id: &str) -> Result<Option<Lookup>, StoreError> {
        if let Some(op) = self.live(operation_id) {
            if self.store_may_differ(&op)
                && let Some(stored) = self.inner.store.get(operation_id).await?
                && (stored.is_terminal() || op.snapshot().is_terminal())
            {
                let stored = Arc::new(stored);
                return Ok(Some(if stored.is_terminal() {
                    Lookup::Stored(stored)
                } else {
                    Lookup::Remote(RemoteView {
                        inner: self.inner.clone(),
                        snapshot: stored,
                        changes: self.inner.feed.subscribe(),
                        seen: self.inner.feed.current(),
                    })
                }));
            }
            return Ok(Some(Lookup::Live(LiveView { op, changes: None })));
        }
        let snapshot = match self.inner.remote_cache.get(operation_id) {
            Some(snapshot) => snapshot,
            None => match self.inner.store.get(operation_id).await? {
                Some(stored) => {
                    let snapshot = Arc::new(stored);
                    self.inner.remote_cache.put(operation_id, snapshot.clone());
                    snapshot
                }
                None => return Ok(None),
            },
        };
        Ok(Some(if snapshot.is_terminal() {
            Lookup::Stored(snapshot)
        } else {
            Lookup::Remote(RemoteView {
                inner: self.inner.clone(),
                snapshot,
                changes: self.inner.feed.subscribe(),
                seen: self.inner.feed.current(),
            })
        }))
    }

    /// A page of stored operations, newest first; running ones show their live progress.
    pub async fn list(&self, filter: &ListFilter) -> Result<(Vec<Arc<Snapshot>>, u64, u64), StoreError> {
        let in_cluster = self.inner.settings.cluster.is_some();
        let page = self.inner.store.list(filter).await?;
        let operations = page
            .operations
            .into_iter()
            // The store's terminal state is final even where this replica still runs the
            // operation (another replica ended it while this one was out of reach).
            // and, in a cluster, an end this replica reached is shown once stored.
            .map(|stored| match self.live(&stored.record.operation_id) {
                Some(op) if !(stored.is_terminal() || in_cluster && op.snapshot().is_terminal()) => op.snapshot(),
                _ => Arc::new(stored),
            })
            .collect();
        Ok((operations, page.total_count, page.active_count))
    }
}
