//! The lecture actor: one task per live lecture, the only writer of its stream in this process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use teachback_events::{
    AudioFormat, AudioSegmentStored, Event, FinishReason, LectureAbandoned, LectureCancelled,
    LectureFinished, LecturePaused, LectureResumed, LectureStarted, Metadata, NewEvent, streams,
};
use teachback_projections::lectures::{Lecture, LectureStatus};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::protocol::{self, ServerMessage};
use super::segment::{self, Segmenter};
use super::{Attached, Conn, Frames, Inner, LiveError};
use crate::store::ExpectedVersion;

/// How long finishing waits for the WAL to make the last chunks durable before it goes on.
const DURABLE_WAIT: Duration = Duration::from_secs(5);
/// Attempts at storing a segment or appending an event before giving up for now.
const ATTEMPTS: u32 = 4;

/// A learner's request about the lecture's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Finish,
    Cancel,
}

/// What the actor is asked to do.
pub enum Command {
    Attach {
        conn: Conn,
        reply: oneshot::Sender<Result<Attached, LiveError>>,
    },
    Detach {
        conn_id: u64,
    },
    Audio {
        conn_id: u64,
        seq: u64,
        audio: Bytes,
    },
    /// `conn_id: None` comes from a REST call of the owner, not from a connection.
    Control {
        conn_id: Option<u64>,
        action: Action,
        reply: Option<oneshot::Sender<Result<(), LiveError>>>,
    },
}

pub struct Actor {
    live: Arc<Inner>,
    started: LectureStarted,
    metadata: Metadata,
    version: u64,
    status: LectureStatus,
    /// The last sequence accepted (chunks are accepted in order, without gaps).
    received_seq: u64,
    received_bytes: u64,
    durable: Arc<watch::Sender<u64>>,
    /// Chunks of the open segment (not yet stored as a blob with its event).
    open: Vec<(u64, Bytes)>,
    segmenter: Option<Segmenter>,
    segments: u32,
    stored_ms: u64,
    conn: Option<Conn>,
    detached_at: Option<Instant>,
    /// Set when the stream changed under this actor: it stops without ending the lecture.
    conflicted: bool,
    /// Set when the actor let the lecture go (its learner left; instances share lectures): it
    /// stops without ending the lecture, everything received stored.
    released: bool,
    /// Container recordings end at this wall-clock time (twice the longest lecture).
    deadline: Option<Instant>,
    /// The lecture is finished when its audio reaches this length (ms).
    max_ms: u64,
    /// Container recordings: the most bytes accepted (the day's audio quota counts container
    /// bytes at a fixed rate).
    max_container_bytes: u64,
}

impl Actor {
    pub(crate) fn new(
        live: Arc<Inner>,
        started: LectureStarted,
        version: u64,
        metadata: Metadata,
    ) -> Actor {
        let segmenter = started
            .sample_rate
            .filter(|_| started.format.is_pcm())
            .map(|rate| Segmenter::new(live.settings.rules, rate));
        let deadline =
            (!started.format.is_pcm()).then(|| Instant::now() + live.settings.max_lecture * 2);
        let max_ms = live.settings.max_lecture.as_millis() as u64;
        let max_container_bytes = live.settings.max_recording_bytes;
        Actor {
            live,
            started,
            metadata,
            version,
            status: LectureStatus::Recording,
            received_seq: 0,
            received_bytes: 0,
            durable: Arc::new(watch::channel(0).0),
            open: Vec::new(),
            segmenter,
            segments: 0,
            stored_ms: 0,
            conn: None,
            detached_at: None,
            conflicted: false,
            released: false,
            deadline,
            max_ms,
            max_container_bytes,
        }
    }

    /// Finishes the lecture at `max` of audio if that is sooner than the longest lecture (the
    /// learner's audio quota for the day).
    pub(crate) fn cap_audio(&mut self, max: Duration) {
        self.max_ms = self.max_ms.min(max.as_millis() as u64);
        let bytes =
            max.as_millis() as u64 * teachback_projections::usage::CONTAINER_BYTES_PER_SEC / 1_000;
        self.max_container_bytes = self.max_container_bytes.min(bytes.max(1));
    }

