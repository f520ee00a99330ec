//! Streamed chat completions over an OpenAI-compatible `POST /chat/completions`.
//!
//! Asks for `stream: true` with `stream_options.include_usage` (a missing usage chunk is normal:
//! llama-cpp-python never sends it). Structured output degrades from `json_schema` to
//! `json_object` (+ `schema`, which llama-cpp-python uses) to plain prompting when a server
//! refuses it, and the mode that worked is remembered. A call is never replayed once a token has
//! reached `on_token`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    BODY_LIMIT, BodyReader, Breaker, Deadlines, ErrorKind, ProviderError, RetryPolicy, SseParser,
    Timeouts, build_client, clip, content_type, endpoint, error_from_response, stream_error,
};

/// One chat message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChatMessage {
    /// "system", "user" or "assistant".
    pub role: &'static str,
    pub content: String,
}

/// A chat completion request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub temperature: f32,
    pub max_tokens: Option<u32>,
    /// name and JSON Schema of the structured output wanted
    pub schema: Option<(String, serde_json::Value)>,
}

/// How structured output is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// `response_format: {"type":"json_schema", …, "strict": true}`.
    JsonSchema,
    /// `response_format: {"type":"json_object","schema":…}` and the schema in the prompt.
    JsonObject,
    /// No `response_format`; the schema is only in the prompt.
    Prompted,
}

impl OutputMode {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputMode::JsonSchema => "json_schema",
            OutputMode::JsonObject => "json_object",
            OutputMode::Prompted => "prompted",
        }
    }

    /// The next, more widely supported mode.
    fn degraded(self) -> OutputMode {
        match self {
            OutputMode::JsonSchema => OutputMode::JsonObject,
            OutputMode::JsonObject | OutputMode::Prompted => OutputMode::Prompted,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            OutputMode::JsonSchema => 0,
            OutputMode::JsonObject => 1,
            OutputMode::Prompted => 2,
        }
    }

    fn from_u8(value: u8) -> OutputMode {
        match value {
            0 => OutputMode::JsonSchema,
            1 => OutputMode::JsonObject,
            _ => OutputMode::Prompted,
        }
    }
}

/// Token counts reported by the provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// A completed chat call.
#[derive(Debug, Clone)]
pub struct ChatOutcome {
    /// All the content passed to `on_token`, in order.
    pub content: String,
    /// `None` when the provider sent no usage (normal for some servers).
    pub usage: Option<Usage>,
    pub finish_reason: Option<String>,
    /// The model the provider says answered (else the configured one).
    pub model: String,
    /// The structured-output mode that was used.
    pub mode: OutputMode,
    /// From the call (including earlier failed attempts) to the first token.
    pub first_token: Option<Duration>,
    /// The whole call.
    pub total: Duration,
    /// HTTP requests made.
    pub attempts: u32,
}

/// A failed chat call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct ChatError {
    pub error: ProviderError,
    /// whether some content had already been passed to on_token (then the call was not replayed)
    pub tokens_delivered: bool,
    /// The content passed to `on_token` before the failure (empty when none was).
    pub partial: String,
    pub attempts: u32,
}

/// A chat model that streams its answer.
#[async_trait::async_trait]
pub trait ChatModel: Send + Sync + 'static {
    fn provider(&self) -> &str;
    fn model(&self) -> &str;
    fn breaker_state(&self) -> &'static str;
    /// Streams a chat completion; `on_token` receives content deltas as they arrive.
    async fn stream_chat(
        &self,
        request: ChatRequest,
        on_token: &(dyn for<'a> Fn(&'a str) + Send + Sync),
    ) -> Result<ChatOutcome, ChatError>;
}

/// Configuration of [`OpenAiChat`].
#[derive(Clone)]
pub struct LlmConfig {
    /// A base like `http://host:port/v1` (`/chat/completions` is added), or a URL ending with
    /// `/chat/completions`, used as it is.
    pub url: String,
    pub model: String,
    /// Sent as `Authorization: Bearer …`; never logged.
    pub api_key: Option<String>,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmConfig")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeouts", &self.timeouts)
            .field("retry", &self.retry)
            .finish()
    }
}

/// Chat completions over an OpenAI-compatible HTTP API.
pub struct OpenAiChat {
    config: LlmConfig,
    url: reqwest::Url,
    provider: String,
    client: reqwest::Client,
    breaker: Breaker,
    /// The structured-output mode known to work ([`OutputMode`] as u8; only ever degrades).
    mode: AtomicU8,
}

impl std::fmt::Debug for OpenAiChat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiChat")
            .field("provider", &self.provider)
            .field("model", &self.config.model)
            .field("mode", &self.mode().as_str())
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

/// What an attempt has received so far.
#[derive(Debug, Default)]
struct Progress {
    content: String,
    delivered: bool,
    first_token: Option<Duration>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    model: Option<String>,
}

/// How the model is told about the schema when the server does not enforce it.
fn schema_instruction(schema: &Value) -> String {
    format!(
        "Respond with a single JSON object only: no prose, no code fences. \
         It must conform to this JSON Schema:\n{schema}"
    )
}

/// A schema name as OpenAI accepts it (`^[a-zA-Z0-9_-]{1,64}$`).
fn schema_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "output".to_string()
    } else {
        cleaned
    }
}

/// Whether an error says the server refused the structured-output request (so a simpler mode
/// may work): a 400/422, or a 5xx mentioning the response format (llama-cpp-python answers
/// validation errors with 500).
fn refuses_format(error: &ProviderError) -> bool {
    if error.kind != ErrorKind::Http {
        return false;
    }
    match error.status {
        Some(400 | 422) => true,
        Some(s) if s >= 500 => {
            let message = error.message.to_ascii_lowercase();
            ["response_format", "json_schema", "schema"]
                .iter()
                .any(|w| message.contains(w))
        }
        _ => false,
    }
}

fn parse_usage(value: &Value) -> Option<Usage> {
    let object = value.as_object()?;
    let field = |name: &str| object.get(name).and_then(Value::as_u64);
    let prompt = field("prompt_tokens");
    let completion = field("completion_tokens");
    let total = field("total_tokens");
    if prompt.is_none() && completion.is_none() && total.is_none() {
        return None;
    }
    let prompt_tokens = prompt.unwrap_or(0);
    let completion_tokens = completion.unwrap_or(0);
    Some(Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: total.unwrap_or(prompt_tokens + completion_tokens),
    })
}

