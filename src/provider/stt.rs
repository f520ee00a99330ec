//! Speech-to-text over an OpenAI-compatible `POST /audio/transcriptions` (multipart upload).
//!
//! Works with OpenAI (`whisper-1`, `gpt-4o(-mini)-transcribe`), `faster-whisper-server` and
//! whisper.cpp's `whisper-server` (`/inference`). With `stream: true` the gpt-4o models answer
//! with SSE (`transcript.text.delta` … `transcript.text.done`); servers that refuse the `stream`
//! field with a 400/422 are asked again without it, and never again with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::time::Instant;

use super::{
    BODY_LIMIT, BodyReader, Breaker, Deadlines, ErrorKind, ProviderError, RetryPolicy, SseParser,
    Timeouts, build_client, clip, content_type, endpoint, error_from_response, stream_error,
};

/// One piece of audio to transcribe.
#[derive(Debug, Clone)]
pub struct SttRequest {
    pub audio: Bytes,
    /// Sent as the file's name; its extension tells the server the format (e.g. `segment.wav`).
    pub filename: String,
    /// e.g. `audio/wav`, `audio/webm`.
    pub content_type: String,
    /// ISO-639-1, e.g. `en`.
    pub language: Option<String>,
    /// Text to guide the model (previous transcript, vocabulary).
    pub prompt: Option<String>,
}

/// The result of a transcription.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcription {
    /// The final text, trimmed.
    pub text: String,
    /// The language the provider reported, else the one asked for.
    pub language: Option<String>,
    /// Whether the provider streamed the text (SSE).
    pub streamed: bool,
    /// HTTP requests made (1 when nothing was retried).
    pub attempts: u32,
    /// From the call until the final text.
    pub latency: Duration,
}

/// A speech-to-text provider.
#[async_trait::async_trait]
pub trait SpeechToText: Send + Sync + 'static {
    /// For events and logs: e.g. the URL's host.
    fn provider(&self) -> &str;
    fn model(&self) -> &str;
    /// Transcribes one piece of audio; `on_delta` receives live text deltas when the provider streams.
    async fn transcribe(
        &self,
        request: SttRequest,
        on_delta: &(dyn for<'a> Fn(&'a str) + Send + Sync),
    ) -> Result<Transcription, ProviderError>;
    fn breaker_state(&self) -> &'static str;
}

/// Configuration of [`OpenAiStt`].
#[derive(Clone)]
pub struct SttConfig {
    /// A base like `http://host:port/v1` (`/audio/transcriptions` is added), or a full endpoint
    /// URL ending with `/transcriptions` or `/inference` (whisper.cpp), used as it is.
    pub url: String,
    pub model: String,
    /// Sent as `Authorization: Bearer …`; never logged.
    pub api_key: Option<String>,
    /// Ask for SSE streaming (`stream=true`).
    pub stream: bool,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for SttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SttConfig")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("stream", &self.stream)
            .field("timeouts", &self.timeouts)
            .field("retry", &self.retry)
            .finish()
    }
}

/// Speech-to-text over an OpenAI-compatible HTTP API.
pub struct OpenAiStt {
    config: SttConfig,
    url: reqwest::Url,
    provider: String,
    client: reqwest::Client,
    breaker: Breaker,
    /// The server refused the `stream` field once: never send it again.
    stream_refused: AtomicBool,
}

impl std::fmt::Debug for OpenAiStt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiStt")
            .field("provider", &self.provider)
            .field("model", &self.config.model)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

/// What one attempt produced.
struct Heard {
    text: String,
    language: Option<String>,
    streamed: bool,
}

impl OpenAiStt {
    pub fn new(config: SttConfig) -> Result<OpenAiStt, ProviderError> {
        let (url, provider) = endpoint(
            &config.url,
            &["/transcriptions", "/inference"],
            "/audio/transcriptions",
        )?;
        let client = build_client(&config.timeouts)?;
        Ok(OpenAiStt {
            config,
            url,
            provider,
            client,
            breaker: Breaker::default(),
            stream_refused: AtomicBool::new(false),
        })
    }

    /// Replaces the default circuit breaker (5 failures, open for 30 s).
    pub fn with_breaker(mut self, breaker: Breaker) -> OpenAiStt {
        self.breaker = breaker;
        self
    }

