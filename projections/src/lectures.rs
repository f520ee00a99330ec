//! Lectures: the state of one lecture folded from its stream, and the `lectures` read model
//! (one row per lecture with its owner and status) that lists them.

use jiff::Timestamp;
use std::collections::BTreeMap;

use teachback_events::{
    AudioFormat, AudioSegmentStored, DecodeError, Event, EventKind, GradingFailed, GradingStarted,
    LectureGraded, LectureMode, LectureStarted, RecordedEvent, TranscriptCompleted,
};
use uuid::Uuid;

/// The projection's name; its checkpoint is stored under it.
pub const NAME: &str = "lectures.v1";

/// Where a lecture is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LectureStatus {
    /// Started and taking audio.
    Recording,
    Paused,
    Finished,
    Cancelled,
    Abandoned,
}

impl LectureStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            LectureStatus::Recording => "recording",
            LectureStatus::Paused => "paused",
            LectureStatus::Finished => "finished",
            LectureStatus::Cancelled => "cancelled",
            LectureStatus::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<LectureStatus> {
        [
            LectureStatus::Recording,
            LectureStatus::Paused,
            LectureStatus::Finished,
            LectureStatus::Cancelled,
            LectureStatus::Abandoned,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// Whether the lecture has ended (no more audio or state changes).
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            LectureStatus::Finished | LectureStatus::Cancelled | LectureStatus::Abandoned
        )
    }
}

/// Where a lecture is in its processing (speech-to-text, then grading).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Processing {
    /// Not finished yet, or cancelled or abandoned: nothing to process (segments may already be
    /// transcribed while recording).
    None,
    /// Finished; segments are still being transcribed.
    Transcribing,
    /// The transcript is complete and empty: nothing was said. Final; not graded.
    TranscriptEmpty,
    /// The transcript is complete; a grade is being produced.
    Grading,
    Graded,
    /// The current attempt failed; it can be retried with a re-grade.
    Failed,
}

impl Processing {
    pub const fn as_str(self) -> &'static str {
        match self {
            Processing::None => "none",
            Processing::Transcribing => "transcribing",
            Processing::TranscriptEmpty => "transcript_empty",
            Processing::Grading => "grading",
            Processing::Graded => "graded",
            Processing::Failed => "failed",
        }
    }

    /// Whether processing has more to do without anyone asking.
    pub const fn is_pending(self) -> bool {
        matches!(self, Processing::Transcribing | Processing::Grading)
    }
}

/// One lecture, folded from its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lecture {
    pub started: LectureStarted,
    pub started_at: Timestamp,
    pub status: LectureStatus,
    pub segments: Vec<AudioSegmentStored>,
    /// The last chunk sequence number durably stored in a segment (0: none yet).
    pub stored_through_seq: u64,
    /// Audio stored in segments, in milliseconds.
    pub stored_ms: u64,
    pub ended_at: Option<Timestamp>,
    /// The stream version of the last event folded in.
    pub version: u64,
    /// A text lecture's explanation.
    pub text: Option<String>,
    /// Transcribed segments, by segment index.
    pub transcripts: BTreeMap<u32, String>,
    /// The whole transcript, once every segment is in.
    pub transcript: Option<TranscriptCompleted>,
    /// The current grading attempt (1 for the first grade; re-grades count up).
    pub attempt: u32,
    /// The grading in progress or done for the current attempt.
    pub grading: Option<GradingStarted>,
    /// Feedback text streamed so far in the current attempt.
    pub feedback_streamed: String,
    /// Every grade, oldest first (re-grades keep the earlier ones).
    pub grades: Vec<LectureGraded>,
    /// The current attempt's failure, if it failed.
    pub failure: Option<GradingFailed>,
    /// When the current attempt's work began: the finish, or the re-grade request.
    pub attempt_since: Option<Timestamp>,
    /// The learner's helpfulness rating (1–5) of the latest grade.
    pub rating: Option<u8>,
}

/// Why a lecture stream could not be folded.
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("lecture stream `{0}` does not start with LectureStarted")]
    NoStart(String),
}

