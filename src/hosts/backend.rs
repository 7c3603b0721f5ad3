//! The calls a training worker makes to the service that sends it trainings (workers.md §6):
//! `POST /api/v1/workers/register` and `GET /api/v1/workers/{id}` (does the service still know
//! it?). The simulated workers use it, as ktrdr's workers do.

use std::time::Duration;

use serde_json::Value;

/// How long one registration may take (ktrdr's workers allow 10 s).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a registration did not take.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// 503: the service is shutting down; register again once it is back.
    #[error("the service is shutting down")]
    ShuttingDown,
    /// Any other answer than 200.
    #[error("the service refused the registration (HTTP {status}): {body}")]
    Refused { status: u16, body: String },
    /// No answer.
    #[error("the service cannot be reached: {0}")]
    Unreachable(String),
}

/// One pooled client for the service a worker registers with.
#[derive(Clone)]
pub struct BackendClient {
    http: reqwest::Client,
    base: String,
    /// The service's worker token, when it wants one.
    token: Option<String>,
}

impl BackendClient {
    /// `base_url` as ktrdr's workers take it: with or without a trailing `/api/v1`; `token`, the
    /// service's worker token, sent as `Authorization: Bearer` when set.
    pub fn new(base_url: &str, token: Option<String>) -> Self {
        let trimmed = base_url.trim().trim_end_matches('/');
        let base = trimmed.strip_suffix("/api/v1").unwrap_or(trimmed).to_owned();
        let http = reqwest::Client::builder()
            .timeout(REGISTER_TIMEOUT)
            .no_proxy()
            .build()
            .expect("a client without TLS settings builds");
        BackendClient { http, base, token: token.filter(|t| !t.is_empty()) }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn authorised(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Registers the worker; the service's answer (its record, and `stop_operations`).
    pub async fn register(&self, body: &Value) -> Result<Value, RegisterError> {
        let url = format!("{}/api/v1/workers/register", self.base);
        let response = self
            .authorised(self.http.post(url))
            .json(body)
            .send()
            .await
            .map_err(|e| RegisterError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        match status {
            200 => response.json().await.map_err(|e| RegisterError::Unreachable(e.to_string())),
            503 => Err(RegisterError::ShuttingDown),
            _ => {
                let body = crate::hosts::read_capped(response, 64 << 10).await.unwrap_or_default();
                Err(RegisterError::Refused { status, body: crate::hosts::host_message(&body) })
            }
        }
    }

    /// Whether the service knows the worker: `Some(false)` on 404, `None` when it cannot tell.
    pub async fn knows(&self, worker_id: &str) -> Option<bool> {
        let url = format!("{}/api/v1/workers/{worker_id}", self.base);
        match self.authorised(self.http.get(url)).send().await.map(|r| r.status().as_u16()) {
            Ok(200) => Some(true),
            Ok(404) => Some(false),
            _ => None,
        }
    }
}
