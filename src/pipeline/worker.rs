//! One lecture's worker: fold the stream, do what is missing, append, repeat.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use teachback_events::{
    AudioFormat, Event, EventKind, FeedbackStreamed, GraderKind, GradingFailed, GradingLatency,
    GradingStarted, LectureGraded, Metadata, NewEvent, TokenUsage, TranscriptCompleted,
    TranscriptSegmentRecognized, TranscriptSource, streams,
};
use teachback_projections::lectures::{Lecture, LectureStatus, Processing, join_transcript};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use super::{Inner, SttLanguage};
use crate::grade::{self, Grade, llm as llm_grade, rubric};
use crate::live::protocol::{self, ServerMessage};
use crate::provider::stt::{SttRequest, Transcription};
use crate::provider::{ErrorKind, ProviderError};
use crate::store::{AppendError, ExpectedVersion};

/// How many times a transcription waits for an open circuit breaker before it counts as failed.
const CIRCUIT_WAITS: u32 = 3;

/// Attempts of an append that fails for a transient reason.
const APPEND_ATTEMPTS: u32 = 4;

type Transcribed = (u32, Result<Transcription, ProviderError>);

/// Why a step stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum StepError {
    /// Someone else recorded processing of this lecture: fold again.
    #[error("the lecture's processing was recorded elsewhere")]
    Conflict,
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

enum Step {
    /// Something was appended: fold again.
    Again,
    /// Nothing to do until a transcription returns or someone notifies.
    Idle,
}

/// The worker's memory between folds.
#[derive(Default)]
struct Work {
    inflight: JoinSet<Transcribed>,
    pending: HashSet<u32>,
    /// Segments whose transcription failed after its retries, with the last error.
    failed: HashMap<u32, ProviderError>,
    /// Failed segments get one more try once the lecture has finished.
    retried_after_finish: bool,
}

pub(super) async fn run(inner: Arc<Inner>, id: Uuid, wake: Arc<Notify>) {
    let mut work = Work::default();
    let mut troubles = 0u32;
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let step = match load(&inner, id).await {
            Ok(Some(lecture)) => step(&inner, &lecture, &mut work).await,
            Ok(None) => return,
            Err(e) => Err(StepError::Store(e)),
        };
        match step {
            Ok(Step::Again) | Err(StepError::Conflict) => {
                troubles = 0;
                continue;
            }
            Ok(Step::Idle) => troubles = 0,
            Err(StepError::Store(e)) => {
                troubles += 1;
                tracing::warn!(lecture = %id, error = %e, troubles, "processing a lecture failed; retrying");
                if troubles > 6 {
                    // The log says what is left; recovery or the next notification goes on.
                    tracing::error!(lecture = %id, "giving up on the lecture for now");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100 << troubles)).await;
                continue;
            }
        }
        if work.inflight.is_empty() {
            return;
        }
        tokio::select! {
            () = &mut notified => {}
            Some(joined) = work.inflight.join_next() => {
                let Ok((index, result)) = joined else { continue };
                work.pending.remove(&index);
                match result {
                    Ok(t) => {
                        if let Err(e) = record_transcript(&inner, id, index, t).await {
                            tracing::warn!(lecture = %id, error = %e, "recording a transcript failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(lecture = %id, index, error = %e, code = e.code_str(), "transcribing a segment failed");
                        work.failed.insert(index, e);
                    }
                }
            }
        }
    }
}

/// Whether the lecture has work the pipeline could do now (after a worker stopped).
pub(super) async fn has_work(inner: &Inner, id: Uuid) -> bool {
    let Ok(Some(lecture)) = load(inner, id).await else {
        return false;
    };
    let transcribable = inner.providers.stt.is_some()
        && lecture.failure.is_none()
        && !matches!(
            lecture.status,
            LectureStatus::Cancelled | LectureStatus::Abandoned
        )
        && lecture.untranscribed().next().is_some();
    let completable = lecture.status == LectureStatus::Finished
        && lecture.transcript.is_none()
        && lecture.failure.is_none()
        && (lecture.format() == AudioFormat::Text || lecture.untranscribed().next().is_none());
    transcribable || completable || lecture.processing() == Processing::Grading
}

pub(super) async fn load(inner: &Inner, id: Uuid) -> anyhow::Result<Option<Lecture>> {
    let events = inner.store.read_stream_all(&streams::lecture(id)).await?;
    Ok(Lecture::fold(&events)?)
}

