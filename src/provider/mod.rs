//! Clients for OpenAI-compatible providers: speech-to-text (`POST /audio/transcriptions`) and
//! streamed chat completions (`POST /chat/completions`), over `reqwest`.
//!
//! Shared pieces live here:
//! - [`Timeouts`]: connect, first byte, idle gap between streamed chunks and total, per attempt;
//! - [`RetryPolicy`]: the OpenAI SDK's policy (2 retries, 0.5 s·2ⁿ capped at 8 s with jitter, or
//!   the server's `retry-after-ms` / `retry-after` hint when it is at most 120 s);
//! - [`ProviderError`] and [`normalise_error`]: the three error body shapes real servers use
//!   (`{"error":{…}}`, `{"error":"…"}`, FastAPI's `{"detail":…}`) turned into one error with a
//!   stable [`ProviderError::code_str`];
//! - [`Breaker`]: a circuit breaker per provider;
//! - [`SseParser`]: a server-sent-events parser fed with arbitrary byte chunks.
//!
//! The wire formats follow the OpenAI API (as its official SDK speaks it); the quirks handled are
//! those of faster-whisper-server, whisper.cpp's server and llama-cpp-python's server. API keys
//! are never logged nor put in error messages.

pub mod fake;
pub mod llm;
pub mod stt;

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::time::Instant;

/// Time limits of one attempt at a provider call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the TCP connection (reqwest's `connect_timeout`).
    pub connect: Duration,
    /// From sending the request until the response headers AND the first body bytes arrived.
    pub first_byte: Duration,
    /// Longest gap allowed between two body chunks once the body started.
    pub idle: Duration,
    /// The whole attempt (sending, waiting, reading the body). Waits between retries and the
    /// other attempts are not included: this is per attempt.
    pub total: Duration,
}

impl Timeouts {
    /// Speech-to-text: 5 s connect, 30 s first byte (the upload is included), 15 s idle, 60 s total.
    pub fn stt_default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(30),
            idle: Duration::from_secs(15),
            total: Duration::from_secs(60),
        }
    }

    /// Chat completions: 5 s connect, 20 s first byte, 15 s idle, 120 s total.
    pub fn llm_default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(20),
            idle: Duration::from_secs(15),
            total: Duration::from_secs(120),
        }
    }
}

/// When and how long to wait before retrying a retryable error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (so at most `max_retries + 1` attempts).
    pub max_retries: u32,
    /// First backoff delay; doubled at each retry.
    pub base: Duration,
    /// Longest backoff delay.
    pub cap: Duration,
    /// A server hint (`retry-after-ms` / `retry-after`) longer than this is ignored in favour of
    /// the exponential backoff.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_retries: 2,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt + 1` (`attempt` = retries already made, from 0).
    ///
    /// The server's hint wins when it is at most `max_retry_after`; otherwise
    /// `min(base·2ⁿ, cap)` reduced by a random jitter of up to 25 % (as the OpenAI SDK does).
    pub fn delay(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        if let Some(hint) = hint
            && hint <= self.max_retry_after
        {
            return hint;
        }
        let factor = 2f64.powi(attempt.min(62) as i32);
        let backoff = self.base.as_secs_f64() * factor;
        let capped = backoff.min(self.cap.as_secs_f64());
        let jitter = 1.0 - 0.25 * rand::random::<f64>();
        Duration::from_secs_f64((capped * jitter).max(0.0))
    }

    /// After `error` on attempt `attempts` of a `call` (`"chat completion"`, …): `false` (and a
    /// log line) when it must not be retried or the retries are spent; otherwise logs, counts the
    /// retry in `retries`, waits [`RetryPolicy::delay`] and returns `true`.
    pub async fn wait_to_retry(
        &self,
        provider: &str,
        call: &str,
        error: &ProviderError,
        retries: &mut u32,
        attempts: u32,
    ) -> bool {
        if !error.retryable || *retries >= self.max_retries {
            tracing::warn!(
                provider,
                code = error.code_str(),
                status = ?error.status,
                attempts,
                error = %error,
                "{call} failed"
            );
            return false;
        }
        let delay = self.delay(*retries, error.retry_after);
        *retries += 1;
        metrics::counter!("teachback_provider_retries_total", "provider" => provider.to_owned(),
            "call" => call.to_owned())
        .increment(1);
        tracing::warn!(
            provider,
            code = error.code_str(),
            status = ?error.status,
            attempt = attempts,
            delay_ms = delay.as_millis() as u64,
            error = %error,
            "{call} attempt failed; retrying"
        );
        tokio::time::sleep(delay).await;
        true
    }
}

/// What kind of failure a [`ProviderError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The provider could not be reached (DNS, refused, reset before a response, bad URL).
    Connect,
    /// A time limit of [`Timeouts`] was exceeded.
    Timeout,
    /// The provider answered with an HTTP error status.
    Http,
    /// A streamed body broke off, or the stream carried an error object.
    StreamBroken,
    /// The provider answered 2xx with a body we cannot understand.
    InvalidResponse,
    /// Refused locally by the circuit breaker.
    CircuitOpen,
    /// Our side failed before the call (the audio could not be read from storage).
    Local,
}

/// A provider failure, normalised across servers.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub kind: ErrorKind,
    /// The HTTP status, when there was one (or a status-like code inside a streamed error).
    pub status: Option<u16>,
    /// The provider's `error.code`, if any (numbers are turned into strings).
    pub code: Option<String>,
    /// The provider's `error.type`, if any.
    pub error_type: Option<String>,
    /// Human-readable, clipped; never contains the API key.
    pub message: String,
    /// Whether trying again may succeed.
    pub retryable: bool,
    /// The server's hint of how long to wait before trying again.
    pub retry_after: Option<Duration>,
}