impl OpenAiChat {
    pub fn new(config: LlmConfig) -> Result<OpenAiChat, ProviderError> {
        let (url, provider) = endpoint(&config.url, &["/chat/completions"], "/chat/completions")?;
        let client = build_client(&config.timeouts)?;
        Ok(OpenAiChat {
            config,
            url,
            provider,
            client,
            breaker: Breaker::default(),
            mode: AtomicU8::new(OutputMode::JsonSchema.to_u8()),
        })
    }

    /// Replaces the default circuit breaker (5 failures, open for 30 s).
    pub fn with_breaker(mut self, breaker: Breaker) -> OpenAiChat {
        self.breaker = breaker;
        self
    }

    /// The endpoint called.
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// The structured-output mode the next call starts with.
    pub fn mode(&self) -> OutputMode {
        OutputMode::from_u8(self.mode.load(Ordering::Relaxed))
    }

    /// The JSON body for `request` in `mode`.
    fn body(&self, request: &ChatRequest, mode: OutputMode) -> Value {
        let mut messages = request.messages.clone();
        if let Some((_, schema)) = &request.schema
            && mode != OutputMode::JsonSchema
        {
            // json_object needs the word "JSON" in the messages (OpenAI refuses it otherwise),
            // and in both modes the schema is enforced by nobody but the model.
            let instruction = schema_instruction(schema);
            match messages.first_mut() {
                Some(first) if first.role == "system" => {
                    first.content = format!("{}\n\n{instruction}", first.content);
                }
                _ => messages.insert(
                    0,
                    ChatMessage {
                        role: "system",
                        content: instruction,
                    },
                ),
            }
        }
        let mut body = json!({
            "model": self.config.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
            // Through its shortest decimal form, so 0.2f32 is sent as 0.2 (not 0.200000003).
            "temperature": request.temperature.to_string().parse::<f64>().unwrap_or(0.0),
        });
        if let Some(max_tokens) = request.max_tokens {
            body["max_tokens"] = json!(max_tokens);
        }
        if let Some((name, schema)) = &request.schema {
            match mode {
                OutputMode::JsonSchema => {
                    body["response_format"] = json!({
                        "type": "json_schema",
                        "json_schema": {"name": schema_name(name), "schema": schema, "strict": true},
                    });
                }
                OutputMode::JsonObject => {
                    body["response_format"] = json!({"type": "json_object", "schema": schema});
                }
                OutputMode::Prompted => {}
            }
        }
        body
    }