    /// An actor for a lecture found unfinished after a restart, with the WAL's chunks after its
    /// last stored segment. It starts detached: the grace period runs from now.
    pub(crate) fn recover(
        live: Arc<Inner>,
        lecture: Lecture,
        chunks: BTreeMap<u64, Bytes>,
    ) -> Actor {
        let metadata = Metadata {
            correlation_id: Some(Uuid::now_v7()),
            acting_user: Some(lecture.owner()),
            ..Metadata::default()
        };
        let mut actor = Actor::new(live, lecture.started.clone(), lecture.version, metadata);
        actor.status = lecture.status;
        actor.segments = lecture.segments.len() as u32;
        actor.stored_ms = lecture.stored_ms;
        actor.received_seq = lecture.stored_through_seq;
        actor.received_bytes = lecture
            .segments
            .iter()
            .map(|s| audio_bytes(s, lecture.format()))
            .sum();
        for (seq, audio) in chunks.range(lecture.stored_through_seq + 1..) {
            if *seq != actor.received_seq + 1 {
                tracing::warn!(lecture = %actor.id(), seq, "gap in the WAL; later chunks will be resent");
                break;
            }
            actor.take(*seq, audio.clone());
        }
        actor.durable.send_replace(actor.received_seq);
        actor.detached_at = Some(Instant::now());
        actor
    }

    /// An actor for a lecture let go by the instance that ran it (its learner reconnected
    /// here): everything it received is in stored segments. It starts attached-to-be.
    pub(crate) fn take_over(live: Arc<Inner>, lecture: Lecture) -> Actor {
        let mut actor = Actor::recover(live, lecture, BTreeMap::new());
        actor.detached_at = None;
        actor
    }

    /// Whether to let the lecture go now: instances share lectures, and the learner has left.
    fn should_release(&self) -> bool {
        self.live.holder.is_some()
            && self.conn.is_none()
            && self.detached_at.is_some()
            && !self.status.is_terminal()
            && !self.released
            && !self.conflicted
    }

    /// Stores everything received as a segment, so the log holds all the acknowledged audio,
    /// and lets the lecture go: the learner may resume on any instance. On failure (storage
    /// down) the lecture stays here and the grace period runs as usual.
    async fn release(&mut self, frames: &Frames) {
        let mut durable = self.durable.subscribe();
        let target = self.received_seq;
        let _ = tokio::time::timeout(DURABLE_WAIT, durable.wait_for(|d| *d >= target)).await;
        let stored = match self.close_segment(frames).await {
            Ok(()) => {
                let released = Event::LectureReleased(teachback_events::LectureReleased {
                    lecture_id: self.id(),
                    last_seq: self.received_seq,
                });
                self.append(released, frames).await
            }
            Err(e) => Err(e),
        };
        match stored {
            Ok(()) if !self.conflicted => {
                self.released = true;
                tracing::info!(lecture = %self.id(), stored_through = self.received_seq, "learner left; lecture let go");
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(lecture = %self.id(), error = %e, "could not store the audio to let the lecture go; keeping it");
            }
        }
    }

    pub fn id(&self) -> Uuid {
        self.started.lecture_id
    }

    pub fn owner(&self) -> Uuid {
        self.started.user_id
    }

    fn format(&self) -> AudioFormat {
        self.started.format
    }