async fn step(inner: &Arc<Inner>, lecture: &Lecture, work: &mut Work) -> Result<Step, StepError> {
    let id = lecture.id();
    let finished = lecture.status == LectureStatus::Finished;
    let stopped = matches!(
        lecture.status,
        LectureStatus::Cancelled | LectureStatus::Abandoned
    );
    if finished && !work.retried_after_finish {
        work.retried_after_finish = true;
        work.failed.clear();
    }
    // 1. Transcribe what is stored and not transcribed, within the limits.
    if let Some(stt) = inner.providers.stt.clone()
        && lecture.failure.is_none()
        && !stopped
    {
        for segment in lecture.untranscribed() {
            if work.pending.len() >= inner.settings.per_lecture {
                break;
            }
            if work.pending.contains(&segment.index) || work.failed.contains_key(&segment.index) {
                continue;
            }
            work.pending.insert(segment.index);
            let inner = inner.clone();
            let segment = segment.clone();
            let language = match &inner.settings.stt_language {
                SttLanguage::Detect => None,
                SttLanguage::Lecture => Some(lecture.started.language.clone()),
                SttLanguage::Fixed(code) => Some(code.clone()),
            };
            let format = lecture.format();
            let stt = stt.clone();
            work.inflight.spawn(async move {
                let index = segment.index;
                let result = async {
                    let _slot = inner.stt_slots.acquire().await.expect("never closed");
                    let audio = inner.blobs.get(&segment.blob_key).await.map_err(|e| {
                        ProviderError::local(format!("reading the segment's audio failed: {e}"))
                    })?;
                    // What the provider hears is exactly what was recorded (not a corrupted,
                    // replaced, or still sealed blob).
                    {
                        use sha2::Digest;
                        if hex::encode(sha2::Sha256::digest(&audio)) != segment.sha256 {
                            return Err(ProviderError::local(
                                "the segment's audio does not match its recorded hash".to_owned(),
                            ));
                        }
                    }
                    let hub = inner.hub.clone();
                    let on_delta = move |text: &str| {
                        hub.publish(
                            id,
                            Arc::new(ServerMessage::TranscriptDelta {
                                lecture_id: id,
                                index,
                                text: text.to_owned(),
                            }),
                        );
                    };
                    let request = || SttRequest {
                        audio: audio.clone(),
                        filename: format!("segment-{index:06}.{}", format.extension()),
                        content_type: format.content_type().to_owned(),
                        language: language.clone(),
                        prompt: None,
                    };
                    // A circuit breaker that is open (or lets only one trial through) is a
                    // reason to wait, not to fail the lecture at once.
                    let mut waited = 0;
                    loop {
                        match stt.transcribe(request(), &on_delta).await {
                            Err(e)
                                if e.kind == ErrorKind::CircuitOpen && waited < CIRCUIT_WAITS =>
                            {
                                waited += 1;
                                let pause = e.retry_after.unwrap_or(Duration::from_secs(1));
                                tokio::time::sleep(
                                    pause
                                        .clamp(Duration::from_millis(100), Duration::from_secs(30)),
                                )
                                .await;
                            }
                            other => break other,
                        }
                    }
                }
                .await;
                (index, result)
            });
        }
    }
    if finished && lecture.failure.is_none() && work.pending.is_empty() {
        if let Some((_, error)) = work.failed.iter().next() {
            let code = error.code_str();
            let event = Event::GradingFailed(GradingFailed {
                lecture_id: id,
                attempt: lecture.attempt,
                stage: "transcription".into(),
                code: error.code_str().into(),
                message: format!("speech-to-text failed: {}", error.message),
                retryable: true,
            });
            work.failed.clear();
            append(inner, id, &mut lecture.version.clone(), event).await?;
            tracing::error!(lecture = %id, code,
                "a lecture could not be transcribed; a re-grade retries it");
            return Ok(Step::Again);
        }
        // 2. Complete the transcript once every segment is in.
        if lecture.transcript.is_none() {
            let completed = match (&lecture.text, lecture.format()) {
                (Some(text), _) => Some((text.clone(), TranscriptSource::Text)),
                (None, AudioFormat::Text) => Some((String::new(), TranscriptSource::Text)),
                (None, _) if lecture.untranscribed().next().is_none() => {
                    Some((lecture.transcript_so_far(), TranscriptSource::Speech))
                }
                _ => None,
            };
            if let Some((text, source)) = completed {
                let text = join_transcript([text.as_str()]);
                let words = text.split_whitespace().count() as u32;
                let event = Event::TranscriptCompleted(TranscriptCompleted {
                    lecture_id: id,
                    empty: words == 0,
                    words,
                    text,
                    source,
                    segments: lecture.segments.len() as u32,
                });
                append(inner, id, &mut lecture.version.clone(), event).await?;
                return Ok(Step::Again);
            }
        }
        // 3. Grade.
        if lecture.processing() == Processing::Grading {
            grade_lecture(inner, lecture).await?;
            return Ok(Step::Again);
        }
    }
    Ok(Step::Idle)
}