impl Lecture {
    pub fn id(&self) -> Uuid {
        self.started.lecture_id
    }

    pub fn owner(&self) -> Uuid {
        self.started.user_id
    }

    pub fn format(&self) -> AudioFormat {
        self.started.format
    }

    pub fn mode(&self) -> LectureMode {
        self.started.mode
    }

    /// Folds a whole lecture stream (in stream order). `Ok(None)` for an empty stream.
    pub fn fold(events: &[RecordedEvent]) -> Result<Option<Lecture>, FoldError> {
        let mut iter = events.iter();
        let Some(first) = iter.next() else {
            return Ok(None);
        };
        let mut lecture = match crate::decode_known(first)? {
            Some(Event::LectureStarted(started)) => Lecture {
                started,
                started_at: first.recorded_at,
                status: LectureStatus::Recording,
                segments: Vec::new(),
                stored_through_seq: 0,
                stored_ms: 0,
                ended_at: None,
                version: first.stream_version,
                text: None,
                transcripts: BTreeMap::new(),
                transcript: None,
                attempt: 1,
                grading: None,
                feedback_streamed: String::new(),
                grades: Vec::new(),
                failure: None,
                attempt_since: None,
                rating: None,
            },
            _ => return Err(FoldError::NoStart(first.stream.clone())),
        };
        for event in iter {
            lecture.apply(event)?;
        }
        Ok(Some(lecture))
    }

    /// Folds in the next event of the lecture's stream.
    pub fn apply(&mut self, event: &RecordedEvent) -> Result<(), DecodeError> {
        self.version = event.stream_version;
        let Some(decoded) = crate::decode_known(event)? else {
            return Ok(());
        };
        match decoded {
            Event::AudioSegmentStored(segment) => {
                self.stored_through_seq = self.stored_through_seq.max(segment.last_seq);
                self.stored_ms += segment.duration_ms.unwrap_or(0);
                self.segments.push(segment);
            }
            Event::LecturePaused(_) => self.status = LectureStatus::Paused,
            Event::LectureResumed(_) => self.status = LectureStatus::Recording,
            Event::LectureFinished(_) => {
                self.end(LectureStatus::Finished, event.recorded_at);
                self.attempt_since = Some(event.recorded_at);
            }
            Event::LectureTextSubmitted(e) => self.text = Some(e.text),
            Event::TranscriptSegmentRecognized(e) => {
                self.transcripts.insert(e.index, e.text);
            }
            Event::TranscriptCompleted(e) => self.transcript = Some(e),
            Event::GradingStarted(e) => {
                self.feedback_streamed.clear();
                self.grading = Some(e);
            }
            Event::FeedbackStreamed(e) if e.attempt == self.attempt => {
                self.feedback_streamed.push_str(&e.text);
            }
            Event::LectureGraded(e) => self.grades.push(e),
            Event::GradingFailed(e) if e.attempt == self.attempt => self.failure = Some(e),
            Event::RegradeRequested(e) => {
                self.attempt = e.attempt;
                self.grading = None;
                self.failure = None;
                self.feedback_streamed.clear();
                self.attempt_since = Some(event.recorded_at);
            }
            Event::LectureRated(e) => self.rating = Some(e.rating),
            Event::LectureCancelled(_) => self.end(LectureStatus::Cancelled, event.recorded_at),
            Event::LectureAbandoned(_) => self.end(LectureStatus::Abandoned, event.recorded_at),
            _ => {}
        }
        Ok(())
    }

    /// Where the lecture is in its processing.
    pub fn processing(&self) -> Processing {
        if self.status != LectureStatus::Finished {
            return Processing::None;
        }
        if self.failure.is_some() {
            return Processing::Failed;
        }
        match &self.transcript {
            None => Processing::Transcribing,
            Some(t) if t.empty => Processing::TranscriptEmpty,
            Some(_) if self.grade().is_some() => Processing::Graded,
            Some(_) => Processing::Grading,
        }
    }

    /// The current attempt's grade.
    pub fn grade(&self) -> Option<&LectureGraded> {
        self.grades.last().filter(|g| g.attempt == self.attempt)
    }

