//! Bearer-token auth (api.md §7): with `auth.api_token` set, every `/api/v1` route but `/health`
//! needs `Authorization: Bearer <token>`, compared in constant time; else 401 with the envelope.
//! A plain tower layer (no boxing, no allocation) because it sits on the hottest path.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, Ready, ready};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::api::error::ApiError;

#[derive(Clone)]
pub struct BearerAuth {
    token: Arc<[u8]>,
}

impl BearerAuth {
    pub fn new(token: &str) -> Self {
        Self { token: Arc::from(token.as_bytes()) }
    }
}

impl<S> Layer<S> for BearerAuth {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded { inner, token: self.token.clone() }
    }
}

#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    token: Arc<[u8]>,
}

fn allowed(token: &[u8], req: &Request<Body>) -> bool {
    let path = req.uri().path();
    if !path.starts_with("/api/v1/") || path == "/api/v1/health" || req.method() == Method::OPTIONS {
        return true;
    }
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .unwrap_or_default();
    bool::from(presented.as_bytes().ct_eq(token))
}

fn refused() -> Response {
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "This API needs `Authorization: Bearer <token>` with the service's API token",
    )
    .into_response();
    response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

impl<S> Service<Request<Body>> for Guarded<S>
where
    S: Service<Request<Body>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if allowed(&self.token, &req) {
            Either::Left(self.inner.call(req))
        } else {
            Either::Right(ready(Ok(refused())))
        }
    }
}
