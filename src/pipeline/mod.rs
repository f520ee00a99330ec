//! The AI pipeline: transcribes a lecture's audio segments while the learner is still talking,
//! completes the transcript when the lecture finishes, grades it, and streams the feedback.
//!
//! It is a process manager driven by the log. Each lecture with work to do has one worker task
//! (at most one per lecture on this server); the worker folds the lecture's stream, does what
//! the fold says is missing, appends the result, and folds again. Whatever stops it (a crash, a
//! restart, a provider outage) leaves the log saying what is left, so a later worker continues
//! from there: on startup [`Pipeline::recover`] wakes every lecture whose processing had not
//! ended.
//!
//! - Transcription: every stored segment not yet transcribed goes to speech-to-text, with at
//!   most [`PipelineSettings::per_lecture`] in flight per lecture and a global limit.
//! - Completion: when the lecture has finished and every segment is transcribed,
//!   `TranscriptCompleted`; an empty transcript ends processing (`transcript_empty`).
//! - Grading: the LLM when one is configured and answering, else the rubric grader. Feedback
//!   text streams to the learner as `feedbackDelta` frames and is recorded as `FeedbackStreamed`
//!   events about every 100 ms. An LLM that fails is never replayed once its text reached the
//!   learner: the rubric grader stands in, labelled as a fallback, and the lecture can be
//!   re-graded later.

mod worker;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

use crate::blob::BlobStore;
use crate::db::Db;
use crate::live::hub::Hub;
use crate::provider::llm::ChatModel;
use crate::provider::stt::SpeechToText;
use crate::store::EventStore;

/// Which language speech-to-text is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SttLanguage {
    /// None: the provider detects it.
    Detect,
    /// The language the lecture declared.
    Lecture,
    /// Always this ISO 639-1 code.
    Fixed(String),
}

impl SttLanguage {
    pub fn parse(s: &str) -> Result<SttLanguage, String> {
        match s {
            "detect" | "" => Ok(SttLanguage::Detect),
            "lecture" => Ok(SttLanguage::Lecture),
            code if crate::live::protocol::valid_language(code) => {
                Ok(SttLanguage::Fixed(code.to_owned()))
            }
            other => Err(format!(
                "TEACHBACK_STT_LANGUAGE `{other}` is not `detect`, `lecture` or a two-letter code"
            )),
        }
    }
}

/// How the pipeline behaves. From the configuration.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub stt_language: SttLanguage,
    /// Most transcriptions in flight for one lecture.
    pub per_lecture: usize,
    /// Most transcriptions in flight over all lectures.
    pub total: usize,
    pub temperature: f32,
    /// How often streamed feedback is recorded in the log.
    pub coalesce: Duration,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            stt_language: SttLanguage::Detect,
            per_lecture: 2,
            total: 8,
            temperature: 0.2,
            coalesce: Duration::from_millis(100),
        }
    }
}

/// The providers the pipeline uses; either may be absent.
#[derive(Clone, Default)]
pub struct Providers {
    pub stt: Option<Arc<dyn SpeechToText>>,
    pub llm: Option<Arc<dyn ChatModel>>,
}

/// The pipeline. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) db: Db,
    pub(crate) store: EventStore,
    pub(crate) blobs: Arc<dyn BlobStore>,
    pub(crate) hub: Hub,
    pub(crate) providers: Providers,
    pub(crate) settings: PipelineSettings,
    pub(crate) stt_slots: Arc<Semaphore>,
    /// The lectures with a worker, and how to wake it.
    workers: DashMap<Uuid, Arc<Notify>>,
    /// Told when a worker stops (tools wait on it).
    stopped: tokio::sync::broadcast::Sender<Uuid>,
    /// The spending guard: while it is on, grades come from the rubric grader.
    pub(crate) budget: std::sync::OnceLock<crate::usage::Quotas>,
}

