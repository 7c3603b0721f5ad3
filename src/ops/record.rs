//! The operation record of api.md §2 and its status machine. `OperationRecord::transition` is the
//! one place a status moves, and it enforces **terminal is final**.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ops::progress::Progress;
use crate::time::{self, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 5] =
        [Status::Pending, Status::Running, Status::Completed, Status::Failed, Status::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    /// `pending → running → completed | failed | cancelled`, and `pending → cancelled | failed`.
    pub fn can_become(self, next: Status) -> bool {
        use Status::*;
        matches!(
            (self, next),
            (Pending, Running)
                | (Pending, Failed)
                | (Pending, Cancelled)
                | (Running, Completed)
                | (Running, Failed)
                | (Running, Cancelled)
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened when an operation was asked to stop (api.md §4, "(ext)").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Cancellation {
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub requested_at: Timestamp,
    pub reason: String,
    #[serde(with = "time::rfc3339::option", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub stopped_at: Option<Timestamp>,
    /// True when the work did not stop within the grace period and was aborted.
    #[serde(default)]
    pub forced: bool,
    #[serde(default)]
    pub remote: Option<RemoteStop>,
}

/// The remote half of a cancel: the host that was told to stop, and what it said.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RemoteStop {
    pub host: String,
    #[serde(with = "time::rfc3339::option", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub sent_at: Option<Timestamp>,
    #[serde(with = "time::rfc3339::option", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub acknowledged_at: Option<Timestamp>,
    #[serde(default)]
    pub attempts: u32,
    /// The host's own final status for the remote work, once known.
    #[serde(default)]
    pub host_final_status: Option<String>,
    /// Why the stop could not be delivered, if it could not.
    #[serde(default)]
    pub error: Option<String>,
}

/// An operation (api.md §2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OperationRecord {
    pub operation_id: String,
    pub operation_type: String,
    pub status: Status,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::rfc3339::option", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    #[serde(with = "time::rfc3339::option", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub completed_at: Option<Timestamp>,
    pub progress: Progress,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub error_message: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub errors: Vec<String>,
    /// Shaped by each operation type.
    #[schema(value_type = Option<Object>)]
    pub result_summary: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<Value>,
    pub cancellation: Option<Cancellation>,
    /// The operation this one continues (a resume) or repeats (a retry); `null` for new work.
    #[serde(default)]
    pub parent_operation_id: Option<String>,
    /// (ext) The trace of this operation's spans (32 hex digits), while traces are exported:
    /// the request's that started it when it carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// (ext) That trace's page in a trace viewer (`telemetry.trace_url`), when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_url: Option<String>,
    pub version: u64,
}

/// A status change the machine does not allow (most often: a write to a terminal record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("operation cannot move from {from} to {to}")]
pub struct TransitionError {
    pub from: Status,
    pub to: Status,
}

/// How an operation ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed(Value),
    Failed(String),
    Cancelled { reason: String },
}

impl OperationRecord {
    pub fn new(operation_id: String, operation_type: String, metadata: Map<String, Value>, steps_total: u32) -> Self {
        Self {
            operation_id,
            operation_type,
            status: Status::Pending,
            created_at: time::now(),
            started_at: None,
            completed_at: None,
            progress: Progress::new(steps_total),
            metadata,
            error_message: None,
            warnings: Vec::new(),
            errors: Vec::new(),
            result_summary: None,
            metrics: None,
            cancellation: None,
            parent_operation_id: None,
            trace_id: None,
            trace_url: None,
            version: 1,
        }
    }

    /// Moves to `Running`. Terminal records never move again.
    pub fn start(&mut self, at: Timestamp) -> Result<(), TransitionError> {
        self.transition(Status::Running, at)
    }

    /// Moves to the terminal status of `outcome`, setting result or error with it.
    pub fn finish(&mut self, outcome: Outcome, at: Timestamp) -> Result<(), TransitionError> {
        let to = match &outcome {
            Outcome::Completed(_) => Status::Completed,
            Outcome::Failed(_) => Status::Failed,
            Outcome::Cancelled { .. } => Status::Cancelled,
        };
        self.transition(to, at)?;
        match outcome {
            Outcome::Completed(result) => {
                self.result_summary = Some(result);
                self.progress.complete();
            }
            Outcome::Failed(message) => self.error_message = Some(message),
            Outcome::Cancelled { reason } => self.error_message = Some(reason),
        }
        Ok(())
    }

    /// The one place a status moves.
    fn transition(&mut self, to: Status, at: Timestamp) -> Result<(), TransitionError> {
        if !self.status.can_become(to) {
            return Err(TransitionError { from: self.status, to });
        }
        self.status = to;
        if to == Status::Running {
            self.started_at = Some(at);
        }
        if to.is_terminal() {
            self.completed_at = Some(at);
        }
        Ok(())
    }

    /// Seconds from start to end (or to now while running); `None` before it started.
    pub fn duration_seconds(&self) -> Option<f64> {
        let start = self.started_at?;
        let end = self.completed_at.unwrap_or_else(time::now);
        Some(((end - start).num_microseconds().unwrap_or(0) as f64 / 1e6).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> OperationRecord {
        OperationRecord::new("op_x_1".into(), "x".into(), Map::new(), 1)
    }

    #[test]
    fn terminal_is_final() {
        let mut r = record();
        r.start(time::now()).unwrap();
        r.finish(Outcome::Cancelled { reason: "stop".into() }, time::now()).unwrap();
        let err = r.finish(Outcome::Completed(Value::Null), time::now()).unwrap_err();
        assert_eq!(err, TransitionError { from: Status::Cancelled, to: Status::Completed });
        assert_eq!(r.status, Status::Cancelled);
        assert_eq!(r.result_summary, None);
        assert_eq!(r.error_message.as_deref(), Some("stop"));
        assert!(r.start(time::now()).is_err());
    }

    #[test]
    fn pending_may_fail_or_be_cancelled_but_not_complete() {
        assert!(Status::Pending.can_become(Status::Cancelled));
        assert!(Status::Pending.can_become(Status::Failed));
        assert!(!Status::Pending.can_become(Status::Completed));
        assert!(!Status::Running.can_become(Status::Pending));
    }

    #[test]
    fn record_round_trips_through_json() {
        let mut r = record();
        r.start(time::now()).unwrap();
        let text = serde_json::to_string(&r).unwrap();
        let back: OperationRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }
}
