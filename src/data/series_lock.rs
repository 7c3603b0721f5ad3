//! One writer per series: a load holds its series' lock from reading the cache to its last save,
//! so a second load of the same series waits (its step says so) and then merges on top. Within a
//! process a mutex per series; with several replicas sharing the data folder also a lock in
//! PostgreSQL that every replica honours. Before each write the holder checks that the shared lock
//! is still its own: a replica that was cut off the database may have lost it, and then takes it
//! again — and re-reads the series — before it writes anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::OwnedMutexGuard;

use crate::backoff::Backoff;
use crate::ops::store::{ClusterLock, Replicas};
use crate::ops::{JobError, OperationHandle};

/// How long the lock's session may take to answer before the lock counts as lost.
const CONFIRM_WITHIN: Duration = Duration::from_secs(5);

/// The series locks of this process (and of the cluster, when replicas share the database).
pub struct SeriesLocks {
    process: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    cluster: Option<Replicas>,
}

/// A series held for writing; dropping it lets the next load in.
pub struct SeriesGuard {
    name: String,
    _process: OwnedMutexGuard<()>,
    cluster: Option<(Replicas, Option<ClusterLock>)>,
}

/// Whether the series may have been written by someone else since the guard last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Throughout,
    /// The shared lock was lost and taken again: re-read the series before writing it.
    Retaken,
}

impl SeriesLocks {
    /// `cluster`: the replicas' side of the store, when several replicas share the data folder.
    pub fn new(cluster: Option<Replicas>) -> Self {
        SeriesLocks { process: Mutex::new(HashMap::new()), cluster }
    }

    /// Waits for the series `name` (a series file's name) and holds it; the wait says so in the
    /// operation's step and ends with a cancel.
    pub async fn lock(&self, name: &str, ctx: &OperationHandle) -> Result<SeriesGuard, JobError> {
        let mutex = {
            let mut locks = self.process.lock();
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            locks.entry(name.to_owned()).or_default().clone()
        };
        let process = match mutex.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                ctx.progress().detail(format!("waiting for another load of {} to finish", series_words(name)));
                tokio::select! {
                    guard = mutex.lock_owned() => guard,
                    _ = ctx.cancelled() => return Err(JobError::Cancelled),
                }
            }
        };
        let cluster = match &self.cluster {
            Some(replicas) => Some((replicas.clone(), Some(take_shared(replicas, name, ctx).await?))),
            None => None,
        };
        Ok(SeriesGuard { name: name.to_owned(), _process: process, cluster })
    }
}

impl SeriesGuard {
    /// Before a write: makes sure the shared lock is still held, taking it again (and saying so)
    /// when its session was lost.
    pub async fn confirm(&mut self, ctx: &OperationHandle) -> Result<Held, JobError> {
        let Some((replicas, held)) = &mut self.cluster else { return Ok(Held::Throughout) };
        if let Some(lock) = held
            && lock.still_held(CONFIRM_WITHIN).await
        {
            return Ok(Held::Throughout);
        }
        tracing::warn!(operation_id = %ctx.operation_id(), series = %self.name, "lost the series lock; taking it again before writing");
        // The old session is gone or unreachable: closing it cannot wait for an answer.
        drop(held.take());
        *held = Some(take_shared(replicas, &self.name, ctx).await?);
        Ok(Held::Retaken)
    }
}

/// The lock every replica honours, waited for (the step says so) and tried again while the
/// database cannot be reached, until a cancel.
async fn take_shared(replicas: &Replicas, name: &str, ctx: &OperationHandle) -> Result<ClusterLock, JobError> {
    let mut pauses = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5)).pauses();
    loop {
        match try_take_shared(replicas, name, ctx).await {
            Ok(Some(lock)) => return Ok(lock),
            Ok(None) => return Err(JobError::Cancelled),
            Err(e) => {
                tracing::warn!(operation_id = %ctx.operation_id(), series = %name, error = %e, "could not lock the series in the database; trying again");
                ctx.progress().detail(format!("waiting for the database to lock {}", series_words(name)));
                if !pauses.sleep(ctx.token()).await {
                    return Err(JobError::Cancelled);
                }
            }
        }
    }
}

/// One try: the lock, or `None` on a cancel while waiting for it.
async fn try_take_shared(
    replicas: &Replicas,
    name: &str,
    ctx: &OperationHandle,
) -> Result<Option<ClusterLock>, crate::ops::store::StoreError> {
    let mut lock = replicas.cluster_lock(name).await?;
    if lock.try_acquire().await? {
        return Ok(Some(lock));
    }
    ctx.progress().detail(format!("waiting for another load of {} to finish (on another replica)", series_words(name)));
    let taken = tokio::select! {
        taken = lock.acquire() => Some(taken),
        // Dropping the waiting connection closes it: the server forgets the wait.
        _ = ctx.cancelled() => None,
    };
    match taken {
        Some(Ok(())) => Ok(Some(lock)),
        Some(Err(e)) => Err(e),
        None => Ok(None),
    }
}

/// `AAPL_1h.csv` → `AAPL 1h`, for steps.
fn series_words(name: &str) -> String {
    let stem = name.trim_end_matches(".csv");
    match stem.rsplit_once('_') {
        Some((symbol, timeframe)) => format!("{symbol} {timeframe}"),
        None => stem.to_owned(),
    }
}
