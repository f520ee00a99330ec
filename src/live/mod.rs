//! Live lectures: the in-memory state of every lecture being recorded, and the rules it follows.
//!
//! Each live lecture is one task (an actor, [`lecture`]) that owns its state: the open segment's
//! audio, the voice activity detector, the next expected sequence number, its stream version.
//! Connections send it commands; it appends the lecture's events, stores segments, and fans its
//! frames out to the learner's connection and to observers (a broadcast channel). The registry
//! ([`Live`], a `DashMap`) finds a lecture by id and counts each learner's live lectures.
//!
//! Audio is durable before it is acknowledged: chunks go to the shared audio WAL ([`wal`], group
//! commit); segments cut by [`segment`] become WAV blobs and `AudioSegmentStored` events, after
//! which the WAL lets them go. After a crash, [`Live::recover`] rebuilds every unfinished lecture
//! from its stream and the WAL, and waits for its learner to reconnect.
//!
//! # Layout
//! - [`protocol`]: the WebSocket messages.
//! - [`segment`]: voice activity detection, segment cutting, WAV encoding.
//! - [`sniff`]: recognising a recording's container from its first bytes.
//! - [`wal`]: the audio write-ahead log.
//! - [`lecture`]: the lecture actor.

pub mod holder;
pub mod hub;
pub mod lecture;
pub mod protocol;
pub mod segment;
pub mod sniff;
pub mod wal;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use teachback_events::{
    AudioFormat, Event, LectureMode, LectureStarted, Metadata, NewEvent, streams,
};
use teachback_projections::lectures::Lecture;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::blob::BlobStore;
use crate::store::{AppendError, EventStore, ExpectedVersion};
use hub::Hub;
use lecture::{Actor, Command};
use protocol::ServerMessage;
use segment::SegmentRules;
use wal::{AudioWal, Recovered};

/// How live lectures behave. From the configuration.
#[derive(Debug, Clone, Copy)]
pub struct LiveSettings {
    pub rules: SegmentRules,
    /// Longest lecture (audio); at this length it is finished.
    pub max_lecture: Duration,
    /// How long an interrupted lecture waits for its learner.
    pub grace: Duration,
    pub max_per_user: usize,
    /// Largest container recording, in bytes.
    pub max_recording_bytes: u64,
}

impl Default for LiveSettings {
    fn default() -> Self {
        LiveSettings {
            rules: SegmentRules::default(),
            max_lecture: Duration::from_secs(600),
            grace: Duration::from_secs(120),
            max_per_user: 1,
            max_recording_bytes: 32 * 1024 * 1024,
        }
    }
}

/// A refusal, with a stable code for clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LiveError {
    pub code: &'static str,
    pub message: String,
    /// The lecture the error is about, when the client may not know it (e.g. the one in the way).
    pub lecture_id: Option<Uuid>,
    /// For refusals that pass with time (rate limits, quotas): when to try again.
    pub retry_after_secs: Option<u64>,
}

impl LiveError {
    pub fn new(code: &'static str, message: impl Into<String>) -> LiveError {
        LiveError {
            code,
            message: message.into(),
            lecture_id: None,
            retry_after_secs: None,
        }
    }

    pub fn not_found() -> LiveError {
        LiveError::new("lecture_not_found", "no such lecture")
    }

    pub fn internal() -> LiveError {
        LiveError::new("internal", "an internal error occurred; it has been logged")
    }

    pub fn to_message(&self, fatal: bool) -> ServerMessage {
        ServerMessage::Error {
            code: self.code,
            message: self.message.clone(),
            fatal,
            lecture_id: self.lecture_id,
            expected_seq: None,
            retry_after_secs: self.retry_after_secs,
        }
    }
}

/// A connection attached to a lecture: where the lecture sends its frames.
#[derive(Debug, Clone)]
pub struct Conn {
    pub id: u64,
    pub out: mpsc::Sender<Arc<ServerMessage>>,
    /// Set (with the fatal frame to send) when the lecture lets this connection go: another
    /// connection took the lecture over, or this one fell too far behind reading its frames.
    pub kick: Arc<watch::Sender<Option<Arc<ServerMessage>>>>,
}

