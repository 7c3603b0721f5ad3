//! Server-Sent Events from a host: the stream of one path, followed until the host closes it,
//! resuming after a given event id. The frames are parsed by `eventsource-stream`.

use std::time::Duration;

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt, future, stream};

use crate::hosts::{Call, HostClient, HostError, HostErrorKind, Stage, host_message};

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `message` when the frame names none.
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl From<eventsource_stream::Event> for SseEvent {
    fn from(e: eventsource_stream::Event) -> Self {
        SseEvent { event: e.event, id: Some(e.id).filter(|id| !id.is_empty()), data: e.data }
    }
}

impl HostClient {
    /// Follows a Server-Sent Events stream at `path` until the server closes it (no timeout:
    /// streams are long) or fails (the failure is the last item). Resumes after `last_event_id`.
    pub fn events(
        &self,
        path: &str,
        last_event_id: Option<String>,
    ) -> impl Stream<Item = Result<SseEvent, HostError>> + Send + 'static {
        let client = self.clone();
        let call = Call::get("sse", path.to_owned());
        let connected = async move {
            let response = match client.open_event_stream(&call, last_event_id.as_deref()).await {
                Ok(response) => response,
                Err(e) => return stream::once(future::ready(Err(e))).left_stream(),
            };
            let events = response.bytes_stream().eventsource().map(move |item| match item {
                Ok(event) => Ok(SseEvent::from(event)),
                Err(EventStreamError::Transport(e)) => Err(client.transport_error(&call, &e, Stage::Answer)),
                Err(e) => Err(client.error(&call, HostErrorKind::Body, e.to_string())),
            });
            // Nothing after a failure: the stream is broken.
            let mut failed = false;
            events
                .take_while(move |item| {
                    let go_on = !failed;
                    failed |= item.is_err();
                    future::ready(go_on)
                })
                .right_stream()
        };
        stream::once(connected).flatten()
    }

    async fn open_event_stream(
        &self,
        call: &Call,
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response, HostError> {
        let url = format!("{}{}", self.inner.settings.base_url.trim_end_matches('/'), call.path);
        let mut request =
            self.inner.http.get(url).header("accept", "text/event-stream").timeout(Duration::from_secs(365 * 86_400));
        if let Some(token) = &self.inner.settings.bearer {
            request = request.bearer_auth(token);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.map_err(|e| self.transport_error(call, &e, Stage::BeforeAnswer))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body = response.bytes().await.unwrap_or_default();
            return Err(self.error(call, HostErrorKind::Status(status), host_message(&body)));
        }
        Ok(response)
    }
}