async fn record_transcript(
    inner: &Arc<Inner>,
    id: Uuid,
    index: u32,
    t: Transcription,
) -> Result<(), StepError> {
    let Some(lecture) = load(inner, id).await? else {
        return Ok(());
    };
    if lecture.transcripts.contains_key(&index) {
        return Ok(());
    }
    let stt = inner
        .providers
        .stt
        .as_ref()
        .expect("transcribed, so configured");
    let event = Event::TranscriptSegmentRecognized(TranscriptSegmentRecognized {
        lecture_id: id,
        index,
        text: t.text.trim().to_owned(),
        provider: stt.provider().to_owned(),
        model: stt.model().to_owned(),
        latency_ms: t.latency.as_millis() as u64,
    });
    append(inner, id, &mut lecture.version.clone(), event).await?;
    Ok(())
}

/// Appends a processing event after `version`, then sends its frame to the hub. Recording events
/// (the live lecture's) that came in between are stepped over; processing events mean someone
/// else is processing the lecture ([`StepError::Conflict`]).
async fn append(inner: &Inner, id: Uuid, version: &mut u64, event: Event) -> Result<(), StepError> {
    let new = NewEvent::from_event(&event, Metadata::default());
    let stream = streams::lecture(id);
    let mut attempt = 0;
    loop {
        match inner
            .store
            .append_to_stream(&stream, ExpectedVersion::Exact(*version), vec![new.clone()])
            .await
        {
            Ok(appended) => {
                *version = appended.version;
                if let Some(frame) = protocol::event_message(&event, appended.version) {
                    inner.hub.publish(id, Arc::new(frame));
                }
                return Ok(());
            }
            Err(AppendError::WrongExpectedVersion { .. }) => {
                // Recording events and ratings do not change what processing does; any other
                // processing event means another worker.
                let stepped = inner
                    .store
                    .version_if_only(&stream, *version, |e| {
                        EventKind::from_type_name(&e.event_type)
                            .is_some_and(|k| !k.is_processing() || k == EventKind::LectureRated)
                    })
                    .await
                    .map_err(anyhow::Error::from)?;
                *version = stepped.ok_or(StepError::Conflict)?;
            }
            Err(e) if attempt + 1 < APPEND_ATTEMPTS => {
                attempt += 1;
                tracing::warn!(lecture = %id, error = %e, attempt, "append failed; retrying");
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            Err(e) => return Err(StepError::Store(e.into())),
        }
    }
}

/// Streams feedback text: each piece to the learner at once, and to the log coalesced.
struct Feedback<'a> {
    inner: &'a Inner,
    id: Uuid,
    attempt: u32,
    version: &'a mut u64,
    started: Instant,
    buffer: String,
    buffered_at: Duration,
    last_flush: Instant,
    first: Option<Duration>,
    text: String,
}

impl<'a> Feedback<'a> {
    fn new(
        inner: &'a Inner,
        id: Uuid,
        attempt: u32,
        version: &'a mut u64,
        started: Instant,
    ) -> Self {
        Feedback {
            inner,
            id,
            attempt,
            version,
            started,
            buffer: String::new(),
            buffered_at: Duration::ZERO,
            last_flush: Instant::now(),
            first: None,
            text: String::new(),
        }
    }

