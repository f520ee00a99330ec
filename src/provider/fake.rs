//! An OpenAI-compatible fake provider server, for tests and benchmarks only (never production).
//!
//! [`FakeOpenAi`] listens on a real TCP port and speaks the same wire formats as OpenAI and the
//! OpenAI-compatible servers a user may run locally (faster-whisper-server, llama.cpp), so the
//! project's HTTP clients are exercised end to end, byte for byte. It serves:
//!
//! - `POST /v1/chat/completions`: validates the request like OpenAI does (400 with the nested
//!   error body), then either streams SSE chunks (`"stream": true`, with the `[DONE]` sentinel and
//!   the optional `stream_options.include_usage` chunk) or answers one `chat.completion` object.
//!   By default the content is a grade ([`FakeOptions::grade`], serialised with `"feedback"`
//!   first); tests queue other replies with [`FakeOpenAi::push_chat`].
//! - `POST /v1/audio/transcriptions`: parses `multipart/form-data` itself (the `file` field may
//!   hold arbitrary bytes) and answers `json`, `text`, `verbose_json`, `srt` or `vtt`, or, when
//!   [`FakeOptions::stt_streaming`] is on and the request has `stream=true`, an SSE stream of
//!   `transcript.text.delta` events ended by one `transcript.text.done` event.
//! - `GET /v1/models`: a list with one model. Any other route answers OpenAI's 404 body.
//!
//! It can reproduce:
//!
//! - a provider's own latency ([`FakeOptions::first_byte_delay`]), token pace
//!   ([`FakeOptions::chunk_delay`], [`FakeOptions::chunk_chars`]) and transcription speed
//!   ([`FakeOptions::stt_delay_per_audio_second`]);
//! - the three error body shapes real servers use ([`ErrorShape`]: OpenAI's nested object,
//!   whisper.cpp's flat string, FastAPI's `detail`), with any status and the retry headers
//!   `retry-after`, `retry-after-ms` and `x-should-retry`;
//! - llama-cpp-python's quirks: no usage chunk ([`FakeOptions::include_usage`] off) and an HTTP 500
//!   for `response_format.type = "json_schema"` ([`FakeOptions::reject_json_schema`]);
//! - whisper-1 / faster-whisper-server ignoring `stream`, versus gpt-4o-transcribe streaming;
//! - content that is not valid JSON, JSON inside prose or fences ([`ChatReply::Text`]);
//! - a stream cut midway with no `[DONE]` ([`ChatReply::CutAfter`]), an error event in the middle of
//!   a stream ([`ChatReply::ErrorMidStream`]), a server that never answers
//!   ([`ChatReply::HangBeforeHeaders`]) or stalls mid-stream ([`ChatReply::HangAfter`]);
//! - `max_tokens` / `max_completion_tokens` cutting the content short with
//!   `finish_reason: "length"` (a token counts as 4 characters).
//!
//! Every request is recorded ([`FakeOpenAi::requests`]). Dropping the [`FakeOpenAi`] stops the
//! server: the listener closes at once and requests left hanging are released (their connections
//! are cut), so a test never leaks a server.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use futures::Stream;
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};

/// OpenAI's upload limit for transcriptions (25 MB).
const MAX_FILE_BYTES: usize = 25 * 1024 * 1024;
/// The request body limit: the upload limit plus room for the multipart framing and fields.
const MAX_BODY_BYTES: usize = MAX_FILE_BYTES + 1024 * 1024;
/// The one model `GET /v1/models` lists.
const LISTED_MODEL: &str = "fake-model";
/// The `system_fingerprint` of every chat answer.
const FINGERPRINT: &str = "fp_fake";
/// How long a cut stream waits before dropping the connection, so the chunks before the cut are
/// flushed to the client first (hyper drops unflushed bytes when a body fails).
const CUT_FLUSH_GRACE: Duration = Duration::from_millis(20);

/// A running fake OpenAI-compatible server. Dropping it stops the server.
pub struct FakeOpenAi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    graceful: Option<oneshot::Sender<()>>,
    serve_task: Option<JoinHandle<()>>,
    abort: AbortHandle,
}

impl std::fmt::Debug for FakeOpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeOpenAi")
            .field("addr", &self.addr)
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl FakeOpenAi {
    /// Starts on 127.0.0.1 with an OS-chosen port.
    pub async fn start(options: FakeOptions) -> std::io::Result<FakeOpenAi> {
        Self::start_on(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0), options).await
    }

    /// Starts on the given address (the `teachback fake-openai` command uses it).
    pub async fn start_on(addr: SocketAddr, options: FakeOptions) -> std::io::Result<FakeOpenAi> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            options,
            chat_queue: Mutex::new(VecDeque::new()),
            stt_queue: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            chat_calls: AtomicUsize::new(0),
            stt_calls: AtomicUsize::new(0),
            shutdown,
        });
        let app = router(shared.clone());
        let (graceful, graceful_rx) = oneshot::channel::<()>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            // A dropped sender means the same as a sent signal.
            let _ = graceful_rx.await;
        });
        let serve_task = tokio::spawn(async move {
            if let Err(error) = serve.await {
                tracing::warn!(%error, "fake OpenAI server stopped with an error");
            }
        });
        let abort = serve_task.abort_handle();
        tracing::debug!(%addr, "fake OpenAI server listening");
        Ok(FakeOpenAi {
            addr,
            shared,
            graceful: Some(graceful),
            serve_task: Some(serve_task),
            abort,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL clients are configured with.
    ///
    /// A server started on an unspecified address (`0.0.0.0` or `::`) is reached through the
    /// loopback address of the same family.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}/v1", SocketAddr::new(ip, self.addr.port()))
    }

    /// Queue the reply of the next chat request (FIFO); when the queue is empty the default grade is streamed.
    ///
    /// A request that fails validation (400, or the 500 of [`FakeOptions::reject_json_schema`])
    /// does not take a reply from the queue.
    pub fn push_chat(&self, reply: ChatReply) {
        lock(&self.shared.chat_queue).push_back(reply);
    }

    /// Queue the reply of the next transcription request (FIFO); when the queue is empty
    /// [`FakeOptions::stt_text`] is returned.
    ///
    /// A request that fails validation (no `file`, a malformed body, an unknown
    /// `response_format`, a file over 25 MB) does not take a reply from the queue.
    pub fn push_stt(&self, reply: SttReply) {
        lock(&self.shared.stt_queue).push_back(reply);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many requests `POST /v1/chat/completions` has received, invalid ones included.
    pub fn chat_calls(&self) -> usize {
        self.shared.chat_calls.load(Ordering::SeqCst)
    }

    /// How many requests `POST /v1/audio/transcriptions` has received, invalid ones included.
    pub fn stt_calls(&self) -> usize {
        self.shared.stt_calls.load(Ordering::SeqCst)
    }

    /// Waits until the server is stopped (for the CLI); dropping FakeOpenAi stops it too.
    ///
    /// Nothing stops the server from inside, so this runs until the process ends or the future is
    /// dropped (for example by a `select!` on Ctrl-C), which drops the server.
    pub async fn serve_forever(mut self) {
        if let Some(task) = self.serve_task.take() {
            match task.await {
                Err(error) if error.is_panic() => {
                    tracing::error!(%error, "fake OpenAI server panicked");
                }
                _ => {}
            }
        }
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        // Release the requests left hanging, then tell every connection to finish gracefully
        // (idle keep-alive connections close), and stop accepting: aborting the serve task drops
        // the listener at once, whatever is still in flight.
        self.shared.shutdown.send_replace(true);
        if let Some(graceful) = self.graceful.take() {
            let _ = graceful.send(());
        }
        self.abort.abort();
    }
}

/// How the fake server behaves; [`Default`] gives a fast, well-behaved OpenAI.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// Delay before the response headers of every request (a provider's own thinking time).
    pub first_byte_delay: Duration,
    /// Delay between streamed chunks.
    pub chunk_delay: Duration,
    /// Characters per streamed content chunk (tokens are ~4 chars). 0 counts as 1.
    pub chunk_chars: usize,
    /// Text the transcription endpoint returns by default.
    pub stt_text: String,
    /// Extra time a transcription takes per second of audio (a model's real-time factor: 100 ms
    /// per second is 10× faster than real time). A successful transcription answers after
    /// [`FakeOptions::first_byte_delay`] plus this times the file's duration (from its WAV header,
    /// else estimated as 16 kHz 16-bit mono). Errors and hangs do not pay it.
    pub stt_delay_per_audio_second: Duration,
    /// Whether the transcription endpoint honours `stream=true` (SSE `transcript.text.delta`/`done`), like gpt-4o-transcribe; when false it ignores `stream` and answers JSON like whisper-1/faster-whisper-server.
    ///
    /// When true, the `json` answer also carries gpt-4o-transcribe's token `usage`.
    pub stt_streaming: bool,
    /// The JSON object the default chat reply streams as its content (a grade).
    pub grade: Value,
    /// Whether to send the final usage chunk when the request asks `stream_options.include_usage` (llama-cpp-python never does).
    pub include_usage: bool,
    /// Answer a `response_format` of type `json_schema` with HTTP 500 and a validation error, as llama-cpp-python does.
    pub reject_json_schema: bool,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            first_byte_delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            chunk_chars: 4,
            stt_text: "TCP is connection-oriented: it sets up a connection with a handshake, \
                       numbers every byte and resends whatever gets lost, so data arrives complete \
                       and in order. UDP just sends independent datagrams with no handshake and no \
                       retransmission, which makes it lighter and faster but unreliable, so it \
                       suits things like video calls and online games."
                .to_owned(),
            stt_delay_per_audio_second: Duration::ZERO,
            stt_streaming: false,
            grade: sample_grade(),
            include_usage: true,
            reject_json_schema: false,
        }
    }
}

