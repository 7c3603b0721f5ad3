//! Retention: terminal operations, Idempotency-Keys and checkpoints older than their time to
//! live are deleted, once at a time or periodically until shutdown.

use std::time::Duration;

use super::Orchestrator;
use crate::metrics;
use crate::ops::StoreError;
use crate::time;

impl Orchestrator {
    /// Retention: deletes terminal operations finished before `now - retention` and
    /// Idempotency-Keys older than their time to live. Returns how many of each.
    pub async fn sweep(&self, now: time::Timestamp, retention: Duration) -> Result<(u64, u64), StoreError> {
        let (operations, keys) =
            self.inner.store.sweep(now - retention, now - self.inner.settings.idempotency_ttl).await?;
        let checkpoints =
            self.inner.store.delete_checkpoints_before(now - self.inner.settings.checkpoint_retention).await?;
        if checkpoints > 0 {
            tracing::info!(checkpoints, "retention: deleted old checkpoints");
        }
        self.inner.metrics.counter(metrics::OPERATIONS_DELETED, &[]).increment(operations);
        if operations + keys > 0 {
            tracing::info!(operations, keys, "retention: deleted old finished operations and idempotency keys");
        }
        Ok((operations, keys))
    }

    /// Runs [`sweep`](Self::sweep) every `every` until shutdown.
    pub fn sweep_periodically(&self, retention: Duration, every: Duration) {
        let orchestrator = self.clone();
        let shutdown = self.inner.root.clone();
        self.inner.loops.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                if let Err(e) = orchestrator.sweep(time::now(), retention).await {
                    tracing::warn!(error = %e, "retention sweep failed");
                }
            }
        });
    }
}
