//! `teachback replay`: a lecture's timeline as it happened, from the log.
//!
//! The frames are the ones a live watcher gets (each lecture event becomes its frame through
//! [`protocol::event_message`], the function the live session uses), at the times the events
//! were recorded: segments stored, transcripts, the coalesced feedback as it streamed, the grade.
//! They can be printed with their original timing (`--speed`, `--instant`) or served over a
//! WebSocket to observers, as a live watch would send them (`--serve`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use teachback_events::RecordedEvent;
use uuid::Uuid;

use crate::live::protocol::{self, ServerMessage};

/// One frame of the timeline.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Since the lecture's first event.
    pub at: Duration,
    pub message: Arc<ServerMessage>,
}

/// The frames of a lecture's events (its stream, in order), with their times. Events that are
/// not lecture frames are skipped; an event this build cannot decode is skipped too (a newer
/// build wrote it).
pub fn timeline(events: &[RecordedEvent]) -> Vec<Frame> {
    let Some(first) = events.first().map(|e| e.recorded_at) else {
        return Vec::new();
    };
    events
        .iter()
        .filter_map(|event| {
            let decoded = event.decode().ok()?;
            let message = protocol::event_message(&decoded, event.stream_version)?;
            let at = event.recorded_at.duration_since(first);
            Some(Frame {
                at: Duration::try_from(at).unwrap_or_default(),
                message: Arc::new(message),
            })
        })
        .collect()
}

/// How fast to play.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// With the original gaps, divided by this.
    Speed(f64),
    /// No waiting.
    Instant,
}

impl Pace {
    /// How long to wait before the frame at `at`, the previous one having been at `previous`.
    pub fn gap(self, previous: Duration, at: Duration) -> Duration {
        match self {
            Pace::Instant => Duration::ZERO,
            Pace::Speed(speed) => at.saturating_sub(previous).div_f64(speed.max(1e-6)),
        }
    }
}

/// Plays `frames` to `sink` at `pace`; stops early when the sink says so (`false`).
pub async fn play(frames: &[Frame], pace: Pace, mut sink: impl AsyncFnMut(&Frame) -> bool) {
    let mut previous = Duration::ZERO;
    for frame in frames {
        let gap = pace.gap(previous, frame.at);
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        previous = frame.at;
        if !sink(frame).await {
            return;
        }
    }
}

/// A human-readable line for a frame: its time, its type, and what it says.
pub fn describe(frame: &Frame) -> String {
    let secs = frame.at.as_secs_f64();
    let json: serde_json::Value =
        serde_json::from_str(&frame.message.to_json()).unwrap_or_default();
    let kind = json["type"].as_str().unwrap_or("?").to_owned();
    let detail = match kind.as_str() {
        "started" => format!("topic {} ({})", json["topicId"], json["format"]),
        "segment" => format!(
            "segment {} stored: {} ms, {} bytes",
            json["index"], json["durationMs"], json["bytes"]
        ),
        "state" => format!("{}", json["state"]),
        "transcript" | "transcriptSegment" => format!("{}", json["text"]),
        "feedback" => format!("{}", json["text"]),
        "graded" => format!("score {} by {}", json["score"], json["grader"]),
        _ => {
            let mut rest = json.clone();
            if let Some(map) = rest.as_object_mut() {
                map.remove("type");
                map.remove("lectureId");
                map.remove("version");
            }
            rest.to_string()
        }
    };
    format!("+{secs:>9.3}s  {kind:<18} {detail}")
}

#[derive(Clone)]
struct Served {
    lecture_id: Uuid,
    frames: Arc<Vec<Frame>>,
    pace: Pace,
}

/// Serves the timeline at `/api/v1/lectures/{lecture_id}/watch` (the live watch's path) on
/// `listener`, to every observer that connects, each from the start, until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    lecture_id: Uuid,
    frames: Vec<Frame>,
    pace: Pace,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let served = Served {
        lecture_id,
        frames: Arc::new(frames),
        pace,
    };
    let router = axum::Router::new()
        .route("/api/v1/lectures/{id}/watch", axum::routing::get(watch))
        .with_state(served);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn watch(
    State(served): State<Served>,
    Path(id): Path<Uuid>,
    ws: WebSocketUpgrade,
) -> Result<Response, (axum::http::StatusCode, &'static str)> {
    if id != served.lecture_id {
        return Err((
            axum::http::StatusCode::NOT_FOUND,
            "this replay serves another lecture",
        ));
    }
    Ok(ws.on_upgrade(move |socket| replay_to(socket, served)))
}

async fn replay_to(mut socket: WebSocket, served: Served) {
    let mut previous = Duration::ZERO;
    for frame in served.frames.iter() {
        let gap = served.pace.gap(previous, frame.at);
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        previous = frame.at;
        let text = frame.message.to_json();
        if socket.send(Message::Text(text.into())).await.is_err() {
            return;
        }
    }
    // As a live watch ends once the lecture is over.
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "lecture over".into(),
        })))
        .await;
}

/// Where `--serve` listens, for the CLI's message.
pub fn watch_url(addr: SocketAddr, lecture_id: Uuid) -> String {
    format!("ws://{addr}/api/v1/lectures/{lecture_id}/watch")
}