/// The grade object of the default reply: keys in this order: "feedback" (prose, 2-3 sentences), "score" (int), "subScores" {"accuracy","completeness","clarity","structure"}, "strengths" [..], "improvements" [..], "misconceptions" [..].
///
/// `serde_json` keeps object keys sorted, so the order only exists once serialised: see
/// [`grade_to_string`], which the server uses.
pub fn sample_grade() -> Value {
    json!({
        "feedback": "You clearly contrasted TCP's connection-oriented, reliable delivery with \
                     UDP's connectionless datagrams, and your explanation of retransmission was \
                     accurate. You did not mention flow control or congestion control, which are \
                     a large part of why TCP behaves as it does. A concrete example of when to \
                     pick each protocol would make the explanation stronger.",
        "score": 78,
        "subScores": {
            "accuracy": 85,
            "completeness": 70,
            "clarity": 80,
            "structure": 75
        },
        "strengths": [
            "Correctly contrasted connection-oriented TCP with connectionless UDP",
            "Explained that TCP resends lost data and delivers it in order"
        ],
        "improvements": [
            "Mention flow control and congestion control",
            "Give a concrete use case for each protocol"
        ],
        "misconceptions": [
            "UDP is not inherently faster on the wire; it simply skips TCP's reliability work"
        ]
    })
}

/// Serialises a grade compactly with its keys in the order a model writes them: `feedback`,
/// `score`, `subScores` (`accuracy`, `completeness`, `clarity`, `structure`), `strengths`,
/// `improvements`, `misconceptions`, then any other key in alphabetical order, at every depth.
///
/// This is exactly the content the server streams for [`ChatReply::Grade`] and the default reply.
pub fn grade_to_string(grade: &Value) -> String {
    let mut out = String::new();
    write_ordered(grade, &mut out);
    out
}

const GRADE_KEY_ORDER: &[&str] = &[
    "feedback",
    "score",
    "subScores",
    "accuracy",
    "completeness",
    "clarity",
    "structure",
    "strengths",
    "improvements",
    "misconceptions",
];

