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
}

impl BackendClient {
    /// `base_url` as ktrdr's workers take it: with or without a trailing `/api/v1`.
    pub fn new(base_url: &str) -> Self {
        let trimmed = base_url.trim().trim_end_matches('/');
        let base = trimmed.strip_suffix("/api/v1").unwrap_or(trimmed).to_owned();
        let http = reqwest::Client::builder()
            .timeout(REGISTER_TIMEOUT)
            .no_proxy()
            .build()
            .expect("a client without TLS settings builds");
        BackendClient { http, base }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Registers the worker; the service's answer (its record, and `stop_operations`).
    pub async fn register(&self, body: &Value) -> Result<Value, RegisterError> {
        let url = format!("{}/api/v1/workers/register", self.base);
        let response =
            self.http.post(url).json(body).send().await.map_err(|e| RegisterError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        match status {
            200 => response.json().await.map_err(|e| RegisterError::Unreachable(e.to_string())),
            503 => Err(RegisterError::ShuttingDown),
            _ => Err(RegisterError::Refused { status, body: response.text().await.unwrap_or_default() }),
        }
    }

    /// Whether the service knows the worker: `Some(false)` on 404, `None` when it cannot tell.
    pub async fn knows(&self, worker_id: &str) -> Option<bool> {
        let url = format!("{}/api/v1/workers/{worker_id}", self.base);
        match self.http.get(url).send().await.map(|r| r.status().as_u16()) {
            Ok(200) => Some(true),
            Ok(404) => Some(false),
            _ => None,
        }
    }
}
