//! A request whose handler panics is answered 500 `INTERNAL_ERROR`, and the service goes on: the
//! panic is caught where the request is called and while its answer is awaited. (tower-http's
//! catch-panic layer does the same but boxes every answer's body once more, on the hot path.)

use std::any::Any;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use futures_util::future::{CatchUnwind, Either, Map, Ready, ready};
use tower::{Layer, Service};

use super::error::ApiError;

#[derive(Clone, Copy, Default)]
pub struct CatchPanics;

impl<S> Layer<S> for CatchPanics {
    type Service = PanicsCaught<S>;

    fn layer(&self, inner: S) -> PanicsCaught<S> {
        PanicsCaught { inner }
    }
}

#[derive(Clone)]
pub struct PanicsCaught<S> {
    inner: S,
}

type Answer = Result<Response, Infallible>;

/// The answer, or 500 if awaiting it panicked; or 500 at once if calling panicked.
type CaughtFuture<F> =
    Either<Map<CatchUnwind<AssertUnwindSafe<F>>, fn(Result<Answer, Box<dyn Any + Send>>) -> Answer>, Ready<Answer>>;

impl<S> Service<Request> for PanicsCaught<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = CaughtFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(answer) => Either::Left(AssertUnwindSafe(answer).catch_unwind().map(caught as _)),
            Err(_) => Either::Right(ready(Ok(internal_error()))),
        }
    }
}

fn caught(outcome: Result<Answer, Box<dyn Any + Send>>) -> Answer {
    outcome.unwrap_or_else(|_| Ok(internal_error()))
}

fn internal_error() -> Response {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "Internal error").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn status_of<S>(service: S) -> StatusCode
    where
        S: Service<Request, Response = Response, Error = Infallible>,
    {
        let answer = CatchPanics.layer(service).oneshot(Request::new(axum::body::Body::empty())).await;
        answer.unwrap().status()
    }

    #[tokio::test]
    async fn a_panic_when_called_or_while_answering_is_a_500_and_an_answer_passes_untouched() {
        #[derive(Clone)]
        struct PanicsWhenCalled;
        impl Service<Request> for PanicsWhenCalled {
            type Response = Response;
            type Error = Infallible;
            type Future = Ready<Answer>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Request) -> Self::Future {
                panic!("in call")
            }
        }
        assert_eq!(status_of(PanicsWhenCalled).await, StatusCode::INTERNAL_SERVER_ERROR);
        let panics_later = tower::service_fn(|_: Request| async { panic!("while answering") });
        assert_eq!(status_of(panics_later).await, StatusCode::INTERNAL_SERVER_ERROR);
        let answers =
            tower::service_fn(|_: Request| async { Ok::<_, Infallible>(StatusCode::IM_A_TEAPOT.into_response()) });
        assert_eq!(status_of(answers).await, StatusCode::IM_A_TEAPOT);
    }
}