fn write_ordered(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by_key(|(key, _)| {
                GRADE_KEY_ORDER
                    .iter()
                    .position(|known| known == key)
                    .unwrap_or(usize::MAX)
            });
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&json_str(key));
                out.push(':');
                write_ordered(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_ordered(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The reply to one chat request.
#[derive(Debug, Clone)]
pub enum ChatReply {
    /// Stream this JSON value (serialised compactly by [`grade_to_string`], `"feedback"` first) as
    /// content chunks.
    Grade(Value),
    /// Stream this raw text as content (e.g. invalid JSON, JSON inside ```json fences with prose around it).
    Text(String),
    /// An HTTP error with one of the three body shapes real servers use.
    Error {
        /// The HTTP status (an invalid one becomes 500).
        status: u16,
        /// The body's shape.
        shape: ErrorShape,
        /// The error message.
        message: String,
        /// `error.type` of the nested shape; `None` gives the usual one for the status
        /// (`invalid_request_error` for 4xx, `requests` for 429, `server_error` for 5xx).
        error_type: Option<String>,
        /// `error.code` of the nested shape (`null` when `None`).
        code: Option<String>,
        /// The `retry-after` header (seconds or an HTTP date).
        retry_after: Option<String>,
        /// The `retry-after-ms` header.
        retry_after_ms: Option<u64>,
        /// The `x-should-retry` header (`true` or `false`).
        should_retry: Option<bool>,
    },
    /// Stream `chunks` content chunks then drop the connection with no `[DONE]` (a stream cut midway).
    ///
    /// The content is the default grade; the role chunk is sent first and is not counted. A
    /// non-streamed request gets the headers and a truncated JSON body, then the cut.
    CutAfter {
        /// Content chunks sent before the cut (at most all of them).
        chunks: usize,
    },
    /// Stream `chunks` content chunks then send `data: {"error":{...}}` and end.
    ///
    /// The content is the default grade. A non-streamed request gets an HTTP 500 nested error with
    /// this message instead.
    ErrorMidStream {
        /// Content chunks sent before the error event.
        chunks: usize,
        /// The error's message.
        message: String,
    },
    /// Never send the response headers (hangs until the client gives up).
    ///
    /// Dropping the server releases the request by cutting its connection.
    HangBeforeHeaders,
    /// Send headers and `chunks` chunks, then hang with the connection open.
    ///
    /// The content is the default grade; the role chunk is sent first and is not counted. A
    /// non-streamed request gets the headers only, then the hang.
    HangAfter {
        /// Content chunks sent before the hang.
        chunks: usize,
    },
}

/// The body shape of an error answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{"error":{"message","type","param","code"}}` (OpenAI)
    Nested,
    /// `{"error":"text"}` (whisper.cpp)
    Flat,
    /// `{"detail": ...}` (FastAPI servers such as faster-whisper-server)
    Detail,
}

/// The reply to one transcription request.
#[derive(Debug, Clone)]
pub enum SttReply {
    /// Return this transcript (may be empty: silence), in the requested format.
    Text(String),
    /// An HTTP error; the fields mean the same as in [`ChatReply::Error`].
    Error {
        /// The HTTP status (an invalid one becomes 500).
        status: u16,
        /// The body's shape.
        shape: ErrorShape,
        /// The error message.
        message: String,
        /// `error.type` of the nested shape; `None` gives the usual one for the status.
        error_type: Option<String>,
        /// `error.code` of the nested shape (`null` when `None`).
        code: Option<String>,
        /// The `retry-after` header.
        retry_after: Option<String>,
        /// The `retry-after-ms` header.
        retry_after_ms: Option<u64>,
        /// The `x-should-retry` header.
        should_retry: Option<bool>,
    },
    /// Never send the response headers (hangs until the client gives up).
    HangBeforeHeaders,
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The request path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// The `Authorization` header, e.g. `Bearer sk-test`.
    pub authorization: Option<String>,
    /// chat: the JSON body
    ///
    /// `None` when the body was not valid JSON, and for the other endpoints.
    pub json: Option<Value>,
    /// transcription: the form fields other than `file`, by name
    ///
    /// In the order they were sent; values are decoded as UTF-8 (lossily).
    pub fields: Vec<(String, String)>,
    /// transcription: the file's name and size
    ///
    /// The name is empty when the part had no `filename`.
    pub file: Option<(String, usize)>,
    /// When the request arrived (before any [`FakeOptions::first_byte_delay`]).
    pub at: Instant,
}

// ---------------------------------------------------------------------------------------------
// Server state and routing
// ---------------------------------------------------------------------------------------------

struct Shared {
    options: FakeOptions,
    chat_queue: Mutex<VecDeque<ChatReply>>,
    stt_queue: Mutex<VecDeque<SttReply>>,
    requests: Mutex<Vec<RecordedRequest>>,
    chat_calls: AtomicUsize,
    stt_calls: AtomicUsize,
    /// Set to true when the [`FakeOpenAi`] is dropped: hanging requests end.
    shutdown: watch::Sender<bool>,
}

impl Shared {
    fn record(
        &self,
        path: &str,
        headers: &HeaderMap,
        json: Option<Value>,
        fields: Vec<(String, String)>,
        file: Option<(String, usize)>,
    ) {
        let authorization = headers
            .get(AUTHORIZATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        lock(&self.requests).push(RecordedRequest {
            path: path.to_owned(),
            authorization,
            json,
            fields,
            file,
            at: Instant::now(),
        });
    }

    async fn first_byte_delay(&self) {
        if !self.options.first_byte_delay.is_zero() {
            tokio::time::sleep(self.options.first_byte_delay).await;
        }
    }

    /// Resolves once the server is being dropped.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/audio/transcriptions", post(transcriptions))
        .route("/v1/models", get(models))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

async fn models(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    shared.record(uri.path(), &headers, None, Vec::new(), None);
    shared.first_byte_delay().await;
    let body = json!({
        "object": "list",
        "data": [{"id": LISTED_MODEL, "object": "model", "created": unix_now(), "owned_by": "teachback"}]
    });
    json_response(StatusCode::OK, body.to_string())
}

async fn not_found(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    shared.record(uri.path(), &headers, None, Vec::new(), None);
    shared.first_byte_delay().await;
    ErrorSpec::nested(
        StatusCode::NOT_FOUND,
        format!("Invalid URL ({method} {})", uri.path()),
        None,
        None,
    )
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Everything an error answer is made of.
struct ErrorSpec {
    status: StatusCode,
    shape: ErrorShape,
    message: String,
    error_type: Option<String>,
    param: Option<String>,
    code: Option<String>,
    retry_after: Option<String>,
    retry_after_ms: Option<u64>,
    should_retry: Option<bool>,
}

impl ErrorSpec {
    fn nested(
        status: StatusCode,
        message: impl Into<String>,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        ErrorSpec {
            status,
            shape: ErrorShape::Nested,
            message: message.into(),
            error_type: None,
            param: param.map(str::to_owned),
            code: code.map(str::to_owned),
            retry_after: None,
            retry_after_ms: None,
            should_retry: None,
        }
    }

    /// A 400 `invalid_request_error`, as OpenAI answers a malformed request.
    fn invalid(message: impl Into<String>, param: Option<&str>, code: Option<&str>) -> Response {
        Self::nested(StatusCode::BAD_REQUEST, message, param, code).into_response()
    }

    #[allow(clippy::too_many_arguments)]
    fn from_reply(
        status: u16,
        shape: ErrorShape,
        message: String,
        error_type: Option<String>,
        code: Option<String>,
        retry_after: Option<String>,
        retry_after_ms: Option<u64>,
        should_retry: Option<bool>,
    ) -> Self {
        ErrorSpec {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            shape,
            message,
            error_type,
            param: None,
            code,
            retry_after,
            retry_after_ms,
            should_retry,
        }
    }

    fn default_type(status: StatusCode) -> &'static str {
        if status == StatusCode::TOO_MANY_REQUESTS {
            "requests"
        } else if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        }
    }

    fn into_response(self) -> Response {
        let body = match self.shape {
            ErrorShape::Nested => {
                let error_type = self
                    .error_type
                    .unwrap_or_else(|| Self::default_type(self.status).to_owned());
                obj(&[(
                    "error",
                    obj(&[
                        ("message", json_str(&self.message)),
                        ("type", json_str(&error_type)),
                        ("param", opt_json_str(self.param.as_deref())),
                        ("code", opt_json_str(self.code.as_deref())),
                    ]),
                )])
            }
            ErrorShape::Flat => obj(&[("error", json_str(&self.message))]),
            ErrorShape::Detail => obj(&[("detail", json_str(&self.message))]),
        };
        let mut response = json_response(self.status, body);
        let headers = response.headers_mut();
        if let Some(value) = self
            .retry_after
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            headers.insert(HeaderName::from_static("retry-after"), value);
        }
        if let Some(ms) = self.retry_after_ms {
            headers.insert(
                HeaderName::from_static("retry-after-ms"),
                HeaderValue::from(ms),
            );
        }
        if let Some(retry) = self.should_retry {
            headers.insert(
                HeaderName::from_static("x-should-retry"),
                HeaderValue::from_static(if retry { "true" } else { "false" }),
            );
        }
        response
    }
}

// ---------------------------------------------------------------------------------------------
// Chat completions
// ---------------------------------------------------------------------------------------------

/// A chat request that passed validation.
struct ChatRequest {
    model: String,
    stream: bool,
    include_usage: bool,
    prompt_chars: usize,
    max_tokens: Option<usize>,
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = serde_json::from_slice::<Value>(&body).ok();
    shared.record(uri.path(), &headers, json.clone(), Vec::new(), None);
    shared.chat_calls.fetch_add(1, Ordering::SeqCst);
    shared.first_byte_delay().await;

    let request = match validate_chat(&shared.options, json.as_ref()) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let reply = lock(&shared.chat_queue).pop_front();
    let default_content = || grade_to_string(&shared.options.grade);
    let (content, end) = match reply {
        None => (default_content(), StreamEnd::Done),
        Some(ChatReply::Grade(grade)) => (grade_to_string(&grade), StreamEnd::Done),
        Some(ChatReply::Text(text)) => (text, StreamEnd::Done),
        Some(ChatReply::Error {
            status,
            shape,
            message,
            error_type,
            code,
            retry_after,
            retry_after_ms,
            should_retry,
        }) => {
            return ErrorSpec::from_reply(
                status,
                shape,
                message,
                error_type,
                code,
                retry_after,
                retry_after_ms,
                should_retry,
            )
            .into_response();
        }
        Some(ChatReply::CutAfter { chunks }) => (default_content(), StreamEnd::Cut { chunks }),
        Some(ChatReply::ErrorMidStream { chunks, message }) => {
            (default_content(), StreamEnd::Error { chunks, message })
        }
        Some(ChatReply::HangBeforeHeaders) => {
            shared.stopped().await;
            return cut_response();
        }
        Some(ChatReply::HangAfter { chunks }) => (default_content(), StreamEnd::Hang { chunks }),
    };

    let (content, finish_reason) = match request.max_tokens {
        Some(max) if tokens(content.chars().count()) > max => {
            (content.chars().take(max * 4).collect(), "length")
        }
        _ => (content, "stop"),
    };
    if request.stream {
        chat_stream(&shared, &request, &content, finish_reason, end)
    } else {
        chat_whole(&shared, &request, &content, finish_reason, end)
    }
}

// Validation runs once a request; a boxed error would only add noise.
#[allow(clippy::result_large_err)]
fn validate_chat(options: &FakeOptions, json: Option<&Value>) -> Result<ChatRequest, Response> {
    let Some(json) = json else {
        return Err(ErrorSpec::invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but \
             what was sent was not valid JSON.)",
            None,
            None,
        ));
    };
    let Some(body) = json.as_object() else {
        return Err(ErrorSpec::invalid(
            format!(
                "Invalid type for request body: expected an object, but got {} instead.",
                json_kind(json)
            ),
            None,
            Some("invalid_type"),
        ));
    };
    let field = |name: &str| body.get(name).filter(|v| !v.is_null());
    let response_format = field("response_format");
    let format_type = response_format
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str);

    if options.reject_json_schema && format_type == Some("json_schema") {
        // llama-cpp-python: pydantic refuses the body, and its route handler turns every
        // exception into a 500 with an OpenAI-shaped body carrying the exception's text.
        let message = "[{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), \
                       'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', \
                       'ctx': {'expected': \"'text' or 'json_object'\"}}]: response_format of type \
                       json_schema not supported";
        let mut spec = ErrorSpec::nested(StatusCode::INTERNAL_SERVER_ERROR, message, None, None);
        spec.error_type = Some("internal_server_error".to_owned());
        return Err(spec.into_response());
    }

    let model = match field("model") {
        None => {
            return Err(ErrorSpec::invalid(
                "you must provide a model parameter",
                None,
                None,
            ));
        }
        Some(Value::String(model)) => model.clone(),
        Some(other) => return Err(invalid_type("model", "a string", other)),
    };

    let messages = match field("messages") {
        None => return Err(missing_parameter("messages")),
        Some(Value::Array(messages)) => messages,
        Some(other) => return Err(invalid_type("messages", "an array", other)),
    };
    if messages.is_empty() {
        return Err(ErrorSpec::invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an \
             empty array instead.",
            Some("messages"),
            Some("empty_array"),
        ));
    }
    let mut prompt_chars = 0;
    for (i, message) in messages.iter().enumerate() {
        let name = format!("messages[{i}]");
        let Some(message) = message.as_object() else {
            return Err(invalid_type(&name, "an object", message));
        };
        match message.get("role") {
            None | Some(Value::Null) => return Err(missing_parameter(&format!("{name}.role"))),
            Some(Value::String(role))
                if matches!(
                    role.as_str(),
                    "system" | "developer" | "user" | "assistant" | "tool" | "function"
                ) => {}
            Some(Value::String(role)) => {
                return Err(ErrorSpec::invalid(
                    format!(
                        "Invalid value: '{role}'. Supported values are: 'system', 'assistant', \
                         'user', 'function', 'tool', and 'developer'."
                    ),
                    Some(&format!("{name}.role")),
                    Some("invalid_value"),
                ));
            }
            Some(other) => return Err(invalid_type(&format!("{name}.role"), "a string", other)),
        }
        prompt_chars += match message.get("content") {
            Some(Value::String(text)) => text.chars().count(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .map(|text| text.chars().count())
                .sum(),
            _ => 0,
        };
    }

    let stream = match field("stream") {
        None => false,
        Some(Value::Bool(stream)) => *stream,
        Some(other) => return Err(invalid_type("stream", "a boolean", other)),
    };
    let include_usage = match field("stream_options") {
        None => false,
        Some(_) if !stream => {
            return Err(ErrorSpec::invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                Some("stream_options"),
                None,
            ));
        }
        Some(Value::Object(stream_options)) => match stream_options.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(include)) => *include,
            Some(other) => {
                return Err(invalid_type(
                    "stream_options.include_usage",
                    "a boolean",
                    other,
                ));
            }
        },
        Some(other) => return Err(invalid_type("stream_options", "an object", other)),
    };

    if let Some(format) = response_format {
        if !format.is_object() {
            return Err(invalid_type("response_format", "an object", format));
        }
        match format.get("type") {
            None | Some(Value::Null) => return Err(missing_parameter("response_format.type")),
            Some(Value::String(kind)) => match kind.as_str() {
                "text" | "json_object" => {}
                "json_schema" => match format.get("json_schema") {
                    None | Some(Value::Null) => {
                        return Err(missing_parameter("response_format.json_schema"));
                    }
                    Some(Value::Object(schema)) => {
                        match schema.get("name") {
                            None | Some(Value::Null) => {
                                return Err(missing_parameter("response_format.json_schema.name"));
                            }
                            Some(Value::String(_)) => {}
                            Some(other) => {
                                return Err(invalid_type(
                                    "response_format.json_schema.name",
                                    "a string",
                                    other,
                                ));
                            }
                        }
                        match schema.get("schema") {
                            None | Some(Value::Null) => {
                                return Err(missing_parameter(
                                    "response_format.json_schema.schema",
                                ));
                            }
                            Some(Value::Object(_)) => {}
                            Some(other) => {
                                return Err(invalid_type(
                                    "response_format.json_schema.schema",
                                    "an object",
                                    other,
                                ));
                            }
                        }
                    }
                    Some(other) => {
                        return Err(invalid_type(
                            "response_format.json_schema",
                            "an object",
                            other,
                        ));
                    }
                },
                other => {
                    return Err(ErrorSpec::invalid(
                        format!(
                            "Invalid value: '{other}'. Supported values are: 'text', \
                             'json_object', and 'json_schema'."
                        ),
                        Some("response_format.type"),
                        Some("invalid_value"),
                    ));
                }
            },
            Some(other) => return Err(invalid_type("response_format.type", "a string", other)),
        }
    }

    let mut max_tokens = None;
    for name in ["max_tokens", "max_completion_tokens"] {
        match field(name) {
            None => {}
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => {
                let n = usize::try_from(n.as_u64().unwrap_or(u64::MAX)).unwrap_or(usize::MAX);
                max_tokens = Some(max_tokens.map_or(n, |m: usize| m.min(n)));
            }
            Some(Value::Number(n)) => {
                return Err(ErrorSpec::invalid(
                    format!(
                        "Invalid '{name}': integer below minimum value. Expected a value >= 1, \
                         but got {n} instead."
                    ),
                    Some(name),
                    Some("integer_below_min_value"),
                ));
            }
            Some(other) => return Err(invalid_type(name, "an integer", other)),
        }
    }

    Ok(ChatRequest {
        model,
        stream,
        include_usage,
        prompt_chars,
        max_tokens,
    })
}

