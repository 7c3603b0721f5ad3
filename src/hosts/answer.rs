//! What of a host's answer the service reads and repeats: answers read up to a size, only the
//! host's own error words (capped, on one line) carried into records and logs, anything else
//! described rather than copied — a host, or a rogue worker, cannot fill a record or a log line.

use bytes::Bytes;
use serde_json::Value;

/// The largest answer read from a host; a larger one is an error, not a memory spike.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The longest part of a host's own words kept in an error, a record or a log line.
pub const MAX_HOST_WORDS: usize = 500;

/// The host's own message in an error body: FastAPI's `detail` (text or validation list), the
/// IB host's `error`, or a `message` — capped at [`MAX_HOST_WORDS`] characters. Anything else is
/// described, never copied: a host's raw answer (or whatever a redirect or a rogue worker
/// brought) does not reach records and logs.
pub fn host_message(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return describe_answer(body);
    };
    let from = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => Some(
                items
                    .iter()
                    .filter_map(|i| i.get("msg").and_then(Value::as_str).map(str::to_owned))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Value::Object(o) => o.get("error").or_else(|| o.get("message")).and_then(Value::as_str).map(str::to_owned),
            _ => None,
        }
    };
    ["detail", "error", "message"]
        .iter()
        .find_map(|key| value.get(key).and_then(from))
        .filter(|words| !words.trim().is_empty())
        .map_or_else(|| describe_answer(body), |words| cap_words(&words))
}

/// A host's words, kept to [`MAX_HOST_WORDS`] characters on one line.
pub fn cap_words(words: &str) -> String {
    cap(words, MAX_HOST_WORDS)
}

/// Someone else's words, kept to `max` characters on one line (control characters become
/// spaces; `…` marks a cut).
pub fn cap(words: &str, max: usize) -> String {
    let mut kept: String = words.chars().take(max).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if words.chars().count() > max {
        kept.push('…');
    }
    kept
}

/// What an answer was, without its content: "an answer of 2,341 bytes".
pub fn describe_answer(body: &[u8]) -> String {
    if body.is_empty() {
        return "an empty answer".to_owned();
    }
    let kind = if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() { "JSON" } else { "non-JSON" };
    format!("a {kind} answer of {} bytes", group_digits(body.len()))
}

fn group_digits(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A response's body, at most `cap` bytes: `Err(None)` when it is larger.
pub async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Bytes, Option<reqwest::Error>> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(None);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(Some)? {
        if body.len() + chunk.len() > cap {
            return Err(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_messages_come_from_detail_error_or_text() {
        assert_eq!(host_message(br#"{"detail":"Service temporarily unavailable"}"#), "Service temporarily unavailable");
        assert_eq!(
            host_message(
                br#"{"detail":[{"loc":["body","symbol"],"msg":"field required","type":"value_error.missing"}]}"#
            ),
            "field required"
        );
        assert_eq!(
            host_message(br#"{"success":false,"error":"No data returned for AAPL 1h"}"#),
            "No data returned for AAPL 1h"
        );
        assert_eq!(host_message(b"Bad Gateway"), "a non-JSON answer of 11 bytes");
        assert_eq!(host_message(br#"{"secret":"internal"}"#), "a JSON answer of 21 bytes", "never the raw answer");
        assert_eq!(host_message(br#"{"message":"slow down"}"#), "slow down");
        let long = format!(r#"{{"detail":"{}"}}"#, "x".repeat(2000));
        assert_eq!(host_message(long.as_bytes()).chars().count(), MAX_HOST_WORDS + 1);
    }
}