/// Longest message kept from a raw (unstructured) error body.
const RAW_MESSAGE_MAX: usize = 300;
/// Longest message kept from a structured error body.
const MESSAGE_MAX: usize = 1000;

impl ProviderError {
    /// An error of `kind` with `message`; retryable unless it is an HTTP error or an invalid
    /// response (HTTP errors are made by [`normalise_error`]).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ProviderError {
        let retryable = match kind {
            ErrorKind::Connect
            | ErrorKind::Timeout
            | ErrorKind::StreamBroken
            | ErrorKind::CircuitOpen
            | ErrorKind::Local => true,
            ErrorKind::Http | ErrorKind::InvalidResponse => false,
        };
        ProviderError {
            kind,
            status: None,
            code: None,
            error_type: None,
            message: message.into(),
            retryable,
            retry_after: None,
        }
    }

    /// A failure on our side before the provider was called.
    pub fn local(message: impl Into<String>) -> ProviderError {
        ProviderError::new(ErrorKind::Local, message)
    }

    /// A stable, machine-readable code for events, logs and API errors.
    pub fn code_str(&self) -> &'static str {
        match self.kind {
            ErrorKind::Connect => "provider_unreachable",
            ErrorKind::Timeout => "provider_timeout",
            ErrorKind::StreamBroken => "provider_stream_broken",
            ErrorKind::InvalidResponse => "provider_invalid_response",
            ErrorKind::CircuitOpen => "provider_circuit_open",
            ErrorKind::Local => "audio_unavailable",
            ErrorKind::Http => match self.status {
                Some(429) if self.is_quota_exceeded() => "provider_quota_exceeded",
                Some(429) => "provider_rate_limited",
                Some(s) if (400..500).contains(&s) => "provider_rejected",
                _ => "provider_error",
            },
        }
    }

    /// Whether the provider said the account's quota is used up (`insufficient_quota`).
    pub fn is_quota_exceeded(&self) -> bool {
        self.code.as_deref() == Some("insufficient_quota")
            || self.error_type.as_deref() == Some("insufficient_quota")
    }

    /// Whether this failure says something is wrong with the provider (and so counts for the
    /// circuit breaker): unreachable, timeouts, 5xx, 429 and broken streams. A 4xx caused by our
    /// own request, an invalid body or a refusal by the breaker itself do not count.
    pub fn is_provider_trouble(&self) -> bool {
        match self.kind {
            ErrorKind::Connect | ErrorKind::Timeout => true,
            // A streamed error object with a 4xx-like code was caused by our request.
            ErrorKind::StreamBroken => {
                !matches!(self.status, Some(s) if (400..500).contains(&s) && s != 429)
            }
            ErrorKind::Http => matches!(self.status, Some(429) | Some(500..) | None),
            ErrorKind::InvalidResponse | ErrorKind::CircuitOpen | ErrorKind::Local => false,
        }
    }

    /// Maps a `reqwest` error from sending a request (before any response) to an error.
    pub(crate) fn from_send(error: reqwest::Error, provider: &str) -> ProviderError {
        let (timeout, connect, builder) =
            (error.is_timeout(), error.is_connect(), error.is_builder());
        let detail = error_chain(&error.without_url());
        if timeout && !connect {
            ProviderError::new(
                ErrorKind::Timeout,
                format!("{provider} timed out: {detail}"),
            )
        } else if builder {
            let mut e = ProviderError::new(
                ErrorKind::Connect,
                format!("cannot build a request for {provider}: {detail}"),
            );
            e.retryable = false;
            e
        } else {
            ProviderError::new(
                ErrorKind::Connect,
                format!("cannot reach {provider}: {detail}"),
            )
        }
    }

    /// Maps a `reqwest` error from reading a response body to an error.
    pub(crate) fn from_body(error: reqwest::Error, provider: &str) -> ProviderError {
        let timeout = error.is_timeout();
        let detail = error_chain(&error.without_url());
        if timeout {
            ProviderError::new(
                ErrorKind::Timeout,
                format!("{provider} timed out: {detail}"),
            )
        } else {
            ProviderError::new(
                ErrorKind::StreamBroken,
                format!("response from {provider} broke off: {detail}"),
            )
        }
    }
}

/// An error and its sources, joined by ": ".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// `text` cut to at most `max` characters (on a char boundary), with "…" when cut.
pub(crate) fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((i, _)) => format!("{}…", &text[..i]),
    }
}

