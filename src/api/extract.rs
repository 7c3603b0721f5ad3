//! Extractors whose rejections speak the error envelope: JSON bodies (bad JSON → 400, wrong
//! field → 422, wrong content type → 415, too large → 413) and optional JSON bodies.

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::api::error::ApiError;

/// The largest body the service accepts, put on every request so that a 413 can say it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A JSON object body.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = is_json(req.headers());
        let limit = req.extensions().get::<BodyLimit>().copied();
        refuse_declared_oversize(&req, limit)?;
        let bytes = Bytes::from_request(req, state).await.map_err(|e| body_error(e.status(), e.body_text(), limit))?;
        if !json {
            return Err(unsupported_media_type());
        }
        parse(&bytes).map(ApiJson)
    }
}

/// A JSON object body that may be absent: an empty body (with or without a content type) is `None`.
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = is_json(req.headers());
        let limit = req.extensions().get::<BodyLimit>().copied();
        refuse_declared_oversize(&req, limit)?;
        let bytes = Bytes::from_request(req, state).await.map_err(|e| body_error(e.status(), e.body_text(), limit))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        if !json {
            return Err(unsupported_media_type());
        }
        parse(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

/// A body whose declared `Content-Length` is over the limit is refused before a byte of it is
/// read (a client would otherwise send a megabyte before hearing 413).
fn refuse_declared_oversize(req: &Request, limit: Option<BodyLimit>) -> Result<(), ApiError> {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match (declared, limit) {
        (Some(declared), Some(BodyLimit(limit))) if declared > limit as u64 => {
            Err(body_error(StatusCode::PAYLOAD_TOO_LARGE, String::new(), Some(BodyLimit(limit))))
        }
        _ => Ok(()),
    }
}

/// `application/json` or any `+json` type, parameters ignored.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .is_some_and(|mime| mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")))
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
        "Send the request body as JSON with `Content-Type: application/json`",
    )
}

/// Bad JSON syntax → 400; valid JSON of the wrong shape → 422 naming the field.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Err(e) => invalid_json(&e),
            Ok(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "VALIDATION_ERROR",
                "The request body must be a JSON object",
            ),
        });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return invalid_json(&inner);
        }
        let message = inner.to_string();
        // A missing field is reported at the object that lacks it: add its name to the path.
        let field = match named_field(&message, "missing field `") {
            Some(name) if path == "." => Some(name.to_owned()),
            Some(name) => Some(format!("{path}.{name}")),
            None => (path != ".").then_some(path),
        };
        let error = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
            format!("The request body has a wrong, missing or unknown field: {message}"),
        );
        match field {
            Some(field) => error.details(serde_json::json!({ "field": field })),
            None => error,
        }
    })?;
    deserializer.end().map_err(|e| invalid_json(&e))?;
    Ok(value)
}

/// `name` in serde's "missing field `name`".
fn named_field<'a>(message: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &message[message.find(marker)? + marker.len()..];
    rest.split('`').next()
}

fn invalid_json(e: &serde_json::Error) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "INVALID_JSON", format!("The request body is not valid JSON: {e}"))
}

fn body_error(status: StatusCode, text: String, limit: Option<BodyLimit>) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        let message = match limit {
            Some(BodyLimit(bytes)) => format!(
                "The request body is larger than this service accepts: at most {bytes} bytes (server.body_limit_bytes)"
            ),
            None => "The request body is larger than this service accepts".to_owned(),
        };
        ApiError::new(status, "PAYLOAD_TOO_LARGE", message)
    } else {
        ApiError::new(status, "INVALID_BODY", format!("The request body could not be read: {text}"))
    }
}

/// axum words its messages "Failed to deserialize ...: <the useful part>"; keep the useful part.
fn strip_prefix(text: &str) -> &str {
    text.split_once(": ").map(|(_, rest)| rest).unwrap_or(text)
}

/// Query parameters; a malformed query string is a 422 naming the problem.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "VALIDATION_ERROR",
                    format!("The query string is malformed: {}", strip_prefix(&e.body_text())),
                )
            })
    }
}

/// Path parameters; a path that cannot be decoded is a 400.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| ApiPath(v))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_PATH",
                    format!("The URL path could not be read: {}", strip_prefix(&e.body_text())),
                )
            })
    }
}
