//! How the real (FastAPI) host services refuse a malformed request: 422 with
//! `{"detail":[{"loc":[...],"msg":...,"type":...}]}`. The simulators answer the same way.

use axum::Json;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub fn unprocessable(loc: &[&str], msg: &str) -> Response {
    let kind = if msg == "field required" { "value_error.missing" } else { "value_error" };
    (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "detail": [{ "loc": loc, "msg": msg, "type": kind }] })))
        .into_response()
}

/// A JSON body, refused FastAPI-style.
pub struct FastJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for FastJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| unprocessable(&["body"], &format!("Invalid JSON: {e}")))?;
        serde_json::from_value(value).map(FastJson).map_err(|e| {
            let text = e.to_string();
            match text.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
                Some(field) => unprocessable(&["body", field], "field required"),
                None => unprocessable(&["body"], &text),
            }
        })
    }
}