impl Conn {
    /// Tells the connection to close with `message`.
    pub fn kick(&self, message: ServerMessage) {
        self.kick.send_replace(Some(Arc::new(message)));
    }
}

/// What attaching to a lecture gives a connection.
#[derive(Debug)]
pub struct Attached {
    pub lecture_id: Uuid,
    /// Filled in by the registry; the actor leaves it `None`.
    pub handle: Option<LectureHandle>,
    /// The highest sequence durably stored; acknowledgements follow its changes.
    pub durable: watch::Receiver<u64>,
    pub last_seq: u64,
    pub state: &'static str,
    pub segments: u32,
}

/// A handle to a live lecture's actor.
#[derive(Clone, Debug)]
pub struct LectureHandle {
    pub id: Uuid,
    pub owner: Uuid,
    commands: mpsc::Sender<Command>,
}

impl LectureHandle {
    /// Sends a command; `false` if the lecture has just ended.
    pub async fn send(&self, command: Command) -> bool {
        self.commands.send(command).await.is_ok()
    }
}

/// What a new lecture is about.
#[derive(Debug, Clone)]
pub struct NewLecture {
    pub user: Uuid,
    pub topic_id: String,
    pub format: AudioFormat,
    pub sample_rate: Option<u32>,
    pub language: String,
    pub metadata: Metadata,
    /// Audio the learner has left today, when it is less than the longest lecture: the lecture
    /// is finished when it is used up.
    pub max_audio: Option<Duration>,
}

/// A callback told a lecture's id.
pub type Notifier = Arc<dyn Fn(Uuid) + Send + Sync>;

/// Where an actor's frames go: the hub, under its lecture.
pub(crate) struct Frames {
    hub: Hub,
    lecture: Uuid,
}

impl Frames {
    pub(crate) fn send(&self, frame: Arc<ServerMessage>) {
        self.hub.publish(self.lecture, frame);
    }
}

/// The registry of live lectures. Cheap to clone.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: EventStore,
    pub(crate) blobs: Arc<dyn BlobStore>,
    pub(crate) wal: AudioWal,
    pub(crate) settings: LiveSettings,
    pub(crate) hub: Hub,
    /// Told the id of a lecture that stored a segment or finished (the pipeline listens).
    pub(crate) on_stored: Notifier,
    lectures: DashMap<Uuid, LectureHandle>,
    by_user: DashMap<Uuid, Vec<Uuid>>,
    next_conn: AtomicU64,
    /// Raised when the server begins to shut down: connections close with 1012 so that clients
    /// reconnect (to this server once it is back, or to another) and resume.
    shutdown: watch::Sender<bool>,
    /// With several instances on PostgreSQL: the locks of the lectures this instance runs. An
    /// actor then lets its lecture go as soon as its learner's connection drops, so that the
    /// learner may resume on any instance.
    pub(crate) holder: Option<Arc<holder::Holder>>,
}

impl Inner {
    /// Called by an actor as it stops.
    pub(crate) fn remove(&self, lecture: Uuid, owner: Uuid) {
        self.lectures.remove(&lecture);
        if let dashmap::mapref::entry::Entry::Occupied(mut e) = self.by_user.entry(owner) {
            e.get_mut().retain(|l| *l != lecture);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }
}

impl Live {
    pub fn new(
        store: EventStore,
        blobs: Arc<dyn BlobStore>,
        wal: AudioWal,
        settings: LiveSettings,
        hub: Hub,
        on_stored: Notifier,
        holder: Option<Arc<holder::Holder>>,
    ) -> Live {
        Live {
            inner: Arc::new(Inner {
                store,
                blobs,
                wal,
                settings,
                hub,
                on_stored,
                lectures: DashMap::new(),
                by_user: DashMap::new(),
                next_conn: AtomicU64::new(1),
                shutdown: watch::channel(false).0,
                holder,
            }),
        }
    }