fn value_to_string(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

/// The pieces of an error object found in a body (any of the known shapes).
#[derive(Debug, Default)]
pub(crate) struct ErrorBody {
    pub message: Option<String>,
    pub error_type: Option<String>,
    pub code: Option<String>,
    pub param: Option<String>,
}

/// Reads `{"error":{"message","type","param","code"}}`, `{"error":"text"}`,
/// `{"detail": string | [{"msg"}] | object}` or `{"message": "…"}`. `None` for anything else.
pub(crate) fn parse_error_value(value: &Value) -> Option<ErrorBody> {
    let object = value.as_object()?;
    if let Some(error) = object.get("error") {
        return Some(match error {
            Value::Object(e) => ErrorBody {
                message: e
                    .get("message")
                    .and_then(value_to_string)
                    .or_else(|| e.get("msg").and_then(value_to_string)),
                error_type: e.get("type").and_then(value_to_string),
                code: e.get("code").and_then(value_to_string),
                param: e.get("param").and_then(value_to_string),
            },
            Value::String(s) => ErrorBody {
                message: Some(s.clone()),
                ..ErrorBody::default()
            },
            Value::Null => return None,
            other => ErrorBody {
                message: Some(other.to_string()),
                ..ErrorBody::default()
            },
        });
    }
    if let Some(detail) = object.get("detail") {
        let message = match detail {
            Value::String(s) => s.clone(),
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::Object(o) => {
                        let msg = o
                            .get("msg")
                            .or_else(|| o.get("message"))
                            .and_then(value_to_string)
                            .unwrap_or_else(|| item.to_string());
                        match o.get("loc").and_then(Value::as_array) {
                            Some(loc) if !loc.is_empty() => {
                                let loc: Vec<String> =
                                    loc.iter().filter_map(value_to_string).collect();
                                format!("{} ({})", msg, loc.join("."))
                            }
                            _ => msg,
                        }
                    }
                    other => value_to_string(other).unwrap_or_default(),
                })
                .collect::<Vec<_>>()
                .join("; "),
            Value::Object(o) => o
                .get("message")
                .or_else(|| o.get("msg"))
                .and_then(value_to_string)
                .unwrap_or_else(|| detail.to_string()),
            other => other.to_string(),
        };
        return Some(ErrorBody {
            message: Some(message),
            ..ErrorBody::default()
        });
    }
    if let Some(message) = object.get("message").and_then(Value::as_str) {
        return Some(ErrorBody {
            message: Some(message.to_string()),
            error_type: object.get("type").and_then(value_to_string),
            code: object.get("code").and_then(value_to_string),
            param: None,
        });
    }
    None
}

/// The error carried by a streamed (or 2xx) JSON object: a top-level `"error"` key, or
/// `"type": "error"`. Kind [`ErrorKind::StreamBroken`]; retryable unless a status-like code
/// (`error.code` or `status` between 100 and 599) says otherwise or the quota is exhausted.
pub fn stream_error(value: &Value) -> Option<ProviderError> {
    let object = value.as_object()?;
    let has_error = object.get("error").is_some_and(|e| !e.is_null());
    let typed_error = object.get("type").and_then(Value::as_str) == Some("error");
    if !has_error && !typed_error {
        return None;
    }
    let body = parse_error_value(value).unwrap_or_default();
    let status_like = |v: Option<&Value>| {
        let v = v?;
        let n = v.as_u64().or_else(|| v.as_str()?.trim().parse().ok())?;
        u16::try_from(n).ok().filter(|n| (100..600).contains(n))
    };
    let status = status_like(object.get("error").and_then(|e| e.get("code")))
        .or_else(|| status_like(object.get("error").and_then(|e| e.get("status"))))
        .or_else(|| status_like(object.get("status")))
        .or_else(|| status_like(object.get("code")));
    let message = body
        .message
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| "the provider reported an error in the stream".to_string());
    let mut error = ProviderError::new(ErrorKind::StreamBroken, clip(message.trim(), MESSAGE_MAX));
    error.status = status;
    error.code = body.code;
    error.error_type = body.error_type;
    error.retryable = status.is_none_or(status_retryable) && !error.is_quota_exceeded();
    Some(error)
}

/// Whether an HTTP status is worth retrying by default (the OpenAI SDK's list).
pub(crate) fn status_retryable(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || status >= 500
}

/// Turns an HTTP error response into a [`ProviderError`] (kind [`ErrorKind::Http`]).
///
/// Retryable: the `x-should-retry` header wins when it says `true` or `false`; otherwise 408,
/// 409, 429 and ≥ 500 are retryable. A 429 whose type or code is `insufficient_quota` is never
/// retryable. `retry_after` comes from `retry-after-ms`, else `retry-after` (seconds or an HTTP
/// date).
pub fn normalise_error(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let text = String::from_utf8_lossy(body);
    let parsed = serde_json::from_slice::<Value>(body)
        .ok()
        .as_ref()
        .and_then(parse_error_value);
    let (message, error_type, code) = match parsed {
        Some(ErrorBody {
            message,
            error_type,
            code,
            param,
        }) => {
            let mut message = message
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| default_status_message(status));
            if let Some(param) = param.filter(|p| !p.is_empty() && !message.contains(p.as_str())) {
                message = format!("{message} (param: {param})");
            }
            (clip(message.trim(), MESSAGE_MAX), error_type, code)
        }
        None => {
            let trimmed = text.trim();
            let message = if trimmed.is_empty() {
                default_status_message(status)
            } else {
                clip(trimmed, RAW_MESSAGE_MAX)
            };
            (message, None, None)
        }
    };

    let should_retry = headers
        .get("x-should-retry")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let mut retryable = match should_retry.as_deref() {
        Some("true") => true,
        Some("false") => false,
        _ => status_retryable(status),
    };
    let mut error = ProviderError {
        kind: ErrorKind::Http,
        status: Some(status),
        code,
        error_type,
        message,
        retryable: false,
        retry_after: retry_after(headers),
    };
    if status == 429 && error.is_quota_exceeded() {
        retryable = false;
    }
    error.retryable = retryable;
    error
}

fn default_status_message(status: u16) -> String {
    match reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("HTTP {status} {reason}"),
        None => format!("HTTP {status}"),
    }
}

/// The wait the server asks for: `retry-after-ms` (milliseconds), else `retry-after` (seconds
/// or an HTTP date; a date in the past gives zero). A wait too long for a `Duration` is
/// `Duration::MAX` (longer than any `max_retry_after`, so the backoff is used instead).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs = |s: f64| Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX);
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(secs(ms / 1000.0));
    }
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Some(secs(seconds));
        }
        return None;
    }
    static PARSER: jiff::fmt::rfc2822::DateTimeParser =
        jiff::fmt::rfc2822::DateTimeParser::new().relaxed_weekday(true);
    let at = PARSER.parse_timestamp(value).ok()?;
    let wait = at.duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