    async fn piece(&mut self, piece: &str) -> Result<(), StepError> {
        if piece.is_empty() {
            return Ok(());
        }
        let now = self.started.elapsed();
        self.first.get_or_insert(now);
        self.inner.hub.publish(
            self.id,
            Arc::new(ServerMessage::FeedbackDelta {
                lecture_id: self.id,
                attempt: self.attempt,
                text: piece.to_owned(),
            }),
        );
        self.text.push_str(piece);
        self.buffer.push_str(piece);
        self.buffered_at = now;
        if self.last_flush.elapsed() >= self.inner.settings.coalesce {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StepError> {
        self.last_flush = Instant::now();
        if self.buffer.is_empty() {
            return Ok(());
        }
        let event = Event::FeedbackStreamed(FeedbackStreamed {
            lecture_id: self.id,
            attempt: self.attempt,
            offset_ms: self.buffered_at.as_millis() as u64,
            text: std::mem::take(&mut self.buffer),
        });
        append(self.inner, self.id, self.version, event).await
    }

    /// Reads the model's raw output from `tokens`, streaming the feedback prose in it.
    async fn follow(
        &mut self,
        mut tokens: mpsc::UnboundedReceiver<String>,
    ) -> Result<(), StepError> {
        let mut extractor = llm_grade::FeedbackText::new();
        loop {
            let deadline = self.last_flush + self.inner.settings.coalesce;
            tokio::select! {
                token = tokens.recv() => match token {
                    Some(token) => {
                        let text = extractor.push(&token);
                        self.piece(&text).await?;
                    }
                    None => break,
                },
                () = tokio::time::sleep_until(deadline), if !self.buffer.is_empty() => {
                    self.flush().await?;
                }
            }
        }
        self.flush().await
    }

    /// Streams a text that is already whole (the rubric's), a few words at a time.
    async fn whole(&mut self, text: &str) -> Result<(), StepError> {
        let mut piece = String::new();
        for (i, word) in text.split_inclusive(' ').enumerate() {
            piece.push_str(word);
            if i % 4 == 3 {
                self.piece(&std::mem::take(&mut piece)).await?;
            }
        }
        self.piece(&piece).await?;
        self.flush().await
    }
}

/// The fallback reason of a grade the rubric gave because the day's budget was nearly spent.
pub const BUDGET_GUARD: &str = "budget_guard";

async fn grade_lecture(inner: &Arc<Inner>, lecture: &Lecture) -> Result<(), StepError> {
    let id = lecture.id();
    let attempt = lecture.attempt;
    let transcript = lecture
        .transcript
        .as_ref()
        .map(|t| t.text.clone())
        .unwrap_or_default();
    let topic = crate::projection::topics::find_topic(&inner.db, &lecture.started.topic_id)
        .await
        .map_err(anyhow::Error::from)?;
    let duration_ms = (lecture.format() != AudioFormat::Text && lecture.stored_ms > 0)
        .then_some(lecture.stored_ms);
    let input = match &topic {
        Some(topic) => grade::input(topic, &lecture.started.language, &transcript, duration_ms),
        None => grade::GradeInput {
            topic_title: lecture.started.topic_id.clone(),
            topic_description: String::new(),
            key_concepts: Vec::new(),
            language: lecture.started.language.clone(),
            transcript,
            duration_ms,
        },
    };
    let since = lecture.attempt_since;
    let since_finish =
        || since.map(|at| jiff::Timestamp::now().duration_since(at).as_millis().max(0) as u64);
    let grading_started = |grader, provider, model, fallback_reason| {
        Event::GradingStarted(GradingStarted {
            lecture_id: id,
            attempt,
            grader,
            provider,
            model,
            fallback_reason,
        })
    };
    let mut version = lecture.version;
    let mut fallback_reason = None;
    let mut llm = inner.providers.llm.clone();
    if llm.is_some()
        && let Some(quotas) = inner.budget.get()
        && quotas.guard_active().await
    {
        // The day's budget is nearly spent: the rubric grades, labelled, until midnight.
        tracing::info!(lecture = %id, "spending guard on: grading with the rubric");
        metrics::counter!("teachback_budget_guard_grades_total").increment(1);
        fallback_reason = Some(BUDGET_GUARD.to_owned());
        llm = None;
    }
    if let Some(llm) = llm {
        let started = Instant::now();
        let event = grading_started(
            GraderKind::Llm,
            Some(llm.provider().to_owned()),
            Some(llm.model().to_owned()),
            None,
        );
        append(inner, id, &mut version, event).await?;
        let request = llm_grade::request(&input, inner.settings.temperature);
        let (tx, rx) = mpsc::unbounded_channel();
        let call = async move {
            let on_token = move |t: &str| {
                let _ = tx.send(t.to_owned());
            };
            llm.stream_chat(request, &on_token).await
        };
        let mut feedback = Feedback::new(inner, id, attempt, &mut version, started);
        let (outcome, followed) = tokio::join!(call, feedback.follow(rx));
        followed?;
        let parsed = match outcome {
            Ok(outcome) => match llm_grade::parse(&outcome.content) {
                Ok(grade) => Ok((outcome, grade)),
                Err(e) => {
                    tracing::warn!(lecture = %id, error = %e, "the model's answer is not a grade");
                    Err("invalid_output".to_owned())
                }
            },
            Err(e) => {
                tracing::warn!(lecture = %id, error = %e.error, code = e.error.code_str(), tokens_delivered = e.tokens_delivered, "grading with the model failed");
                Err(e.error.code_str().to_owned())
            }
        };
        match parsed {
            Ok((outcome, grade)) => {
                if feedback.text.trim().is_empty() {
                    // The model put no streamable prose first: send the parsed feedback whole.
                    feedback.whole(&grade.feedback).await?;
                }
                let first_token_ms = feedback.first.map(|d| d.as_millis() as u64);
                let llm = inner.providers.llm.as_ref().expect("configured");
                let event = graded(
                    id,
                    attempt,
                    GraderKind::Llm,
                    None,
                    Some(llm.provider().to_owned()),
                    Some(outcome.model.clone())
                        .filter(|m| !m.is_empty())
                        .or_else(|| Some(llm.model().to_owned())),
                    grade,
                    outcome.usage.map(|u| TokenUsage {
                        prompt_tokens: u.prompt_tokens,
                        completion_tokens: u.completion_tokens,
                    }),
                    Some(outcome.mode.as_str().to_owned()),
                    GradingLatency {
                        first_token_ms,
                        total_ms: started.elapsed().as_millis() as u64,
                        since_finish_ms: since_finish(),
                    },
                );
                append(inner, id, &mut version, event).await?;
                return Ok(());
            }
            Err(reason) => fallback_reason = Some(reason),
        }
    }
    // The rubric grader: the default without a model, and the stand-in when the model failed.
    let started = Instant::now();
    let event = grading_started(GraderKind::Rubric, None, None, fallback_reason.clone());
    append(inner, id, &mut version, event).await?;
    let grade = rubric::grade(&input);
    let mut feedback = Feedback::new(inner, id, attempt, &mut version, started);
    feedback.whole(&grade.feedback).await?;
    let first_token_ms = feedback.first.map(|d| d.as_millis() as u64);
    let event = graded(
        id,
        attempt,
        GraderKind::Rubric,
        fallback_reason,
        None,
        Some(rubric::GRADER.to_owned()),
        grade,
        None,
        None,
        GradingLatency {
            first_token_ms,
            total_ms: started.elapsed().as_millis() as u64,
            since_finish_ms: since_finish(),
        },
    );
    append(inner, id, &mut version, event).await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn graded(
    lecture_id: Uuid,
    attempt: u32,
    grader: GraderKind,
    fallback_reason: Option<String>,
    provider: Option<String>,
    model: Option<String>,
    grade: Grade,
    usage: Option<TokenUsage>,
    output_mode: Option<String>,
    latency: GradingLatency,
) -> Event {
    metrics::counter!("teachback_grades_total", "grader" => grader.as_str()).increment(1);
    if let Some(usage) = usage {
        // Spent at the provider, whatever becomes of the grade.
        let model = model.clone().unwrap_or_default();
        metrics::counter!("teachback_llm_tokens_total", "type" => "prompt", "model" => model.clone())
            .increment(usage.prompt_tokens);
        metrics::counter!("teachback_llm_tokens_total", "type" => "completion", "model" => model)
            .increment(usage.completion_tokens);
    }
    // The learner-facing latencies, from the lecture's finish (or the re-grade request): to the
    // first feedback token and to the score. The service-level objective is on the first.
    if let Some(since_finish) = latency.since_finish_ms {
        metrics::histogram!("teachback_finish_to_score_seconds", "grader" => grader.as_str())
            .record(since_finish as f64 / 1e3);
        if let Some(first) = latency.first_token_ms {
            let to_first = since_finish.saturating_sub(latency.total_ms.saturating_sub(first));
            metrics::histogram!("teachback_finish_to_first_token_seconds",
                "grader" => grader.as_str())
            .record(to_first as f64 / 1e3);
        }
    }
    Event::LectureGraded(LectureGraded {
        lecture_id,
        attempt,
        grader,
        fallback_reason,
        provider,
        model,
        score: grade.score,
        sub_scores: grade.sub_scores,
        feedback: grade.feedback,
        strengths: grade.strengths,
        improvements: grade.improvements,
        misconceptions: grade.misconceptions,
        usage,
        output_mode,
        latency,
    })
}