    async fn attempt(
        &self,
        body: &Value,
        progress: &mut Progress,
        on_token: &(dyn for<'a> Fn(&'a str) + Send + Sync),
        started: Instant,
    ) -> Result<(), ProviderError> {
        let deadlines = Deadlines::start(self.config.timeouts);
        let mut builder = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(body);
        if let Some(key) = &self.config.api_key {
            builder = builder.bearer_auth(key);
        }
        let response = deadlines.send(builder, &self.provider).await?;
        if !response.status().is_success() {
            return Err(error_from_response(response, deadlines, &self.provider).await);
        }
        let kind = content_type(&response);
        let mut reader = BodyReader::new(response, deadlines, &self.provider);
        if kind == "application/json" {
            // A server that ignored `stream: true` and sent the whole completion.
            let body = reader.read_to_end(BODY_LIMIT).await?;
            let value: Value = serde_json::from_slice(&body).map_err(|e| {
                ProviderError::new(
                    ErrorKind::InvalidResponse,
                    format!(
                        "{} answered with unreadable JSON ({e}): {}",
                        self.provider,
                        clip(&String::from_utf8_lossy(&body), 200)
                    ),
                )
            })?;
            return self.absorb(&value, "message", progress, on_token, started);
        }
        let mut parser = SseParser::new();
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
                    return Ok(());
                }
                let value: Value = serde_json::from_str(data).map_err(|e| {
                    ProviderError::new(
                        ErrorKind::InvalidResponse,
                        format!(
                            "{} sent a chunk that is not JSON ({e}): {}",
                            self.provider,
                            clip(data, 200)
                        ),
                    )
                })?;
                self.absorb(&value, "delta", progress, on_token, started)?;
            }
            if chunk.is_none() {
                if progress.finish_reason.is_some() {
                    // Complete but for the `[DONE]` line (and maybe the usage chunk).
                    return Ok(());
                }
                return Err(ProviderError::new(
                    ErrorKind::StreamBroken,
                    format!(
                        "the stream from {} ended before it was complete",
                        self.provider
                    ),
                ));
            }
        }
    }

    /// Takes in one chunk (`part` = "delta") or a whole completion (`part` = "message").
    fn absorb(
        &self,
        value: &Value,
        part: &str,
        progress: &mut Progress,
        on_token: &(dyn for<'a> Fn(&'a str) + Send + Sync),
        started: Instant,
    ) -> Result<(), ProviderError> {
        if let Some(error) = stream_error(value) {
            return Err(error);
        }
        if let Some(model) = value.get("model").and_then(Value::as_str)
            && !model.is_empty()
        {
            progress.model = Some(model.to_string());
        }
        if let Some(usage) = value.get("usage").and_then(parse_usage) {
            progress.usage = Some(usage);
        }
        let choices = value.get("choices").and_then(Value::as_array);
        let choice = choices.and_then(|c| {
            c.iter()
                .find(|c| c.get("index").and_then(Value::as_u64) == Some(0))
                .or_else(|| c.first())
        });
        if let Some(choice) = choice {
            if let Some(content) = choice
                .get(part)
                .and_then(|d| d.get("content"))
                .and_then(Value::as_str)
                && !content.is_empty()
            {
                if progress.first_token.is_none() {
                    progress.first_token = Some(started.elapsed());
                }
                progress.delivered = true;
                progress.content.push_str(content);
                on_token(content);
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                progress.finish_reason = Some(reason.to_string());
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ChatModel for OpenAiChat {
    fn provider(&self) -> &str {
        &self.provider
    }

    fn model(&self) -> &str {
        &self.config.model
    }

    fn breaker_state(&self) -> &'static str {
        self.breaker.state()
    }

    async fn stream_chat(
        &self,
        request: ChatRequest,
        on_token: &(dyn for<'a> Fn(&'a str) + Send + Sync),
    ) -> Result<ChatOutcome, ChatError> {
        let started = Instant::now();
        let mut mode = self.mode();
        let mut attempts = 0u32;
        let mut retries = 0u32;
        let mut last_error: Option<ProviderError> = None;
        loop {
            if let Err(refused) = self.breaker.check() {
                return Err(ChatError {
                    error: last_error.unwrap_or(refused),
                    tokens_delivered: false,
                    partial: String::new(),
                    attempts,
                });
            }
            attempts += 1;
            let body = self.body(&request, mode);
            let mut progress = Progress::default();
            let attempt_started = Instant::now();
            let result = self.attempt(&body, &mut progress, on_token, started).await;
            super::observe_attempt(
                "llm",
                &self.provider,
                attempt_started.elapsed(),
                result.as_ref().err(),
            );
            match result {
                Ok(()) => {
                    self.breaker.success();
                    if request.schema.is_some() {
                        // Remember a degradation that worked (the mode only ever degrades).
                        let before = self.mode.fetch_max(mode.to_u8(), Ordering::Relaxed);
                        if before < mode.to_u8() {
                            tracing::info!(
                                provider = %self.provider,
                                mode = mode.as_str(),
                                "chat provider refuses richer structured output; using this mode from now on"
                            );
                        }
                    }
                    return Ok(ChatOutcome {
                        content: progress.content,
                        usage: progress.usage,
                        finish_reason: progress.finish_reason,
                        model: progress.model.unwrap_or_else(|| self.config.model.clone()),
                        mode,
                        first_token: progress.first_token,
                        total: started.elapsed(),
                        attempts,
                    });
                }
                Err(mut error) => {
                    let degrade = request.schema.is_some()
                        && mode != OutputMode::Prompted
                        && !progress.delivered
                        && refuses_format(&error);
                    if degrade {
                        // The provider answered; our request was the problem.
                        self.breaker.success();
                    } else {
                        self.breaker.record(Err(&error));
                    }
                    if progress.delivered {
                        // Never replay what the user has already seen.
                        error.retryable = false;
                        tracing::warn!(
                            provider = %self.provider,
                            code = error.code_str(),
                            attempts,
                            error = %error,
                            "chat stream failed after tokens were delivered; not replaying"
                        );
                        return Err(ChatError {
                            error,
                            tokens_delivered: true,
                            partial: progress.content,
                            attempts,
                        });
                    }
                    if degrade {
                        let next = mode.degraded();
                        tracing::info!(
                            provider = %self.provider,
                            from = mode.as_str(),
                            to = next.as_str(),
                            status = ?error.status,
                            error = %error,
                            "structured output refused; trying a simpler mode"
                        );
                        mode = next;
                        last_error = Some(error);
                        continue;
                    }
                    let retry = self.config.retry.wait_to_retry(
                        &self.provider,
                        "chat completion",
                        &error,
                        &mut retries,
                        attempts,
                    );
                    if !retry.await {
                        return Err(ChatError {
                            error,
                            tokens_delivered: false,
                            partial: String::new(),
                            attempts,
                        });
                    }
                    last_error = Some(error);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::{Body, Bytes};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;

    use super::*;
    use crate::provider::test_support::serve;

    /// A piece of a scripted streamed body.
    #[derive(Clone)]
    enum Piece {
        /// Raw bytes.
        Raw(String),
        /// `data: …\n\n`.
        Data(String),
        Sleep(Duration),
        /// Abort the connection (an error in the body stream).
        Cut,
        /// Never send anything more.
        Hang,
    }

    /// One scripted answer.
    #[derive(Clone)]
    enum Reply {
        /// status, headers, body
        Status(u16, Vec<(&'static str, String)>, String),
        Sse(Vec<Piece>),
        /// Never answer (no headers).
        HangHeaders,
        Json(Value),
    }

    #[derive(Clone, Default)]
    struct Script {
        replies: Arc<Mutex<VecDeque<Reply>>>,
        requests: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    }

    impl Script {
        fn new(replies: Vec<Reply>) -> Script {
            Script {
                replies: Arc::new(Mutex::new(replies.into())),
                requests: Arc::default(),
            }
        }
        fn requests(&self) -> Vec<(HeaderMap, Value)> {
            self.requests.lock().unwrap().clone()
        }
        fn bodies(&self) -> Vec<Value> {
            self.requests().into_iter().map(|(_, b)| b).collect()
        }
        fn push(&self, reply: Reply) {
            self.replies.lock().unwrap().push_back(reply);
        }
    }

    async fn answer(script: Script, headers: HeaderMap, body: Bytes) -> Response {
        let value: Value = serde_json::from_slice(&body).unwrap();
        script.requests.lock().unwrap().push((headers, value));
        let reply = script.replies.lock().unwrap().pop_front();
        match reply {
            None => (StatusCode::IM_A_TEAPOT, "script exhausted").into_response(),
            Some(Reply::Status(status, headers, body)) => {
                let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
                for (name, value) in headers {
                    response.headers_mut().insert(name, value.parse().unwrap());
                }
                response
            }
            Some(Reply::Json(value)) => axum::Json(value).into_response(),
            Some(Reply::HangHeaders) => {
                std::future::pending::<()>().await;
                unreachable!()
            }
            Some(Reply::Sse(pieces)) => {
                let stream = async_stream::stream! {
                    for piece in pieces {
                        match piece {
                            Piece::Raw(text) => yield Ok(Bytes::from(text)),
                            Piece::Data(text) => yield Ok(Bytes::from(format!("data: {text}\n\n"))),
                            Piece::Sleep(d) => tokio::time::sleep(d).await,
                            Piece::Cut => yield Err(std::io::Error::other("cut")),
                            Piece::Hang => std::future::pending::<()>().await,
                        }
                    }
                };
                (
                    [("content-type", "text/event-stream")],
                    Body::from_stream(stream),
                )
                    .into_response()
            }
        }
    }

    async fn start(script: &Script) -> String {
        let s = script.clone();
        let router = Router::new().route(
            "/v1/chat/completions",
            post(move |headers: HeaderMap, body: Bytes| answer(s.clone(), headers, body)),
        );
        serve(router).await
    }

    fn config(url: String) -> LlmConfig {
        LlmConfig {
            url,
            model: "gpt-test".into(),
            api_key: None,
            timeouts: Timeouts {
                connect: Duration::from_secs(2),
                first_byte: Duration::from_secs(2),
                idle: Duration::from_secs(2),
                total: Duration::from_secs(10),
            },
            retry: RetryPolicy {
                max_retries: 2,
                base: Duration::from_millis(10),
                cap: Duration::from_millis(50),
                max_retry_after: Duration::from_secs(2),
            },
        }
    }

    fn chunk(content: &str) -> Piece {
        Piece::Data(
            json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"served-model",
                "choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]})
            .to_string(),
        )
    }

    fn role_chunk() -> Piece {
        Piece::Data(
            json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"served-model",
                "choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]})
            .to_string(),
        )
    }

    fn finish(reason: &str) -> Piece {
        Piece::Data(
            json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"served-model",
                "choices":[{"index":0,"delta":{},"finish_reason":reason}]})
            .to_string(),
        )
    }

    fn usage(prompt: u64, completion: u64) -> Piece {
        Piece::Data(
            json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"served-model",
                "choices":[],"usage":{"prompt_tokens":prompt,"completion_tokens":completion,"total_tokens":prompt+completion}})
            .to_string(),
        )
    }

    fn done() -> Piece {
        Piece::Data("[DONE]".into())
    }

    fn good_stream() -> Reply {
        Reply::Sse(vec![
            role_chunk(),
            chunk("Hel"),
            chunk("lo"),
            chunk(" wörld"),
            finish("stop"),
            done(),
        ])
    }

    fn request() -> ChatRequest {
        ChatRequest {
            messages: vec![
                ChatMessage {
                    role: "system",
                    content: "You grade explanations.".into(),
                },
                ChatMessage {
                    role: "user",
                    content: "Explain photosynthesis.".into(),
                },
            ],
            temperature: 0.2,
            max_tokens: Some(300),
            schema: None,
        }
    }

    fn schema_request() -> ChatRequest {
        ChatRequest {
            schema: Some((
                "grade report".into(),
                json!({"type":"object","properties":{"score":{"type":"integer"}},"required":["score"],"additionalProperties":false}),
            )),
            ..request()
        }
    }

    /// Collects tokens passed to on_token.
    #[derive(Clone, Default)]
    struct Tokens(Arc<Mutex<Vec<String>>>);

    impl Tokens {
        fn callback(&self) -> impl Fn(&str) + Send + Sync + use<> {
            let tokens = self.0.clone();
            move |t: &str| tokens.lock().unwrap().push(t.to_string())
        }
        fn all(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    #[tokio::test]
    async fn streams_tokens_and_parses_usage() {
        let script = Script::new(vec![Reply::Sse(vec![
            Piece::Raw(": keep-alive\n\n".into()),
            role_chunk(),
            chunk("Hel"),
            Piece::Sleep(Duration::from_millis(5)),
            chunk("lo"),
            // A chunk split across writes, inside a multi-byte char.
            Piece::Raw("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w\u{f6}".into()),
            Piece::Raw("rld\"},\"finish_reason\":null}]}\r\n\r\n".into()),
            finish("stop"),
            usage(12, 3),
            done(),
        ])]);
        let mut cfg = config(start(&script).await);
        cfg.api_key = Some("sk-very-secret".into());
        let chat = OpenAiChat::new(cfg).unwrap();
        assert!(!format!("{chat:?}").contains("sk-very"));
        let tokens = Tokens::default();
        let out = chat
            .stream_chat(request(), &tokens.callback())
            .await
            .unwrap();
        assert_eq!(tokens.all(), ["Hel", "lo", " wörld"]);
        assert_eq!(out.content, "Hello wörld");
        assert_eq!(
            out.usage,
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 3,
                total_tokens: 15
            })
        );
        assert_eq!(out.finish_reason.as_deref(), Some("stop"));
        assert_eq!(out.model, "served-model");
        assert_eq!(out.mode, OutputMode::JsonSchema);
        assert_eq!(out.attempts, 1);
        assert!(out.first_token.unwrap() <= out.total);

        let requests = script.requests();
        let (headers, body) = &requests[0];
        assert_eq!(headers["authorization"], "Bearer sk-very-secret");
        assert_eq!(body["model"], "gpt-test");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["temperature"].as_f64().unwrap().to_string(), "0.2");
        assert_eq!(body["max_tokens"], 300);
        assert!(body.get("response_format").is_none());
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][0]["content"], "You grade explanations.");
        assert_eq!(body["messages"][1]["content"], "Explain photosynthesis.");
    }

    #[tokio::test]
    async fn missing_usage_chunk_is_fine() {
        let script = Script::new(vec![good_stream()]);
        let chat = OpenAiChat::new(config(start(&script).await)).unwrap();
        let mut req = request();
        req.max_tokens = None;
        let out = chat.stream_chat(req, &|_: &str| {}).await.unwrap();
        assert_eq!(out.content, "Hello wörld");
        assert_eq!(out.usage, None);
        assert!(script.bodies()[0].get("max_tokens").is_none());
    }

    #[tokio::test]
    async fn end_without_done_after_finish_reason_is_complete() {
        let script = Script::new(vec![Reply::Sse(vec![chunk("a"), finish("length")])]);
        let chat = OpenAiChat::new(config(start(&script).await)).unwrap();
        let out = chat.stream_chat(request(), &|_: &str| {}).await.unwrap();
        assert_eq!(out.content, "a");
        assert_eq!(out.finish_reason.as_deref(), Some("length"));
        assert_eq!(out.model, "served-model");
    }

    #[tokio::test]
    async fn non_streamed_json_answer_is_accepted() {
        let script = Script::new(vec![Reply::Json(json!({
            "id": "x", "object": "chat.completion", "model": "m2",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "{\"score\":3}"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
        }))]);
        let chat = OpenAiChat::new(config(start(&script).await)).unwrap();
        let tokens = Tokens::default();
        let out = chat
            .stream_chat(request(), &tokens.callback())
            .await
            .unwrap();
        assert_eq!(tokens.all(), ["{\"score\":3}"]);
        assert_eq!(out.usage.unwrap().total_tokens, 9);
        assert_eq!(out.model, "m2");
    }

    #[tokio::test]
    async fn rate_limited_with_retry_after_then_success() {
        let script = Script::new(vec![
            Reply::Status(
                429,
                vec![("retry-after", "0.05".into())],
                r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#.into(),
            ),
            good_stream(),
        ]);
        let chat = OpenAiChat::new(config(start(&script).await)).unwrap();
        let started = Instant::now();
        let out = chat.stream_chat(request(), &|_: &str| {}).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(out.attempts, 2);
        assert_eq!(out.content, "Hello wörld");
        assert!(out.first_token.unwrap() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn insufficient_quota_is_not_retried() {
        let script = Script::new(vec![
            Reply::Status(
                429,
                vec![],
                r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#.into(),
            ),
            good_stream(),
        ]);
        let chat = OpenAiChat::new(config(start(&script).await)).unwrap();
        let e = chat
            .stream_chat(request(), &|_: &str| {})
            .await
            .unwrap_err();
        assert_eq!(e.error.code_str(), "provider_quota_exceeded");
        assert!(!e.error.retryable);
        assert!(!e.tokens_delivered);
        assert_eq!(e.attempts, 1);
        assert_eq!(script.requests().len(), 1);
        assert_eq!(e.to_string(), "You exceeded your current quota");
    }

    #[tokio::test]
    async fn should_retry_false_is_respected() {
        let script = Script::new(vec![
            Reply::Status(500, vec![("x-should-retry", "false".into())], "boom".into()),
            good_stream(),
        ]);
        let chat = OpenAiChat::new(config(start(&script).await)).unwrap();
        let e = chat
            .stream_chat(request(), &|_: &str| {})
            .await
            .unwrap_err();
        assert_eq!(e.error.status, Some(500));
        assert_eq!(e.error.message, "boom");
        assert_eq!(e.attempts, 1);
        assert_eq!(script.requests().len(), 1);
    }

    #[tokio::test]
    async fn server_error_is_retried() {
        let script = Script::new(vec![
            Reply::Status(500, vec![], r#"{"detail":"Internal error"}"#.into()),
            Reply::Status(502, vec![], "<html>bad gateway</html>".into()),
            good_stream(),
        ]);
        let chat = OpenAiChat::new(config(start(&script).await)).unwrap();
        let out = chat.stream_chat(request(), &|_: &str| {}).await.unwrap();
        assert_eq!(out.attempts, 3);
    }

    #[tokio::test]
    async fn retries_are_bounded() {
        let script = Script::new(vec![
            Reply::Status(503, vec![], "a".into()),
            Reply::Status(503, vec![], "b".into()),
            Reply::Status(503, vec![], "c".into()),
            good_stream(),
        ]);
        let chat = OpenAiChat::new(config(start(&script).await)).unwrap();
        let e = chat
            .stream_chat(request(), &|_: &str| {})
            .await
            .unwrap_err();
        assert_eq!(e.attempts, 3);
        assert_eq!(e.error.message, "c");
        assert_eq!(e.error.code_str(), "provider_error");
    }

    #[tokio::test]
    async fn cut_before_any_token_is_retried() {
        let script = Script::new(vec![
            Reply::Sse(vec![role_chunk(), Piece::Cut]),
            Reply::Sse(vec![role_chunk()]), // clean end without [DONE] nor finish_reason
            good_stream(),
        ]);
        let chat = OpenAiChat::new(config(start(&script).await)).unwrap();
        let tokens = Tokens::default();
        let out = chat
            .stream_chat(request(), &tokens.callback())
            .await
            .unwrap();
        assert_eq!(out.attempts, 3);
        assert_eq!(tokens.all(), ["Hel", "lo", " wörld"]);
    }

    #[tokio::test]
    async fn cut_after_tokens_is_not_replayed() {
        let script = Script::new(vec![
            Reply::Sse(vec![
                role_chunk(),
                chunk("Par"),
                chunk("tial"),
                Piece::Sleep(Duration::from_millis(30)),
                Piece::Cut,
            ]),
            good_stream(),
        ]);
        let chat = OpenAiChat::new(config(start(&script).await)).unwrap();
        let tokens = Tokens::default();
        let e = chat
            .stream_chat(request(), &tokens.callback())
            .await
            .unwrap_err();
        assert!(e.tokens_delivered);
        assert_eq!(e.partial, "Partial");
        assert_eq!(e.attempts, 1);
        assert_eq!(e.error.kind, ErrorKind::StreamBroken);
        assert_eq!(e.error.code_str(), "provider_stream_broken");
        assert!(!e.error.retryable);
        assert_eq!(tokens.all(), ["Par", "tial"]);
        assert_eq!(script.requests().len(), 1);
    }

    #[tokio::test]
    async fn clean_end_after_tokens_without_finish_is_broken() {
        let script = Script::new(vec![Reply::Sse(vec![chunk("x")]), good_stream()]);
        let chat = OpenAiChat::new(config(start(&script).await)).unwrap();
        let e = chat
            .stream_chat(request(), &|_: &str| {})
            .await
            .unwrap_err();
        assert!(e.tokens_delivered);
        assert_eq!(e.error.kind, ErrorKind::StreamBroken);
        assert_eq!(e.partial, "x");
    }

    #[tokio::test]
    async fn error_object_mid_stream() {
        // Before any token: retried.
        let script = Script::new(vec![
            Reply::Sse(vec![
                role_chunk(),
                Piece::Data(
                    r#"{"error":{"message":"model overloaded","type":"server_error","code":503}}"#
                        .into(),
                ),
            ]),
            good_stream(),
        ]);
        let chat = OpenAiChat::new(config(start(&script).await)).unwrap();
        let out = chat.stream_chat(request(), &|_: &str| {}).await.unwrap();
        assert_eq!(out.attempts, 2);

        // After tokens: returned.
        script.push(Reply::Sse(vec![
            chunk("so far"),
            Piece::Data(r#"{"error":"out of memory"}"#.into()),
        ]));
        let e = chat
            .stream_chat(request(), &|_: &str| {})
            .await
            .unwrap_err();
        assert!(e.tokens_delivered);
        assert_eq!(e.error.message, "out of memory");
        assert_eq!(e.error.kind, ErrorKind::StreamBroken);

        // A 400-like error in the stream is not retried.
        script.push(Reply::Sse(vec![Piece::Data(
            r#"{"error":{"message":"context too long","code":400}}"#.into(),
        )]));
        let e = chat
            .stream_chat(request(), &|_: &str| {})
            .await
            .unwrap_err();
        assert!(!e.tokens_delivered);
        assert_eq!(e.attempts, 1);
        assert_eq!(e.error.status, Some(400));
    }

    #[tokio::test]
    async fn hang_before_headers_times_out() {
        let script = Script::new(vec![Reply::HangHeaders, Reply::HangHeaders]);
        let mut cfg = config(start(&script).await);
        cfg.timeouts.first_byte = Duration::from_millis(150);
        cfg.retry.max_retries = 1;
        let chat = OpenAiChat::new(cfg).unwrap();
        let started = Instant::now();
        let e = chat
            .stream_chat(request(), &|_: &str| {})
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert_eq!(e.error.kind, ErrorKind::Timeout);
        assert_eq!(e.error.code_str(), "provider_timeout");
        assert_eq!(e.attempts, 2);
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn headers_without_body_hit_first_byte_timeout() {
        let script = Script::new(vec![Reply::Sse(vec![Piece::Hang]), good_stream()]);
        let mut cfg = config(start(&script).await);
        cfg.timeouts.first_byte = Duration::from_millis(150);
        let chat = OpenAiChat::new(cfg).unwrap();
        let out = chat.stream_chat(request(), &|_: &str| {}).await.unwrap();
        assert_eq!(out.attempts, 2);
    }

    #[tokio::test]
    async fn hang_mid_stream_hits_idle_timeout() {
        // Before any token (only the role chunk): retried.
        let script = Script::new(vec![
            Reply::Sse(vec![role_chunk(), Piece::Hang]),
            good_stream(),
        ]);
        let mut cfg = config(start(&script).await);
        cfg.timeouts.idle = Duration::from_millis(150);
        let chat = OpenAiChat::new(cfg).unwrap();
        let out = chat.stream_chat(request(), &|_: &str| {}).await.unwrap();
        assert_eq!(out.attempts, 2);

        // After a token: not replayed.
        script.push(Reply::Sse(vec![chunk("one"), Piece::Hang]));
        script.push(good_stream());
        let started = Instant::now();
        let e = chat
            .stream_chat(request(), &|_: &str| {})
            .await
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(e.error.kind, ErrorKind::Timeout);
        assert!(e.error.message.contains("stalled"), "{}", e.error.message);
        assert!(e.tokens_delivered);
        assert!(!e.error.retryable);
        assert_eq!(e.partial, "one");
    }

    #[tokio::test]
    async fn slow_but_steady_stream_hits_total_timeout() {
        let mut pieces = Vec::new();
        for _ in 0..20 {
            pieces.push(chunk("."));
            pieces.push(Piece::Sleep(Duration::from_millis(40)));
        }
        pieces.push(done());
        let script = Script::new(vec![Reply::Sse(pieces)]);
        let mut cfg = config(start(&script).await);
        cfg.timeouts.idle = Duration::from_millis(200);
        cfg.timeouts.total = Duration::from_millis(300);
        let chat = OpenAiChat::new(cfg).unwrap();
        let e = chat
            .stream_chat(request(), &|_: &str| {})
            .await
            .unwrap_err();
        assert_eq!(e.error.kind, ErrorKind::Timeout);
        assert!(e.error.message.contains("finish"), "{}", e.error.message);
        assert!(e.tokens_delivered);
    }

    #[tokio::test]
    async fn json_schema_refused_with_500_degrades_and_remembers() {
        let script = Script::new(vec![
            Reply::Status(
                500,
                vec![],
                r#"{"error":{"message":"1 validation error for CreateChatCompletionRequest\nresponse_format.type: Input should be 'text' or 'json_object'","type":"internal_server_error","param":null,"code":null}}"#.into(),
            ),
            good_stream(),
            good_stream(),
        ]);
        let mut cfg = config(start(&script).await);
        cfg.retry.max_retries = 0; // the degraded request is not a retry
        let chat = OpenAiChat::new(cfg)
            .unwrap()
            .with_breaker(Breaker::new(1, Duration::from_secs(30)));
        assert_eq!(chat.mode(), OutputMode::JsonSchema);
        let out = chat
            .stream_chat(schema_request(), &|_: &str| {})
            .await
            .unwrap();
        assert_eq!(out.mode, OutputMode::JsonObject);
        assert_eq!(out.attempts, 2);
        assert_eq!(chat.mode(), OutputMode::JsonObject);
        // The validation 500 did not count against the provider.
        assert_eq!(chat.breaker_state(), "closed");

        let out = chat
            .stream_chat(schema_request(), &|_: &str| {})
            .await
            .unwrap();
        assert_eq!(out.mode, OutputMode::JsonObject);
        assert_eq!(out.attempts, 1);

        let bodies = script.bodies();
        assert_eq!(bodies.len(), 3);
        let rf = &bodies[0]["response_format"];
        assert_eq!(rf["type"], "json_schema");
        assert_eq!(rf["json_schema"]["name"], "grade_report");
        assert_eq!(rf["json_schema"]["strict"], true);
        assert_eq!(rf["json_schema"]["schema"]["required"][0], "score");
        assert_eq!(bodies[0]["messages"].as_array().unwrap().len(), 2);
        for body in &bodies[1..] {
            let rf = &body["response_format"];
            assert_eq!(rf["type"], "json_object");
            assert_eq!(rf["schema"]["required"][0], "score");
            let messages = body["messages"].as_array().unwrap();
            assert_eq!(messages.len(), 2);
            let system = messages[0]["content"].as_str().unwrap();
            assert!(system.starts_with("You grade explanations."));
            assert!(system.contains("JSON Schema"));
            assert!(system.contains("\"score\""));
        }

        // A request without a schema sends no response_format whatever the mode.
        script.push(good_stream());
        chat.stream_chat(request(), &|_: &str| {}).await.unwrap();
        assert!(script.bodies()[3].get("response_format").is_none());
    }

    #[tokio::test]
    async fn refused_twice_degrades_to_prompted() {
        let script = Script::new(vec![
            Reply::Status(
                400,
                vec![],
                r#"{"error":{"message":"response_format json_schema not supported","type":"invalid_request_error"}}"#.into(),
            ),
            Reply::Status(422, vec![], r#"{"detail":[{"msg":"extra field: schema"}]}"#.into()),
            good_stream(),
        ]);
        let chat = OpenAiChat::new(config(start(&script).await)).unwrap();
        let mut req = schema_request();
        req.messages.remove(0); // no system message: one is added
        let out = chat.stream_chat(req, &|_: &str| {}).await.unwrap();
        assert_eq!(out.mode, OutputMode::Prompted);
        assert_eq!(out.attempts, 3);
        assert_eq!(chat.mode(), OutputMode::Prompted);
        let bodies = script.bodies();
        assert!(bodies[2].get("response_format").is_none());
        let messages = bodies[2]["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0]["role"], "system");
        assert!(
            messages[0]["content"]
                .as_str()
                .unwrap()
                .contains("JSON Schema")
        );
    }

    #[tokio::test]
    async fn a_400_that_persists_is_not_remembered() {
        let too_long = r#"{"error":{"message":"maximum context length exceeded","type":"invalid_request_error"}}"#;
        let script = Script::new(vec![
            Reply::Status(400, vec![], too_long.into()),
            Reply::Status(400, vec![], too_long.into()),
            Reply::Status(400, vec![], too_long.into()),
        ]);
        let chat = OpenAiChat::new(config(start(&script).await)).unwrap();
        let e = chat
            .stream_chat(schema_request(), &|_: &str| {})
            .await
            .unwrap_err();
        assert_eq!(e.attempts, 3);
        assert_eq!(e.error.code_str(), "provider_rejected");
        assert_eq!(chat.mode(), OutputMode::JsonSchema);

        // Without a schema, a 400 is returned at once.
        script.push(Reply::Status(400, vec![], too_long.into()));
        let e = chat
            .stream_chat(request(), &|_: &str| {})
            .await
            .unwrap_err();
        assert_eq!(e.attempts, 1);
    }

    #[tokio::test]
    async fn plain_500_does_not_degrade() {
        let script = Script::new(vec![
            Reply::Status(500, vec![], r#"{"error":"CUDA out of memory"}"#.into()),
            good_stream(),
        ]);
        let chat = OpenAiChat::new(config(start(&script).await)).unwrap();
        let out = chat
            .stream_chat(schema_request(), &|_: &str| {})
            .await
            .unwrap();
        assert_eq!(out.mode, OutputMode::JsonSchema);
        assert_eq!(out.attempts, 2);
        assert_eq!(script.bodies()[1]["response_format"]["type"], "json_schema");
    }

    #[tokio::test]
    async fn breaker_opens_after_failures_and_half_opens() {
        let script = Script::new(vec![
            Reply::Status(503, vec![], "down".into()),
            Reply::Status(503, vec![], "down".into()),
            Reply::Status(503, vec![], "down".into()),
            good_stream(),
        ]);
        let chat = OpenAiChat::new(config(start(&script).await))
            .unwrap()
            .with_breaker(Breaker::new(2, Duration::from_millis(200)));
        // Two failures open the breaker: the third attempt is refused locally and the last
        // real error is returned.
        let e = chat
            .stream_chat(request(), &|_: &str| {})
            .await
            .unwrap_err();
        assert_eq!(e.error.code_str(), "provider_error");
        assert_eq!(e.attempts, 2);
        assert_eq!(chat.breaker_state(), "open");
        let e = chat
            .stream_chat(request(), &|_: &str| {})
            .await
            .unwrap_err();
        assert_eq!(e.error.code_str(), "provider_circuit_open");
        assert_eq!(e.attempts, 0);
        assert_eq!(script.requests().len(), 2);

        tokio::time::sleep(Duration::from_millis(220)).await;
        assert_eq!(chat.breaker_state(), "half_open");
        // The trial fails: open again at once.
        let e = chat
            .stream_chat(request(), &|_: &str| {})
            .await
            .unwrap_err();
        assert_eq!(e.error.message, "down");
        assert_eq!(e.attempts, 1);
        assert_eq!(chat.breaker_state(), "open");

        tokio::time::sleep(Duration::from_millis(220)).await;
        let out = chat.stream_chat(request(), &|_: &str| {}).await.unwrap();
        assert_eq!(out.attempts, 1);
        assert_eq!(chat.breaker_state(), "closed");
    }

    #[tokio::test]
    async fn unreachable_provider() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut cfg = config(format!("http://127.0.0.1:{port}/v1/chat/completions"));
        cfg.api_key = Some("sk-never-shown".into());
        let chat = OpenAiChat::new(cfg).unwrap();
        assert_eq!(
            chat.url().as_str(),
            format!("http://127.0.0.1:{port}/v1/chat/completions")
        );
        assert_eq!(chat.provider(), format!("127.0.0.1:{port}"));
        let e = chat
            .stream_chat(request(), &|_: &str| {})
            .await
            .unwrap_err();
        assert_eq!(e.error.code_str(), "provider_unreachable");
        assert_eq!(e.attempts, 3);
        assert!(!e.error.message.contains("sk-never-shown"));
    }

    #[test]
    fn schema_names_are_cleaned() {
        assert_eq!(schema_name("grade report!"), "grade_report_");
        assert_eq!(schema_name(""), "output");
        assert_eq!(schema_name(&"x".repeat(100)).len(), 64);
        assert_eq!(OutputMode::JsonObject.as_str(), "json_object");
        assert_eq!(OutputMode::Prompted.degraded(), OutputMode::Prompted);
    }

    #[test]
    fn usage_serialises_camel_case() {
        let usage = Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
        };
        assert_eq!(
            serde_json::to_value(&usage).unwrap(),
            json!({"promptTokens": 1, "completionTokens": 2, "totalTokens": 3})
        );
        assert_eq!(
            parse_usage(&json!({"prompt_tokens": 4, "completion_tokens": 5})),
            Some(Usage {
                prompt_tokens: 4,
                completion_tokens: 5,
                total_tokens: 9
            })
        );
        assert_eq!(parse_usage(&json!(null)), None);
        assert_eq!(parse_usage(&json!({})), None);
    }

    /// End-to-end against the fake OpenAI server (`provider::fake`).
    mod with_fake {
        use super::*;
        use crate::provider::fake::{
            ChatReply, ErrorShape, FakeOpenAi, FakeOptions, grade_to_string, sample_grade,
        };

        /// The fields of a scripted error, with defaults.
        struct Spec {
            status: u16,
            shape: ErrorShape,
            message: &'static str,
            error_type: Option<String>,
            code: Option<String>,
            retry_after_ms: Option<u64>,
            should_retry: Option<bool>,
        }

        fn spec(status: u16, message: &'static str) -> Spec {
            Spec {
                status,
                shape: ErrorShape::Nested,
                message,
                error_type: None,
                code: None,
                retry_after_ms: None,
                should_retry: None,
            }
        }

        impl Spec {
            fn reply(self) -> ChatReply {
                ChatReply::Error {
                    status: self.status,
                    shape: self.shape,
                    message: self.message.into(),
                    error_type: self.error_type,
                    code: self.code,
                    retry_after: None,
                    retry_after_ms: self.retry_after_ms,
                    should_retry: self.should_retry,
                }
            }
        }

        async fn fake(options: FakeOptions) -> (FakeOpenAi, OpenAiChat) {
            let server = FakeOpenAi::start(options).await.unwrap();
            let mut cfg = config(server.base_url());
            cfg.api_key = Some("sk-test".into());
            cfg.timeouts.first_byte = Duration::from_millis(300);
            cfg.timeouts.idle = Duration::from_millis(300);
            let chat = OpenAiChat::new(cfg).unwrap();
            (server, chat)
        }

        #[tokio::test]
        async fn default_grade_streams_with_usage() {
            let (server, chat) = fake(FakeOptions::default()).await;
            let tokens = Tokens::default();
            let out = chat
                .stream_chat(schema_request(), &tokens.callback())
                .await
                .unwrap();
            assert_eq!(out.content, grade_to_string(&sample_grade()));
            assert!(tokens.all().len() > 10);
            assert_eq!(tokens.all().concat(), out.content);
            assert!(out.usage.as_ref().unwrap().total_tokens > 0);
            assert_eq!(out.finish_reason.as_deref(), Some("stop"));
            assert_eq!(out.mode, OutputMode::JsonSchema);
            let requests = server.requests();
            assert_eq!(requests.len(), 1);
            assert_eq!(requests[0].authorization.as_deref(), Some("Bearer sk-test"));
            assert_eq!(
                requests[0].json.as_ref().unwrap()["response_format"]["type"],
                "json_schema"
            );
        }

        #[tokio::test]
        async fn llama_cpp_python_quirks() {
            let (server, chat) = fake(FakeOptions {
                include_usage: false,
                reject_json_schema: true,
                ..FakeOptions::default()
            })
            .await;
            let out = chat
                .stream_chat(schema_request(), &|_: &str| {})
                .await
                .unwrap();
            assert_eq!(out.usage, None);
            assert_eq!(out.mode, OutputMode::JsonObject);
            assert_eq!(out.attempts, 2);
            assert_eq!(chat.mode(), OutputMode::JsonObject);
            assert_eq!(chat.breaker_state(), "closed");
            let out = chat
                .stream_chat(schema_request(), &|_: &str| {})
                .await
                .unwrap();
            assert_eq!(out.attempts, 1);
            assert_eq!(out.mode, OutputMode::JsonObject);
            assert_eq!(server.chat_calls(), 3);
        }

        #[tokio::test]
        async fn cuts_errors_and_hangs() {
            let (server, chat) = fake(FakeOptions::default()).await;
            // Cut before any content: retried.
            server.push_chat(ChatReply::CutAfter { chunks: 0 });
            let out = chat.stream_chat(request(), &|_: &str| {}).await.unwrap();
            assert_eq!(out.attempts, 2);

            // Cut after content: not replayed.
            server.push_chat(ChatReply::CutAfter { chunks: 3 });
            let tokens = Tokens::default();
            let e = chat
                .stream_chat(request(), &tokens.callback())
                .await
                .unwrap_err();
            assert!(e.tokens_delivered);
            assert_eq!(e.attempts, 1);
            assert_eq!(e.partial, tokens.all().concat());
            assert_eq!(tokens.all().len(), 3);
            assert_eq!(e.error.kind, ErrorKind::StreamBroken);

            // Error mid-stream after content.
            server.push_chat(ChatReply::ErrorMidStream {
                chunks: 2,
                message: "The server had an error".into(),
            });
            let e = chat
                .stream_chat(request(), &|_: &str| {})
                .await
                .unwrap_err();
            assert!(e.tokens_delivered);
            assert_eq!(e.error.message, "The server had an error");

            // Error mid-stream before content: retried.
            server.push_chat(ChatReply::ErrorMidStream {
                chunks: 0,
                message: "overloaded".into(),
            });
            let out = chat.stream_chat(request(), &|_: &str| {}).await.unwrap();
            assert_eq!(out.attempts, 2);

            // Hang before headers, then a good answer.
            server.push_chat(ChatReply::HangBeforeHeaders);
            let out = chat.stream_chat(request(), &|_: &str| {}).await.unwrap();
            assert_eq!(out.attempts, 2);

            // Hang after some content: idle timeout, not replayed.
            server.push_chat(ChatReply::HangAfter { chunks: 2 });
            let e = chat
                .stream_chat(request(), &|_: &str| {})
                .await
                .unwrap_err();
            assert_eq!(e.error.kind, ErrorKind::Timeout);
            assert!(e.tokens_delivered);
        }

        #[tokio::test]
        async fn http_errors() {
            let (server, chat) = fake(FakeOptions::default()).await;
            server.push_chat(
                Spec {
                    retry_after_ms: Some(20),
                    ..spec(429, "Rate limit reached for requests")
                }
                .reply(),
            );
            let out = chat.stream_chat(request(), &|_: &str| {}).await.unwrap();
            assert_eq!(out.attempts, 2);

            server.push_chat(
                Spec {
                    error_type: Some("insufficient_quota".into()),
                    code: Some("insufficient_quota".into()),
                    ..spec(429, "You exceeded your current quota")
                }
                .reply(),
            );
            let e = chat
                .stream_chat(request(), &|_: &str| {})
                .await
                .unwrap_err();
            assert_eq!(e.error.code_str(), "provider_quota_exceeded");
            assert_eq!(e.attempts, 1);

            server.push_chat(
                Spec {
                    should_retry: Some(false),
                    ..spec(503, "maintenance")
                }
                .reply(),
            );
            let e = chat
                .stream_chat(request(), &|_: &str| {})
                .await
                .unwrap_err();
            assert_eq!(e.attempts, 1);

            for shape in [ErrorShape::Nested, ErrorShape::Flat, ErrorShape::Detail] {
                server.push_chat(
                    Spec {
                        shape,
                        ..spec(500, "engine crashed")
                    }
                    .reply(),
                );
                let out = chat.stream_chat(request(), &|_: &str| {}).await.unwrap();
                assert_eq!(out.attempts, 2, "{shape:?}");
                server.push_chat(
                    Spec {
                        shape,
                        ..spec(401, "Incorrect API key provided")
                    }
                    .reply(),
                );
                let e = chat
                    .stream_chat(request(), &|_: &str| {})
                    .await
                    .unwrap_err();
                assert_eq!(e.error.code_str(), "provider_rejected");
                assert!(
                    e.error.message.contains("Incorrect API key provided"),
                    "{shape:?}: {}",
                    e.error.message
                );
            }
        }
    }
}
