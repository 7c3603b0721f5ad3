//! gzip for the clients that ask (browsers, Prometheus): a request with `Accept-Encoding` goes
//! through tower-http's compression; one without goes straight on, its answer's body untouched
//! (no wrapper, no second box on the hot path), with the `Vary: Accept-Encoding` that the
//! compression layer would have added.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_RANGE, VARY};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use futures_util::future::{Either, Map};
use tower::{Layer, Service};
use tower_http::compression::predicate::{DefaultPredicate, Predicate};
use tower_http::compression::{Compression, CompressionLayer};

type Answer = Result<Response, Infallible>;

#[derive(Clone, Default)]
pub struct CompressWhenAsked;

impl<S> Layer<S> for CompressWhenAsked {
    type Service = MaybeCompressed<S>;

    fn layer(&self, inner: S) -> MaybeCompressed<S> {
        MaybeCompressed(CompressionLayer::new().layer(inner))
    }
}

/// The compression layer, whose inner service is also called directly for plain requests.
#[derive(Clone)]
pub struct MaybeCompressed<S>(Compression<S>);

type CompressedAnswer = Result<Response<tower_http::compression::CompressionBody<axum::body::Body>>, Infallible>;

type MaybeCompressedFuture<F, C> = Either<Map<F, fn(Answer) -> Answer>, Map<C, fn(CompressedAnswer) -> Answer>>;

impl<S> Service<Request> for MaybeCompressed<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = MaybeCompressedFuture<S::Future, <Compression<S> as Service<Request>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The compression layer's readiness is its inner service's.
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if request.headers().contains_key(ACCEPT_ENCODING) {
            Either::Right(self.0.call(request).map(boxed as _))
        } else {
            Either::Left(self.0.get_mut().call(request).map(vary as _))
        }
    }
}

fn boxed(answer: CompressedAnswer) -> Answer {
    answer.map(IntoResponse::into_response)
}

/// `Vary: Accept-Encoding` where the compression layer would have said it: on an answer it
/// would have compressed for a client that asked.
fn vary(answer: Answer) -> Answer {
    let mut response = answer?;
    let headers = response.headers();
    let compressible = !headers.contains_key(CONTENT_ENCODING)
        && !headers.contains_key(CONTENT_RANGE)
        && !headers
            .get_all(VARY)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(ACCEPT_ENCODING.as_str().as_bytes()))
        && DefaultPredicate::new().should_compress(&response);
    if compressible {
        response.headers_mut().append(VARY, HeaderValue::from_static("accept-encoding"));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// The headers of the answer to a request with `accept_encoding`, for a body of `content_type`.
    async fn answer_headers(accept_encoding: Option<&str>, content_type: &'static str) -> axum::http::HeaderMap {
        let service = tower::service_fn(move |_: Request| async move {
            Ok::<_, Infallible>(([(axum::http::header::CONTENT_TYPE, content_type)], "x".repeat(4096)).into_response())
        });
        let mut request = Request::new(axum::body::Body::empty());
        if let Some(encoding) = accept_encoding {
            request.headers_mut().insert(ACCEPT_ENCODING, HeaderValue::from_str(encoding).unwrap());
        }
        CompressWhenAsked.layer(service).oneshot(request).await.unwrap().headers().clone()
    }

    #[tokio::test]
    async fn gzip_when_asked_and_vary_either_way_except_for_event_streams() {
        let gzipped = answer_headers(Some("gzip"), "application/json").await;
        assert_eq!(gzipped[CONTENT_ENCODING], "gzip");
        assert_eq!(gzipped[VARY], "accept-encoding");
        let plain = answer_headers(None, "application/json").await;
        assert!(plain.get(CONTENT_ENCODING).is_none());
        assert_eq!(plain[VARY], "accept-encoding", "the answer would differ for a client that asked");
        let stream = answer_headers(None, "text/event-stream").await;
        assert!(stream.get(VARY).is_none(), "event streams are never compressed here");
    }
}
