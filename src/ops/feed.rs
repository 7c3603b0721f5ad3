//! The change feed: one sequence number over every change of every operation, kept for the
//! last few thousand changes, so that a stream following all operations (the dashboard's) can
//! resume after `Last-Event-ID` and coalesce bursts to the latest version of each.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::watch;

/// How many changes are kept for resuming streams.
const KEPT: usize = 4096;

/// The last sequence number handed out, and the changes kept (sequence, operation id).
type Recent = (u64, VecDeque<(u64, Arc<str>)>);

pub struct ChangeFeed {
    recent: Mutex<Recent>,
    latest: watch::Sender<u64>,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        Self { recent: Mutex::new((0, VecDeque::with_capacity(KEPT))), latest: watch::channel(0).0 }
    }
}

impl ChangeFeed {
    /// Records that operation `id` changed; returns the change's sequence number.
    pub fn push(&self, id: &Arc<str>) -> u64 {
        let mut recent = self.recent.lock();
        recent.0 += 1;
        let seq = recent.0;
        if recent.1.len() == KEPT {
            recent.1.pop_front();
        }
        recent.1.push_back((seq, id.clone()));
        self.latest.send_replace(seq);
        seq
    }

    /// The last sequence number handed out.
    pub fn current(&self) -> u64 {
        *self.latest.borrow()
    }

    /// Wakes on every new change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// Whether any stream follows the feed now.
    pub fn is_followed(&self) -> bool {
        self.latest.receiver_count() > 0
    }

    /// The operations that changed after `seq`, each once with its last sequence number, in the
    /// order of those numbers; and whether changes were lost (older than what is kept).
    pub fn since(&self, seq: u64) -> (Vec<(u64, Arc<str>)>, bool) {
        let recent = self.recent.lock();
        let lost = recent.1.front().is_some_and(|(first, _)| *first > seq + 1);
        let mut latest: Vec<(u64, Arc<str>)> = Vec::new();
        for (s, id) in recent.1.iter().filter(|(s, _)| *s > seq) {
            latest.retain(|(_, other)| other != id);
            latest.push((*s, id.clone()));
        }
        (latest, lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_coalesce_per_operation_and_report_losses() {
        let feed = ChangeFeed::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        feed.push(&a);
        feed.push(&b);
        feed.push(&a);
        let (changes, lost) = feed.since(0);
        assert!(!lost);
        assert_eq!(changes, vec![(2, b.clone()), (3, a.clone())]);
        assert_eq!(feed.since(2).0, vec![(3, a.clone())]);
        for _ in 0..KEPT {
            feed.push(&b);
        }
        assert!(feed.since(1).1, "changes 2.. fell off");
        assert_eq!(feed.current(), 3 + KEPT as u64);
    }
}