#[derive(Debug)]
enum BreakerState {
    Closed,
    Open {
        until: Instant,
    },
    /// `trial_since`: when the one trial call let through started (`None`: none yet).
    HalfOpen {
        trial_since: Option<Instant>,
    },
}

#[derive(Debug)]
struct BreakerInner {
    consecutive_failures: u32,
    state: BreakerState,
}

/// A circuit breaker for one provider.
///
/// Closed: calls go through; `failure_threshold` consecutive provider failures open it. Open:
/// calls are refused with [`ErrorKind::CircuitOpen`] for `open_for`. Then half-open: ONE trial
/// call goes through (others are still refused); its success closes the breaker, its failure
/// opens it again. A trial that never reports (its future was dropped) frees the slot after
/// `open_for`.
#[derive(Debug)]
pub struct Breaker {
    failure_threshold: u32,
    open_for: Duration,
    inner: Mutex<BreakerInner>,
}

impl Default for Breaker {
    /// 5 failures, open for 30 s.
    fn default() -> Breaker {
        Breaker::new(5, Duration::from_secs(30))
    }
}

impl Breaker {
    pub fn new(failure_threshold: u32, open_for: Duration) -> Breaker {
        Breaker {
            failure_threshold: failure_threshold.max(1),
            open_for,
            inner: Mutex::new(BreakerInner {
                consecutive_failures: 0,
                state: BreakerState::Closed,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call may go now; `Err` (kind [`ErrorKind::CircuitOpen`], retryable, with the
    /// remaining time as `retry_after`) when the breaker refuses it.
    pub fn check(&self) -> Result<(), ProviderError> {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open { until } if now < until => Err(circuit_open(until - now)),
            BreakerState::Open { .. } => {
                inner.state = BreakerState::HalfOpen {
                    trial_since: Some(now),
                };
                Ok(())
            }
            BreakerState::HalfOpen {
                trial_since: Some(since),
            } if now.duration_since(since) < self.open_for => Err(circuit_open(
                self.open_for.saturating_sub(now.duration_since(since)),
            )),
            BreakerState::HalfOpen { .. } => {
                inner.state = BreakerState::HalfOpen {
                    trial_since: Some(now),
                };
                Ok(())
            }
        }
    }

    /// The provider answered properly (a 4xx caused by our request counts as an answer too).
    pub fn success(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures = 0;
        inner.state = BreakerState::Closed;
    }

    /// The provider failed (see [`ProviderError::is_provider_trouble`]).
    pub fn failure(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        match inner.state {
            BreakerState::HalfOpen { .. } => {
                inner.state = BreakerState::Open {
                    until: now + self.open_for,
                };
            }
            BreakerState::Closed if inner.consecutive_failures >= self.failure_threshold => {
                inner.state = BreakerState::Open {
                    until: now + self.open_for,
                };
            }
            BreakerState::Closed | BreakerState::Open { .. } => {}
        }
    }

    /// Records the outcome of an attempt: `failure()` for provider trouble, `success()` for
    /// anything else (the provider answered).
    pub fn record(&self, outcome: Result<(), &ProviderError>) {
        match outcome {
            Err(e) if e.is_provider_trouble() => self.failure(),
            Err(e) if e.kind == ErrorKind::CircuitOpen => {}
            _ => self.success(),
        }
    }

    /// "closed", "open" or "half_open" (an open breaker whose time is up reads "half_open").
    pub fn state(&self) -> &'static str {
        let inner = self.lock();
        match inner.state {
            BreakerState::Closed => "closed",
            BreakerState::Open { until } if Instant::now() < until => "open",
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => "half_open",
        }
    }
}

fn circuit_open(remaining: Duration) -> ProviderError {
    let mut error = ProviderError::new(
        ErrorKind::CircuitOpen,
        format!(
            "provider temporarily disabled after repeated failures; next try in {:.1} s",
            remaining.as_secs_f64()
        ),
    );
    error.retry_after = Some(remaining);
    error
}

/// Records one provider attempt: its duration, and its error code when it failed.
pub fn observe_attempt(
    kind: &'static str,
    provider: &str,
    elapsed: Duration,
    error: Option<&ProviderError>,
) {
    let outcome = if error.is_some() { "error" } else { "ok" };
    metrics::histogram!("teachback_provider_request_duration_seconds", "kind" => kind,
        "provider" => provider.to_owned(), "outcome" => outcome)
    .record(elapsed.as_secs_f64());
    if let Some(error) = error {
        metrics::counter!("teachback_provider_errors_total", "kind" => kind,
            "provider" => provider.to_owned(), "code" => error.code_str())
        .increment(1);
    }
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with "\n".
    pub data: String,
}

/// An incremental parser of `text/event-stream` bodies: feed it byte chunks split anywhere.
///
/// Lines end with `\n`, `\r\n` or `\r`; `:` lines are comments; `data:` lines accumulate
/// (joined by `\n`); `event:` names the event; `id:`/`retry:` and unknown fields are ignored;
/// a blank line dispatches the event (only when it has data).
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous line ended with `\r`: skip a `\n` right after it.
    after_cr: bool,
    /// Bytes seen so far (to strip a leading BOM).
    started: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let mut bytes = bytes;
        if !self.started && !bytes.is_empty() {
            // A UTF-8 BOM may start the stream; it may itself be split across chunks.
            let bom = [0xEFu8, 0xBB, 0xBF];
            let have = self.line.len();
            let take = (bom.len() - have).min(bytes.len());
            if self
                .line
                .iter()
                .chain(&bytes[..take])
                .eq(bom[..have + take].iter())
            {
                if have + take == bom.len() {
                    self.line.clear();
                    self.started = true;
                    bytes = &bytes[take..];
                } else {
                    self.line.extend_from_slice(&bytes[..take]);
                    return events;
                }
            } else {
                self.started = true;
            }
        }
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    self.end_line(&mut events);
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(b);
                }
            }
        }
        events
    }

    /// The stream ended: a last line without its end and an event without its blank line are
    /// dispatched anyway (servers that close right after `data: [DONE]` exist).
    pub fn finish(&mut self) -> Option<SseEvent> {
        let mut events = Vec::new();
        if !self.line.is_empty() {
            self.end_line(&mut events);
        }
        self.after_cr = false;
        self.end_line(&mut events);
        events.pop()
    }

    fn end_line(&mut self, events: &mut Vec<SseEvent>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if self.has_data {
                let mut data = std::mem::take(&mut self.data);
                if data.ends_with('\n') {
                    data.pop();
                }
                events.push(SseEvent {
                    event: self.event.take(),
                    data,
                });
            } else {
                self.data.clear();
            }
            self.event = None;
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            _ => {}
        }
    }
}

