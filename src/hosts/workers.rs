//! The calls the service makes to any registered worker (workers.md §3, §6), whatever its
//! endpoint: its `GET /health` and the `POST /backend-shutdown` notice. One pooled client for
//! every worker; each call bounded by its timeout.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::hosts::endpoints::{EndpointPolicy, GuardedResolver};
use crate::hosts::read_capped;

/// `[A-Za-z0-9._-]{1,128}`: how worker and operation ids look.
pub fn plain_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A health answer is a few hundred bytes; a larger one is no answer.
const MAX_HEALTH_ANSWER: usize = 64 << 10;

/// What a worker's `/health` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerHealth {
    /// `worker_status == "busy"`.
    pub busy: bool,
    /// `current_operation`.
    pub current_operation: Option<String>,
}

#[derive(Clone)]
pub struct WorkerProbe {
    http: reqwest::Client,
    /// How long the shutdown notice may take.
    notice_timeout: Duration,
}

impl WorkerProbe {
    /// Health checks get `timeout` each; names resolve through `policy`.
    pub fn new(timeout: Duration, notice_timeout: Duration, policy: Arc<EndpointPolicy>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A worker answers itself: a redirect (say, to an internal service) is no answer.
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver::new(policy)))
            // Workers are reached directly; a proxy from the environment would only get in the way.
            .no_proxy()
            .build()
            .expect("a client without TLS settings builds");
        WorkerProbe { http, notice_timeout }
    }

    /// `GET {endpoint}/health`; `None` when it does not answer 200 in time.
    pub async fn health(&self, endpoint: &str) -> Option<WorkerHealth> {
        let url = format!("{}/health", endpoint.trim_end_matches('/'));
        let response = self.http.get(&url).send().await.ok().filter(|r| r.status().is_success())?;
        let body = read_capped(response, MAX_HEALTH_ANSWER).await.ok()?;
        let answer = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
        Some(WorkerHealth {
            busy: answer.get("worker_status").and_then(Value::as_str) == Some("busy"),
            // Only something shaped like an operation id enters the fleet.
            current_operation: answer
                .get("current_operation")
                .and_then(Value::as_str)
                .filter(|id| plain_id(id))
                .map(str::to_owned),
        })
    }

    /// `POST {endpoint}/backend-shutdown`; true when the worker took it.
    pub async fn announce_shutdown(&self, endpoint: &str) -> bool {
        let url = format!("{}/backend-shutdown", endpoint.trim_end_matches('/'));
        let request = self.http.post(url).json(&json!({ "message": "Backend shutting down" }));
        tokio::time::timeout(self.notice_timeout, request.send()).await.is_ok_and(|r| r.is_ok())
    }
}