    /// The endpoint called.
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    async fn attempt(
        &self,
        request: &SttRequest,
        body: Bytes,
        boundary: &str,
        stream: bool,
        on_delta: &(dyn for<'a> Fn(&'a str) + Send + Sync),
    ) -> Result<Heard, ProviderError> {
        let deadlines = Deadlines::start(self.config.timeouts);
        let accept = if stream {
            "text/event-stream, application/json"
        } else {
            "application/json"
        };
        let mut builder = self
            .client
            .post(self.url.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .header(reqwest::header::ACCEPT, accept)
            .body(body);
        if let Some(key) = &self.config.api_key {
            builder = builder.bearer_auth(key);
        }
        let response = deadlines.send(builder, &self.provider).await?;
        if !response.status().is_success() {
            return Err(error_from_response(response, deadlines, &self.provider).await);
        }
        let kind = content_type(&response);
        let mut reader = BodyReader::new(response, deadlines, &self.provider);
        if kind == "text/event-stream" {
            let text = read_sse(&mut reader, &self.provider, on_delta).await?;
            return Ok(Heard {
                text,
                language: request.language.clone(),
                streamed: true,
            });
        }
        let body = reader.read_to_end(BODY_LIMIT).await?;
        let (text, language) = parse_body(&kind, &body, &self.provider)?;
        Ok(Heard {
            text,
            language: language.or_else(|| request.language.clone()),
            streamed: false,
        })
    }
}

/// Reads a streamed transcription; returns the final text.
async fn read_sse(
    reader: &mut BodyReader<'_>,
    provider: &str,
    on_delta: &(dyn for<'a> Fn(&'a str) + Send + Sync),
) -> Result<String, ProviderError> {
    let mut parser = SseParser::new();
    let mut deltas = String::new();
    let mut ended = false;
    loop {
        let chunk = reader.next().await?;
        let events = match &chunk {
            Some(bytes) => parser.push(bytes),
            None => parser.finish().into_iter().collect(),
        };
        for event in events {
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                ended = true;
                break;
            }
            let value: Value = serde_json::from_str(data).map_err(|e| {
                ProviderError::new(
                    ErrorKind::InvalidResponse,
                    format!(
                        "{provider} sent an event that is not JSON ({e}): {}",
                        clip(data, 200)
                    ),
                )
            })?;
            if let Some(error) = stream_error(&value) {
                return Err(error);
            }
            match value.get("type").and_then(Value::as_str) {
                Some("transcript.text.delta") => {
                    if let Some(delta) = value.get("delta").and_then(Value::as_str)
                        && !delta.is_empty()
                    {
                        on_delta(delta);
                        deltas.push_str(delta);
                    }
                }
                Some("transcript.text.done") => {
                    let text = value
                        .get("text")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or(deltas);
                    return Ok(text.trim().to_string());
                }
                _ => {}
            }
        }
        if ended {
            return Ok(deltas.trim().to_string());
        }
        if chunk.is_none() {
            return Err(ProviderError::new(
                ErrorKind::StreamBroken,
                format!("the transcription stream from {provider} ended before its final text"),
            ));
        }
    }
}

/// Reads a non-streamed answer: JSON `{"text", "language"?}`, or plain text.
fn parse_body(
    kind: &str,
    body: &[u8],
    provider: &str,
) -> Result<(String, Option<String>), ProviderError> {
    let text = String::from_utf8_lossy(body);
    if kind == "text/plain" {
        return Ok((text.trim().to_string(), None));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => {
            if let Some(error) = stream_error(&value) {
                return Err(error);
            }
            match value.get("text").and_then(Value::as_str) {
                Some(t) => Ok((
                    t.trim().to_string(),
                    value
                        .get("language")
                        .and_then(Value::as_str)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string),
                )),
                None => Err(ProviderError::new(
                    ErrorKind::InvalidResponse,
                    format!(
                        "{provider} answered without a text: {}",
                        clip(text.trim(), 200)
                    ),
                )),
            }
        }
        // A server that answers in plain text with another content type (or none).
        Err(_) if !kind.contains("json") && !kind.contains("html") => {
            Ok((text.trim().to_string(), None))
        }
        Err(e) => Err(ProviderError::new(
            ErrorKind::InvalidResponse,
            format!(
                "{provider} answered with an unreadable body ({e}): {}",
                clip(text.trim(), 200)
            ),
        )),
    }
}