/// The URL to call and the provider name (`host:port`) for a configured base URL.
///
/// A URL whose path ends with one of `keep` is used as it is; otherwise `append` is added to
/// it (`http://host:port/v1` + `/chat/completions`).
pub(crate) fn endpoint(
    base: &str,
    keep: &[&str],
    append: &str,
) -> Result<(reqwest::Url, String), ProviderError> {
    let invalid = |why: &str| {
        let mut e = ProviderError::new(ErrorKind::Connect, format!("invalid provider URL: {why}"));
        e.retryable = false;
        e
    };
    let mut url = reqwest::Url::parse(base.trim()).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    let host = url
        .host_str()
        .ok_or_else(|| invalid("no host"))?
        .to_string();
    let provider = match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    };
    let path = url.path().trim_end_matches('/').to_string();
    if keep.iter().any(|k| path.ends_with(k)) {
        url.set_path(&path);
    } else {
        url.set_path(&format!("{path}{append}"));
    }
    Ok((url, provider))
}

/// The deadlines of one attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// Headers and the first body bytes must have arrived by then.
    first_byte: Instant,
    /// The whole attempt must be over by then.
    total: Instant,
    timeouts: Timeouts,
}

impl Deadlines {
    pub(crate) fn start(timeouts: Timeouts) -> Deadlines {
        let now = Instant::now();
        Deadlines {
            first_byte: now + timeouts.first_byte,
            total: now + timeouts.total,
            timeouts,
        }
    }

    fn timeout_error(&self, waiting_for: &str, provider: &str, which: Instant) -> ProviderError {
        let message = if which == self.total {
            format!(
                "{provider} did not finish within {:?} ({waiting_for})",
                self.timeouts.total
            )
        } else if waiting_for == "the next chunk" {
            format!(
                "{provider} stream stalled for more than {:?}",
                self.timeouts.idle
            )
        } else {
            format!(
                "{provider} did not answer within {:?} ({waiting_for})",
                self.timeouts.first_byte
            )
        };
        ProviderError::new(ErrorKind::Timeout, message)
    }

    /// Sends the request; the response headers must arrive before the first-byte deadline.
    pub(crate) async fn send(
        &self,
        request: reqwest::RequestBuilder,
        provider: &str,
    ) -> Result<reqwest::Response, ProviderError> {
        let deadline = self.first_byte.min(self.total);
        match tokio::time::timeout_at(deadline, request.send()).await {
            Err(_) => Err(self.timeout_error("the response headers", provider, deadline)),
            Ok(Err(e)) => Err(ProviderError::from_send(e, provider)),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// Reads a response body chunk by chunk under the attempt's deadlines.
pub(crate) struct BodyReader<'a> {
    response: reqwest::Response,
    deadlines: Deadlines,
    provider: &'a str,
    got_first: bool,
}

impl<'a> BodyReader<'a> {
    pub(crate) fn new(
        response: reqwest::Response,
        deadlines: Deadlines,
        provider: &'a str,
    ) -> BodyReader<'a> {
        BodyReader {
            response,
            deadlines,
            provider,
            got_first: false,
        }
    }

    /// The next chunk, `None` at the end of the body.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, ProviderError> {
        loop {
            let (deadline, waiting_for) = if self.got_first {
                (
                    (Instant::now() + self.deadlines.timeouts.idle).min(self.deadlines.total),
                    "the next chunk",
                )
            } else {
                (
                    self.deadlines.first_byte.min(self.deadlines.total),
                    "the first bytes of the body",
                )
            };
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => {
                    return Err(self
                        .deadlines
                        .timeout_error(waiting_for, self.provider, deadline));
                }
                Ok(Err(e)) => return Err(ProviderError::from_body(e, self.provider)),
                Ok(Ok(None)) => return Ok(None),
                Ok(Ok(Some(chunk))) if chunk.is_empty() => continue,
                Ok(Ok(Some(chunk))) => {
                    self.got_first = true;
                    return Ok(Some(chunk));
                }
            }
        }
    }

    /// The whole body, at most `limit` bytes (the rest is dropped).
    pub(crate) async fn read_to_end(&mut self, limit: usize) -> Result<Vec<u8>, ProviderError> {
        let mut body = Vec::new();
        while let Some(chunk) = self.next().await? {
            let room = limit.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= limit {
                break;
            }
        }
        Ok(body)
    }
}

/// Most of a non-streamed success body that is read.
pub(crate) const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Most of an error body that is read.
pub(crate) const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Reads an error response and normalises it; a body that cannot be read is left out.
pub(crate) async fn error_from_response(
    response: reqwest::Response,
    deadlines: Deadlines,
    provider: &str,
) -> ProviderError {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut reader = BodyReader::new(response, deadlines, provider);
    let body = reader
        .read_to_end(ERROR_BODY_LIMIT)
        .await
        .unwrap_or_default();
    normalise_error(status, &headers, &body)
}

