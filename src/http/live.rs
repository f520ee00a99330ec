//! `GET /api/v1/live`: the learner's WebSocket. See `docs/protocol.md` ("Live lectures").
//!
//! One connection task per socket. It parses frames, forwards audio and commands to the lecture's
//! actor, and writes back what the actor sends plus acknowledgements, which follow the lecture's
//! durable sequence (a `watch`, so acknowledgements batch themselves under load).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures::FutureExt;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::extract::{ClientIp, RequestMeta};
use super::lectures;
use crate::live::hub::Subscription;
use crate::live::lecture::{Action, Command};
use crate::live::protocol::{
    self, CLIENT_TYPES, ClientMessage, MAX_FRAME_BYTES, PROTOCOL_VERSION, ServerMessage,
};
use crate::live::{Attached, Conn, LectureHandle, LiveError, NewLecture};

/// Frames queued for one connection before the lecture considers it too slow.
const OUT_QUEUE: usize = 512;
/// The server pings an idle connection this often...
const PING_EVERY: Duration = Duration::from_secs(20);
/// ...and closes it when nothing at all has come from the client for this long.
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// tungstenite refuses messages beyond this outright; between `MAX_FRAME_BYTES` and this the
/// server reads the frame and closes with 1009 itself.
const HARD_LIMIT: usize = 1024 * 1024;

/// Close codes (RFC 6455 and the application range).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    /// The server is restarting: reconnect and resume.
    pub const RESTART: u16 = 1012;
}

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    /// The access token, for browsers (which cannot set headers on a WebSocket).
    pub token: Option<String>,
}

/// The learner a request's access token names: the `Authorization` header, or else `?token=`.
pub fn user_from(
    state: &AppState,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Uuid, ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|h| {
            h.to_str()
                .ok()
                .and_then(|h| {
                    h.strip_prefix("Bearer ")
                        .or_else(|| h.strip_prefix("bearer "))
                })
                .map(str::trim)
                .ok_or_else(|| {
                    ApiError::unauthorized(
                        "invalid_token",
                        "the Authorization header is not `Bearer <token>`",
                    )
                })
        })
        .transpose()?;
    let token = header.or(query_token).ok_or_else(|| {
        ApiError::unauthorized(
            "missing_token",
            "send the access token as `Authorization: Bearer <token>` or `?token=<token>`",
        )
    })?;
    Ok(state.keys.verify(token)?.sub)
}

pub async fn live(
    State(state): State<AppState>,
    Query(query): Query<TokenQuery>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    RequestMeta(meta): RequestMeta,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let user = user_from(&state, &headers, query.token.as_deref())?;
    state
        .limits
        .check(crate::limits::Action::Sockets, ip, Some(user))
        .await?;
    let mut meta = meta;
    meta.acting_user = Some(user);
    let client = Client {
        ip,
        korean: super::extract::prefers_korean(&headers),
    };
    Ok(ws
        .max_message_size(HARD_LIMIT)
        .max_frame_size(HARD_LIMIT)
        .on_upgrade(move |socket| async move {
            let _connection = crate::metrics::Connection::open("live");
            Session::new(state, user, meta, client).run(socket).await;
        }))
}

/// The lecture this connection is attached to.
struct Current {
    handle: LectureHandle,
    durable: watch::Receiver<u64>,
    /// Set once the lecture ended; audio is then refused with `lecture_finished`.
    ended: bool,
    /// The last sequence acknowledged to the client.
    acked: u64,
}

/// Who is at the other end of a connection, for rate limits and quota messages.
#[derive(Debug, Clone, Copy)]
struct Client {
    ip: std::net::IpAddr,
    /// Whether refusals are worded in Korean (`Accept-Language` of the upgrade request).
    korean: bool,
}

struct Session {
    state: AppState,
    user: Uuid,
    client: Client,
    /// Paces the connection's messages.
    gate: crate::limits::MessageGate,
    meta: teachback_events::Metadata,
    conn: Conn,
    out: mpsc::Receiver<Arc<ServerMessage>>,
    kicked: watch::Receiver<Option<Arc<ServerMessage>>>,
    current: Option<Current>,
    /// The processing frames (transcripts, grading) of the connection's latest lecture.
    processing: Option<Subscription>,
}