    /// The locks of the lectures this instance runs, when instances share lectures
    /// (PostgreSQL).
    pub fn holder(&self) -> Option<&Arc<holder::Holder>> {
        self.inner.holder.as_ref()
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub fn settings(&self) -> &LiveSettings {
        &self.inner.settings
    }

    pub fn wal(&self) -> &AudioWal {
        &self.inner.wal
    }

    /// Tells every live connection that the server is going away.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Becomes `true` when the server begins to shut down.
    pub fn shutting_down(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// A fresh connection id.
    pub fn conn_id(&self) -> u64 {
        self.inner.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// How many lectures are live (recording, paused or waiting for a reconnect).
    pub fn len(&self) -> usize {
        self.inner.lectures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.lectures.is_empty()
    }

    pub fn get(&self, lecture: Uuid) -> Option<LectureHandle> {
        self.inner.lectures.get(&lecture).map(|h| h.clone())
    }

    /// Starts a live lecture and attaches `conn` to it.
    pub async fn start(
        &self,
        new: NewLecture,
        conn: Conn,
    ) -> Result<(Attached, ServerMessage), LiveError> {
        let lecture_id = Uuid::now_v7();
        // Take a slot first, atomically per learner, so two starts cannot both pass the limit.
        {
            let mut slots = self.inner.by_user.entry(new.user).or_default();
            if slots.len() >= self.inner.settings.max_per_user {
                let mut e = LiveError::new(
                    "too_many_live_lectures",
                    format!(
                        "you already have {} live lecture(s), the most allowed; reconnect to it, \
                         finish it or cancel it first",
                        slots.len()
                    ),
                );
                e.lecture_id = slots.first().copied();
                return Err(e);
            }
            slots.push(lecture_id);
        }
        let started = LectureStarted {
            lecture_id,
            user_id: new.user,
            topic_id: new.topic_id,
            format: new.format,
            sample_rate: new.sample_rate,
            language: new.language,
            mode: LectureMode::Live,
        };
        let event = Event::LectureStarted(started.clone());
        let appended = self
            .inner
            .store
            .append_to_stream(
                &streams::lecture(lecture_id),
                ExpectedVersion::NoStream,
                vec![NewEvent::from_event(&event, new.metadata.clone())],
            )
            .await;
        let appended = match appended {
            Ok(a) => a,
            Err(e) => {
                self.inner.remove(lecture_id, new.user);
                tracing::error!(error = %e, "could not start a lecture");
                return Err(LiveError::internal());
            }
        };
        let version = appended.version;
        if let Some(holder) = &self.inner.holder
            && !matches!(holder.try_hold(lecture_id).await, Ok(true))
        {
            // A brand-new id nobody else can know: only a broken lock session gets here.
            tracing::warn!(lecture = %lecture_id, "could not take the lock of a new lecture");
        }
        let started_message =
            protocol::event_message(&event, version).expect("LectureStarted has a frame");
        let mut actor = Actor::new(self.inner.clone(), started, version, new.metadata);
        if let Some(max) = new.max_audio {
            actor.cap_audio(max);
        }
        let handle = self.spawn(actor);
        let attached = self.attach(&handle, conn).await?;
        Ok((attached, started_message))
    }

    fn spawn(&self, actor: Actor) -> LectureHandle {
        let (commands, rx) = mpsc::channel(256);
        let handle = LectureHandle {
            id: actor.id(),
            owner: actor.owner(),
            commands,
        };
        let frames = Frames {
            hub: self.inner.hub.clone(),
            lecture: handle.id,
        };
        self.inner.lectures.insert(handle.id, handle.clone());
        let mut slots = self.inner.by_user.entry(handle.owner).or_default();
        if !slots.contains(&handle.id) {
            slots.push(handle.id);
        }
        drop(slots);
        tokio::spawn(actor.run(rx, frames));
        handle
    }

    /// Attaches `conn` to a live lecture of `user`. Another learner's lecture and a lecture that
    /// does not exist get the same answer.
    pub async fn reconnect(
        &self,
        user: Uuid,
        lecture: Uuid,
        conn: Conn,
    ) -> Result<Attached, LiveError> {
        if let Some(handle) = self.get(lecture) {
            if handle.owner != user {
                return Err(not_live());
            }
            match self.attach(&handle, conn.clone()).await {
                // It let the lecture go (or stopped) while this reconnect waited: where lectures
                // are shared, take it over below (which finds out whether it ended).
                Err(e) if e.code == "lecture_released" => {}
                Err(e) if e.code == "lecture_ended" && self.inner.holder.is_some() => {}
                other => return other,
            }
        }
        if self.inner.holder.is_none() {
            return Err(not_live());
        }
        let handle = self.take_over(user, lecture).await?;
        self.attach(&handle, conn).await
    }

    /// Runs a lecture no instance holds here (its learner's connection dropped on this or
    /// another instance): its state from its stream, its audio from its stored segments.
    async fn take_over(&self, user: Uuid, lecture: Uuid) -> Result<LectureHandle, LiveError> {
        let holder = self.inner.holder.as_ref().expect("shared lectures");
        let elsewhere = || {
            let mut e = LiveError::new(
                "lecture_elsewhere",
                "the lecture is still held by another server, which is storing its audio; retry in a moment",
            );
            e.retry_after_secs = Some(1);
            e
        };
        match holder.try_hold(lecture).await {
            Ok(true) => {}
            Ok(false) => return Err(elsewhere()),
            Err(e) => {
                tracing::error!(error = %e, "taking a lecture's lock failed");
                return Err(LiveError::internal());
            }
        }
        let events = match self
            .inner
            .store
            .read_stream_all(&streams::lecture(lecture))
            .await
        {
            Ok(events) => events,
            Err(e) => {
                holder.release(lecture).await;
                tracing::error!(error = %e, "reading a lecture to take it over failed");
                return Err(LiveError::internal());
            }
        };
        let folded = Lecture::fold(&events).ok().flatten().filter(|l| {
            l.owner() == user && l.mode() == LectureMode::Live && !l.status.is_terminal()
        });
        let Some(folded) = folded else {
            holder.release(lecture).await;
            return Err(not_live());
        };
        {
            let mut slots = self.inner.by_user.entry(user).or_default();
            if !slots.contains(&lecture) {
                slots.push(lecture);
            }
        }
        tracing::info!(%lecture, stored_through = folded.stored_through_seq, "took a live lecture over");
        metrics::counter!("teachback_live_takeovers_total").increment(1);
        Ok(self.spawn(Actor::take_over(self.inner.clone(), folded)))
    }

    async fn attach(&self, handle: &LectureHandle, conn: Conn) -> Result<Attached, LiveError> {
        let (reply, answer) = oneshot::channel();
        if !handle.send(Command::Attach { conn, reply }).await {
            return Err(LiveError::new(
                "lecture_ended",
                "the lecture has just ended",
            ));
        }
        let mut attached = answer.await.unwrap_or_else(|_| {
            Err(LiveError::new(
                "lecture_ended",
                "the lecture has just ended",
            ))
        })?;
        attached.handle = Some(handle.clone());
        Ok(attached)
    }

    /// Shared lectures (PostgreSQL): abandons those of `unfinished` that no instance holds and
    /// whose learner has been gone for the grace period (their instance let them go and nobody
    /// resumed them, or it died). Run by one instance at a time. Returns how many it abandoned.
    pub async fn sweep_orphans(&self, unfinished: Vec<Uuid>) -> usize {
        let Some(holder) = self.inner.holder.clone() else {
            return 0;
        };
        let mut abandoned = 0;
        for id in unfinished {
            if self.get(id).is_some() || !matches!(holder.try_hold(id).await, Ok(true)) {
                continue;
            }
            if self.abandon_orphan(id).await {
                abandoned += 1;
            }
            holder.release(id).await;
        }
        abandoned
    }

    async fn abandon_orphan(&self, id: Uuid) -> bool {
        let stream = streams::lecture(id);
        let Ok(events) = self.inner.store.read_stream_all(&stream).await else {
            return false;
        };
        let (Some(last), Ok(Some(lecture))) = (events.last(), Lecture::fold(&events)) else {
            return false;
        };
        let gone_for = jiff::Timestamp::now().duration_since(last.recorded_at);
        if lecture.status.is_terminal()
            || lecture.mode() != LectureMode::Live
            || gone_for.unsigned_abs() < self.inner.settings.grace
        {
            return false;
        }
        let event = Event::LectureAbandoned(teachback_events::LectureAbandoned {
            lecture_id: id,
            segments: lecture.segments.len() as u32,
            duration_ms: lecture.started.format.is_pcm().then_some(lecture.stored_ms),
        });
        let metadata = Metadata {
            correlation_id: Some(Uuid::now_v7()),
            ..Metadata::default()
        };
        let appended = self
            .inner
            .store
            .append_to_stream(
                &stream,
                ExpectedVersion::Exact(lecture.version),
                vec![NewEvent::from_event(&event, metadata)],
            )
            .await;
        match appended {
            Ok(_) => {
                tracing::info!(lecture = %id, "nobody resumed a lecture let go; abandoned");
                true
            }
            // Resumed (or transcribed) meanwhile: the next sweep looks again.
            Err(_) => false,
        }
    }

    /// Rebuilds unfinished live lectures after a restart: their state from their streams, their
    /// open segment from the WAL. Each then waits for its learner for the grace period.
    /// Lectures in the WAL that are not in `lectures` have ended; the WAL forgets them.
    pub fn recover(&self, lectures: Vec<Lecture>, mut recovered: Recovered) -> usize {
        let mut count = 0;
        for lecture in lectures {
            let chunks = recovered.remove(&lecture.id()).unwrap_or_default();
            let id = lecture.id();
            let stored = lecture.stored_through_seq;
            self.inner.wal.release(id, stored);
            let actor = Actor::recover(self.inner.clone(), lecture, chunks);
            self.spawn(actor);
            count += 1;
            tracing::info!(lecture = %id, "recovered a live lecture; waiting for its learner");
        }
        for lecture in recovered.into_keys() {
            self.inner.wal.forget(lecture);
        }
        count
    }

    /// Finishes or cancels a live lecture on behalf of its learner without a connection (REST).
    pub async fn control(
        &self,
        user: Uuid,
        lecture: Uuid,
        action: lecture::Action,
    ) -> Option<Result<(), LiveError>> {
        if let Some(handle) = self.get(lecture) {
            if handle.owner != user {
                return None;
            }
            match self.send_control(&handle, action).await {
                // It let the lecture go (or stopped) meanwhile: take it over below, where that
                // is how lectures are shared.
                Some(Err(e)) if e.code == "lecture_released" => {}
                None if self.inner.holder.is_some() => {}
                answer => return answer,
            }
        }
        // Shared lectures: one let go (its learner left) is taken over to be ended here.
        self.inner.holder.as_ref()?;
        let handle = match self.take_over(user, lecture).await {
            Ok(handle) => handle,
            Err(e) if e.code == "lecture_elsewhere" => return Some(Err(e)),
            Err(_) => return None,
        };
        self.send_control(&handle, action).await
    }

    async fn send_control(
        &self,
        handle: &LectureHandle,
        action: lecture::Action,
    ) -> Option<Result<(), LiveError>> {
        let (reply, answer) = oneshot::channel();
        if !handle
            .send(Command::Control {
                conn_id: None,
                action,
                reply: Some(reply),
            })
            .await
        {
            return None;
        }
        answer.await.ok()
    }
}

/// The answer to a reconnect to a lecture that is not live, not the learner's, or unknown (the
/// same for all three).
fn not_live() -> LiveError {
    LiveError::new(
        "lecture_not_live",
        "no live lecture of yours has that id (it may have ended: see GET /api/v1/lectures/{id})",
    )
}

/// Whether an append failure is a conflict (someone else wrote the lecture's stream).
pub(crate) fn is_conflict(e: &AppendError) -> bool {
    matches!(e, AppendError::WrongExpectedVersion { .. })
}