    fn received_ms(&self) -> Option<u64> {
        self.started
            .sample_rate
            .filter(|_| self.format().is_pcm())
            .map(|rate| segment::pcm_ms(self.received_bytes, rate))
    }

    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>, frames: Frames) {
        let mut wal_failed = self.live.wal.failed();
        loop {
            if self.should_release() {
                self.release(&frames).await;
                if self.released {
                    break;
                }
            }
            let grace_end = self.detached_at.map(|at| at + self.live.settings.grace);
            tokio::select! {
                () = sleep_until(self.deadline) => {
                    // A whole recording (container format) has no audio clock: it is bounded by
                    // wall-clock time instead, so it cannot pin the audio WAL for ever.
                    tracing::info!(lecture = %self.id(), "recording reached its time limit; finishing");
                    self.deadline = match self.end(Action::Finish, Some(EndKind::MaxDuration), &frames).await {
                        Ok(()) => None,
                        Err(e) if e.code == "no_audio" => {
                            self.end(Action::Cancel, None, &frames).await.ok();
                            None
                        }
                        Err(_) => Some(Instant::now() + Duration::from_secs(30)),
                    };
                }
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    self.handle(command, &frames).await;
                }
                () = sleep_until(grace_end) => {
                    tracing::info!(lecture = %self.id(), "learner did not come back; abandoning");
                    // On failure (storage down) the grace period simply starts again.
                    self.detached_at = match self.end(Action::Cancel, Some(EndKind::Abandon), &frames).await {
                        Ok(()) => None,
                        Err(_) => Some(Instant::now()),
                    };
                }
                Ok(()) = wal_failed.changed() => {
                    if wal_failed.borrow().is_some() && let Some(conn) = self.conn.take() {
                        conn.kick(ServerMessage::fatal(
                            "storage_unavailable",
                            "audio storage failed; reconnect later to resume from the last acknowledged chunk",
                        ));
                        self.detached_at = Some(Instant::now());
                    }
                }
            }
            if self.status.is_terminal() || self.conflicted {
                break;
            }
        }
        self.live.remove(self.id(), self.owner());
        // Before the lock goes (and another actor may take the lecture and write to the WAL
        // under its id), this actor's WAL entries go.
        if (self.status.is_terminal() || self.released) && !self.conflicted {
            self.live.wal.forget(self.id());
        }
        if let Some(holder) = &self.live.holder {
            holder.release(self.id()).await;
        }
        // What was queued behind the end is refused, so no chunk goes unanswered.
        commands.close();
        while let Ok(command) = commands.try_recv() {
            let ended = || {
                LiveError::new(
                    "lecture_ended",
                    format!("the lecture is {}", self.status.as_str()),
                )
            };
            match command {
                Command::Audio { conn_id, seq, .. } => {
                    if self.conn.as_ref().is_some_and(|c| c.id == conn_id) {
                        self.refuse(
                            "lecture_finished",
                            format!("chunk {seq} came after the lecture ended; it was not kept"),
                            None,
                        );
                    }
                }
                Command::Control {
                    reply: Some(reply), ..
                } if self.released => {
                    let _ = reply.send(Err(released()));
                }
                Command::Control {
                    reply: Some(reply), ..
                } => {
                    let _ = reply.send(Err(ended()));
                }
                Command::Attach { reply, .. } if self.released => {
                    let _ = reply.send(Err(released()));
                }
                Command::Attach { reply, .. } => {
                    let _ = reply.send(Err(ended()));
                }
                Command::Control { reply: None, .. } | Command::Detach { .. } => {}
            }
        }
    }

    async fn handle(&mut self, command: Command, frames: &Frames) {
        match command {
            Command::Attach { conn, reply } => {
                if let Some(old) = self.conn.replace(conn) {
                    old.kick(ServerMessage::fatal(
                        "superseded",
                        "this lecture was reconnected on another connection",
                    ));
                }
                self.detached_at = None;
                // Answer with what is durable; chunks still in flight become durable first.
                let mut durable = self.durable.subscribe();
                let target = self.received_seq;
                let _ =
                    tokio::time::timeout(DURABLE_WAIT, durable.wait_for(|d| *d >= target)).await;
                let last_seq = *durable.borrow_and_update();
                if self.live.wal.has_failed() {
                    let _ = reply.send(Err(LiveError::new(
                        "storage_unavailable",
                        "audio storage is failing on this server; try again later",
                    )));
                    self.conn = None;
                    return;
                }
                let _ = reply.send(Ok(Attached {
                    lecture_id: self.id(),
                    handle: None,
                    durable,
                    last_seq,
                    state: self.status.as_str(),
                    segments: self.segments,
                }));
            }
            Command::Detach { conn_id } => {
                if self.conn.as_ref().is_some_and(|c| c.id == conn_id) {
                    self.conn = None;
                    self.detached_at = Some(Instant::now());
                }
            }
            Command::Audio {
                conn_id,
                seq,
                audio,
            } => {
                if self.conn.as_ref().is_some_and(|c| c.id == conn_id) {
                    self.audio(seq, audio, frames).await;
                }
            }
            Command::Control {
                conn_id,
                action,
                reply,
            } => {
                if let Some(id) = conn_id
                    && self.conn.as_ref().is_none_or(|c| c.id != id)
                {
                    return;
                }
                let result = self.control(action, frames).await;
                if self.conn.is_none() && self.detached_at.is_none() {
                    // Taken over only to be controlled: nobody is connected, so the grace
                    // period (or, shared, letting it go again) starts now.
                    self.detached_at = Some(Instant::now());
                }
                match reply {
                    Some(reply) => {
                        let _ = reply.send(result);
                    }
                    None => {
                        if let Err(e) = result {
                            self.send(Arc::new(e.to_message(false)));
                        }
                    }
                }
            }
        }
    }

    /// Sends a frame to the attached connection. A connection too slow to take it is dropped
    /// (it can reconnect and resume).
    fn send(&mut self, message: Arc<ServerMessage>) {
        if let Some(conn) = &self.conn
            && conn.out.try_send(message).is_err()
        {
            tracing::warn!(lecture = %self.id(), "connection not reading its frames; detaching it");
            conn.kick(ServerMessage::fatal(
                "too_slow",
                "the connection fell behind reading its frames; reconnect to resume",
            ));
            self.conn = None;
            self.detached_at = Some(Instant::now());
        }
    }

    fn refuse(&mut self, code: &'static str, message: String, expected_seq: Option<u64>) {
        self.send(Arc::new(ServerMessage::Error {
            code,
            message,
            fatal: false,
            lecture_id: Some(self.id()),
            expected_seq,
            retry_after_secs: None,
        }));
    }

    async fn audio(&mut self, seq: u64, audio: Bytes, frames: &Frames) {
        if self.live.wal.has_failed() {
            if let Some(conn) = self.conn.take() {
                conn.kick(ServerMessage::fatal(
                    "storage_unavailable",
                    "audio storage is failing on this server; reconnect later to resume from the last acknowledged chunk",
                ));
                self.detached_at = Some(Instant::now());
            }
            return;
        }
        if seq <= self.received_seq {
            // A resend of something already accepted: idempotent. Confirm it if already durable.
            let durable = *self.durable.borrow();
            if durable >= seq {
                let id = self.id();
                self.send(Arc::new(ServerMessage::Ack {
                    lecture_id: id,
                    seq: durable,
                }));
            }
            return;
        }
        if self.status == LectureStatus::Paused {
            return self.refuse(
                "lecture_paused",
                "the lecture is paused; send `resume` before more audio (this chunk was not kept)"
                    .into(),
                Some(self.received_seq + 1),
            );
        }
        if seq != self.received_seq + 1 {
            return self.refuse(
                "sequence_gap",
                format!(
                    "expected chunk {} but got {seq}; send the missing chunks first (this one was not kept)",
                    self.received_seq + 1
                ),
                Some(self.received_seq + 1),
            );
        }
        if audio.is_empty() || (self.format().is_pcm() && audio.len() % 2 != 0) {
            return self.refuse(
                "invalid_audio",
                "an audio chunk must be non-empty, and pcm_s16le chunks must hold whole 16-bit samples"
                    .into(),
                Some(self.received_seq + 1),
            );
        }
        if !self.format().is_pcm()
            && self.received_bytes + audio.len() as u64 > self.max_container_bytes
        {
            self.refuse(
                "recording_too_large",
                format!(
                    "a recording may hold at most {} bytes (the longest lecture, or the audio \
                     left of today's quota); the lecture was finished with what was sent before \
                     this chunk",
                    self.max_container_bytes
                ),
                None,
            );
            let _ = self
                .end(Action::Finish, Some(EndKind::MaxDuration), frames)
                .await;
            return;
        }
        self.live
            .wal
            .write(self.id(), seq, audio.clone(), &self.durable);
        let cut = self.take(seq, audio);
        let too_long = self.received_ms().is_some_and(|ms| ms >= self.max_ms);
        if too_long {
            let _ = self
                .end(Action::Finish, Some(EndKind::MaxDuration), frames)
                .await;
        } else if cut {
            // A failure is reported and retried at the next cut (the audio stays in the WAL);
            // until then the segment just grows.
            if let Err(e) = self.close_segment(frames).await {
                if let Some(s) = self.segmenter.as_mut() {
                    s.reset();
                }
                self.send(Arc::new(e.to_message(false)));
            }
        }
    }

    /// Accepts a chunk into the open segment; returns whether the segment should now be closed.
    fn take(&mut self, seq: u64, audio: Bytes) -> bool {
        self.received_seq = seq;
        self.received_bytes += audio.len() as u64;
        let cut = self.segmenter.as_mut().is_some_and(|s| s.push(&audio));
        self.open.push((seq, audio));
        cut
    }

    async fn control(&mut self, action: Action, frames: &Frames) -> Result<(), LiveError> {
        let at_ms = self.received_ms().unwrap_or(0);
        match (action, self.status) {
            (Action::Pause, LectureStatus::Recording) => {
                if self.format().is_pcm() {
                    self.close_segment(frames).await?;
                }
                let lecture_id = self.id();
                self.append(
                    Event::LecturePaused(LecturePaused { lecture_id, at_ms }),
                    frames,
                )
                .await?;
                self.status = LectureStatus::Paused;
                Ok(())
            }
            (Action::Resume, LectureStatus::Paused) => {
                let lecture_id = self.id();
                self.append(
                    Event::LectureResumed(LectureResumed { lecture_id, at_ms }),
                    frames,
                )
                .await?;
                self.status = LectureStatus::Recording;
                Ok(())
            }
            (Action::Pause, LectureStatus::Paused) => Err(LiveError::new(
                "invalid_state",
                "the lecture is already paused",
            )),
            (Action::Resume, LectureStatus::Recording) => {
                Err(LiveError::new("invalid_state", "the lecture is not paused"))
            }
            (Action::Finish, _) => self.end(Action::Finish, None, frames).await,
            (Action::Cancel, _) => self.end(Action::Cancel, None, frames).await,
            (_, status) => Err(LiveError::new(
                "lecture_ended",
                format!("the lecture is {}", status.as_str()),
            )),
        }
    }

    /// Ends the lecture: stores the open segment, then appends the terminal event.
    async fn end(
        &mut self,
        action: Action,
        kind: Option<EndKind>,
        frames: &Frames,
    ) -> Result<(), LiveError> {
        if self.status.is_terminal() {
            return Err(LiveError::new(
                "lecture_ended",
                format!("the lecture is {}", self.status.as_str()),
            ));
        }
        if action == Action::Finish && self.segments == 0 && self.open.is_empty() {
            return Err(LiveError::new(
                "no_audio",
                "nothing was recorded; send audio before finishing, or cancel",
            ));
        }
        // Let acknowledgements of the last chunks go out before the final state.
        let mut durable = self.durable.subscribe();
        let target = self.received_seq;
        let _ = tokio::time::timeout(DURABLE_WAIT, durable.wait_for(|d| *d >= target)).await;
        self.close_segment(frames).await?;
        let lecture_id = self.id();
        let segments = self.segments;
        let duration_ms = self.format().is_pcm().then_some(self.stored_ms);
        let (event, status) = match (action, kind) {
            (_, Some(EndKind::Abandon)) => (
                Event::LectureAbandoned(LectureAbandoned {
                    lecture_id,
                    segments,
                    duration_ms,
                }),
                LectureStatus::Abandoned,
            ),
            (Action::Cancel, _) => (
                Event::LectureCancelled(LectureCancelled {
                    lecture_id,
                    segments,
                }),
                LectureStatus::Cancelled,
            ),
            _ => (
                Event::LectureFinished(LectureFinished {
                    lecture_id,
                    duration_ms,
                    segments,
                    reason: if kind == Some(EndKind::MaxDuration) {
                        FinishReason::MaxDuration
                    } else {
                        FinishReason::Learner
                    },
                }),
                LectureStatus::Finished,
            ),
        };
        self.append(event, frames).await?;
        tracing::info!(lecture = %self.id(), status = status.as_str(), "lecture ended");
        self.status = status;
        Ok(())
    }

    /// Stores the open segment as a blob and records it with `AudioSegmentStored`.
    async fn close_segment(&mut self, frames: &Frames) -> Result<(), LiveError> {
        let (Some((first_seq, _)), Some((last_seq, _))) = (self.open.first(), self.open.last())
        else {
            return Ok(());
        };
        let (first_seq, last_seq) = (*first_seq, *last_seq);
        let mut audio = Vec::with_capacity(self.open.iter().map(|(_, a)| a.len()).sum());
        for (_, chunk) in &self.open {
            audio.extend_from_slice(chunk);
        }
        let (blob, duration_ms) = match self.started.sample_rate.filter(|_| self.format().is_pcm())
        {
            Some(rate) => {
                let ms = segment::pcm_ms(audio.len() as u64, rate);
                (segment::wav(&audio, rate), Some(ms))
            }
            None => (audio, None),
        };
        let blob = Bytes::from(blob);
        let index = self.segments;
        let sha256 = hex::encode(Sha256::digest(&blob));
        // The content's hash is part of the key: a retry or a second writer can never replace a
        // blob that an event already describes with different bytes.
        let key = format!(
            "lectures/{}/segment-{index:06}-{}.{}",
            self.id(),
            &sha256[..16],
            self.format().extension()
        );
        let mut attempt = 0;
        loop {
            match self.live.blobs.put(&key, blob.clone()).await {
                Ok(()) => break,
                Err(e) if attempt + 1 < ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(lecture = %self.id(), error = %e, attempt, "storing a segment failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                Err(e) => {
                    tracing::error!(lecture = %self.id(), error = %e, "storing a segment failed");
                    return Err(LiveError::new(
                        "storage_unavailable",
                        "audio storage is failing; your audio is safe and will be stored when it recovers",
                    ));
                }
            }
        }
        let event = Event::AudioSegmentStored(AudioSegmentStored {
            lecture_id: self.id(),
            index,
            blob_key: key,
            bytes: blob.len() as u64,
            duration_ms,
            sha256,
            first_seq,
            last_seq,
        });
        self.append(event, frames).await?;
        self.live.wal.release(self.id(), last_seq);
        self.open.clear();
        self.segments += 1;
        self.stored_ms += duration_ms.unwrap_or(0);
        if let Some(s) = self.segmenter.as_mut() {
            s.reset();
        }
        Ok(())
    }

    /// Whether every event after this actor's version records processing (transcripts written by
    /// the pipeline while the learner talks). If so, the actor's version moves past them.
    async fn only_processing_since(&mut self) -> bool {
        let stepped = self
            .live
            .store
            .version_if_only(
                &streams::lecture(self.id()),
                self.version,
                teachback_events::RecordedEvent::is_processing,
            )
            .await;
        match stepped {
            Ok(Some(version)) => {
                self.version = version;
                true
            }
            _ => false,
        }
    }

    /// Appends an event to the lecture's stream (retrying transient failures with the same id,
    /// which makes a retry of a write that did land a no-op) and sends its frame out.
    async fn append(&mut self, event: Event, frames: &Frames) -> Result<(), LiveError> {
        let new = NewEvent::from_event(&event, self.metadata.clone());
        let stream = streams::lecture(self.id());
        let mut attempt = 0;
        let outcome = loop {
            let result = self
                .live
                .store
                .append_to_stream(
                    &stream,
                    ExpectedVersion::Exact(self.version),
                    vec![new.clone()],
                )
                .await;
            match result {
                Ok(outcome) => break outcome,
                Err(e) if super::is_conflict(&e) && self.only_processing_since().await => {
                    // The pipeline recorded a transcript in between: that is not a change to the
                    // recording. Go on after it.
                    continue;
                }
                Err(e) if super::is_conflict(&e) => {
                    // Someone else wrote this lecture: this actor's picture is stale. Stop.
                    tracing::error!(lecture = %self.id(), error = %e, "lecture stream changed under its actor");
                    if let Some(conn) = self.conn.take() {
                        conn.kick(ServerMessage::fatal(
                            "lecture_conflict",
                            "the lecture was changed elsewhere",
                        ));
                    }
                    self.conflicted = true;
                    return Err(LiveError::internal());
                }
                Err(e) if attempt + 1 < ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(lecture = %self.id(), error = %e, attempt, "append failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                Err(e) => {
                    tracing::error!(lecture = %self.id(), error = %e, "append failed");
                    return Err(LiveError::new(
                        "storage_unavailable",
                        "the event log is unavailable; your audio is safe, try again shortly",
                    ));
                }
            }
        };
        self.version = outcome.version;
        if let Some(message) = protocol::event_message(&event, self.version) {
            let message = Arc::new(message);
            frames.send(message.clone());
            self.send(message);
        }
        if matches!(
            event,
            Event::AudioSegmentStored(_) | Event::LectureFinished(_)
        ) {
            (self.live.on_stored)(self.id());
        }
        Ok(())
    }
}

/// The answer to what was queued for an actor that let its lecture go: the caller takes it over.
fn released() -> LiveError {
    LiveError::new(
        "lecture_released",
        "the lecture was let go; reconnect to take it over",
    )
}

/// How a lecture ends when the learner did not simply ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndKind {
    MaxDuration,
    Abandon,
}

/// Bytes of audio a stored segment holds (its WAV header excluded).
fn audio_bytes(segment: &AudioSegmentStored, format: AudioFormat) -> u64 {
    if format.is_pcm() {
        segment.bytes.saturating_sub(44)
    } else {
        segment.bytes
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