    /// The latest grade of any attempt (a re-grade in progress still shows the earlier one).
    pub fn latest_grade(&self) -> Option<&LectureGraded> {
        self.grades.last()
    }

    /// Stored segments not transcribed yet.
    pub fn untranscribed(&self) -> impl Iterator<Item = &AudioSegmentStored> {
        self.segments
            .iter()
            .filter(|s| !self.transcripts.contains_key(&s.index))
    }

    /// The transcript so far: the transcribed segments in order (a gap where one is missing).
    pub fn transcript_so_far(&self) -> String {
        join_transcript(self.transcripts.values().map(String::as_str))
    }

    fn end(&mut self, status: LectureStatus, at: Timestamp) {
        self.status = status;
        self.ended_at = Some(at);
    }
}

/// Joins transcript pieces with single spaces, skipping empty ones.
pub fn join_transcript<'a>(pieces: impl IntoIterator<Item = &'a str>) -> String {
    let mut text = String::new();
    for piece in pieces {
        let piece = piece.trim();
        if piece.is_empty() {
            continue;
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(piece);
    }
    text
}

/// A change to the `lectures` read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LecturesChange {
    Started {
        lecture_id: Uuid,
        user_id: Uuid,
        topic_id: String,
        mode: LectureMode,
        at: Timestamp,
    },
    StatusChanged {
        lecture_id: Uuid,
        status: LectureStatus,
        at: Timestamp,
    },
    ProcessingChanged {
        lecture_id: Uuid,
        processing: Processing,
        /// Set by a grade; `None` leaves the score as it was.
        score: Option<u8>,
        at: Timestamp,
    },
}

/// Lecture events that change the row. Segments, transcript pieces and streamed feedback do
/// not (and are not even decoded).
fn wanted(kind: EventKind) -> bool {
    use EventKind as K;
    matches!(
        kind,
        K::LectureStarted
            | K::LecturePaused
            | K::LectureResumed
            | K::LectureFinished
            | K::TranscriptCompleted
            | K::LectureGraded
            | K::GradingFailed
            | K::RegradeRequested
            | K::LectureCancelled
            | K::LectureAbandoned
    )
}

/// Whether the projection reads events of this type.
pub fn reads(event_type: &str) -> bool {
    EventKind::from_type_name(event_type).is_some_and(wanted)
}

impl LecturesChange {
    /// The lecture the change is about.
    pub fn lecture_id(&self) -> Uuid {
        match self {
            LecturesChange::Started { lecture_id, .. }
            | LecturesChange::StatusChanged { lecture_id, .. }
            | LecturesChange::ProcessingChanged { lecture_id, .. } => *lecture_id,
        }
    }
}

