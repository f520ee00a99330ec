//! Provider error answers: `teachback::provider::normalise_error(status, headers, body)` and the
//! error objects inside streams (`teachback::provider::stream_error`).
//!
//! Input: 2 bytes of status (big-endian), 1 byte of header flags, then the body. When a flag asks
//! for it, the body's first line becomes the value of `retry-after`, `retry-after-ms` or
//! `x-should-retry` (and the rest is the body).
//!
//! Properties: no panic; the error is an HTTP error with the status, a non-empty trimmed message
//! clipped to its limit, retryable exactly as documented (the header wins, a 429 for an
//! exhausted quota never is, else 408/409/429/5xx); the stable code and the trouble
//! classification never panic; a stream error object is a broken-stream error with a message.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use teachback::provider::{ErrorKind, normalise_error, stream_error};

/// Longest structured message, plus " (param: …)" before clipping, plus the ellipsis.
const MESSAGE_MAX: usize = 1000;

fuzz_target!(|data: &[u8]| {
    let [hi, lo, flags, rest @ ..] = data else {
        return;
    };
    let status = u16::from_be_bytes([*hi, *lo]);
    let mut headers = HeaderMap::new();
    let mut body = rest;
    if flags & 0b11 != 0 {
        let end = body.iter().position(|&b| b == b'\n').unwrap_or(body.len());
        if let Ok(value) = HeaderValue::from_bytes(&body[..end]) {
            let name = match flags & 0b11 {
                1 => "retry-after",
                2 => "retry-after-ms",
                _ => "x-should-retry",
            };
            headers.insert(name, value);
        }
        body = &body[(end + 1).min(body.len())..];
    }
    if flags & 0b100 != 0 {
        headers.insert("retry-after", HeaderValue::from_static("3"));
    }

    let error = normalise_error(status, &headers, body);
    assert_eq!(error.kind, ErrorKind::Http);
    assert_eq!(error.status, Some(status));
    assert!(!error.message.is_empty());
    assert_eq!(error.message.trim_start(), error.message);
    assert!(
        error.message.chars().count() <= MESSAGE_MAX + 1,
        "{}",
        error.message
    );
    let should_retry = headers
        .get("x-should-retry")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let expected = match should_retry.as_deref() {
        Some("true") => true,
        Some("false") => false,
        _ if status == 429 && error.is_quota_exceeded() => false,
        _ => matches!(status, 408 | 409 | 429) || status >= 500,
    };
    let expected = expected && !(status == 429 && error.is_quota_exceeded());
    assert_eq!(error.retryable, expected, "{error:?}");
    let _ = (
        error.code_str(),
        error.is_provider_trouble(),
        error.to_string(),
    );

    if let Ok(value) = serde_json::from_slice(body)
        && let Some(error) = stream_error(&value)
    {
        assert_eq!(error.kind, ErrorKind::StreamBroken);
        assert!(!error.message.is_empty());
        assert!(error.message.chars().count() <= MESSAGE_MAX + 1);
        assert!(error.status.is_none_or(|s| (100..600).contains(&s)));
        if error.is_quota_exceeded() {
            assert!(!error.retryable);
        }
        let _ = (error.code_str(), error.is_provider_trouble());
    }
});