impl Pipeline {
    pub fn new(
        db: Db,
        store: EventStore,
        blobs: Arc<dyn BlobStore>,
        hub: Hub,
        providers: Providers,
        settings: PipelineSettings,
    ) -> Pipeline {
        Pipeline {
            inner: Arc::new(Inner {
                db,
                store,
                blobs,
                hub,
                providers,
                stt_slots: Arc::new(Semaphore::new(settings.total.max(1))),
                settings,
                workers: DashMap::new(),
                stopped: tokio::sync::broadcast::channel(64).0,
                budget: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Puts grading under the spending guard of `quotas` (a no-op the second time).
    pub fn guard_spending(&self, quotas: crate::usage::Quotas) {
        let _ = self.inner.budget.set(quotas);
    }

    /// Whether speech-to-text is configured (without it, audio lectures await transcription).
    /// Each configured provider's kind (`stt`, `llm`), name and circuit-breaker state.
    pub fn provider_states(&self) -> Vec<(&'static str, String, &'static str)> {
        let providers = &self.inner.providers;
        let mut out = Vec::new();
        if let Some(stt) = &providers.stt {
            out.push(("stt", stt.provider().to_owned(), stt.breaker_state()));
        }
        if let Some(llm) = &providers.llm {
            out.push(("llm", llm.provider().to_owned(), llm.breaker_state()));
        }
        out
    }

    pub fn has_stt(&self) -> bool {
        self.inner.providers.stt.is_some()
    }

    /// The grader new grades come from: `llm` or `rubric`.
    pub fn grader(&self) -> &'static str {
        if self.inner.providers.llm.is_some() {
            "llm"
        } else {
            "rubric"
        }
    }

    /// Whether a worker is processing the lecture on this server.
    pub fn is_active(&self, lecture: Uuid) -> bool {
        self.inner.workers.contains_key(&lecture)
    }

    /// Something happened to a lecture (a segment stored, a finish, a re-grade request): its
    /// worker looks at the log again, starting if there is none.
    pub fn notify(&self, lecture: Uuid) {
        match self.inner.workers.entry(lecture) {
            dashmap::mapref::entry::Entry::Occupied(e) => e.get().notify_one(),
            dashmap::mapref::entry::Entry::Vacant(e) => {
                let wake = Arc::new(Notify::new());
                e.insert(wake.clone());
                let pipeline = self.clone();
                tokio::spawn(async move {
                    worker::run(pipeline.inner.clone(), lecture, wake).await;
                    pipeline.inner.workers.remove(&lecture);
                    let _ = pipeline.inner.stopped.send(lecture);
                    // A notification that came while the worker was stopping is not lost: look
                    // once more.
                    if worker::has_work(&pipeline.inner, lecture).await {
                        pipeline.notify(lecture);
                    }
                });
            }
        }
    }

    /// Notifies the lecture and waits until its worker has nothing left to do.
    pub async fn process(&self, lecture: Uuid) {
        let mut stopped = self.inner.stopped.subscribe();
        self.notify(lecture);
        loop {
            if !self.is_active(lecture) {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(200), stopped.recv()).await {
                Ok(Ok(id)) if id == lecture && !self.is_active(lecture) => return,
                _ => {}
            }
        }
    }

    /// A callback for the live lectures: tells the pipeline a segment was stored or a lecture
    /// finished.
    pub fn notifier(&self) -> crate::live::Notifier {
        let pipeline = self.clone();
        Arc::new(move |lecture| pipeline.notify(lecture))
    }

    /// Every `every`, wakes the lectures whose processing has not ended and that no worker holds
    /// (a worker that gave up on a failing database, say), so none stays in progress for ever.
    /// With several instances on one PostgreSQL database, only the holder of the
    /// `pipeline-sweeper` lease sweeps, so a lecture another instance is working on is not
    /// picked up twice.
    pub fn spawn_sweeper(&self, every: Duration) {
        let pipeline = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if pipeline.inner.db.is_closed() {
                    return;
                }
                let Ok(Some(_lease)) =
                    crate::lease::Lease::try_acquire(&pipeline.inner.db, "pipeline-sweeper").await
                else {
                    continue;
                };
                if let Err(e) = pipeline.recover().await {
                    tracing::warn!(error = %e, "looking for unprocessed lectures failed");
                }
            }
        });
    }

    /// Wakes every lecture whose processing had not ended when the server last stopped.
    pub async fn recover(&self) -> anyhow::Result<usize> {
        let pending = crate::projection::lectures::unprocessed_lectures(&self.inner.db).await?;
        let count = pending.len();
        for lecture in pending {
            self.notify(lecture);
        }
        Ok(count)
    }
}

/// Why a re-grade was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegradeError {
    #[error("no such lecture")]
    NotFound,
    #[error("the lecture is {0}; only finished lectures are graded")]
    NotFinished(&'static str),
    #[error("the lecture is being processed right now; wait for its grade")]
    InProgress,
    #[error("nothing was said in the lecture; there is nothing to grade")]
    TranscriptEmpty,
    #[error("the lecture changed meanwhile; try again")]
    Changed,
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

impl RegradeError {
    /// The stable code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            RegradeError::NotFound => "lecture_not_found",
            RegradeError::NotFinished(_) => "lecture_not_finished",
            RegradeError::InProgress => "processing_in_progress",
            RegradeError::TranscriptEmpty => "transcript_empty",
            RegradeError::Changed => "lecture_changed",
            RegradeError::Store(_) => "internal",
        }
    }
}

impl Pipeline {
    /// Starts a new grading attempt of a finished lecture: from its stored transcript, or from
    /// its audio where transcription had not completed. The earlier grades stay in the log.
    /// Returns the new attempt's number.
    pub async fn regrade(
        &self,
        lecture: Uuid,
        requested_by: &str,
        reason: Option<String>,
        metadata: teachback_events::Metadata,
    ) -> Result<u32, RegradeError> {
        use teachback_events::{Event, NewEvent, RegradeRequested, streams};
        use teachback_projections::lectures::{LectureStatus, Processing};
        let folded = worker::load(&self.inner, lecture)
            .await?
            .ok_or(RegradeError::NotFound)?;
        if folded.status != LectureStatus::Finished {
            return Err(RegradeError::NotFinished(folded.status.as_str()));
        }
        match folded.processing() {
            Processing::TranscriptEmpty => return Err(RegradeError::TranscriptEmpty),
            p if p.is_pending() && self.is_active(lecture) => {
                return Err(RegradeError::InProgress);
            }
            _ => {}
        }
        let attempt = folded.attempt + 1;
        let event = Event::RegradeRequested(RegradeRequested {
            lecture_id: lecture,
            attempt,
            requested_by: requested_by.to_owned(),
            reason,
        });
        let appended = self
            .inner
            .store
            .append_to_stream(
                &streams::lecture(lecture),
                crate::store::ExpectedVersion::Exact(folded.version),
                vec![NewEvent::from_event(&event, metadata)],
            )
            .await;
        match appended {
            Ok(a) => {
                if let Some(frame) = crate::live::protocol::event_message(&event, a.version) {
                    self.inner.hub.publish(lecture, Arc::new(frame));
                }
            }
            Err(crate::store::AppendError::WrongExpectedVersion { .. }) => {
                return Err(RegradeError::Changed);
            }
            Err(e) => return Err(RegradeError::Store(e.into())),
        }
        self.notify(lecture);
        Ok(attempt)
    }
}