/// A random multipart boundary (cannot plausibly occur in the audio).
fn new_boundary() -> String {
    format!("teachback-{:032x}", rand::random::<u128>())
}

/// A value safe inside a quoted header parameter (as browsers encode it).
fn quoted(value: &str) -> String {
    value
        .replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// The `multipart/form-data` body, built by hand.
fn multipart_body(boundary: &str, request: &SttRequest, model: &str, stream: bool) -> Bytes {
    let mut body: Vec<u8> = Vec::with_capacity(request.audio.len() + 1024);
    let field = |body: &mut Vec<u8>, name: &str, value: &str| {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    };
    let filename = if request.filename.trim().is_empty() {
        "audio.wav".to_string()
    } else {
        quoted(&request.filename)
    };
    let file_type: String = request
        .content_type
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let file_type = if file_type.trim().is_empty() {
        "application/octet-stream".to_string()
    } else {
        file_type
    };
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: {file_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&request.audio);
    body.extend_from_slice(b"\r\n");
    field(&mut body, "model", model);
    field(&mut body, "response_format", "json");
    if let Some(language) = request.language.as_deref().filter(|l| !l.is_empty()) {
        field(&mut body, "language", language);
    }
    if let Some(prompt) = request.prompt.as_deref().filter(|p| !p.is_empty()) {
        field(&mut body, "prompt", prompt);
    }
    if stream {
        field(&mut body, "stream", "true");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Bytes::from(body)
}

/// Whether an error is a server refusing the `stream` field.
fn refuses_stream(error: &ProviderError) -> bool {
    error.kind == ErrorKind::Http
        && matches!(error.status, Some(400 | 422))
        && error.message.to_ascii_lowercase().contains("stream")
}

#[async_trait::async_trait]
impl SpeechToText for OpenAiStt {
    fn provider(&self) -> &str {
        &self.provider
    }

    fn model(&self) -> &str {
        &self.config.model
    }

    fn breaker_state(&self) -> &'static str {
        self.breaker.state()
    }

    async fn transcribe(
        &self,
        request: SttRequest,
        on_delta: &(dyn for<'a> Fn(&'a str) + Send + Sync),
    ) -> Result<Transcription, ProviderError> {
        let started = Instant::now();
        let boundary = new_boundary();
        let mut attempts = 0u32;
        let mut retries = 0u32;
        let mut last_error: Option<ProviderError> = None;
        // The body for the current `stream` choice, built once.
        let mut body: Option<(bool, Bytes)> = None;
        loop {
            if let Err(refused) = self.breaker.check() {
                return Err(last_error.unwrap_or(refused));
            }
            let stream = self.config.stream && !self.stream_refused.load(Ordering::Relaxed);
            let bytes = match &body {
                Some((s, bytes)) if *s == stream => bytes.clone(),
                _ => {
                    let bytes = multipart_body(&boundary, &request, &self.config.model, stream);
                    body = Some((stream, bytes.clone()));
                    bytes
                }
            };
            attempts += 1;
            let attempt_started = Instant::now();
            let result = self
                .attempt(&request, bytes, &boundary, stream, on_delta)
                .await;
            super::observe_attempt(
                "stt",
                &self.provider,
                attempt_started.elapsed(),
                result.as_ref().err(),
            );
            match result {
                Ok(heard) => {
                    self.breaker.success();
                    return Ok(Transcription {
                        text: heard.text,
                        language: heard.language,
                        streamed: heard.streamed,
                        attempts,
                        latency: started.elapsed(),
                    });
                }
                Err(error) => {
                    self.breaker.record(Err(&error));
                    if stream && refuses_stream(&error) {
                        tracing::info!(
                            provider = %self.provider,
                            error = %error,
                            "speech-to-text provider refuses stream=true; asking without it from now on"
                        );
                        self.stream_refused.store(true, Ordering::Relaxed);
                        last_error = Some(error);
                        continue;
                    }
                    let retry = self.config.retry.wait_to_retry(
                        &self.provider,
                        "speech-to-text",
                        &error,
                        &mut retries,
                        attempts,
                    );
                    if !retry.await {
                        return Err(error);
                    }
                    last_error = Some(error);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Body;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;

    use super::*;
    use crate::provider::test_support::{Counter, serve};

    /// A parsed multipart part: headers (lower-case names) and content.
    #[derive(Debug, Clone)]
    struct Part {
        disposition: String,
        content_type: Option<String>,
        content: Vec<u8>,
    }

    /// Parses a multipart body into parts by name.
    fn parse_multipart(headers: &HeaderMap, body: &[u8]) -> HashMap<String, Part> {
        let ct = headers["content-type"].to_str().unwrap();
        let boundary = ct.split("boundary=").nth(1).unwrap();
        let delimiter = format!("--{boundary}");
        let mut parts = HashMap::new();
        let mut rest = body;
        let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
        let start = find(rest, delimiter.as_bytes()).unwrap();
        rest = &rest[start + delimiter.len()..];
        loop {
            if rest.starts_with(b"--") {
                break;
            }
            rest = rest.strip_prefix(b"\r\n").unwrap();
            let end = find(rest, format!("\r\n{delimiter}").as_bytes()).unwrap();
            let part = &rest[..end];
            rest = &rest[end + 2 + delimiter.len()..];
            let split = find(part, b"\r\n\r\n").unwrap();
            let head = String::from_utf8(part[..split].to_vec()).unwrap();
            let content = part[split + 4..].to_vec();
            let mut disposition = String::new();
            let mut content_type = None;
            for line in head.split("\r\n") {
                let (name, value) = line.split_once(": ").unwrap();
                match name.to_ascii_lowercase().as_str() {
                    "content-disposition" => disposition = value.to_string(),
                    "content-type" => content_type = Some(value.to_string()),
                    _ => {}
                }
            }
            let name = disposition
                .split("name=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_string();
            parts.insert(
                name,
                Part {
                    disposition,
                    content_type,
                    content,
                },
            );
        }
        parts
    }

    fn text_of(parts: &HashMap<String, Part>, name: &str) -> Option<String> {
        parts
            .get(name)
            .map(|p| String::from_utf8(p.content.clone()).unwrap())
    }

    fn config(url: String) -> SttConfig {
        SttConfig {
            url,
            model: "whisper-1".into(),
            api_key: None,
            stream: false,
            timeouts: Timeouts {
                connect: Duration::from_secs(2),
                first_byte: Duration::from_secs(2),
                idle: Duration::from_secs(2),
                total: Duration::from_secs(5),
            },
            retry: RetryPolicy {
                max_retries: 2,
                base: Duration::from_millis(10),
                cap: Duration::from_millis(50),
                max_retry_after: Duration::from_secs(2),
            },
        }
    }

    fn request() -> SttRequest {
        // Bytes that look like a boundary line and CRLFs must go through untouched.
        let mut audio = b"RIFF\0\0\0\0WAVE\r\n--teachback-\r\n\r\n".to_vec();
        audio.extend((0..=255u8).cycle().take(5000));
        SttRequest {
            audio: Bytes::from(audio),
            filename: "segment-1.wav".into(),
            content_type: "audio/wav".into(),
            language: Some("en".into()),
            prompt: Some("Photosynthesis, \"chlorophyll\"\r\nline two".into()),
        }
    }

    fn no_delta() -> impl Fn(&str) + Send + Sync {
        |_: &str| {}
    }

    /// A recorded request: its headers and multipart parts.
    type Recorded = (HeaderMap, HashMap<String, Part>);

    #[derive(Clone, Default)]
    struct Seen {
        requests: Arc<Mutex<Vec<Recorded>>>,
    }

    impl Seen {
        fn push(&self, headers: &HeaderMap, body: &[u8]) -> HashMap<String, Part> {
            let parts = parse_multipart(headers, body);
            self.requests
                .lock()
                .unwrap()
                .push((headers.clone(), parts.clone()));
            parts
        }
        fn all(&self) -> Vec<Recorded> {
            self.requests.lock().unwrap().clone()
        }
    }

    #[tokio::test]
    async fn json_transcription_and_multipart_fields() {
        let seen = Seen::default();
        let s = seen.clone();
        let router = Router::new().route(
            "/v1/audio/transcriptions",
            post(move |headers: HeaderMap, body: Bytes| {
                let s = s.clone();
                async move {
                    s.push(&headers, &body);
                    axum::Json(serde_json::json!({"text": " Hello there. ", "usage": {"type": "duration", "seconds": 2}}))
                }
            }),
        );
        let url = serve(router).await;
        let mut cfg = config(url.clone());
        cfg.api_key = Some("sk-secret-key".into());
        let stt = OpenAiStt::new(cfg).unwrap();
        assert_eq!(stt.model(), "whisper-1");
        assert_eq!(
            stt.provider(),
            url.trim_start_matches("http://").trim_end_matches("/v1")
        );
        assert!(!format!("{stt:?}").contains("sk-secret"));
        assert_eq!(stt.breaker_state(), "closed");

        let out = stt.transcribe(request(), &no_delta()).await.unwrap();
        assert_eq!(out.text, "Hello there.");
        assert_eq!(out.language.as_deref(), Some("en"));
        assert!(!out.streamed);
        assert_eq!(out.attempts, 1);

        let all = seen.all();
        assert_eq!(all.len(), 1);
        let (headers, parts) = &all[0];
        assert_eq!(headers["authorization"], "Bearer sk-secret-key");
        let file = &parts["file"];
        assert_eq!(file.content, request().audio.to_vec());
        assert_eq!(file.content_type.as_deref(), Some("audio/wav"));
        assert!(file.disposition.contains("filename=\"segment-1.wav\""));
        assert_eq!(text_of(parts, "model").as_deref(), Some("whisper-1"));
        assert_eq!(text_of(parts, "response_format").as_deref(), Some("json"));
        assert_eq!(text_of(parts, "language").as_deref(), Some("en"));
        assert_eq!(
            text_of(parts, "prompt").as_deref(),
            Some("Photosynthesis, \"chlorophyll\"\r\nline two")
        );
        assert!(!parts.contains_key("stream"));
    }

    #[tokio::test]
    async fn plain_text_body_and_optional_fields() {
        let seen = Seen::default();
        let s = seen.clone();
        let router = Router::new().route(
            "/inference",
            post(move |headers: HeaderMap, body: Bytes| {
                let s = s.clone();
                async move {
                    s.push(&headers, &body);
                    (
                        [("content-type", "text/plain; charset=utf-8")],
                        " plain words\n",
                    )
                }
            }),
        );
        let base = serve(router).await;
        let url = format!("{}/inference", base.trim_end_matches("/v1"));
        let stt = OpenAiStt::new(config(url.clone())).unwrap();
        assert_eq!(stt.url().as_str(), url);
        let mut req = request();
        req.language = None;
        req.prompt = None;
        req.filename = "we\"ird\nname.webm".into();
        let out = stt.transcribe(req, &no_delta()).await.unwrap();
        assert_eq!(out.text, "plain words");
        assert_eq!(out.language, None);
        let all = seen.all();
        let (headers, parts) = &all[0];
        assert!(headers.get("authorization").is_none());
        assert!(!parts.contains_key("language"));
        assert!(!parts.contains_key("prompt"));
        assert!(
            parts["file"]
                .disposition
                .contains("filename=\"we%22ird%0Aname.webm\"")
        );
    }

    #[tokio::test]
    async fn json_language_is_reported() {
        let router = Router::new().route(
            "/v1/audio/transcriptions",
            post(|| async { axum::Json(serde_json::json!({"text": "bonjour", "language": "fr"})) }),
        );
        let stt = OpenAiStt::new(config(serve(router).await)).unwrap();
        let out = stt.transcribe(request(), &no_delta()).await.unwrap();
        assert_eq!(out.language.as_deref(), Some("fr"));
    }

    /// An SSE body sent in awkward pieces (split inside a multi-byte char and between \r and \n).
    fn sse_body(events: &[&str], pause: Duration) -> Body {
        let mut text = String::new();
        for e in events {
            text.push_str(&format!("event: ignored\r\ndata: {e}\r\n\r\n"));
        }
        let bytes = text.into_bytes();
        let stream = async_stream::stream! {
            for piece in bytes.chunks(7) {
                tokio::time::sleep(pause).await;
                yield Ok::<_, std::io::Error>(Bytes::copy_from_slice(piece));
            }
        };
        Body::from_stream(stream)
    }

    fn sse_response(body: Body) -> Response {
        ([("content-type", "text/event-stream")], body).into_response()
    }

    #[tokio::test]
    async fn sse_streaming_with_deltas() {
        let seen = Seen::default();
        let s = seen.clone();
        let router = Router::new().route(
            "/v1/audio/transcriptions",
            post(move |headers: HeaderMap, body: Bytes| {
                let s = s.clone();
                async move {
                    s.push(&headers, &body);
                    sse_response(sse_body(
                        &[
                            r#"{"type":"transcript.text.delta","delta":"Chloro"}"#,
                            r#"{"type":"transcript.text.delta","delta":"phyll é😀"}"#,
                            r#"{"type":"transcript.text.delta","delta":""}"#,
                            r#"{"type":"transcript.text.segment","text":"ignored"}"#,
                            r#"{"type":"transcript.text.done","text":"Chlorophyll é😀.","usage":{"input_tokens":3}}"#,
                        ],
                        Duration::from_millis(1),
                    ))
                }
            }),
        );
        let mut cfg = config(serve(router).await);
        cfg.stream = true;
        let stt = OpenAiStt::new(cfg).unwrap();
        let deltas = Arc::new(Mutex::new(Vec::<String>::new()));
        let d = deltas.clone();
        let on_delta = move |s: &str| d.lock().unwrap().push(s.to_string());
        let out = stt.transcribe(request(), &on_delta).await.unwrap();
        assert_eq!(out.text, "Chlorophyll é😀.");
        assert!(out.streamed);
        assert_eq!(*deltas.lock().unwrap(), ["Chloro", "phyll é😀"]);
        let all = seen.all();
        assert_eq!(text_of(&all[0].1, "stream").as_deref(), Some("true"));
        assert_eq!(all[0].0["accept"], "text/event-stream, application/json");
    }

    #[tokio::test]
    async fn sse_without_done_is_broken_and_retried() {
        let calls = Counter::default();
        let c = calls.clone();
        let router = Router::new().route(
            "/v1/audio/transcriptions",
            post(move || {
                let n = c.next();
                async move {
                    if n == 0 {
                        sse_response(sse_body(
                            &[r#"{"type":"transcript.text.delta","delta":"half"}"#],
                            Duration::ZERO,
                        ))
                    } else {
                        sse_response(sse_body(
                            &[r#"{"type":"transcript.text.done","text":"whole"}"#],
                            Duration::ZERO,
                        ))
                    }
                }
            }),
        );
        let mut cfg = config(serve(router).await);
        cfg.stream = true;
        let stt = OpenAiStt::new(cfg).unwrap();
        let out = stt.transcribe(request(), &no_delta()).await.unwrap();
        assert_eq!(out.text, "whole");
        assert_eq!(out.attempts, 2);
    }

    #[tokio::test]
    async fn sse_error_event() {
        let router = Router::new().route(
            "/v1/audio/transcriptions",
            post(|| async {
                sse_response(sse_body(
                    &[r#"{"type":"error","error":{"message":"audio too short","type":"invalid_request_error","code":400}}"#],
                    Duration::ZERO,
                ))
            }),
        );
        let mut cfg = config(serve(router).await);
        cfg.stream = true;
        let stt = OpenAiStt::new(cfg).unwrap();
        let e = stt.transcribe(request(), &no_delta()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::StreamBroken);
        assert_eq!(e.message, "audio too short");
        assert_eq!(e.status, Some(400));
        assert!(!e.retryable);
        assert_eq!(stt.breaker_state(), "closed");
    }

    #[tokio::test]
    async fn stream_refused_is_retried_without_it_and_remembered() {
        let seen = Seen::default();
        let s = seen.clone();
        let router = Router::new().route(
            "/v1/audio/transcriptions",
            post(move |headers: HeaderMap, body: Bytes| {
                let s = s.clone();
                async move {
                    let parts = s.push(&headers, &body);
                    if parts.contains_key("stream") {
                        (
                            StatusCode::UNPROCESSABLE_ENTITY,
                            axum::Json(serde_json::json!({"detail": [{"loc": ["body", "stream"], "msg": "extra fields not permitted"}]})),
                        )
                            .into_response()
                    } else {
                        axum::Json(serde_json::json!({"text": "ok"})).into_response()
                    }
                }
            }),
        );
        let mut cfg = config(serve(router).await);
        cfg.stream = true;
        cfg.retry.max_retries = 0; // the fallback is not a retry
        let stt = OpenAiStt::new(cfg).unwrap();
        let out = stt.transcribe(request(), &no_delta()).await.unwrap();
        assert_eq!(out.text, "ok");
        assert_eq!(out.attempts, 2);
        assert!(!out.streamed);
        let out = stt.transcribe(request(), &no_delta()).await.unwrap();
        assert_eq!(out.attempts, 1);
        let all = seen.all();
        assert_eq!(all.len(), 3);
        assert!(all[0].1.contains_key("stream"));
        assert!(!all[1].1.contains_key("stream"));
        assert!(!all[2].1.contains_key("stream"));
    }

    #[tokio::test]
    async fn other_400_is_not_retried() {
        let calls = Counter::default();
        let c = calls.clone();
        let router = Router::new().route(
            "/v1/audio/transcriptions",
            post(move || {
                c.next();
                async {
                    (
                        StatusCode::BAD_REQUEST,
                        axum::Json(serde_json::json!({"error": {"message": "Invalid file format.", "type": "invalid_request_error", "param": null, "code": null}})),
                    )
                }
            }),
        );
        let mut cfg = config(serve(router).await);
        cfg.stream = true;
        let stt = OpenAiStt::new(cfg).unwrap();
        let e = stt.transcribe(request(), &no_delta()).await.unwrap_err();
        assert_eq!(e.code_str(), "provider_rejected");
        assert_eq!(e.message, "Invalid file format.");
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test]
    async fn rate_limited_then_success() {
        let calls = Counter::default();
        let c = calls.clone();
        let router = Router::new().route(
            "/v1/audio/transcriptions",
            post(move || {
                let n = c.next();
                async move {
                    if n == 0 {
                        (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after-ms", "30")],
                            r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
                        )
                            .into_response()
                    } else {
                        axum::Json(serde_json::json!({"text": "fine"})).into_response()
                    }
                }
            }),
        );
        let stt = OpenAiStt::new(config(serve(router).await)).unwrap();
        let started = Instant::now();
        let out = stt.transcribe(request(), &no_delta()).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(out.text, "fine");
        assert_eq!(out.attempts, 2);
        assert!(out.latency >= Duration::from_millis(30));
    }

    #[tokio::test]
    async fn server_errors_exhaust_retries() {
        let calls = Counter::default();
        let c = calls.clone();
        let router = Router::new().route(
            "/v1/audio/transcriptions",
            post(move || {
                c.next();
                async {
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        r#"{"error":"model crashed"}"#,
                    )
                }
            }),
        );
        let stt = OpenAiStt::new(config(serve(router).await)).unwrap();
        let e = stt.transcribe(request(), &no_delta()).await.unwrap_err();
        assert_eq!(e.code_str(), "provider_error");
        assert_eq!(e.message, "model crashed");
        assert_eq!(calls.get(), 3);
    }

    #[tokio::test]
    async fn hang_before_headers_times_out() {
        let router = Router::new().route(
            "/v1/audio/transcriptions",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let mut cfg = config(serve(router).await);
        cfg.timeouts.first_byte = Duration::from_millis(150);
        cfg.retry.max_retries = 1;
        let stt = OpenAiStt::new(cfg).unwrap();
        let started = Instant::now();
        let e = stt.transcribe(request(), &no_delta()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Timeout);
        assert_eq!(e.code_str(), "provider_timeout");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn unreachable_provider() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut cfg = config(format!("http://127.0.0.1:{port}/v1"));
        cfg.retry.max_retries = 1;
        let stt = OpenAiStt::new(cfg).unwrap();
        let e = stt.transcribe(request(), &no_delta()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Connect);
        assert_eq!(e.code_str(), "provider_unreachable");
        assert!(e.retryable);
    }

    #[tokio::test]
    async fn breaker_opens_and_refuses_without_calling() {
        let calls = Counter::default();
        let c = calls.clone();
        let router = Router::new().route(
            "/v1/audio/transcriptions",
            post(move || {
                let n = c.next();
                async move {
                    if n < 3 {
                        (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response()
                    } else {
                        axum::Json(serde_json::json!({"text": "back"})).into_response()
                    }
                }
            }),
        );
        let stt = OpenAiStt::new(config(serve(router).await))
            .unwrap()
            .with_breaker(Breaker::new(3, Duration::from_millis(200)));
        let e = stt.transcribe(request(), &no_delta()).await.unwrap_err();
        assert_eq!(e.code_str(), "provider_error");
        assert_eq!(calls.get(), 3);
        assert_eq!(stt.breaker_state(), "open");
        let e = stt.transcribe(request(), &no_delta()).await.unwrap_err();
        assert_eq!(e.code_str(), "provider_circuit_open");
        assert!(e.retry_after.is_some());
        assert_eq!(calls.get(), 3);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(stt.breaker_state(), "half_open");
        let out = stt.transcribe(request(), &no_delta()).await.unwrap();
        assert_eq!(out.text, "back");
        assert_eq!(stt.breaker_state(), "closed");
    }

    #[test]
    fn invalid_url_is_refused() {
        let e = OpenAiStt::new(config("localhost:8000".into())).unwrap_err();
        assert!(!e.retryable);
        assert!(OpenAiStt::new(config("nope".into())).is_err());
    }

    /// End-to-end against the fake OpenAI server (`provider::fake`).
    mod with_fake {
        use super::*;
        use crate::provider::fake::{ErrorShape, FakeOpenAi, FakeOptions, SttReply};

        async fn fake(options: FakeOptions, stream: bool) -> (FakeOpenAi, OpenAiStt) {
            let server = FakeOpenAi::start(options).await.unwrap();
            let mut cfg = config(server.base_url());
            cfg.stream = stream;
            cfg.model = "gpt-4o-transcribe".into();
            cfg.timeouts.first_byte = Duration::from_millis(300);
            let stt = OpenAiStt::new(cfg).unwrap();
            (server, stt)
        }

        #[tokio::test]
        async fn json_and_streamed() {
            let (server, stt) = fake(FakeOptions::default(), true).await;
            let out = stt.transcribe(request(), &no_delta()).await.unwrap();
            assert_eq!(out.text, FakeOptions::default().stt_text);
            assert!(!out.streamed);
            let recorded = &server.requests()[0];
            assert_eq!(
                recorded
                    .file
                    .as_ref()
                    .map(|(name, size)| (name.as_str(), *size)),
                Some(("segment-1.wav", request().audio.len()))
            );
            let field = |name: &str| {
                recorded
                    .fields
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(field("model").as_deref(), Some("gpt-4o-transcribe"));
            assert_eq!(field("stream").as_deref(), Some("true"));
            assert_eq!(field("language").as_deref(), Some("en"));

            let (_server, stt) = fake(
                FakeOptions {
                    stt_streaming: true,
                    stt_text: "Streaming words é😀 arrive".into(),
                    ..FakeOptions::default()
                },
                true,
            )
            .await;
            let deltas = Arc::new(Mutex::new(Vec::<String>::new()));
            let d = deltas.clone();
            let on_delta = move |s: &str| d.lock().unwrap().push(s.to_string());
            let out = stt.transcribe(request(), &on_delta).await.unwrap();
            assert!(out.streamed);
            assert_eq!(out.text, "Streaming words é😀 arrive");
            assert!(!deltas.lock().unwrap().is_empty());
            assert_eq!(deltas.lock().unwrap().concat().trim(), out.text);
        }

        #[tokio::test]
        async fn errors_and_hangs() {
            let (server, stt) = fake(FakeOptions::default(), false).await;
            let error = |status: u16, shape: ErrorShape, message: &str| SttReply::Error {
                status,
                shape,
                message: message.into(),
                error_type: None,
                code: None,
                retry_after: None,
                retry_after_ms: None,
                should_retry: None,
            };
            server.push_stt(SttReply::Error {
                status: 429,
                shape: ErrorShape::Nested,
                message: "slow down".into(),
                error_type: None,
                code: None,
                retry_after: Some("0".into()),
                retry_after_ms: None,
                should_retry: None,
            });
            let out = stt.transcribe(request(), &no_delta()).await.unwrap();
            assert_eq!(out.attempts, 2);

            server.push_stt(error(400, ErrorShape::Detail, "Unsupported audio"));
            let e = stt.transcribe(request(), &no_delta()).await.unwrap_err();
            assert_eq!(e.code_str(), "provider_rejected");
            assert!(e.message.contains("Unsupported audio"), "{}", e.message);

            server.push_stt(error(500, ErrorShape::Flat, "failed to decode"));
            server.push_stt(error(500, ErrorShape::Flat, "failed to decode"));
            server.push_stt(error(500, ErrorShape::Flat, "failed to decode"));
            let e = stt.transcribe(request(), &no_delta()).await.unwrap_err();
            assert_eq!(e.message, "failed to decode");
            assert_eq!(e.code_str(), "provider_error");

            server.push_stt(SttReply::HangBeforeHeaders);
            let out = stt.transcribe(request(), &no_delta()).await.unwrap();
            assert_eq!(out.attempts, 2);
        }
    }
}