/// The `content-type` of a response, lower-cased, without parameters.
pub(crate) fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Builds the `reqwest` client of one provider.
pub(crate) fn build_client(timeouts: &Timeouts) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| {
            let mut e = ProviderError::new(
                ErrorKind::Connect,
                format!("cannot build the HTTP client: {}", error_chain(&e)),
            );
            e.retryable = false;
            e
        })
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Small axum servers for the provider tests.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;

    /// Serves `router` on 127.0.0.1 (a random port); returns `http://127.0.0.1:PORT/v1`.
    pub(crate) async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, router).await.ok();
        });
        format!("http://{addr}/v1")
    }

    /// A shared call counter.
    #[derive(Clone, Default)]
    pub(crate) struct Counter(pub Arc<AtomicUsize>);

    impl Counter {
        /// Increments; returns the number of this call (from 0).
        pub(crate) fn next(&self) -> usize {
            self.0.fetch_add(1, Ordering::SeqCst)
        }
        pub(crate) fn get(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn openai_error_shape() {
        let body = br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        let e = normalise_error(429, &HeaderMap::new(), body);
        assert_eq!(e.kind, ErrorKind::Http);
        assert_eq!(e.status, Some(429));
        assert_eq!(e.message, "Rate limit reached");
        assert_eq!(e.error_type.as_deref(), Some("requests"));
        assert_eq!(e.code.as_deref(), Some("rate_limit_exceeded"));
        assert!(e.retryable);
        assert_eq!(e.code_str(), "provider_rate_limited");
        assert_eq!(e.to_string(), "Rate limit reached");
    }

    #[test]
    fn openai_error_with_param_and_numeric_code() {
        let body = br#"{"error":{"message":"bad value","type":"invalid_request_error","param":"temperature","code":400}}"#;
        let e = normalise_error(400, &HeaderMap::new(), body);
        assert_eq!(e.message, "bad value (param: temperature)");
        assert_eq!(e.code.as_deref(), Some("400"));
        assert!(!e.retryable);
        assert_eq!(e.code_str(), "provider_rejected");
        assert!(!e.is_provider_trouble());
    }

    #[test]
    fn string_error_shape() {
        let e = normalise_error(
            500,
            &HeaderMap::new(),
            br#"{"error":"failed to load audio"}"#,
        );
        assert_eq!(e.message, "failed to load audio");
        assert!(e.retryable);
        assert_eq!(e.code_str(), "provider_error");
        assert!(e.is_provider_trouble());
    }

    #[test]
    fn detail_error_shapes() {
        let e = normalise_error(
            400,
            &HeaderMap::new(),
            br#"{"detail":"Unsupported response_format: text"}"#,
        );
        assert_eq!(e.message, "Unsupported response_format: text");
        assert!(!e.retryable);

        let e = normalise_error(
            422,
            &HeaderMap::new(),
            br#"{"detail":[{"loc":["body","file"],"msg":"field required","type":"value_error.missing"},{"msg":"other"}]}"#,
        );
        assert_eq!(e.message, "field required (body.file); other");
        assert_eq!(e.code_str(), "provider_rejected");

        let e = normalise_error(400, &HeaderMap::new(), br#"{"detail":{"message":"nope"}}"#);
        assert_eq!(e.message, "nope");
        let e = normalise_error(400, &HeaderMap::new(), br#"{"detail":{"x":1}}"#);
        assert_eq!(e.message, r#"{"x":1}"#);
    }

    #[test]
    fn raw_text_is_clipped() {
        let long = "é".repeat(1000);
        let e = normalise_error(502, &HeaderMap::new(), long.as_bytes());
        assert_eq!(e.message.chars().count(), RAW_MESSAGE_MAX + 1);
        assert!(e.message.ends_with('…'));
        assert!(e.retryable);

        let e = normalise_error(503, &HeaderMap::new(), b"");
        assert_eq!(e.message, "HTTP 503 Service Unavailable");
        let e = normalise_error(404, &HeaderMap::new(), b"<html>not found</html>");
        assert_eq!(e.message, "<html>not found</html>");
        assert!(!e.retryable);
    }

    #[test]
    fn insufficient_quota_never_retryable() {
        let body = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let e = normalise_error(429, &headers(&[("x-should-retry", "true")]), body);
        assert!(!e.retryable);
        assert_eq!(e.code_str(), "provider_quota_exceeded");
        let body = br#"{"error":{"message":"quota","type":"x","code":"insufficient_quota"}}"#;
        assert!(!normalise_error(429, &HeaderMap::new(), body).retryable);
    }

    #[test]
    fn should_retry_header_wins() {
        let e = normalise_error(500, &headers(&[("x-should-retry", "false")]), b"oops");
        assert!(!e.retryable);
        let e = normalise_error(400, &headers(&[("x-should-retry", "true")]), b"oops");
        assert!(e.retryable);
        for status in [408, 409, 429, 500, 502, 503, 504] {
            assert!(normalise_error(status, &HeaderMap::new(), b"").retryable);
        }
        for status in [400, 401, 403, 404, 413, 422] {
            assert!(!normalise_error(status, &HeaderMap::new(), b"").retryable);
        }
    }

    #[test]
    fn retry_after_headers() {
        let e = normalise_error(
            429,
            &headers(&[("retry-after-ms", "250"), ("retry-after", "9")]),
            b"",
        );
        assert_eq!(e.retry_after, Some(Duration::from_millis(250)));
        let e = normalise_error(429, &headers(&[("retry-after", "3")]), b"");
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        let e = normalise_error(429, &headers(&[("retry-after", "1.5")]), b"");
        assert_eq!(e.retry_after, Some(Duration::from_millis(1500)));

        let future = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(30);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&future)
            .unwrap();
        assert!(date.ends_with("GMT"));
        let e = normalise_error(503, &headers(&[("retry-after", &date)]), b"");
        let wait = e.retry_after.unwrap();
        assert!(
            wait > Duration::from_secs(27) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );

        let e = normalise_error(
            503,
            &headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            b"",
        );
        assert_eq!(e.retry_after, Some(Duration::ZERO));
        let e = normalise_error(503, &headers(&[("retry-after", "soon")]), b"");
        assert_eq!(e.retry_after, None);
    }

    #[test]
    fn a_retry_hint_too_long_for_a_duration_does_not_panic() {
        // Found by fuzzing (fuzz/corpus/provider_error): `Duration::from_secs_f64` panicked on
        // a finite hint beyond `Duration::MAX` (`retry-after-ms: 6666…`, `retry-after: 1e300`).
        let huge = "6".repeat(40);
        for (name, value) in [
            ("retry-after-ms", huge.as_str()),
            ("retry-after", huge.as_str()),
            ("retry-after", "1e300"),
            ("retry-after-ms", "1.7976931348623157e308"),
        ] {
            let e = normalise_error(429, &headers(&[(name, value)]), b"");
            assert_eq!(e.retry_after, Some(Duration::MAX), "{name}: {value}");
            // Longer than any max_retry_after: the backoff is used instead.
            assert!(RetryPolicy::default().delay(0, e.retry_after) <= Duration::from_millis(500));
        }
    }

    #[test]
    fn retry_delay() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        // A hint above max_retry_after is ignored.
        let d = policy.delay(0, Some(Duration::from_secs(600)));
        assert!(
            d <= Duration::from_millis(500) && d >= Duration::from_millis(375),
            "{d:?}"
        );
        for attempt in 0..4 {
            let full = Duration::from_millis(500 * (1 << attempt));
            let d = policy.delay(attempt, None);
            assert!(d <= full && d >= full.mul_f64(0.75), "{attempt}: {d:?}");
        }
        let d = policy.delay(10, None);
        assert!(
            d <= Duration::from_secs(8) && d >= Duration::from_secs(6),
            "{d:?}"
        );
        let d = policy.delay(u32::MAX, None);
        assert!(d <= Duration::from_secs(8));
    }

    #[test]
    fn error_codes() {
        let kinds = [
            (ErrorKind::Connect, "provider_unreachable"),
            (ErrorKind::Timeout, "provider_timeout"),
            (ErrorKind::StreamBroken, "provider_stream_broken"),
            (ErrorKind::InvalidResponse, "provider_invalid_response"),
            (ErrorKind::CircuitOpen, "provider_circuit_open"),
        ];
        for (kind, code) in kinds {
            assert_eq!(ProviderError::new(kind, "x").code_str(), code);
        }
        assert_eq!(
            normalise_error(503, &HeaderMap::new(), b"").code_str(),
            "provider_error"
        );
    }

    fn secs(e: &ProviderError) -> f64 {
        e.retry_after.unwrap().as_secs_f64()
    }

    #[test]
    fn breaker_opens_and_half_opens() {
        let open_for = Duration::from_millis(300);
        let breaker = Breaker::new(3, open_for);
        assert_eq!(breaker.state(), "closed");
        for _ in 0..2 {
            breaker.check().unwrap();
            breaker.failure();
        }
        assert_eq!(breaker.state(), "closed");
        // A success resets the count.
        breaker.success();
        for _ in 0..3 {
            breaker.check().unwrap();
            breaker.failure();
        }
        assert_eq!(breaker.state(), "open");
        let e = breaker.check().unwrap_err();
        assert_eq!(e.kind, ErrorKind::CircuitOpen);
        assert_eq!(e.code_str(), "provider_circuit_open");
        assert!(e.retryable);
        assert!(secs(&e) > 0.2 && secs(&e) <= 0.3, "{e:?}");

        std::thread::sleep(Duration::from_millis(100));
        let e = breaker.check().unwrap_err();
        assert!(secs(&e) <= 0.2, "{e:?}");
        std::thread::sleep(Duration::from_millis(220));
        assert_eq!(breaker.state(), "half_open");
        // One trial goes through, others are refused.
        breaker.check().unwrap();
        assert_eq!(breaker.state(), "half_open");
        assert!(breaker.check().is_err());
        assert!(breaker.check().is_err());
        // The trial fails: open again.
        breaker.failure();
        assert_eq!(breaker.state(), "open");
        assert!(breaker.check().is_err());

        std::thread::sleep(Duration::from_millis(320));
        breaker.check().unwrap();
        assert!(breaker.check().is_err());
        breaker.success();
        assert_eq!(breaker.state(), "closed");
        breaker.check().unwrap();
        breaker.check().unwrap();
    }

    #[test]
    fn breaker_trial_that_never_reports_frees_the_slot() {
        let breaker = Breaker::new(1, Duration::from_millis(100));
        breaker.failure();
        assert!(breaker.check().is_err());
        std::thread::sleep(Duration::from_millis(120));
        breaker.check().unwrap(); // the trial, dropped without a report
        assert!(breaker.check().is_err());
        std::thread::sleep(Duration::from_millis(120));
        breaker.check().unwrap();
    }

    #[test]
    fn breaker_record_counts_only_provider_trouble() {
        let breaker = Breaker::new(2, Duration::from_secs(30));
        let rejected = normalise_error(400, &HeaderMap::new(), b"bad");
        for _ in 0..5 {
            breaker.record(Err(&rejected));
        }
        assert_eq!(breaker.state(), "closed");
        let quota = normalise_error(
            401,
            &HeaderMap::new(),
            br#"{"error":{"message":"bad key","type":"invalid_request_error"}}"#,
        );
        breaker.record(Err(&quota));
        assert_eq!(breaker.state(), "closed");
        breaker.record(Err(&ProviderError::new(ErrorKind::Timeout, "t")));
        breaker.record(Err(&normalise_error(503, &HeaderMap::new(), b"")));
        assert_eq!(breaker.state(), "open");
    }

    fn feed_all(input: &[u8], splits: &[usize]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        let mut start = 0;
        for &split in splits {
            events.extend(parser.push(&input[start..split]));
            start = split;
        }
        events.extend(parser.push(&input[start..]));
        events.extend(parser.finish());
        events
    }

    const SAMPLE: &str = ": keep-alive comment\r\n\
        event: transcript\r\n\
        data: {\"delta\":\"héllo wörld ✓ 😀\"}\r\n\
        \r\n\
        data: line one\n\
        data:line two\n\
        data\n\
        id: 7\n\
        retry: 1000\n\
        \n\
        \n\
        event: lonely\n\
        \n\
        data: cr only\r\r\
        data: [DONE]\n\n";

    fn sample_expected() -> Vec<SseEvent> {
        vec![
            SseEvent {
                event: Some("transcript".into()),
                data: "{\"delta\":\"héllo wörld ✓ 😀\"}".into(),
            },
            SseEvent {
                event: None,
                data: "line one\nline two\n".into(),
            },
            SseEvent {
                event: None,
                data: "cr only".into(),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
            },
        ]
    }

    #[test]
    fn sse_whole() {
        assert_eq!(feed_all(SAMPLE.as_bytes(), &[]), sample_expected());
    }

    #[test]
    fn sse_every_single_split_point() {
        let input = SAMPLE.as_bytes();
        for split in 0..=input.len() {
            assert_eq!(
                feed_all(input, &[split]),
                sample_expected(),
                "split at {split}"
            );
        }
        for a in 0..=input.len() {
            for b in (a..=input.len()).step_by(7) {
                assert_eq!(feed_all(input, &[a, b]), sample_expected(), "{a},{b}");
            }
        }
    }

    #[test]
    fn sse_byte_by_byte() {
        let input = SAMPLE.as_bytes();
        let splits: Vec<usize> = (1..input.len()).collect();
        assert_eq!(feed_all(input, &splits), sample_expected());
    }

    #[test]
    fn sse_random_splits() {
        let input = SAMPLE.as_bytes();
        for _ in 0..300 {
            let mut splits: Vec<usize> = (0..rand::random_range(0..12))
                .map(|_| rand::random_range(0..=input.len()))
                .collect();
            splits.sort();
            assert_eq!(feed_all(input, &splits), sample_expected(), "{splits:?}");
        }
    }

    #[test]
    fn sse_bom_and_unterminated_end() {
        let mut input = vec![0xEF, 0xBB, 0xBF];
        input.extend_from_slice(b"data: a\n\ndata: [DONE]");
        for split in 0..=input.len() {
            let events = feed_all(&input, &[split]);
            assert_eq!(events.len(), 2, "split {split}");
            assert_eq!(events[0].data, "a");
            assert_eq!(events[1].data, "[DONE]");
        }
        // Without finish(), an unterminated event is not dispatched.
        let mut parser = SseParser::new();
        assert_eq!(parser.push(b"data: x\n").len(), 0);
        assert_eq!(parser.finish().unwrap().data, "x");
        assert_eq!(parser.finish(), None);
    }

    #[test]
    fn sse_crlf_split_between_cr_and_lf() {
        let mut parser = SseParser::new();
        let mut events = parser.push(b"data: a\r");
        events.extend(parser.push(b"\n\r"));
        events.extend(parser.push(b"\ndata: b\r\n\r\n"));
        assert_eq!(
            events.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn endpoints() {
        let (url, provider) = endpoint(
            "http://127.0.0.1:8000/v1",
            &["/chat/completions"],
            "/chat/completions",
        )
        .unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8000/v1/chat/completions");
        assert_eq!(provider, "127.0.0.1:8000");
        let (url, provider) = endpoint(
            "https://api.openai.com/v1/",
            &["/chat/completions"],
            "/chat/completions",
        )
        .unwrap();
        assert_eq!(url.as_str(), "https://api.openai.com/v1/chat/completions");
        assert_eq!(provider, "api.openai.com:443");
        let keep = ["/transcriptions", "/inference"];
        let (url, _) = endpoint("http://h:9/inference", &keep, "/audio/transcriptions").unwrap();
        assert_eq!(url.as_str(), "http://h:9/inference");
        let (url, _) = endpoint(
            "http://h:9/v1/audio/transcriptions/",
            &keep,
            "/audio/transcriptions",
        )
        .unwrap();
        assert_eq!(url.as_str(), "http://h:9/v1/audio/transcriptions");
        let (url, provider) =
            endpoint("http://[::1]:7/v1?x=secret", &keep, "/audio/transcriptions").unwrap();
        assert_eq!(
            url.as_str(),
            "http://[::1]:7/v1/audio/transcriptions?x=secret"
        );
        assert_eq!(provider, "[::1]:7");
        assert!(endpoint("ftp://h/v1", &keep, "/x").is_err());
        assert!(endpoint("not a url", &keep, "/x").is_err());
    }

    #[test]
    fn clip_on_char_boundary() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "abc…");
        assert_eq!(clip("ééé", 2), "éé…");
    }
}
