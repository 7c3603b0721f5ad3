//! The hottest request — `GET /api/v1/operations/{id}` of an operation this replica runs, which
//! every client following an operation repeats — answered from memory without the router: no
//! route matching, no boxed route futures, no path or query extraction. It is measured and named
//! as the routed request is, and answered by the same code (`operations::record_answer`).
//! Anything else — a query, an id that needs decoding, an operation not running here or whose
//! stored copy may differ — goes on to the router, so there is one behaviour: the handler's.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::Method;
use axum::http::header::IF_NONE_MATCH;
use axum::response::Response;
use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::AppState;
use super::observe::{KnownRoute, ObserveLayer};
use super::operations::{MAX_ID_LEN, record_answer};
use crate::ops::Orchestrator;

const ROUTE: &str = "/api/v1/operations/{id}";
const PREFIX: &str = "/api/v1/operations/";

#[derive(Clone)]
pub struct HotPath {
    orchestrator: Orchestrator,
    route: KnownRoute,
}

impl HotPath {
    /// Answers from `state`, measured by `observe` as the router's routes are.
    pub fn new(state: &AppState, observe: &ObserveLayer) -> Self {
        HotPath { orchestrator: state.orchestrator.clone(), route: observe.known_route(ROUTE) }
    }
}

impl<S> Layer<S> for HotPath {
    type Service = WithHotPath<S>;

    fn layer(&self, inner: S) -> WithHotPath<S> {
        WithHotPath { hot: self.clone(), inner }
    }
}

#[derive(Clone)]
pub struct WithHotPath<S> {
    hot: HotPath,
    inner: S,
}

impl<S> Service<Request> for WithHotPath<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let snapshot = plain_get_id(&request).and_then(|id| self.hot.orchestrator.running_snapshot(id));
        match snapshot {
            Some(snapshot) => {
                let if_none_match = request.headers().get(IF_NONE_MATCH);
                Either::Left(ready(Ok(self.hot.route.observe(&request, || record_answer(&snapshot, if_none_match)))))
            }
            None => Either::Right(self.inner.call(request)),
        }
    }
}

/// The id of `GET /api/v1/operations/{id}` with no query, when it is one as this service makes
/// them (letters, digits, `_`, `-`): nothing to decode.
fn plain_get_id(request: &Request) -> Option<&str> {
    if request.method() != Method::GET || request.uri().query().is_some() {
        return None;
    }
    let id = request.uri().path().strip_prefix(PREFIX)?;
    let plain = !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| PLAIN[usize::from(b)]);
    plain.then_some(id)
}

/// The bytes of a plain id, as a table: one load per byte (every client following an
/// operation sends its id several times a second).
static PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        plain[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
        b += 1;
    }
    plain
};

#[cfg(test)]
mod tests {
    use super::*;

    fn id_of(method: Method, uri: &str) -> Option<String> {
        let request = Request::builder().method(method).uri(uri).body(axum::body::Body::empty()).unwrap();
        plain_get_id(&request).map(str::to_owned)
    }

    #[test]
    fn only_a_plain_get_of_one_operation_takes_the_hot_path() {
        assert_eq!(id_of(Method::GET, "/api/v1/operations/op_dummy_0123abc").as_deref(), Some("op_dummy_0123abc"));
        assert_eq!(id_of(Method::GET, "/api/v1/operations/op_x?wait=1s"), None, "a query goes to the router");
        assert_eq!(id_of(Method::DELETE, "/api/v1/operations/op_x"), None);
        assert_eq!(id_of(Method::GET, "/api/v1/operations/op_x/events"), None);
        assert_eq!(id_of(Method::GET, "/api/v1/operations/"), None);
        assert_eq!(id_of(Method::GET, "/api/v1/operations/op%20x"), None, "an encoded id goes to the router");
        assert_eq!(id_of(Method::GET, &format!("/api/v1/operations/{}", "a".repeat(MAX_ID_LEN + 1))), None);
    }
}