fn missing_parameter(name: &str) -> Response {
    ErrorSpec::invalid(
        format!("Missing required parameter: '{name}'."),
        Some(name),
        Some("missing_required_parameter"),
    )
}

fn invalid_type(name: &str, expected: &str, got: &Value) -> Response {
    ErrorSpec::invalid(
        format!(
            "Invalid type for '{name}': expected {expected}, but got {} instead.",
            json_kind(got)
        ),
        Some(name),
        Some("invalid_type"),
    )
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a decimal",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// How a chat answer ends, after its content chunks.
enum StreamEnd {
    /// All content, the finish chunk, the usage chunk if asked, `[DONE]`.
    Done,
    /// `chunks` content chunks, then the connection is dropped.
    Cut { chunks: usize },
    /// `chunks` content chunks, then an error event, then the end of the body.
    Error { chunks: usize, message: String },
    /// `chunks` content chunks, then nothing until the server is dropped.
    Hang { chunks: usize },
}

/// The parts every chunk of one streamed answer shares.
struct ChunkWriter {
    id: String,
    created: u64,
    model: String,
    /// Whether the client asked for usage and the server sends it: every chunk then carries
    /// `"usage"`, null except in the last one.
    usage: bool,
}

impl ChunkWriter {
    fn event(&self, choices: &str, usage: Option<&str>) -> Bytes {
        let mut fields = vec![
            ("id", json_str(&self.id)),
            ("object", json_str("chat.completion.chunk")),
            ("created", self.created.to_string()),
            ("model", json_str(&self.model)),
            ("system_fingerprint", json_str(FINGERPRINT)),
            ("choices", choices.to_owned()),
        ];
        if self.usage {
            fields.push(("usage", usage.unwrap_or("null").to_owned()));
        }
        sse_data(&obj(&fields))
    }

    fn delta(&self, delta: &str, finish_reason: Option<&str>) -> Bytes {
        let choice = obj(&[
            ("index", "0".to_owned()),
            ("delta", delta.to_owned()),
            ("logprobs", "null".to_owned()),
            ("finish_reason", opt_json_str(finish_reason)),
        ]);
        self.event(&format!("[{choice}]"), None)
    }
}

fn chat_stream(
    shared: &Shared,
    request: &ChatRequest,
    content: &str,
    finish_reason: &str,
    end: StreamEnd,
) -> Response {
    let writer = ChunkWriter {
        id: format!("chatcmpl-{}", random_alnum(29)),
        created: unix_now(),
        model: request.model.clone(),
        usage: request.include_usage && shared.options.include_usage,
    };
    let pieces = split_chars(content, shared.options.chunk_chars);
    let mut events =
        vec![writer.delta(r#"{"role":"assistant","content":"","refusal":null}"#, None)];
    let content_event = |piece: &str| writer.delta(&obj(&[("content", json_str(piece))]), None);
    let tail = match end {
        StreamEnd::Done => {
            events.extend(pieces.iter().map(|piece| content_event(piece)));
            events.push(writer.delta("{}", Some(finish_reason)));
            if writer.usage {
                let usage = usage_json(request.prompt_chars, content.chars().count());
                events.push(writer.event("[]", Some(&usage)));
            }
            events.push(Bytes::from_static(b"data: [DONE]\n\n"));
            Tail::End
        }
        StreamEnd::Cut { chunks } => {
            events.extend(pieces.iter().take(chunks).map(|piece| content_event(piece)));
            Tail::Cut
        }
        StreamEnd::Error { chunks, message } => {
            events.extend(pieces.iter().take(chunks).map(|piece| content_event(piece)));
            let error = obj(&[(
                "error",
                obj(&[
                    ("message", json_str(&message)),
                    ("type", json_str("server_error")),
                    ("param", "null".to_owned()),
                    ("code", "null".to_owned()),
                ]),
            )]);
            events.push(sse_data(&error));
            Tail::End
        }
        StreamEnd::Hang { chunks } => {
            events.extend(pieces.iter().take(chunks).map(|piece| content_event(piece)));
            Tail::Hang
        }
    };
    sse_response(paced_body(
        events,
        shared.options.chunk_delay,
        tail,
        shared.stopped(),
    ))
}

fn chat_whole(
    shared: &Shared,
    request: &ChatRequest,
    content: &str,
    finish_reason: &str,
    end: StreamEnd,
) -> Response {
    let message = obj(&[
        ("role", json_str("assistant")),
        ("content", json_str(content)),
        ("refusal", "null".to_owned()),
        ("annotations", "[]".to_owned()),
    ]);
    let choice = obj(&[
        ("index", "0".to_owned()),
        ("message", message),
        ("logprobs", "null".to_owned()),
        ("finish_reason", json_str(finish_reason)),
    ]);
    let body = obj(&[
        ("id", json_str(&format!("chatcmpl-{}", random_alnum(29)))),
        ("object", json_str("chat.completion")),
        ("created", unix_now().to_string()),
        ("model", json_str(&request.model)),
        ("choices", format!("[{choice}]")),
        (
            "usage",
            usage_json(request.prompt_chars, content.chars().count()),
        ),
        ("system_fingerprint", json_str(FINGERPRINT)),
    ]);
    let (events, tail) = match end {
        StreamEnd::Done => return json_response(StatusCode::OK, body),
        StreamEnd::Error { message, .. } => {
            return ErrorSpec::nested(StatusCode::INTERNAL_SERVER_ERROR, message, None, None)
                .into_response();
        }
        StreamEnd::Cut { .. } => {
            let half: String = body.chars().take(body.chars().count() / 2).collect();
            (vec![Bytes::from(half)], Tail::Cut)
        }
        StreamEnd::Hang { .. } => (Vec::new(), Tail::Hang),
    };
    let mut response = Response::new(paced_body(
        events,
        shared.options.chunk_delay,
        tail,
        shared.stopped(),
    ));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    with_request_id(response)
}

fn usage_json(prompt_chars: usize, completion_chars: usize) -> String {
    let prompt = tokens(prompt_chars);
    let completion = tokens(completion_chars);
    obj(&[
        ("prompt_tokens", prompt.to_string()),
        ("completion_tokens", completion.to_string()),
        ("total_tokens", (prompt + completion).to_string()),
    ])
}

/// Roughly four characters a token.
fn tokens(chars: usize) -> usize {
    chars.div_ceil(4)
}

/// Splits text into pieces of `size` characters (0 counts as 1).
fn split_chars(text: &str, size: usize) -> Vec<String> {
    let size = size.max(1);
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

// ---------------------------------------------------------------------------------------------
// Transcriptions
// ---------------------------------------------------------------------------------------------

async fn transcriptions(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parts = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(multipart_boundary)
        .ok_or("the request is not multipart/form-data with a boundary")
        .and_then(|boundary| parse_multipart(&body, &boundary));
    let (fields, file) = match &parts {
        Ok(parts) => {
            let fields = parts
                .iter()
                .filter(|p| p.name != "file")
                .map(|p| {
                    (
                        p.name.clone(),
                        String::from_utf8_lossy(&p.data).into_owned(),
                    )
                })
                .collect();
            let file = parts
                .iter()
                .find(|p| p.name == "file")
                .map(|p| (p.filename.clone().unwrap_or_default(), p.data.len()));
            (fields, file)
        }
        Err(_) => (Vec::new(), None),
    };
    shared.record(uri.path(), &headers, None, fields, file);
    shared.stt_calls.fetch_add(1, Ordering::SeqCst);
    shared.first_byte_delay().await;

    let parts = match parts {
        Ok(parts) => parts,
        Err(error) => {
            tracing::debug!(error, "fake OpenAI: malformed multipart body");
            return ErrorSpec {
                shape: ErrorShape::Detail,
                ..ErrorSpec::nested(
                    StatusCode::BAD_REQUEST,
                    "There was an error parsing the body",
                    None,
                    None,
                )
            }
            .into_response();
        }
    };
    let field = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name)
            .map(|p| String::from_utf8_lossy(&p.data).trim().to_owned())
    };
    let Some(file) = parts.iter().find(|p| p.name == "file") else {
        // FastAPI's validation error, with a 400 status.
        let body = r#"{"detail":[{"type":"missing","loc":["body","file"],"msg":"Field required","input":null}]}"#;
        return json_response(StatusCode::BAD_REQUEST, body.to_owned());
    };
    if file.data.len() > MAX_FILE_BYTES {
        return ErrorSpec::nested(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Maximum content size limit ({MAX_FILE_BYTES}) exceeded ({} bytes read)",
                file.data.len()
            ),
            None,
            None,
        )
        .into_response();
    }
    let format = field("response_format").unwrap_or_else(|| "json".to_owned());
    if !matches!(
        format.as_str(),
        "json" | "text" | "verbose_json" | "srt" | "vtt"
    ) {
        return ErrorSpec::invalid(
            format!(
                "Invalid value: '{format}'. Supported values are: 'json', 'text', 'srt', \
                 'verbose_json', and 'vtt'."
            ),
            Some("response_format"),
            Some("invalid_value"),
        );
    }
    let stream = field("stream").is_some_and(|s| s.eq_ignore_ascii_case("true") || s == "1");
    let duration = audio_duration(&file.data);

    let reply = lock(&shared.stt_queue).pop_front();
    let text = match reply {
        None => shared.options.stt_text.clone(),
        Some(SttReply::Text(text)) => text,
        Some(SttReply::Error {
            status,
            shape,
            message,
            error_type,
            code,
            retry_after,
            retry_after_ms,
            should_retry,
        }) => {
            return ErrorSpec::from_reply(
                status,
                shape,
                message,
                error_type,
                code,
                retry_after,
                retry_after_ms,
                should_retry,
            )
            .into_response();
        }
        Some(SttReply::HangBeforeHeaders) => {
            shared.stopped().await;
            return cut_response();
        }
    };
    // The model's own time for this much audio (on top of the first-byte delay above).
    let per_second = shared.options.stt_delay_per_audio_second;
    if !per_second.is_zero() && duration > 0.0 {
        tokio::select! {
            () = tokio::time::sleep(per_second.mul_f64(duration)) => {}
            () = shared.stopped() => return cut_response(),
        }
    }

    let audio_tokens = ((duration * 10.0).ceil() as usize).max(1);
    let usage = || {
        let output = tokens(text.chars().count());
        obj(&[
            ("type", json_str("tokens")),
            ("input_tokens", audio_tokens.to_string()),
            (
                "input_token_details",
                obj(&[
                    ("text_tokens", "0".to_owned()),
                    ("audio_tokens", audio_tokens.to_string()),
                ]),
            ),
            ("output_tokens", output.to_string()),
            ("total_tokens", (audio_tokens + output).to_string()),
        ])
    };

    if stream && shared.options.stt_streaming {
        let mut events: Vec<Bytes> = split_words(&text)
            .iter()
            .map(|piece| {
                sse_data(&obj(&[
                    ("type", json_str("transcript.text.delta")),
                    ("delta", json_str(piece)),
                ]))
            })
            .collect();
        events.push(sse_data(&obj(&[
            ("type", json_str("transcript.text.done")),
            ("text", json_str(&text)),
            ("usage", usage()),
        ])));
        return sse_response(paced_body(
            events,
            shared.options.chunk_delay,
            Tail::End,
            shared.stopped(),
        ));
    }

    match format.as_str() {
        "text" => text_response("text/plain; charset=utf-8", format!("{text}\n")),
        "srt" => text_response(
            "text/plain; charset=utf-8",
            format!(
                "1\n00:00:00,000 --> {}\n{text}\n\n",
                timestamp(duration, ',')
            ),
        ),
        "vtt" => text_response(
            "text/plain; charset=utf-8",
            format!(
                "WEBVTT\n\n00:00:00.000 --> {}\n{text}\n\n",
                timestamp(duration, '.')
            ),
        ),
        "verbose_json" => {
            let language = match field("language").as_deref() {
                None | Some("") | Some("en") => "english".to_owned(),
                Some(other) => other.to_owned(),
            };
            let body = obj(&[
                ("task", json_str("transcribe")),
                ("language", json_str(&language)),
                ("duration", json!(duration).to_string()),
                ("text", json_str(&text)),
                ("segments", "[]".to_owned()),
            ]);
            json_response(StatusCode::OK, body)
        }
        _ => {
            let mut fields = vec![("text", json_str(&text))];
            if shared.options.stt_streaming {
                fields.push(("usage", usage()));
            }
            json_response(StatusCode::OK, obj(&fields))
        }
    }
}

/// Splits a transcript into word-ish pieces, each word with the whitespace before it, so the
/// pieces concatenate back to the text.
fn split_words(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut previous_was_space = true;
    for c in text.chars() {
        let space = c.is_whitespace();
        if space && !previous_was_space && !current.is_empty() {
            pieces.push(std::mem::take(&mut current));
        }
        current.push(c);
        previous_was_space = space;
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// `HH:MM:SS,mmm` (SRT) or `HH:MM:SS.mmm` (WebVTT).
fn timestamp(seconds: f64, separator: char) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}{separator}{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// The duration of a WAV file from its header, else an estimate as 16 kHz 16-bit mono.
fn audio_duration(data: &[u8]) -> f64 {
    wav_duration(data).unwrap_or(data.len() as f64 / 32_000.0)
}

fn wav_duration(data: &[u8]) -> Option<f64> {
    if data.len() < 12 || &data[0..4] != b"RIFF" || &data[8..12] != b"WAVE" {
        return None;
    }
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
    };
    let mut pos = 12;
    let mut byte_rate = None;
    while pos + 8 <= data.len() {
        let id = &data[pos..pos + 4];
        let size = u32_at(pos + 4)? as usize;
        if id == b"fmt " {
            byte_rate = u32_at(pos + 16);
        } else if id == b"data" {
            let rate = byte_rate.filter(|r| *r > 0)?;
            // A streaming writer may leave the size unset; count what is there.
            let available = data.len() - (pos + 8);
            return Some(size.min(available) as f64 / f64::from(rate));
        }
        pos += 8 + size + (size & 1);
    }
    None
}

// ---------------------------------------------------------------------------------------------
// multipart/form-data
// ---------------------------------------------------------------------------------------------

/// One part of a `multipart/form-data` body.
#[derive(Debug)]
struct Part {
    name: String,
    filename: Option<String>,
    data: Bytes,
}

/// The boundary of a `multipart/form-data` Content-Type, unquoted.
fn multipart_boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let mime = params.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|param| {
        let (key, value) = param.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        (!value.is_empty()).then(|| value.to_owned())
    })
}

