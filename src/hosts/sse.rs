//! Server-Sent Events from a host: the stream of one path, followed until the host closes it,
//! parsed frame by frame, resuming after the last event id.

use std::time::Duration;

use bytes::Bytes;

use crate::hosts::{Call, HostClient, HostError, HostErrorKind, host_message};

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    /// Parses one frame (the lines before a blank line); comments alone are not events.
    pub fn parse(frame: &str) -> Option<SseEvent> {
        let mut event = SseEvent { event: "message".into(), id: None, data: String::new() };
        let mut has_data = false;
        for line in frame.lines() {
            let (field, value) =
                line.split_once(':').map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
            match field {
                "event" => event.event = value.to_owned(),
                "id" => event.id = Some(value.to_owned()),
                "data" => {
                    if has_data {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                    has_data = true;
                }
                _ => {}
            }
        }
        has_data.then_some(event)
    }
}

impl HostClient {
    /// Follows a Server-Sent Events stream at `path` until the server closes it (no timeout:
    /// streams are long). Resumes after `last_event_id`.
    pub fn events(
        &self,
        path: &str,
        last_event_id: Option<String>,
    ) -> impl futures_util::Stream<Item = Result<SseEvent, HostError>> + Send + 'static {
        let client = self.clone();
        let call = Call::get("sse", path.to_owned());
        struct Reading {
            client: HostClient,
            call: Call,
            last_event_id: Option<String>,
            body: Option<std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>>,
            buffer: String,
            done: bool,
        }
        let start = Reading { client, call, last_event_id, body: None, buffer: String::new(), done: false };
        futures_util::stream::unfold(start, |mut r| async move {
            use futures_util::StreamExt;
            if r.done {
                return None;
            }
            if r.body.is_none() {
                let url = format!("{}{}", r.client.inner.settings.base_url.trim_end_matches('/'), r.call.path);
                let mut request = r
                    .client
                    .inner
                    .http
                    .get(url)
                    .header("accept", "text/event-stream")
                    .timeout(Duration::from_secs(365 * 86_400));
                if let Some(token) = &r.client.inner.settings.bearer {
                    request = request.bearer_auth(token);
                }
                if let Some(id) = &r.last_event_id {
                    request = request.header("last-event-id", id.as_str());
                }
                let response = match request.send().await {
                    Ok(response) => response,
                    Err(e) => {
                        r.done = true;
                        let error = r.client.transport_error(&r.call, &e);
                        return Some((Err(error), r));
                    }
                };
                let status = response.status().as_u16();
                if !(200..300).contains(&status) {
                    r.done = true;
                    let body = response.bytes().await.unwrap_or_default();
                    let error = r.client.error(&r.call, HostErrorKind::Status(status), host_message(&body));
                    return Some((Err(error), r));
                }
                r.body = Some(Box::pin(response.bytes_stream()));
            }
            loop {
                if let Some(end) = r.buffer.find("\n\n") {
                    let frame: String = r.buffer.drain(..end + 2).collect();
                    if let Some(event) = SseEvent::parse(&frame) {
                        r.last_event_id = event.id.clone().or(r.last_event_id.take());
                        return Some((Ok(event), r));
                    }
                    continue;
                }
                match r.body.as_mut().expect("connected above").next().await {
                    Some(Ok(chunk)) => r.buffer.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n")),
                    Some(Err(e)) => {
                        r.done = true;
                        let error = r.client.transport_error(&r.call, &e);
                        return Some((Err(error), r));
                    }
                    None => return None,
                }
            }
        })
    }
}
