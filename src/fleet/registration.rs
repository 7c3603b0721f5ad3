//! What a worker sends when it registers (workers.md §2): the body, its checks field by field,
//! and the operations it reports finished.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::hosts::endpoints::EndpointPolicy;
use crate::hosts::workers::plain_id;
use crate::invalid::Invalid;

/// The worker types ktrdr knows.
pub const WORKER_TYPES: &[&str] =
    &["backtesting", "training", "cpu_training", "gpu_host", "agent_design", "agent_assessment"];
/// The statuses a worker can have.
pub const WORKER_STATUSES: &[&str] = &["available", "busy", "temporarily_unavailable"];
/// A known worker type, or a refusal naming the field and listing the known ones.
pub fn check_worker_type(text: &str) -> Result<(), Invalid> {
    if WORKER_TYPES.contains(&text) {
        return Ok(());
    }
    Err(Invalid::new("worker_type", format!("worker_type `{text}` is not one of {}", WORKER_TYPES.join(", ")))
        .allowed(serde_json::json!(WORKER_TYPES)))
}

/// Statuses a worker may report for an operation it finished.
const REPORT_STATUSES: &[&str] = &["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"];

/// An operation a worker says it finished.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletedReport {
    pub operation_id: String,
    /// Upper case: `COMPLETED`, `FAILED`, `CANCELLED`, …
    pub status: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error_message: Option<String>,
    pub completed_at: String,
}

/// The body of `POST /workers/register`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub worker_id: String,
    pub worker_type: String,
    pub endpoint_url: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub capabilities: Option<Map<String, Value>>,
    #[serde(default)]
    pub current_operation_id: Option<String>,
    #[serde(default)]
    pub completed_operations: Vec<CompletedReport>,
}

/// The most a registration's `capabilities` may hold, as JSON.
pub const MAX_CAPABILITIES_BYTES: usize = 16 << 10;
/// The most of a worker's `error_message` or reason kept (the rest is cut).
pub const MAX_WORKER_WORDS: usize = 1_000;
/// The most operations one registration may report.
const MAX_REPORTS: usize = 1_000;

/// A worker's words, cut to [`MAX_WORKER_WORDS`] characters.
pub fn cap_worker_words(words: &str) -> String {
    words.chars().take(MAX_WORKER_WORDS).collect()
}

impl Registration {
    /// Checks every field a person could get wrong, naming it; returns the endpoint as the
    /// service will call it.
    pub fn validate(&self, endpoints: &EndpointPolicy) -> Result<String, Invalid> {
        if !plain_id(&self.worker_id) {
            return Err(Invalid::new(
                "worker_id",
                "worker_id must be 1–128 characters of A–Z, a–z, 0–9, `.`, `_`, `-`",
            ));
        }
        check_worker_type(&self.worker_type)?;
        let endpoint = endpoints.check_url(&self.endpoint_url).map_err(|why| {
            Invalid::new(
                "endpoint_url",
                format!("endpoint_url must be an http:// or https:// URL the service can reach: it {why}"),
            )
        })?;
        let capabilities =
            self.capabilities.as_ref().map_or(0, |c| serde_json::to_vec(c).map_or(usize::MAX, |v| v.len()));
        if capabilities > MAX_CAPABILITIES_BYTES {
            return Err(Invalid::new(
                "capabilities",
                format!("capabilities must be at most {} KB of JSON", MAX_CAPABILITIES_BYTES >> 10),
            ));
        }
        if self.current_operation_id.as_deref().is_some_and(|id| !plain_id(id)) {
            return Err(Invalid::new("current_operation_id", "current_operation_id is not an operation id"));
        }
        if self.completed_operations.len() > MAX_REPORTS {
            return Err(Invalid::new(
                "completed_operations",
                format!("at most {MAX_REPORTS} reports per registration"),
            ));
        }
        for report in &self.completed_operations {
            if !plain_id(&report.operation_id) {
                return Err(Invalid::new("completed_operations.operation_id", "not an operation id"));
            }
            if !REPORT_STATUSES.contains(&report.status.as_str()) {
                return Err(Invalid::new(
                    "completed_operations.status",
                    format!("status `{}` must be one of {} (upper case)", report.status, REPORT_STATUSES.join(", ")),
                ));
            }
        }
        Ok(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(worker_type: &str, url: &str) -> Registration {
        Registration {
            worker_id: "w1".into(),
            worker_type: worker_type.into(),
            endpoint_url: url.into(),
            capabilities: None,
            current_operation_id: None,
            completed_operations: Vec::new(),
        }
    }

    #[test]
    fn registrations_are_checked_field_by_field() {
        let policy = EndpointPolicy::default();
        assert_eq!(
            registration("training", "http://10.0.0.7:5003/").validate(&policy).unwrap(),
            "http://10.0.0.7:5003"
        );
        assert_eq!(registration("trainer", "http://x:1").validate(&policy).unwrap_err().field, "worker_type");
        for url in ["ftp://x", "10.0.0.7:5003", "http://", "http://a b", "http://169.254.169.254", "http://x:1/?a"] {
            assert_eq!(registration("training", url).validate(&policy).unwrap_err().field, "endpoint_url", "{url}");
        }
        let mut odd = registration("training", "http://x:1");
        odd.worker_id = "w 1/../x".into();
        assert_eq!(odd.validate(&policy).unwrap_err().field, "worker_id");
        let mut lower = registration("training", "http://x:1");
        lower.completed_operations.push(CompletedReport {
            operation_id: "op".into(),
            status: "completed".into(),
            result: None,
            error_message: None,
            completed_at: "2026-11-28T00:00:00Z".into(),
        });
        assert_eq!(lower.validate(&policy).unwrap_err().field, "completed_operations.status");
    }
}
