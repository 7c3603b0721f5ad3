//! Whether this replica may have missed what the others did to its operations: its last lease
//! renewal failed (the database was out of reach), or it stopped running for a while (frozen,
//! starved). Another replica may have ended one of its operations meanwhile — a cancel it recorded
//! having waited for this one in vain — so until a renewal has settled every operation again,
//! reads of this replica's own unfinished operations check the store: terminal is final.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often the pulse beats, and the gap after which this replica counts as having stopped.
const BEAT: Duration = Duration::from_millis(250);
const STALE: Duration = Duration::from_secs(1);

pub(super) struct Doubt {
    /// Only replicas sharing a database can be overruled; a single one never doubts.
    enabled: bool,
    started: Instant,
    /// When the pulse last beat, in milliseconds since `started`.
    last_beat: AtomicU64,
    raised: AtomicBool,
    /// Raised since the renewal that is settling now began (it must not clear a newer doubt).
    generation: AtomicU64,
    /// Wakes the lease renewal at once when this replica finds it stopped for a while.
    pub(super) renew_now: Notify,
}

impl Doubt {
    pub(super) fn new(enabled: bool) -> Self {
        Doubt {
            enabled,
            started: Instant::now(),
            last_beat: AtomicU64::new(0),
            raised: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            renew_now: Notify::new(),
        }
    }

    fn since_start(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether reads of this replica's own unfinished operations must check the store.
    pub(super) fn now(&self) -> bool {
        self.enabled
            && (self.raised.load(Ordering::Acquire)
                || self.since_start().saturating_sub(self.last_beat.load(Ordering::Acquire)) > STALE.as_millis() as u64)
    }

    pub(super) fn raise(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.raised.store(true, Ordering::Release);
    }

    /// The generation a renewal starts from, to clear with [`Doubt::clear_since`].
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A renewal that began at `generation` settled every operation: no doubt left, unless
    /// raised again since.
    pub(super) fn clear_since(&self, generation: u64) {
        if self.generation.load(Ordering::Acquire) == generation {
            self.raised.store(false, Ordering::Release);
        }
    }

    /// Beats until `stop`; a beat that comes late (the process was frozen or starved) raises doubt.
    pub(super) async fn pulse(&self, stop: CancellationToken) {
        self.last_beat.store(self.since_start(), Ordering::Release);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(BEAT) => {}
                _ = stop.cancelled() => return,
            }
            let now = self.since_start();
            if now.saturating_sub(self.last_beat.load(Ordering::Acquire)) > STALE.as_millis() as u64 {
                self.raise();
                self.renew_now.notify_one();
            }
            self.last_beat.store(now, Ordering::Release);
        }
    }
}