/// Parses a `multipart/form-data` body (RFC 7578): parts may hold arbitrary bytes.
fn parse_multipart(body: &Bytes, boundary: &str) -> Result<Vec<Part>, &'static str> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let next_delimiter = format!("\r\n--{boundary}");
    let next_delimiter = next_delimiter.as_bytes();

    // The first delimiter opens the body or follows a preamble and a CRLF.
    let mut pos = if body.starts_with(delimiter) {
        0
    } else {
        find(body, next_delimiter).ok_or("no boundary in the body")? + 2
    };
    let mut parts = Vec::new();
    loop {
        pos += delimiter.len();
        let rest = &body[pos..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        // Transport padding, then the CRLF that ends the delimiter line.
        let padding = rest
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        pos += padding;
        if !body[pos..].starts_with(b"\r\n") {
            return Err("a boundary line does not end with CRLF");
        }
        pos += 2;

        let (header_block, content_start) = if body[pos..].starts_with(b"\r\n") {
            (&body[pos..pos], pos + 2)
        } else {
            let end = pos + find(&body[pos..], b"\r\n\r\n").ok_or("a part's headers never end")?;
            (&body[pos..end], end + 4)
        };
        let content_end = content_start
            + find(&body[content_start..], next_delimiter).ok_or("the body never closes")?;

        let mut name = None;
        let mut filename = None;
        for line in header_block.split(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(line);
            let line = line.trim_end_matches('\r');
            let Some((header, value)) = line.split_once(':') else {
                continue;
            };
            if header.trim().eq_ignore_ascii_case("content-disposition") {
                for (key, value) in disposition_params(value) {
                    if key.eq_ignore_ascii_case("name") {
                        name = Some(value);
                    } else if key.eq_ignore_ascii_case("filename") {
                        filename = Some(value);
                    }
                }
            }
        }
        parts.push(Part {
            name: name.ok_or("a part has no name")?,
            filename,
            data: body.slice(content_start..content_end),
        });
        pos = content_end + 2;
    }
}

/// The `key=value` parameters of a Content-Disposition value (`form-data; name="file"; …`),
/// values unquoted (a backslash escapes the next character inside quotes).
fn disposition_params(value: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut chars = value.chars().peekable();
    // Skip the disposition type.
    for c in chars.by_ref() {
        if c == ';' {
            break;
        }
    }
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ';').is_some() {}
        if chars.peek().is_none() {
            return params;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && *c != ';') {
            key.push(c);
        }
        let mut value = String::new();
        if chars.next_if_eq(&'=').is_some() {
            while chars.next_if(|c| *c == ' ').is_some() {}
            if chars.next_if_eq(&'"').is_some() {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => value.extend(chars.next()),
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.next_if(|c| *c != ';') {
                    value.push(c);
                }
                value = value.trim_end().to_owned();
            }
        }
        params.push((key.trim().to_owned(), value));
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(offset) = haystack[from..].iter().position(|b| *b == first) {
        let at = from + offset;
        if haystack.len() - at < needle.len() {
            return None;
        }
        if &haystack[at + 1..at + needle.len()] == rest {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Bodies and small helpers
// ---------------------------------------------------------------------------------------------

/// What a paced body does after its events.
enum Tail {
    /// Ends normally.
    End,
    /// Drops the connection (the body fails).
    Cut,
    /// Waits, connection open, until the server is dropped, then drops the connection.
    Hang,
}

/// A body sending `events` with `delay` between them, then doing `tail`.
fn paced_body(
    events: Vec<Bytes>,
    delay: Duration,
    tail: Tail,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Body {
    Body::from_stream(paced_stream(events, delay, tail, stopped))
}

fn paced_stream(
    events: Vec<Bytes>,
    delay: Duration,
    tail: Tail,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    async_stream::stream! {
        for (i, event) in events.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            yield Ok(event);
        }
        match tail {
            Tail::End => {}
            Tail::Cut => {
                tokio::time::sleep(CUT_FLUSH_GRACE).await;
                yield Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "fake OpenAI: stream cut",
                ));
            }
            Tail::Hang => {
                stopped.await;
                yield Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "fake OpenAI: server dropped",
                ));
            }
        }
    }
}

/// The answer to a request released from a hang by the server's drop: its body fails at once,
/// so the connection is cut.
fn cut_response() -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "fake OpenAI: server dropped",
        ))
    });
    Response::new(Body::from_stream(stream))
}

fn sse_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_request_id(response)
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    with_request_id(response)
}

fn text_response(content_type: &'static str, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    with_request_id(response)
}

fn with_request_id(mut response: Response) -> Response {
    if let Ok(id) = HeaderValue::from_str(&format!("req_{}", random_alnum(32))) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-request-id"), id);
    }
    response
}