/// What to do after a frame.
enum Flow {
    Continue,
    Close(u16, &'static str),
}

impl Session {
    fn new(
        state: AppState,
        user: Uuid,
        meta: teachback_events::Metadata,
        client: Client,
    ) -> Session {
        let (out_tx, out) = mpsc::channel(OUT_QUEUE);
        let (kick, kicked) = watch::channel(None);
        let conn = Conn {
            id: state.live.conn_id(),
            out: out_tx,
            kick: Arc::new(kick),
        };
        Session {
            gate: crate::limits::MessageGate::new(state.limits.rules().messages),
            state,
            user,
            client,
            meta,
            conn,
            out,
            kicked,
            current: None,
            processing: None,
        }
    }

    async fn run(mut self, mut socket: WebSocket) {
        let settings = *self.state.live.settings();
        let hello = ServerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            max_frame_bytes: MAX_FRAME_BYTES,
            resume_grace_secs: settings.grace.as_secs(),
            max_lecture_secs: settings.max_lecture.as_secs(),
        };
        let mut flow = send(&mut socket, &hello).await;
        let mut last_heard = Instant::now();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut shutting_down = self.state.live.shutting_down();
        // Past the message rate, the next read waits until then; everything else goes on.
        let mut read_after: Option<tokio::time::Instant> = None;
        while let Flow::Continue = flow {
            let durable = async {
                match self.current.as_mut() {
                    Some(c) if !c.ended => c.durable.changed().await.is_ok(),
                    _ => std::future::pending().await,
                }
            };
            let processing = async {
                match self.processing.as_mut() {
                    Some(p) => Some(p.recv().await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Ok(()) = shutting_down.wait_for(|s| *s).map(|r| r.map(|_| ())) => {
                    flow = Flow::Close(close::RESTART, "server restarting; reconnect and resume");
                }
                changed = self.kicked.changed() => {
                    let message = self.kicked.borrow_and_update().clone();
                    if let (Ok(()), Some(message)) = (changed, message) {
                        let _ = send(&mut socket, &message).await;
                        let code = match &*message {
                            ServerMessage::Error { code: "storage_unavailable", .. } => close::INTERNAL,
                            _ => close::POLICY,
                        };
                        // The lecture let this connection go: do not detach it again.
                        self.current = None;
                        flow = Flow::Close(code, "released by the lecture");
                    }
                }
                message = self.out.recv() => {
                    let message = message.expect("the session holds a sender");
                    flow = self.flush_ack(&mut socket).await;
                    if let Flow::Continue = flow {
                        flow = self.outgoing(&mut socket, &message).await;
                    }
                }
                frame = processing => match frame {
                    Some(Ok(frame)) if frame.is_processing() => {
                        flow = send(&mut socket, &frame).await;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(broadcast::error::RecvError::Lagged(n))) => {
                        tracing::warn!(skipped = n, "a learner's connection fell behind its processing frames");
                    }
                    Some(Err(broadcast::error::RecvError::Closed)) | None => self.processing = None,
                },
                moved = durable => {
                    if moved {
                        flow = self.flush_ack(&mut socket).await;
                    } else if let Some(c) = self.current.as_mut() {
                        c.ended = true;
                    }
                }
                () = tokio::time::sleep_until(read_after.unwrap_or_else(tokio::time::Instant::now)),
                    if read_after.is_some() => {
                    read_after = None;
                }
                incoming = socket.recv(), if read_after.is_none() => {
                    last_heard = Instant::now();
                    if matches!(incoming, Some(Ok(Message::Text(_) | Message::Binary(_)))) {
                        // Over the rate, the next read waits: the client's sends back up in
                        // TCP; nothing it sent is dropped.
                        read_after = self.gate.count().map(tokio::time::Instant::from_std);
                    }
                    flow = match incoming {
                        None => break,
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "websocket read failed");
                            // tungstenite refuses messages over its limit: still say why.
                            if e.to_string().contains("too long") || e.to_string().contains("Space limit") {
                                Flow::Close(close::TOO_BIG, "frame larger than 64 KiB")
                            } else {
                                break;
                            }
                        }
                        Some(Ok(message)) => self.incoming(&mut socket, message).await,
                    };
                }
                _ = ping.tick() => {
                    flow = if last_heard.elapsed() > IDLE_LIMIT {
                        Flow::Close(close::GOING_AWAY, "idle")
                    } else if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                        break;
                    } else {
                        Flow::Continue
                    };
                }
            }
        }
        if let Flow::Close(code, reason) = flow {
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })))
                .await;
        }
        if let Some(current) = self.current.take()
            && !current.ended
        {
            current
                .handle
                .send(Command::Detach {
                    conn_id: self.conn.id,
                })
                .await;
        }
    }

    /// Sends an acknowledgement if the durable sequence moved since the last one.
    async fn flush_ack(&mut self, socket: &mut WebSocket) -> Flow {
        let Some(current) = self.current.as_mut() else {
            return Flow::Continue;
        };
        let seq = *current.durable.borrow_and_update();
        if seq <= current.acked {
            return Flow::Continue;
        }
        current.acked = seq;
        metrics::counter!("teachback_audio_acks_total").increment(1);
        let lecture_id = current.handle.id;
        send(socket, &ServerMessage::Ack { lecture_id, seq }).await
    }

    async fn outgoing(&mut self, socket: &mut WebSocket, message: &ServerMessage) -> Flow {
        if let ServerMessage::State { state, .. } = message
            && matches!(*state, "finished" | "cancelled" | "abandoned")
            && let Some(current) = self.current.as_mut()
        {
            current.ended = true;
        }
        send(socket, message).await
    }

    async fn incoming(&mut self, socket: &mut WebSocket, message: Message) -> Flow {
        match message {
            Message::Text(text) => {
                if text.len() > MAX_FRAME_BYTES {
                    return Flow::Close(close::TOO_BIG, "frame larger than 64 KiB");
                }
                match parse(text.as_str()) {
                    Ok(message) => self.command(socket, message).await,
                    Err(error) => send(socket, &error).await,
                }
            }
            Message::Binary(frame) => {
                if frame.len() > MAX_FRAME_BYTES {
                    return Flow::Close(close::TOO_BIG, "frame larger than 64 KiB");
                }
                self.audio(socket, frame).await
            }
            Message::Close(_) => Flow::Close(close::NORMAL, "bye"),
            Message::Ping(_) | Message::Pong(_) => Flow::Continue,
        }
    }

    async fn audio(&mut self, socket: &mut WebSocket, frame: Bytes) -> Flow {
        let Some(current) = self.current.as_ref() else {
            return send(
                socket,
                &ServerMessage::error(
                    "no_lecture",
                    "start or reconnect to a lecture before sending audio",
                ),
            )
            .await;
        };
        let lecture_id = current.handle.id;
        if current.ended {
            return send(socket, &lecture_finished(lecture_id)).await;
        }
        let Some((seq, _)) = protocol::split_audio(&frame) else {
            return send(
                socket,
                &ServerMessage::error(
                    "invalid_audio",
                    "a binary frame is an 8-byte big-endian sequence number followed by audio",
                ),
            )
            .await;
        };
        let audio = frame.slice(protocol::SEQ_BYTES..);
        let delivered = current
            .handle
            .send(Command::Audio {
                conn_id: self.conn.id,
                seq,
                audio,
            })
            .await;
        if delivered {
            Flow::Continue
        } else {
            if let Some(c) = self.current.as_mut() {
                c.ended = true;
            }
            send(socket, &lecture_finished(lecture_id)).await
        }
    }

    async fn command(&mut self, socket: &mut WebSocket, message: ClientMessage) -> Flow {
        let action = match message {
            ClientMessage::Ping { nonce } => {
                return send(socket, &ServerMessage::Pong { nonce }).await;
            }
            ClientMessage::Start {
                topic_id,
                format,
                sample_rate,
                channels,
                language,
            } => {
                let result = self
                    .start(topic_id, format, sample_rate, channels, language)
                    .await;
                return match result {
                    Ok(started) => send(socket, &started).await,
                    Err(e) => send(socket, &e.to_message(false)).await,
                };
            }
            ClientMessage::Text {
                topic_id,
                text,
                language,
            } => {
                if let Some(e) = self.busy() {
                    return send(socket, &e.to_message(false)).await;
                }
                if let Err(e) = self.admit(crate::limits::Action::Text, false).await {
                    return send(socket, &e.to_message(false)).await;
                }
                let lecture_id = Uuid::now_v7();
                // Follow the lecture before it exists, so no frame of its grading is missed.
                self.processing = Some(self.state.live.hub().subscribe(lecture_id));
                let started = lectures::start_text(
                    &self.state,
                    self.user,
                    lecture_id,
                    topic_id,
                    language,
                    &text,
                    self.meta.clone(),
                )
                .await;
                return match started {
                    Ok(_) => {
                        let Ok(Some(lecture)) = lectures::load(&self.state, lecture_id).await
                        else {
                            return send(socket, &LiveError::internal().to_message(false)).await;
                        };
                        let started = ServerMessage::Started {
                            lecture_id,
                            topic_id: lecture.started.topic_id.clone(),
                            format: lecture.format(),
                            sample_rate: None,
                            language: lecture.started.language.clone(),
                            version: 0,
                        };
                        send(socket, &started).await
                    }
                    Err(refused) => {
                        self.processing = None;
                        send(socket, &refusal(refused).to_message(false)).await
                    }
                };
            }
            ClientMessage::Reconnect { lecture_id } => {
                let result = self.reconnect(lecture_id).await;
                return match result {
                    Ok(answer) => send(socket, &answer).await,
                    Err(e) => send(socket, &e.to_message(false)).await,
                };
            }
            ClientMessage::Pause {} => Action::Pause,
            ClientMessage::Resume {} => Action::Resume,
            ClientMessage::Finish {} => Action::Finish,
            ClientMessage::Cancel {} => Action::Cancel,
        };
        let Some(current) = self.current.as_ref() else {
            return send(
                socket,
                &ServerMessage::error("no_lecture", "start or reconnect to a lecture first"),
            )
            .await;
        };
        let lecture_id = current.handle.id;
        if current.ended {
            return send(socket, &lecture_finished(lecture_id)).await;
        }
        let delivered = current
            .handle
            .send(Command::Control {
                conn_id: Some(self.conn.id),
                action,
                reply: None,
            })
            .await;
        if delivered {
            Flow::Continue
        } else {
            send(socket, &lecture_finished(lecture_id)).await
        }
    }

    fn busy(&self) -> Option<LiveError> {
        let current = self.current.as_ref().filter(|c| !c.ended)?;
        let mut e = LiveError::new(
            "lecture_in_progress",
            "this connection is already recording a lecture; finish or cancel it first",
        );
        e.lecture_id = Some(current.handle.id);
        Some(e)
    }

    async fn start(
        &mut self,
        topic_id: String,
        format: String,
        sample_rate: Option<u32>,
        channels: Option<u32>,
        language: Option<String>,
    ) -> Result<ServerMessage, LiveError> {
        if let Some(e) = self.busy() {
            return Err(e);
        }
        let (format, sample_rate) = protocol::check_format(&format, sample_rate, channels)
            .map_err(|(code, message)| LiveError::new(code, message))?;
        let language = lectures::check_lecture(&self.state, &topic_id, language)
            .await
            .map_err(refusal)?;
        let allowance = self.admit(crate::limits::Action::Lectures, true).await?;
        let new = NewLecture {
            max_audio: allowance.audio_left,
            user: self.user,
            topic_id,
            format,
            sample_rate,
            language,
            metadata: self.meta.clone(),
        };
        let (attached, started) = self.state.live.start(new, self.conn.clone()).await?;
        self.attach(attached);
        Ok(started)
    }

    /// Rate limits and quotas for a new lecture (`audio`: one that records audio).
    async fn admit(
        &self,
        action: crate::limits::Action,
        audio: bool,
    ) -> Result<crate::usage::Allowance, LiveError> {
        self.state
            .limits
            .check(action, self.client.ip, Some(self.user))
            .await
            .map_err(|limited| {
                let mut e = LiveError::new("rate_limited", limited.message());
                e.retry_after_secs = Some(limited.retry_after_secs());
                e
            })?;
        if let Err(e) = self.state.refuse_erased(self.user).await {
            return Err(match e {
                ApiError::Client { code, message, .. } => LiveError::new(code, message),
                _ => LiveError::internal(),
            });
        }
        match self.state.quotas.check_start(self.user, audio).await {
            Ok(Ok(allowance)) => Ok(allowance),
            Ok(Err(exceeded)) => {
                let mut e = LiveError::new("quota_exceeded", exceeded.message(self.client.korean));
                e.retry_after_secs = Some(exceeded.retry_after_secs());
                Err(e)
            }
            Err(err) => {
                tracing::error!(error = %err, "reading a learner's usage failed");
                Err(LiveError::internal())
            }
        }
    }

    async fn reconnect(&mut self, lecture_id: Uuid) -> Result<ServerMessage, LiveError> {
        if let Some(e) = self.busy() {
            return Err(e);
        }
        let attached = self
            .state
            .live
            .reconnect(self.user, lecture_id, self.conn.clone())
            .await?;
        let answer = ServerMessage::Reconnected {
            lecture_id,
            last_seq: attached.last_seq,
            state: attached.state,
            segments: attached.segments,
        };
        self.attach(attached);
        Ok(answer)
    }

    fn attach(&mut self, attached: Attached) {
        let handle = attached
            .handle
            .expect("the registry hands the lecture over");
        self.processing = Some(self.state.live.hub().subscribe(handle.id));
        self.current = Some(Current {
            handle,
            durable: attached.durable,
            ended: false,
            acked: attached.last_seq,
        });
    }
}

