//! Who may call what (README "Security"): with `auth.api_token` set, clients present it as
//! `Authorization: Bearer <token>` on every `/api/v1` route but `/health`, and on `/metrics`
//! unless `auth.public_metrics`; what workers call (registration, status reports) needs
//! `auth.worker_token` instead — the client token is not a worker credential — or a source
//! address in `workers.trusted_networks`; `GET /workers/{id}`, which both read, takes either.
//! Tokens are compared in constant time. A plain tower layer (no boxing, no allocation) because
//! it sits on the hottest path.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, Ready, ready};
use ipnet::IpNet;
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::api::error::ApiError;
use crate::config::Config;
use crate::hosts::endpoints::canonical;

/// The credentials the service accepts, from the configuration.
#[derive(Debug)]
pub struct Credentials {
    /// Empty: clients need none.
    api_token: Box<[u8]>,
    /// Empty: workers need none unless `api_token` is set (then: a trusted network).
    worker_token: Box<[u8]>,
    trusted_networks: Vec<IpNet>,
    public_metrics: bool,
}

/// A request to `/api/v1/health` that presented no valid client token (its answer says less).
#[derive(Debug, Clone, Copy)]
pub struct Anonymous;

impl Credentials {
    /// `None` when no token is set: everything is open and the layer is left out.
    pub fn from_config(config: &Config) -> Option<Credentials> {
        let auth = &config.auth;
        if auth.api_token.is_empty() && auth.worker_token.is_empty() {
            return None;
        }
        Some(Credentials {
            api_token: auth.api_token.as_bytes().into(),
            worker_token: auth.worker_token.as_bytes().into(),
            trusted_networks: config.workers.trusted(),
            public_metrics: auth.public_metrics,
        })
    }

    fn is_client(&self, presented: &[u8]) -> bool {
        self.api_token.is_empty() || (!presented.is_empty() && bool::from(presented.ct_eq(&self.api_token)))
    }

    fn is_worker(&self, presented: &[u8], peer: Option<IpAddr>) -> bool {
        if !self.worker_token.is_empty() && !presented.is_empty() && bool::from(presented.ct_eq(&self.worker_token)) {
            return true;
        }
        peer.is_some_and(|ip| self.trusted_networks.iter().any(|net| net.contains(&canonical(ip))))
    }
}

/// Which credential a route asks for.
#[derive(Debug, PartialEq, Eq)]
enum Needs {
    Nothing,
    /// `/api/v1/health`: open, but only its status without the client token.
    HealthDetails,
    Client,
    Worker,
    ClientOrWorker,
}

fn needs(method: &Method, path: &str, credentials: &Credentials) -> Needs {
    if method == Method::OPTIONS {
        return Needs::Nothing;
    }
    if path == "/metrics" {
        return if credentials.public_metrics { Needs::Nothing } else { Needs::Client };
    }
    let Some(route) = path.strip_prefix("/api/v1/") else { return Needs::Nothing };
    if route == "health" {
        return Needs::HealthDetails;
    }
    if method == Method::POST && route == "workers/register" {
        return Needs::Worker;
    }
    if method == Method::PATCH && route.starts_with("operations/") && route.ends_with("/status") {
        return Needs::Worker;
    }
    if method == Method::GET && route.strip_prefix("workers/").is_some_and(|id| !id.is_empty() && !id.contains('/')) {
        return Needs::ClientOrWorker;
    }
    Needs::Client
}

#[derive(Clone)]
pub struct Authenticate {
    credentials: Arc<Credentials>,
}

impl Authenticate {
    pub fn new(credentials: Credentials) -> Self {
        Self { credentials: Arc::new(credentials) }
    }
}

impl<S> Layer<S> for Authenticate {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded { inner, credentials: self.credentials.clone() }
    }
}

#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    credentials: Arc<Credentials>,
}

fn presented(req: &Request<Body>) -> &[u8] {
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .unwrap_or_default()
        .as_bytes()
}

fn peer(req: &Request<Body>) -> Option<IpAddr> {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip())
}

fn refused(message: &'static str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message).into_response();
    response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

const CLIENT: &str = "This API needs `Authorization: Bearer <token>` with the service's API token";
const WORKER: &str = "Workers register and report with `Authorization: Bearer <token>` carrying the service's \
     worker token (auth.worker_token), or from a network in workers.trusted_networks; the API token is not a \
     worker credential";

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

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let c = &self.credentials;
        let verdict = match needs(req.method(), req.uri().path(), c) {
            Needs::Nothing => Ok(()),
            Needs::HealthDetails => {
                if !c.is_client(presented(&req)) {
                    req.extensions_mut().insert(Anonymous);
                }
                Ok(())
            }
            Needs::Client => c.is_client(presented(&req)).then_some(()).ok_or(CLIENT),
            Needs::Worker => worker_allowed(c, &req).then_some(()).ok_or(WORKER),
            Needs::ClientOrWorker => {
                let token = presented(&req);
                let allowed = (!c.api_token.is_empty() && c.is_client(token)) || worker_allowed(c, &req);
                allowed.then_some(()).ok_or(CLIENT)
            }
        };
        match verdict {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(message) => Either::Right(ready(Ok(refused(message)))),
        }
    }
}

/// A worker's call: the worker token or a trusted network; anybody while neither token is set
/// (local use — the layer is then left out altogether).
fn worker_allowed(c: &Credentials, req: &Request<Body>) -> bool {
    if c.worker_token.is_empty() && c.api_token.is_empty() {
        return true;
    }
    c.is_worker(presented(req), peer(req))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(api: &str, worker: &str) -> Credentials {
        Credentials {
            api_token: api.as_bytes().into(),
            worker_token: worker.as_bytes().into(),
            trusted_networks: vec!["10.1.0.0/16".parse().unwrap()],
            public_metrics: false,
        }
    }

    #[test]
    fn each_route_asks_for_its_credential() {
        let c = credentials("client-token-0123456", "worker-token-0123456");
        let cases = [
            (Method::POST, "/api/v1/workers/register", Needs::Worker),
            (Method::PATCH, "/api/v1/operations/op_1/status", Needs::Worker),
            (Method::GET, "/api/v1/workers/w1", Needs::ClientOrWorker),
            (Method::GET, "/api/v1/workers", Needs::Client),
            (Method::GET, "/api/v1/operations/op_1", Needs::Client),
            (Method::GET, "/api/v1/health", Needs::HealthDetails),
            (Method::GET, "/metrics", Needs::Client),
            (Method::GET, "/", Needs::Nothing),
            (Method::OPTIONS, "/api/v1/operations", Needs::Nothing),
        ];
        for (method, path, expected) in cases {
            assert_eq!(needs(&method, path, &c), expected, "{method} {path}");
        }
    }

    #[test]
    fn a_worker_is_known_by_its_token_or_its_network_never_by_the_client_token() {
        let c = credentials("client-token-0123456", "worker-token-0123456");
        assert!(c.is_worker(b"worker-token-0123456", None));
        assert!(!c.is_worker(b"client-token-0123456", None));
        assert!(!c.is_worker(b"", None));
        assert!(c.is_worker(b"", Some("10.1.2.3".parse().unwrap())));
        assert!(c.is_worker(b"", Some("::ffff:10.1.2.3".parse().unwrap())), "IPv4-mapped peers count as IPv4");
        assert!(!c.is_worker(b"", Some("10.2.0.1".parse().unwrap())));
    }
}
