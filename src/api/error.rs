//! The one error envelope (api.md §1) for every 4xx/5xx, including axum's own rejections:
//! `{"success":false,"detail":msg,"error":{"code","message","details"}}`. 5xx never leak internals.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::invalid::Invalid;
use crate::ops::{CancelError, Status, StoreError, SubmitError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    /// Seconds for a `Retry-After` header (a limit that frees up soon).
    pub retry_after: Option<u16>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: json!({}), retry_after: None }
    }

    /// Adds `Retry-After: seconds`.
    pub fn retry_after(mut self, seconds: u16) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn operation_not_found(operation_id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "OPERATION_NOT_FOUND", format!("Operation not found: {operation_id}"))
            .details(json!({ "operation_id": operation_id }))
    }

    /// A 422 naming the field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Invalid::new(field, message).into()
    }

    /// A 500/503 whose cause (with its sources) is logged here, never sent to the client.
    pub fn internal(
        status: StatusCode,
        code: &'static str,
        public: &str,
        cause: &(dyn std::error::Error + 'static),
    ) -> Self {
        tracing::error!(error = cause, code, "{public}");
        Self::new(status, code, public)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "success": false,
            "detail": self.message,
            "error": { "code": self.code, "message": self.message, "details": self.details },
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(seconds));
        }
        response
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        let mut details = json!({ "field": e.field });
        if let Some(allowed) = e.allowed {
            details["allowed"] = *allowed;
        }
        // A name that resolves outside its folder is refused as the catalog refuses it.
        let status = if e.code == crate::training::strategy::OUTSIDE_FOLDER {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        ApiError::new(status, e.code, e.message).details(details)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(
            StatusCode::SERVICE_UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
            "The operations database is not available right now; try again shortly",
            &e,
        )
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_SHUTTING_DOWN",
                "The service is shutting down and starts no new operations",
            ),
            SubmitError::IdempotencyKeyReused(key) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "IDEMPOTENCY_KEY_REUSED",
                format!("Idempotency-Key `{key}` was already used with a different request body; use a new key"),
            )
            .details(json!({ "field": "Idempotency-Key" })),
            SubmitError::UnknownType(_) => {
                ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "Internal error", &e)
            }
            SubmitError::AlreadyResumed { resumed, continuation } => ApiError::new(
                StatusCode::CONFLICT,
                "ALREADY_RESUMED",
                format!("Operation {resumed} was already resumed by {continuation}"),
            )
            .details(json!({ "operation_id": resumed, "continued_by": continuation })),
            SubmitError::TooManyActive(limit) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_ACTIVE_OPERATIONS",
                format!(
                    "{limit} operations are already running or pending (operations.max_active): \
                     wait for some to finish, then try again"
                ),
            )
            .retry_after(5),
            SubmitError::Store(e) => e.into(),
        }
    }
}

impl From<CancelError> for ApiError {
    fn from(e: CancelError) -> Self {
        match e {
            CancelError::NotFound(id) => ApiError::operation_not_found(&id),
            CancelError::NotCancellable { id, status } => {
                let message = match status {
                    Status::Completed => {
                        format!("Operation {id} has already completed; there is nothing to cancel")
                    }
                    Status::Failed => {
                        format!("Operation {id} has already failed; there is nothing to cancel")
                    }
                    Status::Cancelled => format!("Operation {id} was already cancelled"),
                    other => format!("Operation {id} is {other} and cannot be cancelled"),
                };
                ApiError::new(StatusCode::BAD_REQUEST, "OPERATION_NOT_CANCELLABLE", message)
                    .details(json!({ "operation_id": id, "status": status }))
            }
            CancelError::NotLocal(id) => ApiError::new(
                StatusCode::CONFLICT,
                "OPERATION_NOT_LOCAL",
                format!("Operation {id} is running on another replica"),
            )
            .details(json!({ "operation_id": id })),
            CancelError::Store(e) => e.into(),
        }
    }
}