/// Maps one event to the changes it makes. Pure.
pub fn project(event: &RecordedEvent) -> Result<Vec<LecturesChange>, DecodeError> {
    let at = event.recorded_at;
    let status = |lecture_id, status| {
        vec![LecturesChange::StatusChanged {
            lecture_id,
            status,
            at,
        }]
    };
    let processing = |lecture_id, processing, score| {
        vec![LecturesChange::ProcessingChanged {
            lecture_id,
            processing,
            score,
            at,
        }]
    };
    Ok(match crate::decode_kinds(event, wanted)? {
        Some(Event::LectureStarted(e)) => vec![LecturesChange::Started {
            lecture_id: e.lecture_id,
            user_id: e.user_id,
            topic_id: e.topic_id,
            mode: e.mode,
            at,
        }],
        Some(Event::LecturePaused(e)) => status(e.lecture_id, LectureStatus::Paused),
        Some(Event::LectureResumed(e)) => status(e.lecture_id, LectureStatus::Recording),
        Some(Event::LectureFinished(e)) => {
            let mut changes = status(e.lecture_id, LectureStatus::Finished);
            changes.extend(processing(e.lecture_id, Processing::Transcribing, None));
            changes
        }
        Some(Event::TranscriptCompleted(e)) => processing(
            e.lecture_id,
            if e.empty {
                Processing::TranscriptEmpty
            } else {
                Processing::Grading
            },
            None,
        ),
        Some(Event::LectureGraded(e)) => {
            processing(e.lecture_id, Processing::Graded, Some(e.score))
        }
        Some(Event::GradingFailed(e)) => processing(e.lecture_id, Processing::Failed, None),
        // Whether the re-grade must transcribe first is the pipeline's business; the row only
        // says that work is pending.
        Some(Event::RegradeRequested(e)) => processing(e.lecture_id, Processing::Grading, None),
        Some(Event::LectureCancelled(e)) => status(e.lecture_id, LectureStatus::Cancelled),
        Some(Event::LectureAbandoned(e)) => status(e.lecture_id, LectureStatus::Abandoned),
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use teachback_events::{
        FinishReason, LectureFinished, LecturePaused, LectureResumed, Metadata, NewEvent,
    };

    fn recorded(version: u64, event: Event) -> RecordedEvent {
        let new = NewEvent::from_event(&event, Metadata::default());
        RecordedEvent {
            position: version + 1,
            id: new.id,
            stream: "lecture-x".into(),
            stream_version: version,
            event_type: new.event_type,
            schema_version: new.schema_version,
            recorded_at: Timestamp::UNIX_EPOCH,
            metadata: new.metadata,
            payload: new.payload,
        }
    }

    fn segment(index: u32, first: u64, last: u64) -> Event {
        Event::AudioSegmentStored(AudioSegmentStored {
            lecture_id: Uuid::nil(),
            index,
            blob_key: format!("k{index}"),
            bytes: 44,
            duration_ms: Some(100 * (last - first + 1)),
            sha256: String::new(),
            first_seq: first,
            last_seq: last,
        })
    }

    #[test]
    fn a_lecture_folds_segments_pauses_and_its_end() {
        let id = Uuid::nil();
        let start = Event::LectureStarted(LectureStarted {
            lecture_id: id,
            user_id: Uuid::max(),
            topic_id: "t".into(),
            format: AudioFormat::PcmS16le,
            sample_rate: Some(16_000),
            language: "ko".into(),
            mode: LectureMode::Live,
        });
        let events = vec![
            recorded(0, start),
            recorded(1, segment(0, 1, 10)),
            recorded(
                2,
                Event::LecturePaused(LecturePaused {
                    lecture_id: id,
                    at_ms: 1000,
                }),
            ),
        ];
        let mut lecture = Lecture::fold(&events).unwrap().unwrap();
        assert_eq!(lecture.status, LectureStatus::Paused);
        assert_eq!(lecture.stored_through_seq, 10);
        assert_eq!(lecture.stored_ms, 1000);
        assert_eq!(lecture.owner(), Uuid::max());
        lecture
            .apply(&recorded(
                3,
                Event::LectureResumed(LectureResumed {
                    lecture_id: id,
                    at_ms: 1000,
                }),
            ))
            .unwrap();
        assert_eq!(lecture.status, LectureStatus::Recording);
        lecture.apply(&recorded(4, segment(1, 11, 15))).unwrap();
        lecture
            .apply(&recorded(
                5,
                Event::LectureFinished(LectureFinished {
                    lecture_id: id,
                    duration_ms: Some(1500),
                    segments: 2,
                    reason: FinishReason::Learner,
                }),
            ))
            .unwrap();
        assert_eq!(lecture.status, LectureStatus::Finished);
        assert!(lecture.status.is_terminal());
        assert_eq!(lecture.segments.len(), 2);
        assert_eq!(lecture.stored_through_seq, 15);
        assert_eq!(lecture.stored_ms, 1500);
        assert_eq!(lecture.version, 5);
    }

    #[test]
    fn a_stream_that_does_not_start_with_lecture_started_is_refused() {
        let events = vec![recorded(0, segment(0, 1, 1))];
        assert!(matches!(Lecture::fold(&events), Err(FoldError::NoStart(_))));
        assert_eq!(Lecture::fold(&[]).unwrap(), None);
    }
}