/// A lecture refused by the shared checks (`internal`: the server's fault, logged there).
fn refusal((code, message): (&'static str, String)) -> LiveError {
    match code {
        "internal" => LiveError::internal(),
        code => LiveError::new(code, message),
    }
}

fn lecture_finished(lecture_id: Uuid) -> ServerMessage {
    ServerMessage::Error {
        code: "lecture_finished",
        message: "the lecture has ended; audio and commands for it are not kept".into(),
        fatal: false,
        lecture_id: Some(lecture_id),
        expected_seq: None,
        retry_after_secs: None,
    }
}

/// At most 100 characters of client text in an error message.
fn clip(s: &str) -> String {
    s.chars().take(100).collect()
}

/// Parses a text frame, telling malformed JSON, unknown types and bad fields apart.
pub fn parse(text: &str) -> Result<ClientMessage, Box<ServerMessage>> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        Box::new(ServerMessage::error(
            "invalid_message",
            format!("the frame is not valid JSON: {e}"),
        ))
    })?;
    let Some(kind) = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
    else {
        return Err(Box::new(ServerMessage::error(
            "invalid_message",
            "a text frame must be a JSON object with a string `type`",
        )));
    };
    let known = CLIENT_TYPES.split(", ").any(|t| t == kind);
    let kind = kind.as_str();
    if !known {
        return Err(Box::new(ServerMessage::error(
            "unknown_message_type",
            format!(
                "unknown message type `{}`; this server knows: {CLIENT_TYPES}",
                clip(kind)
            ),
        )));
    }
    serde_json::from_value(value).map_err(|e| {
        Box::new(ServerMessage::error(
            "invalid_message",
            format!("invalid `{kind}` message: {e}"),
        ))
    })
}

async fn send(socket: &mut WebSocket, message: &ServerMessage) -> Flow {
    let fatal = matches!(message, ServerMessage::Error { fatal: true, .. });
    match socket.send(Message::Text(message.to_json().into())).await {
        Ok(()) if fatal => Flow::Close(close::POLICY, "fatal error"),
        Ok(()) => Flow::Continue,
        Err(_) => Flow::Close(close::GOING_AWAY, "write failed"),
    }
}
