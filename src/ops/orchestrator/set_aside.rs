//! Setting running operations aside when this process stops, instead of cancelling them: their
//! copy here ends without an outcome and their latest progress is stored, because their work goes
//! on elsewhere — taken over by another replica, running on a machine of its own and re-attached
//! when the service is back, or continued by the restart from what it saved.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::timeout;

use super::{Inner, Orchestrator};
use crate::ops::job::Resumption;
use crate::ops::live::LiveOperation;
use crate::ops::snapshot::Snapshot;

impl Orchestrator {
    /// The running operations, not being cancelled, whose type would pick them up for `cause`.
    pub(super) fn resumable_for(&self, cause: Resumption) -> Vec<Arc<LiveOperation>> {
        let inner = &self.inner;
        inner
            .running()
            .into_iter()
            .filter(|op| {
                let snapshot = op.snapshot();
                !snapshot.is_terminal()
                    && !op.is_abandoned()
                    && snapshot.record.cancellation.is_none()
                    && inner.reattach(&snapshot, cause).is_some()
            })
            .collect()
    }

    /// Stops this process's copy of `ops` without recording an outcome, waits (at most
    /// `within`) until they settled — a job saves what it must keep as it stops — and stores
    /// their latest progress.
    pub(super) async fn set_aside(&self, ops: &[Arc<LiveOperation>], within: Duration) {
        let inner: &Inner = &self.inner;
        for op in ops {
            op.abandon();
        }
        let settled = futures_util::future::join_all(ops.iter().map(|op| op.settled()));
        if timeout(within, settled).await.is_err() {
            tracing::warn!("operations set aside are slow to stop here");
        }
        let latest: Vec<Arc<Snapshot>> = ops.iter().map(|op| op.snapshot()).collect();
        if let Err(e) = inner.store.save(latest, &inner.settings.node_id).await {
            tracing::warn!(error = %e, "could not store the latest progress of operations set aside");
        }
    }

    /// At shutdown, before anything is cancelled: operations their type would pick up again for
    /// `cause` are set aside instead — `Detach`: work running on a machine of its own, left
    /// running there and followed again after the restart; `Shutdown` (with no replica left to
    /// take them, and `operations.resume_interrupted`): work the restart continues from what it
    /// saved, as after a crash. A graceful stop is never worse than a crash; only work that
    /// cannot continue is cancelled.
    pub(super) async fn keep_for(&self, cause: Resumption, within: Duration) {
        if cause == Resumption::Shutdown && !self.inner.settings.resume_interrupted {
            return;
        }
        let kept = self.resumable_for(cause);
        if kept.is_empty() {
            return;
        }
        self.set_aside(&kept, within).await;
        let what = match cause {
            Resumption::Detach => {
                "left operations running on their own machines; they are followed again after the restart"
            }
            _ => "left operations for the restart to continue from what they saved",
        };
        tracing::info!(operations = kept.len(), "{what}");
    }
}