/// One SSE event: `data: {json}\n\n`.
fn sse_data(json: &str) -> Bytes {
    Bytes::from(format!("data: {json}\n\n"))
}

/// A JSON object from already serialised values, keys in the given order.
fn obj(fields: &[(&str, String)]) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_str(key));
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    out
}

fn json_str(s: &str) -> String {
    Value::from(s).to_string()
}

fn opt_json_str(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_owned(), json_str)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_alnum(len: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
    }

    fn chat_request(stream: bool, include_usage: Option<bool>) -> Value {
        let mut body = json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You grade explanations."},
                {"role": "user", "content": [{"type": "text", "text": "TCP vs UDP, explained."}]}
            ],
            "stream": stream,
            "response_format": {"type": "json_object"}
        });
        if let Some(include) = include_usage {
            body["stream_options"] = json!({"include_usage": include});
        }
        body
    }

    async fn post_chat(fake: &FakeOpenAi, body: &Value) -> reqwest::Response {
        client()
            .post(format!("{}/chat/completions", fake.base_url()))
            .bearer_auth("sk-test")
            .json(body)
            .send()
            .await
            .expect("send")
    }

    /// The payloads of the `data:` events of an SSE body; every event must be a `data:` line.
    fn sse_payloads(body: &str) -> Vec<String> {
        body.split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| {
                event
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data event: {event:?}"))
                    .to_owned()
            })
            .collect()
    }

    fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
        response.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn default_stream_reassembles_the_sample_grade() {
        let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
        let response = post_chat(&fake, &chat_request(true, Some(true))).await;
        assert_eq!(response.status(), 200);
        assert!(
            header(&response, "content-type")
                .unwrap()
                .starts_with("text/event-stream")
        );
        let body = response.text().await.unwrap();
        let payloads = sse_payloads(&body);
        assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));

        let chunks: Vec<Value> = payloads[..payloads.len() - 1]
            .iter()
            .map(|p| serde_json::from_str(p).unwrap())
            .collect();
        let first = &chunks[0];
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["model"], "gpt-4o-mini");
        assert!(first["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["choices"][0]["delta"]["content"], "");
        // One id for the whole stream.
        assert!(chunks.iter().all(|c| c["id"] == first["id"]));

        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0))
            .filter_map(|choice| choice["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, grade_to_string(&sample_grade()));
        assert!(content.starts_with(r#"{"feedback":"#), "{content}");
        assert!(content.contains(r#""subScores":{"accuracy":"#), "{content}");
        let grade: Value = serde_json::from_str(&content).unwrap();
        assert_eq!(grade, sample_grade());
        // 4-character chunks by default.
        assert!(
            chunks[1..]
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                .all(|piece| piece.chars().count() <= 4)
        );

        // The finish chunk, then the usage chunk.
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert_eq!(finish["choices"][0]["delta"], json!({}));
        let usage = &chunks[chunks.len() - 1];
        assert_eq!(usage["choices"], json!([]));
        let completion = usage["usage"]["completion_tokens"].as_u64().unwrap();
        assert_eq!(completion as usize, content.chars().count().div_ceil(4));
        assert_eq!(
            usage["usage"]["total_tokens"].as_u64().unwrap(),
            completion + usage["usage"]["prompt_tokens"].as_u64().unwrap()
        );
        // Every other chunk carries "usage": null.
        assert!(
            chunks[..chunks.len() - 1]
                .iter()
                .all(|c| c.get("usage") == Some(&Value::Null))
        );

        assert_eq!(fake.chat_calls(), 1);
        let requests = fake.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].path, "/v1/chat/completions");
        assert_eq!(requests[0].authorization.as_deref(), Some("Bearer sk-test"));
        assert_eq!(
            requests[0].json.as_ref().unwrap()["model"],
            json!("gpt-4o-mini")
        );
    }

    #[tokio::test]
    async fn usage_chunk_only_when_asked_and_enabled() {
        // Not asked: no usage anywhere.
        let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
        let body = post_chat(&fake, &chat_request(true, None))
            .await
            .text()
            .await
            .unwrap();
        assert!(!body.contains("usage"), "{body}");
        assert!(body.ends_with("data: [DONE]\n\n"));
        let body = post_chat(&fake, &chat_request(true, Some(false)))
            .await
            .text()
            .await
            .unwrap();
        assert!(!body.contains("usage"), "{body}");

        // Asked, but the server is llama-cpp-python: still none.
        let fake = FakeOpenAi::start(FakeOptions {
            include_usage: false,
            ..FakeOptions::default()
        })
        .await
        .unwrap();
        let body = post_chat(&fake, &chat_request(true, Some(true)))
            .await
            .text()
            .await
            .unwrap();
        assert!(!body.contains("usage"), "{body}");
        let payloads = sse_payloads(&body);
        assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
        let last: Value = serde_json::from_str(&payloads[payloads.len() - 2]).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
    }

    #[tokio::test]
    async fn non_streamed_answer_is_one_completion() {
        let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
        fake.push_chat(ChatReply::Text("```json\n{\"score\": 1}\n```".to_owned()));
        let response = post_chat(&fake, &chat_request(false, None)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "content-type"), Some("application/json"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "gpt-4o-mini");
        assert_eq!(body["choices"][0]["message"]["role"], "assistant");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "```json\n{\"score\": 1}\n```"
        );
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    }

    #[tokio::test]
    async fn replies_are_taken_in_order() {
        let fake = FakeOpenAi::start(FakeOptions {
            chunk_chars: 3,
            ..FakeOptions::default()
        })
        .await
        .unwrap();
        fake.push_chat(ChatReply::Text("not json at all".to_owned()));
        fake.push_chat(ChatReply::Grade(json!({"score": 5, "feedback": "ok"})));
        let content = |body: String| -> String {
            sse_payloads(&body)
                .iter()
                .filter(|p| *p != "[DONE]")
                .filter_map(|p| {
                    serde_json::from_str::<Value>(p).unwrap()["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(str::to_owned)
                })
                .collect()
        };
        let first = post_chat(&fake, &chat_request(true, None)).await;
        assert_eq!(content(first.text().await.unwrap()), "not json at all");
        let second = post_chat(&fake, &chat_request(true, None)).await;
        assert_eq!(
            content(second.text().await.unwrap()),
            r#"{"feedback":"ok","score":5}"#
        );
        let third = post_chat(&fake, &chat_request(true, None)).await;
        assert_eq!(
            content(third.text().await.unwrap()),
            grade_to_string(&sample_grade())
        );
        assert_eq!(fake.chat_calls(), 3);
    }

    #[tokio::test]
    async fn max_tokens_cuts_the_content_with_finish_reason_length() {
        let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
        let mut request = chat_request(false, None);
        request["max_tokens"] = json!(5);
        let body: Value = post_chat(&fake, &request).await.json().await.unwrap();
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(content, &grade_to_string(&sample_grade())[..20]);
    }

    #[tokio::test]
    async fn invalid_requests_get_400_like_openai() {
        let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
        // The queued reply survives the invalid requests.
        fake.push_chat(ChatReply::Text("kept".to_owned()));
        let cases = [
            (
                json!({"messages": [{"role": "user", "content": "hi"}]}),
                None,
            ),
            (json!({"model": "m"}), Some("messages")),
            (json!({"model": "m", "messages": []}), Some("messages")),
            (
                json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}),
                Some("messages[0].role"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                       "response_format": {"type": "xml"}}),
                Some("response_format.type"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                       "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}),
                Some("response_format.json_schema.name"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                       "response_format": {"type": "json_schema", "json_schema": {"name": "g"}}}),
                Some("response_format.json_schema.schema"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                       "stream_options": {"include_usage": true}}),
                Some("stream_options"),
            ),
        ];
        for (body, param) in cases {
            let response = post_chat(&fake, &body).await;
            assert_eq!(response.status(), 400, "{body}");
            let error: Value = response.json().await.unwrap();
            assert_eq!(error["error"]["type"], "invalid_request_error", "{body}");
            assert!(error["error"]["message"].is_string());
            assert_eq!(error["error"]["param"], json!(param), "{body}");
            assert!(error["error"].as_object().unwrap().contains_key("code"));
        }
        let response = client()
            .post(format!("{}/chat/completions", fake.base_url()))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        assert_eq!(fake.chat_calls(), 9);
        assert!(fake.requests()[8].json.is_none());

        let valid = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                           "response_format": {"type": "json_schema",
                                               "json_schema": {"name": "g", "strict": true, "schema": {"type": "object"}}}});
        let body: Value = post_chat(&fake, &valid).await.json().await.unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], "kept");
    }

    #[tokio::test]
    async fn reject_json_schema_answers_500_like_llama_cpp_python() {
        let fake = FakeOpenAi::start(FakeOptions {
            reject_json_schema: true,
            ..FakeOptions::default()
        })
        .await
        .unwrap();
        let mut request = chat_request(true, None);
        request["response_format"] = json!({"type": "json_schema",
            "json_schema": {"name": "grade", "schema": {"type": "object"}, "strict": true}});
        let response = post_chat(&fake, &request).await;
        assert_eq!(response.status(), 500);
        let body: Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("response_format") && message.contains("json_schema"));
        assert_eq!(body["error"]["type"], "internal_server_error");
        assert_eq!(body["error"]["code"], Value::Null);

        // json_object (with a schema, as llama-cpp-python allows) still works.
        request["response_format"] = json!({"type": "json_object", "schema": {"type": "object"}});
        let response = post_chat(&fake, &request).await;
        assert_eq!(response.status(), 200);
        assert!(response.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    }

    fn chat_error(
        status: u16,
        shape: ErrorShape,
        message: &str,
        error_type: Option<&str>,
        code: Option<&str>,
    ) -> ChatReply {
        ChatReply::Error {
            status,
            shape,
            message: message.to_owned(),
            error_type: error_type.map(str::to_owned),
            code: code.map(str::to_owned),
            retry_after: None,
            retry_after_ms: None,
            should_retry: None,
        }
    }

    #[tokio::test]
    async fn error_shapes_and_retry_headers() {
        let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
        fake.push_chat(ChatReply::Error {
            status: 429,
            shape: ErrorShape::Nested,
            message: "Rate limit reached".to_owned(),
            error_type: None,
            code: Some("rate_limit_exceeded".to_owned()),
            retry_after: Some("2".to_owned()),
            retry_after_ms: Some(1500),
            should_retry: Some(true),
        });
        fake.push_chat(chat_error(
            429,
            ErrorShape::Nested,
            "You exceeded your current quota",
            Some("insufficient_quota"),
            Some("insufficient_quota"),
        ));
        fake.push_chat(chat_error(
            503,
            ErrorShape::Flat,
            "model loading",
            None,
            None,
        ));
        fake.push_chat(chat_error(
            400,
            ErrorShape::Detail,
            "Unsupported format",
            None,
            None,
        ));
        fake.push_chat(ChatReply::Error {
            status: 500,
            shape: ErrorShape::Nested,
            message: "boom".to_owned(),
            error_type: None,
            code: None,
            retry_after: None,
            retry_after_ms: None,
            should_retry: Some(false),
        });

        let request = chat_request(true, None);
        let response = post_chat(&fake, &request).await;
        assert_eq!(response.status(), 429);
        assert_eq!(header(&response, "retry-after"), Some("2"));
        assert_eq!(header(&response, "retry-after-ms"), Some("1500"));
        assert_eq!(header(&response, "x-should-retry"), Some("true"));
        assert_eq!(header(&response, "content-type"), Some("application/json"));
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#
        );

        let response = post_chat(&fake, &request).await;
        assert_eq!(response.status(), 429);
        assert!(header(&response, "retry-after").is_none());
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "insufficient_quota");

        let response = post_chat(&fake, &request).await;
        assert_eq!(response.status(), 503);
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"error":"model loading"}"#
        );

        let response = post_chat(&fake, &request).await;
        assert_eq!(response.status(), 400);
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"detail":"Unsupported format"}"#
        );

        let response = post_chat(&fake, &request).await;
        assert_eq!(response.status(), 500);
        assert_eq!(header(&response, "x-should-retry"), Some("false"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "server_error");
        assert_eq!(fake.chat_calls(), 5);
    }

    #[tokio::test]
    async fn cut_stream_has_no_done_and_fails_the_body() {
        let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
        fake.push_chat(ChatReply::CutAfter { chunks: 3 });
        let response = post_chat(&fake, &chat_request(true, None)).await;
        assert_eq!(response.status(), 200);
        // reqwest without its `stream` feature can only read whole bodies, so read raw bytes
        // with `chunk()`, which hands over what arrived before the cut.
        let mut response = response;
        let mut received = Vec::new();
        let error = loop {
            match response.chunk().await {
                Ok(Some(bytes)) => received.extend_from_slice(&bytes),
                Ok(None) => panic!("the stream ended cleanly"),
                Err(error) => break error,
            }
        };
        assert!(error.is_body() || error.is_decode(), "{error:?}");
        let text = String::from_utf8(received).unwrap();
        assert!(!text.contains("[DONE]"));
        // The role chunk and three content chunks arrived.
        assert_eq!(sse_payloads(&text).len(), 4, "{text}");

        // The next request is served normally.
        let body = post_chat(&fake, &chat_request(true, None))
            .await
            .text()
            .await
            .unwrap();
        assert!(body.ends_with("data: [DONE]\n\n"));
    }

    #[tokio::test]
    async fn error_mid_stream_sends_an_error_event() {
        let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
        fake.push_chat(ChatReply::ErrorMidStream {
            chunks: 2,
            message: "The server had an error while processing your request.".to_owned(),
        });
        let body = post_chat(&fake, &chat_request(true, Some(true)))
            .await
            .text()
            .await
            .unwrap();
        let payloads = sse_payloads(&body);
        assert_eq!(payloads.len(), 4, "{body}");
        assert!(!body.contains("[DONE]"));
        let error: Value = serde_json::from_str(&payloads[3]).unwrap();
        assert_eq!(
            error["error"]["message"],
            "The server had an error while processing your request."
        );
        assert_eq!(error["error"]["type"], "server_error");
    }

    #[tokio::test]
    async fn hangs_until_the_client_gives_up_and_the_drop_releases_them() {
        let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
        fake.push_chat(ChatReply::HangBeforeHeaders);
        fake.push_chat(ChatReply::HangAfter { chunks: 2 });
        let impatient = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let url = format!("{}/chat/completions", fake.base_url());
        let error = impatient
            .post(&url)
            .json(&chat_request(true, None))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_timeout(), "{error:?}");

        let mut response = impatient
            .post(&url)
            .json(&chat_request(true, None))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut received = Vec::new();
        let error = loop {
            match response.chunk().await {
                Ok(Some(bytes)) => received.extend_from_slice(&bytes),
                Ok(None) => panic!("the stream ended"),
                Err(error) => break error,
            }
        };
        assert!(error.is_timeout(), "{error:?}");
        assert_eq!(sse_payloads(&String::from_utf8(received).unwrap()).len(), 3);

        // A request still hanging when the server is dropped ends promptly.
        fake.push_chat(ChatReply::HangBeforeHeaders);
        let patient = client();
        let request = patient.post(&url).json(&chat_request(true, None)).send();
        let pending = tokio::spawn(request);
        while fake.chat_calls() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let addr = fake.addr();
        drop(fake);
        let outcome = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .expect("the hanging request was released")
            .unwrap();
        if let Ok(response) = outcome {
            assert!(response.text().await.is_err());
        }
        // The listener is closed.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn first_byte_delay_and_chunk_delay_are_applied() {
        let fake = FakeOpenAi::start(FakeOptions {
            first_byte_delay: Duration::from_millis(150),
            chunk_delay: Duration::from_millis(10),
            chunk_chars: 100,
            ..FakeOptions::default()
        })
        .await
        .unwrap();
        let started = Instant::now();
        let response = post_chat(&fake, &chat_request(true, None)).await;
        let headers_at = started.elapsed();
        assert!(headers_at >= Duration::from_millis(150), "{headers_at:?}");
        let body = response.text().await.unwrap();
        let events = sse_payloads(&body).len() as u32;
        assert!(started.elapsed() >= headers_at + Duration::from_millis(10) * (events - 2));
    }

    #[tokio::test]
    async fn models_and_unknown_routes() {
        let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
        let body: Value = client()
            .get(format!("{}/models", fake.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["object"], "list");
        assert_eq!(body["data"].as_array().unwrap().len(), 1);
        assert_eq!(body["data"][0]["object"], "model");
        let response = client()
            .post(format!("{}/embeddings", fake.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["error"]["message"],
            "Invalid URL (POST /v1/embeddings)"
        );
        let paths: Vec<String> = fake.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/v1/models", "/v1/embeddings"]);
    }

    // ---- transcription ----

    const BOUNDARY: &str = "----teachback-Boundary7MA4YWxkTrZu0gW";

    /// Audio bytes that contain CRLFs, dashes and a fake boundary prefix.
    fn tricky_audio() -> Vec<u8> {
        let mut audio = Vec::new();
        audio.extend_from_slice(b"RIFF\x00\x00\x00\x00WAVE");
        audio.extend_from_slice(b"\r\n--");
        audio.extend_from_slice(&BOUNDARY.as_bytes()[..10]);
        audio.extend_from_slice(b"\r\n\r\n\x00\xff\xfe--\r\n");
        audio.extend((0..=255u8).cycle().take(3000));
        audio
    }

    fn multipart_body(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> Vec<u8> {
        let mut body = Vec::new();
        if let Some((name, data)) = file {
            body.extend_from_slice(
                format!(
                    "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; \
                     filename=\"{name}\"\r\nContent-Type: audio/wav\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        for (name, value) in fields {
            body.extend_from_slice(
                format!(
                    "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n\
                     {value}\r\n"
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        body
    }

    async fn post_stt(fake: &FakeOpenAi, body: Vec<u8>) -> reqwest::Response {
        client()
            .post(format!("{}/audio/transcriptions", fake.base_url()))
            .bearer_auth("sk-stt")
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(body)
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn transcription_json_ignores_stream_like_whisper_1() {
        let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
        let audio = tricky_audio();
        let fields = [
            ("model", "whisper-1"),
            ("language", "en"),
            ("prompt", "TCP, UDP"),
            ("stream", "true"),
        ];
        let response = post_stt(&fake, multipart_body(&fields, Some(("clip.wav", &audio)))).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "content-type"), Some("application/json"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({"text": FakeOptions::default().stt_text}));

        assert_eq!(fake.stt_calls(), 1);
        let request = &fake.requests()[0];
        assert_eq!(request.path, "/v1/audio/transcriptions");
        assert_eq!(request.authorization.as_deref(), Some("Bearer sk-stt"));
        assert_eq!(request.file, Some(("clip.wav".to_owned(), audio.len())));
        let expected: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(request.fields, expected);
        assert!(request.json.is_none());
    }

    #[tokio::test]
    async fn transcription_streams_like_gpt_4o_transcribe() {
        let fake = FakeOpenAi::start(FakeOptions {
            stt_streaming: true,
            ..FakeOptions::default()
        })
        .await
        .unwrap();
        fake.push_stt(SttReply::Text("TCP  resends lost data.".to_owned()));
        fake.push_stt(SttReply::Text(String::new()));
        let audio = tricky_audio();
        let fields = [("model", "gpt-4o-transcribe"), ("stream", "true")];

        let response = post_stt(&fake, multipart_body(&fields, Some(("a.wav", &audio)))).await;
        assert_eq!(response.status(), 200);
        assert!(
            header(&response, "content-type")
                .unwrap()
                .starts_with("text/event-stream")
        );
        let body = response.text().await.unwrap();
        assert!(!body.contains("event:") && !body.contains("[DONE]"));
        let events: Vec<Value> = sse_payloads(&body)
            .iter()
            .map(|p| serde_json::from_str(p).unwrap())
            .collect();
        let (done, deltas) = events.split_last().unwrap();
        assert!(deltas.len() >= 3);
        assert!(deltas.iter().all(|e| e["type"] == "transcript.text.delta"));
        let text: String = deltas
            .iter()
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(text, "TCP  resends lost data.");
        assert_eq!(done["type"], "transcript.text.done");
        assert_eq!(done["text"], "TCP  resends lost data.");
        assert_eq!(done["usage"]["type"], "tokens");
        assert_eq!(
            done["usage"]["total_tokens"].as_u64().unwrap(),
            done["usage"]["input_tokens"].as_u64().unwrap()
                + done["usage"]["output_tokens"].as_u64().unwrap()
        );

        // Silence: only the done event, with empty text.
        let body = post_stt(&fake, multipart_body(&fields, Some(("a.wav", &audio))))
            .await
            .text()
            .await
            .unwrap();
        let events = sse_payloads(&body);
        assert_eq!(events.len(), 1);
        let done: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(done["text"], "");

        // Without stream=true: JSON with usage.
        let body: Value = post_stt(
            &fake,
            multipart_body(&[("model", "gpt-4o-transcribe")], Some(("a.wav", &audio))),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(body["text"], FakeOptions::default().stt_text);
        assert_eq!(body["usage"]["type"], "tokens");
    }

    #[tokio::test]
    async fn transcription_time_grows_with_the_audio() {
        let fake = FakeOpenAi::start(FakeOptions {
            first_byte_delay: Duration::from_millis(20),
            stt_delay_per_audio_second: Duration::from_millis(100),
            ..FakeOptions::default()
        })
        .await
        .unwrap();
        // 2 s of 16 kHz mono 16-bit silence: 20 ms + 2 × 100 ms.
        let wav = crate::live::segment::wav(&vec![0u8; 64_000], 16_000);
        let started = Instant::now();
        let response = post_stt(&fake, multipart_body(&[], Some(("a.wav", &wav)))).await;
        let took = started.elapsed();
        assert_eq!(response.status(), 200);
        assert!(took >= Duration::from_millis(220), "{took:?}");
        assert!(took < Duration::from_millis(1000), "{took:?}");
        // Errors answer without the per-second part.
        fake.push_stt(SttReply::Error {
            status: 500,
            shape: ErrorShape::Nested,
            message: "boom".to_owned(),
            error_type: None,
            code: None,
            retry_after: None,
            retry_after_ms: None,
            should_retry: None,
        });
        let started = Instant::now();
        let response = post_stt(&fake, multipart_body(&[], Some(("a.wav", &wav)))).await;
        assert_eq!(response.status(), 500);
        assert!(started.elapsed() < Duration::from_millis(200));
    }

    #[tokio::test]
    async fn transcription_formats() {
        let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
        // A real 16 kHz mono 16-bit WAV of 0.5 s.
        let samples = 8000u32;
        let mut wav = Vec::new();
        wav.extend_from_slice(b"RIFF");
        wav.extend_from_slice(&(36 + samples * 2).to_le_bytes());
        wav.extend_from_slice(b"WAVEfmt ");
        wav.extend_from_slice(&16u32.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes());
        wav.extend_from_slice(&16_000u32.to_le_bytes());
        wav.extend_from_slice(&32_000u32.to_le_bytes());
        wav.extend_from_slice(&2u16.to_le_bytes());
        wav.extend_from_slice(&16u16.to_le_bytes());
        wav.extend_from_slice(b"data");
        wav.extend_from_slice(&(samples * 2).to_le_bytes());
        wav.extend(std::iter::repeat_n(0u8, samples as usize * 2));

        fake.push_stt(SttReply::Text("hello there".to_owned()));
        let response = post_stt(
            &fake,
            multipart_body(&[("response_format", "text")], Some(("a.wav", &wav))),
        )
        .await;
        assert!(
            header(&response, "content-type")
                .unwrap()
                .starts_with("text/plain")
        );
        assert_eq!(response.text().await.unwrap(), "hello there\n");

        let body: Value = post_stt(
            &fake,
            multipart_body(
                &[("response_format", "verbose_json"), ("language", "en")],
                Some(("a.wav", &wav)),
            ),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(body["language"], "english");
        assert_eq!(body["duration"], 0.5);
        assert_eq!(body["segments"], json!([]));
        assert_eq!(body["text"], FakeOptions::default().stt_text);

        let srt = post_stt(
            &fake,
            multipart_body(&[("response_format", "srt")], Some(("a.wav", &wav))),
        )
        .await
        .text()
        .await
        .unwrap();
        assert!(
            srt.starts_with("1\n00:00:00,000 --> 00:00:00,500\n"),
            "{srt}"
        );

        let response = post_stt(
            &fake,
            multipart_body(&[("response_format", "docx")], Some(("a.wav", &wav))),
        )
        .await;
        assert_eq!(response.status(), 400);
    }

    #[tokio::test]
    async fn transcription_errors() {
        let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
        // No file: FastAPI's detail body.
        let response = post_stt(&fake, multipart_body(&[("model", "whisper-1")], None)).await;
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["detail"][0]["loc"], json!(["body", "file"]));

        // Not multipart at all.
        let response = client()
            .post(format!("{}/audio/transcriptions", fake.base_url()))
            .json(&json!({"model": "whisper-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert!(body["detail"].is_string());

        // Queued errors and a hang.
        fake.push_stt(SttReply::Error {
            status: 500,
            shape: ErrorShape::Flat,
            message: "failed to process audio".to_owned(),
            error_type: None,
            code: None,
            retry_after: None,
            retry_after_ms: None,
            should_retry: None,
        });
        fake.push_stt(SttReply::Error {
            status: 429,
            shape: ErrorShape::Nested,
            message: "slow down".to_owned(),
            error_type: None,
            code: None,
            retry_after: Some("1".to_owned()),
            retry_after_ms: None,
            should_retry: None,
        });
        fake.push_stt(SttReply::HangBeforeHeaders);
        let audio = b"not really audio".to_vec();
        let response = post_stt(&fake, multipart_body(&[], Some(("a.webm", &audio)))).await;
        assert_eq!(response.status(), 500);
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"error":"failed to process audio"}"#
        );
        let response = post_stt(&fake, multipart_body(&[], Some(("a.webm", &audio)))).await;
        assert_eq!(response.status(), 429);
        assert_eq!(header(&response, "retry-after"), Some("1"));
        let error = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap()
            .post(format!("{}/audio/transcriptions", fake.base_url()))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(multipart_body(&[], Some(("a.webm", &audio))))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_timeout());
        assert_eq!(fake.stt_calls(), 5);
    }

    #[test]
    fn multipart_parser_handles_quotes_preamble_and_binary() {
        assert_eq!(
            multipart_boundary("multipart/form-data; boundary=\"a b=c\"").as_deref(),
            Some("a b=c")
        );
        assert_eq!(
            multipart_boundary("Multipart/Form-Data;charset=utf-8;BOUNDARY=xyz").as_deref(),
            Some("xyz")
        );
        assert_eq!(multipart_boundary("application/json"), None);
        assert_eq!(multipart_boundary("multipart/form-data"), None);

        let audio = tricky_audio();
        let mut body = b"preamble to ignore\r\n".to_vec();
        body.extend_from_slice(&multipart_body(
            &[("model", "m")],
            Some(("we\\\"ird.wav", &audio)),
        ));
        let parts = parse_multipart(&Bytes::from(body), BOUNDARY).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "file");
        assert_eq!(parts[0].filename.as_deref(), Some("we\"ird.wav"));
        assert_eq!(parts[0].data.as_ref(), audio.as_slice());
        assert_eq!(parts[1].name, "model");
        assert_eq!(parts[1].data.as_ref(), b"m");

        // An empty part value, a part with no headers but a name is required.
        let body = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=prompt\r\n\r\n\r\n--{BOUNDARY}--"
        );
        let parts = parse_multipart(&Bytes::from(body), BOUNDARY).unwrap();
        assert_eq!(parts[0].name, "prompt");
        assert!(parts[0].data.is_empty());
        let body = format!("--{BOUNDARY}\r\n\r\nvalue\r\n--{BOUNDARY}--");
        assert!(parse_multipart(&Bytes::from(body), BOUNDARY).is_err());
        // Truncated bodies are errors.
        let body = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=a\r\n\r\nvalue");
        assert!(parse_multipart(&Bytes::from(body), BOUNDARY).is_err());
        assert!(parse_multipart(&Bytes::from_static(b"nothing"), BOUNDARY).is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(split_words("a  bc d"), ["a", "  bc", " d"]);
        assert_eq!(split_words(" lead"), [" lead"]);
        assert!(split_words("").is_empty());
        assert_eq!(split_chars("héllo", 2), ["hé", "ll", "o"]);
        assert_eq!(split_chars("ab", 0), ["a", "b"]);
        assert_eq!(timestamp(3723.5, ','), "01:02:03,500");
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(
            grade_to_string(&json!({"zeta": 1, "score": 2, "feedback": "f"})),
            r#"{"feedback":"f","score":2,"zeta":1}"#
        );
    }

    #[tokio::test]
    async fn base_url_uses_loopback_for_unspecified_addresses() {
        let fake = FakeOpenAi::start_on("0.0.0.0:0".parse().unwrap(), FakeOptions::default())
            .await
            .unwrap();
        let port = fake.addr().port();
        assert_eq!(fake.base_url(), format!("http://127.0.0.1:{port}/v1"));
    }
}
