//! Server-Sent Events as this API sends them: kept alive, holding a stream slot while open, and
//! gzipped event by event for clients that accept it (tower-http's compression layer leaves
//! event streams alone: its encoder would hold events back until its buffer fills).

use std::convert::Infallible;
use std::io::Write;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, VARY};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use flate2::Compression;
use flate2::write::GzEncoder;
use futures_util::{Stream, StreamExt};

/// A comment this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `stream`, keeping its place among the open streams until it ends or its client goes.
pub(super) fn holding<S: Stream>(slot: tokio::sync::OwnedSemaphorePermit, stream: S) -> impl Stream<Item = S::Item> {
    stream.map(move |item| {
        let _held = &slot;
        item
    })
}

/// The events as a response: gzipped when the request accepts gzip, each event flushed whole so
/// that the client can read it at once, one compression window for the whole stream (the keys
/// every event repeats cost almost nothing after the first).
pub(super) fn respond<S>(request: &HeaderMap, events: S) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let response = Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response();
    if !accepts_gzip(request) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts.headers.append(VARY, HeaderValue::from_static("accept-encoding"));
    let frames = body.into_data_stream();
    let encoder = GzEncoder::new(Vec::new(), Compression::fast());
    let gzipped = futures_util::stream::unfold((frames, Some(encoder)), |(mut frames, encoder)| async move {
        let mut encoder = encoder?;
        let out = match frames.next().await {
            Some(Ok(frame)) => match encoder.write_all(&frame).and_then(|()| encoder.flush()) {
                Ok(()) => Ok(Bytes::from(std::mem::take(encoder.get_mut()))),
                Err(e) => Err(axum::Error::new(e)),
            },
            Some(Err(e)) => Err(e),
            // The end of the stream: the gzip trailer, then nothing.
            None => return encoder.finish().ok().map(|tail| (Ok(Bytes::from(tail)), (frames, None))),
        };
        Some((out, (frames, Some(encoder))))
    });
    Response::from_parts(parts, Body::from_stream(gzipped))
}

/// Whether `Accept-Encoding` names gzip (or `*`) without `q=0`.
fn accepts_gzip(request: &HeaderMap) -> bool {
    request.get_all(ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or_default();
        let refused = parts.any(|p| p.strip_prefix("q=").is_some_and(|q| q.parse::<f32>().map_or(true, |q| q <= 0.0)));
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_accepted_only_when_named_without_a_zero_weight() {
        let accepts = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
            accepts_gzip(&headers)
        };
        assert!(accepts("gzip, deflate, br, zstd"));
        assert!(accepts("br;q=1.0, GZIP;q=0.5"));
        assert!(accepts("*"));
        assert!(!accepts("identity"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("gzip;q=0.000, br"));
        assert!(!accepts("gzipx"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
