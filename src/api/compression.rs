//! gzip for the clients that ask (browsers, Prometheus): a request with `Accept-Encoding` goes
//! through tower-http's compression; one without goes straight on, its answer's body untouched
//! (no wrapper, no second box on the hot path), with the `Vary: Accept-Encoding` that the
//! compression layer would have added. Both ask one rule of what is worth compressing
//! (`Compressible`).

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::body::HttpBody;
use axum::extract::Request;
use axum::http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, VARY};
use axum::http::{HeaderValue, Response as HttpResponse};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use futures_util::future::{Either, Map};
use tower::{Layer, Service};
use tower_http::compression::predicate::Predicate;
use tower_http::compression::{Compression, CompressionLayer};

type Answer = Result<Response, Infallible>;

#[derive(Clone, Default)]
pub struct CompressWhenAsked;

impl<S> Layer<S> for CompressWhenAsked {
    type Service = MaybeCompressed<S>;

    fn layer(&self, inner: S) -> MaybeCompressed<S> {
        MaybeCompressed(CompressionLayer::new().compress_when(Compressible).layer(inner))
    }
}

/// The compression layer, whose inner service is also called directly for plain requests.
#[derive(Clone)]
pub struct MaybeCompressed<S>(Compression<S, Compressible>);

type CompressedAnswer = Result<Response<tower_http::compression::CompressionBody<axum::body::Body>>, Infallible>;

type MaybeCompressedFuture<F, C> = Either<Map<F, fn(Answer) -> Answer>, Map<C, fn(CompressedAnswer) -> Answer>>;

impl<S> Service<Request> for MaybeCompressed<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = MaybeCompressedFuture<S::Future, <Compression<S, Compressible> as Service<Request>>::Future>;

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
/// would have compressed for a client that asked — not already encoded, not a range, not
/// already varying by encoding, and `Compressible`. The answer's few headers are read in one
/// pass rather than looked up one by one (every plain request comes through here).
fn vary(answer: Answer) -> Answer {
    let mut response = answer?;
    let mut content_type = None;
    for (name, value) in response.headers() {
        let varies_already =
            *name == VARY && value.as_bytes().eq_ignore_ascii_case(ACCEPT_ENCODING.as_str().as_bytes());
        if *name == CONTENT_ENCODING || *name == CONTENT_RANGE || varies_already {
            return Ok(response);
        }
        if *name == CONTENT_TYPE {
            content_type = Some(value);
        }
    }
    if compressible(body_size(&response), content_type) {
        response.headers_mut().append(VARY, HeaderValue::from_static("accept-encoding"));
    }
    Ok(response)
}

/// Whether an answer is worth compressing: tower-http's default rule — a body of 32 bytes or
/// more (or of unknown size), and not gRPC, an image other than SVG, or an event stream — with
/// the content type read once, not once for each type it rules out (every answer asks).
#[derive(Clone, Copy, Default)]
pub struct Compressible;

impl Predicate for Compressible {
    fn should_compress<B: HttpBody>(&self, response: &HttpResponse<B>) -> bool {
        compressible(body_size(response), response.headers().get(CONTENT_TYPE))
    }
}

/// The rule of `Compressible`, for a body of `size` bytes (`None`: unknown) and `content_type`.
fn compressible(size: Option<u64>, content_type: Option<&HeaderValue>) -> bool {
    if size.is_some_and(|size| size < 32) {
        return false;
    }
    let content_type = content_type.and_then(|v| v.to_str().ok()).unwrap_or_default();
    let excluded = |prefix: &str, except: &str| content_type.starts_with(prefix) && !content_type.starts_with(except);
    !(excluded("application/grpc", "application/grpc-web")
        || excluded("image/", "image/svg+xml")
        || content_type.starts_with("text/event-stream"))
}

/// The answer's size: its body's, when known, else its `Content-Length`.
fn body_size<B: HttpBody>(response: &HttpResponse<B>) -> Option<u64> {
    let content_length = || response.headers().get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok();
    response.body().size_hint().exact().or_else(content_length)
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

    #[test]
    fn compressible_is_tower_https_default_rule() {
        use tower_http::compression::predicate::DefaultPredicate;
        let types = [
            None,
            Some("application/json"),
            Some("application/grpc"),
            Some("application/grpc+proto"),
            Some("application/grpc-web"),
            Some("image/png"),
            Some("image/svg+xml"),
            Some("text/event-stream"),
            Some("text/html; charset=utf-8"),
        ];
        for content_type in types {
            for size in [0, 31, 32, 4096] {
                let mut response = HttpResponse::new(axum::body::Body::from("x".repeat(size)));
                if let Some(content_type) = content_type {
                    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                }
                assert_eq!(
                    Compressible.should_compress(&response),
                    DefaultPredicate::new().should_compress(&response),
                    "{content_type:?}, {size} bytes"
                );
            }
        }
    }
}
