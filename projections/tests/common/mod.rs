//! Builders for event logs: the events of a test, in order, as the store would record them.

use std::collections::HashMap;

use jiff::Timestamp;
use teachback_events::{
    AudioFormat, CatalogEntry, DeviceRegistered, Event, FinishReason, GraderKind, GradingFailed,
    GradingStarted, LectureFinished, LectureGraded, LectureMode, LectureRated, LectureStarted,
    Metadata, NewEvent, RecordedEvent, RegradeRequested, TopicPublished,
    TranscriptSegmentRecognized, UserRenamed, streams,
};
use uuid::Uuid;

/// A log under construction: positions increase by one and each stream counts its versions
/// from 0.
#[derive(Debug, Default)]
pub struct Log {
    events: Vec<RecordedEvent>,
    versions: HashMap<String, u64>,
}

impl Log {
    /// Records `event` at `at` (RFC 3339) on the stream it belongs to.
    pub fn at(&mut self, at: &str, event: Event) -> &mut Self {
        let new = NewEvent::from_event(&event, Metadata::default());
        self.raw(at, &stream_of(&event), &new.event_type, new.payload)
    }

    /// Records a payload as is, under any type name (unknown types, corrupt payloads).
    pub fn raw(
        &mut self,
        at: &str,
        stream: &str,
        event_type: &str,
        payload: serde_json::Value,
    ) -> &mut Self {
        let version = self.versions.entry(stream.to_owned()).or_default();
        self.events.push(RecordedEvent {
            position: self.events.len() as u64 + 1,
            id: Uuid::now_v7(),
            stream: stream.to_owned(),
            stream_version: *version,
            event_type: event_type.to_owned(),
            schema_version: 1,
            recorded_at: ts(at),
            metadata: Metadata::default(),
            payload,
        });
        *version += 1;
        self
    }

    pub fn events(&self) -> &[RecordedEvent] {
        &self.events
    }
}

/// The stream an event is appended to.
fn stream_of(event: &Event) -> String {
    match event {
        Event::DeviceRegistered(e) => streams::user(e.user_id),
        Event::UserRenamed(e) => streams::user(e.user_id),
        Event::UsernameReleased(e) => streams::user(e.user_id),
        Event::UsernameClaimed(e) => streams::username(&e.name.to_lowercase()),
        Event::TopicPublished(_) => streams::CATALOG.to_owned(),
        lecture => {
            let id = lecture.to_payload()["lectureId"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .expect("every other event belongs to a lecture");
            streams::lecture(id)
        }
    }
}

pub fn ts(at: &str) -> Timestamp {
    at.parse().expect("an RFC 3339 timestamp")
}

pub const fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

pub fn registered(user: Uuid, name: &str) -> Event {
    Event::DeviceRegistered(DeviceRegistered {
        user_id: user,
        device_id: Uuid::now_v7(),
        name: name.into(),
        device_token_hash: "00".repeat(32),
    })
}

pub fn renamed(user: Uuid, previous: &str, name: &str) -> Event {
    Event::UserRenamed(UserRenamed {
        user_id: user,
        name: name.into(),
        previous_name: previous.into(),
    })
}

/// A topic in `major/subject`, e.g. `published("t.os", "cs/cs.os")`.
pub fn published(topic: &str, place: &str) -> Event {
    let (major, subject) = place.split_once('/').expect("major/subject");
    let entry = |id: &str| CatalogEntry {
        id: id.into(),
        name: [("en".into(), id.into())].into(),
    };
    Event::TopicPublished(TopicPublished {
        topic_id: topic.into(),
        major: entry(major),
        subject: entry(subject),
        title: [("en".into(), topic.into())].into(),
        description: Default::default(),
        key_concepts: Default::default(),
    })
}

pub fn started(lecture: Uuid, user: Uuid, topic: &str) -> Event {
    Event::LectureStarted(LectureStarted {
        lecture_id: lecture,
        user_id: user,
        topic_id: topic.into(),
        format: AudioFormat::PcmS16le,
        sample_rate: Some(16_000),
        language: "ko".into(),
        mode: LectureMode::Live,
    })
}

pub fn finished(lecture: Uuid, duration_ms: Option<u64>) -> Event {
    Event::LectureFinished(LectureFinished {
        lecture_id: lecture,
        duration_ms,
        segments: 1,
        reason: FinishReason::Learner,
    })
}

pub fn recognized(lecture: Uuid, index: u32) -> Event {
    Event::TranscriptSegmentRecognized(TranscriptSegmentRecognized {
        lecture_id: lecture,
        index,
        text: "hello".into(),
        provider: "stt.local:8000".into(),
        model: "whisper".into(),
        latency_ms: 120,
    })
}

/// Grading by a model of `provider`, or by the rubric (`None`), standing in when `fallback`.
pub fn grading_started(lecture: Uuid, provider: Option<&str>, fallback: Option<&str>) -> Event {
    Event::GradingStarted(GradingStarted {
        lecture_id: lecture,
        attempt: 1,
        grader: if provider.is_some() {
            GraderKind::Llm
        } else {
            GraderKind::Rubric
        },
        provider: provider.map(Into::into),
        model: provider.map(|_| "gpt-x".into()),
        fallback_reason: fallback.map(Into::into),
    })
}

pub fn grading_failed(lecture: Uuid, stage: &str) -> Event {
    Event::GradingFailed(GradingFailed {
        lecture_id: lecture,
        attempt: 1,
        stage: stage.into(),
        code: "provider_timeout".into(),
        message: "timed out".into(),
        retryable: true,
    })
}

pub fn regrade_requested(lecture: Uuid) -> Event {
    Event::RegradeRequested(RegradeRequested {
        lecture_id: lecture,
        attempt: 2,
        requested_by: "cli".into(),
        reason: None,
    })
}

/// A grade with nothing but its score; tests change the rest with `..grade(lecture, score)`.
pub fn grade(lecture: Uuid, score: u8) -> LectureGraded {
    LectureGraded {
        lecture_id: lecture,
        attempt: 1,
        grader: GraderKind::Rubric,
        fallback_reason: None,
        provider: None,
        model: None,
        score,
        sub_scores: Default::default(),
        feedback: String::new(),
        strengths: Vec::new(),
        improvements: Vec::new(),
        misconceptions: Vec::new(),
        usage: None,
        output_mode: None,
        latency: Default::default(),
    }
}

pub fn graded(lecture: Uuid, score: u8) -> Event {
    Event::LectureGraded(grade(lecture, score))
}

pub fn rated(lecture: Uuid, user: Uuid, rating: u8) -> Event {
    Event::LectureRated(LectureRated {
        lecture_id: lecture,
        user_id: user,
        attempt: 1,
        rating,
    })
}
