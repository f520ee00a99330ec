//! The domain events. Each is a past-tense fact with a stable type name and a schema version.
//!
//! Payloads are camelCase JSON. A payload's shape is frozen by the snapshot tests in
//! `events/tests/snapshots/`: to change it, add a schema version and an upcaster in
//! [`crate::upcast`], then add the new snapshot beside the old one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::upcast::{self, DecodeError};

/// Text in several languages, keyed by ISO 639-1 code (`"ko"`, `"en"`).
pub type Localized = BTreeMap<String, String>;
/// A list of texts per language, keyed by ISO 639-1 code.
pub type LocalizedList = BTreeMap<String, Vec<String>>;

/// A learner's device registered itself; the first registration creates the learner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistered {
    pub user_id: Uuid,
    pub device_id: Uuid,
    /// The nickname the learner starts with (reserved through [`UsernameClaimed`]).
    pub name: String,
    /// SHA-256 (hex) of the device token. The token itself is never stored.
    pub device_token_hash: String,
}

/// A learner chose a new nickname.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRenamed {
    pub user_id: Uuid,
    pub name: String,
    pub previous_name: String,
}

/// A nickname key was reserved for a learner (stream `username-{key}`). The stream's expected
/// version makes two learners claiming the same name race safely: exactly one append succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsernameClaimed {
    pub user_id: Uuid,
    pub name: String,
}

/// A learner gave a nickname up (renamed away from it); the key is free to claim again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsernameReleased {
    pub user_id: Uuid,
}

/// A major or a subject in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogEntry {
    pub id: String,
    pub name: Localized,
}

/// A topic was published to the catalogue (or republished with edits: the latest one wins).
///
/// Schema version 2 added `keyConcepts`, which the grader checks an explanation against;
/// version 1 payloads are upcast with no key concepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicPublished {
    /// A stable slug such as `cs.networking.tcp-vs-udp`.
    pub topic_id: String,
    pub major: CatalogEntry,
    pub subject: CatalogEntry,
    pub title: Localized,
    pub description: Localized,
    pub key_concepts: LocalizedList,
}

/// The audio a lecture is recorded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioFormat {
    /// Raw 16-bit little-endian PCM, mono, at [`LectureStarted::sample_rate`]. Streamed, cut into
    /// segments at pauses, each stored as a WAV file.
    PcmS16le,
    /// Container formats: accepted as one recording, stored and processed whole.
    Webm,
    Ogg,
    Wav,
    Mp4,
    Mp3,
    /// No audio: a text lecture (the learner typed the explanation). Not a format a client can
    /// declare for audio, so it is not in [`AudioFormat::ALL`].
    Text,
}

impl AudioFormat {
    pub const ALL: &'static [AudioFormat] = &[
        AudioFormat::PcmS16le,
        AudioFormat::Webm,
        AudioFormat::Ogg,
        AudioFormat::Wav,
        AudioFormat::Mp4,
        AudioFormat::Mp3,
    ];

    /// The name on the wire (`pcm_s16le`, `webm`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            AudioFormat::PcmS16le => "pcm_s16le",
            AudioFormat::Webm => "webm",
            AudioFormat::Ogg => "ogg",
            AudioFormat::Wav => "wav",
            AudioFormat::Mp4 => "mp4",
            AudioFormat::Mp3 => "mp3",
            AudioFormat::Text => "text",
        }
    }

    pub fn parse(name: &str) -> Option<AudioFormat> {
        AudioFormat::ALL
            .iter()
            .copied()
            .find(|f| f.as_str() == name)
    }

    /// Whether the audio is streamed PCM (cut into segments) rather than one whole recording.
    pub const fn is_pcm(self) -> bool {
        matches!(self, AudioFormat::PcmS16le)
    }

    /// The MIME type a stored recording of this format is served with.
    pub const fn content_type(self) -> &'static str {
        match self {
            AudioFormat::PcmS16le | AudioFormat::Wav => "audio/wav",
            AudioFormat::Webm => "audio/webm",
            AudioFormat::Ogg => "audio/ogg",
            AudioFormat::Mp4 => "audio/mp4",
            AudioFormat::Mp3 => "audio/mpeg",
            AudioFormat::Text => "text/plain",
        }
    }

    /// The file extension of a stored blob (PCM segments are stored as WAV).
    pub const fn extension(self) -> &'static str {
        match self {
            AudioFormat::PcmS16le | AudioFormat::Wav => "wav",
            AudioFormat::Webm => "webm",
            AudioFormat::Ogg => "ogg",
            AudioFormat::Mp4 => "m4a",
            AudioFormat::Mp3 => "mp3",
            AudioFormat::Text => "txt",
        }
    }
}

/// How the audio of a lecture reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LectureMode {
    /// Streamed over the `/api/v1/live` WebSocket.
    Live,
    /// Uploaded whole through a signed URL (the REST fallback).
    Upload,
    /// Typed instead of spoken: the explanation arrives as text ([`LectureTextSubmitted`]).
    Text,
}

/// A learner started a lecture on a topic (stream `lecture-{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LectureStarted {
    pub lecture_id: Uuid,
    pub user_id: Uuid,
    pub topic_id: String,
    pub format: AudioFormat,
    /// Samples per second of PCM audio; `None` for container formats.
    pub sample_rate: Option<u32>,
    /// ISO 639-1 code of the language the learner speaks (`ko`, `en`).
    pub language: String,
    pub mode: LectureMode,
}

/// A piece of a lecture's audio is durably stored as a blob.
///
/// PCM lectures are cut into WAV segments at pauses or at the maximum segment length; a container
/// recording is stored whole as segment 0. Segments of a lecture are contiguous: segment `n + 1`
/// starts with the chunk after segment `n`'s `lastSeq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AudioSegmentStored {
    pub lecture_id: Uuid,
    /// 0-based index of the segment within the lecture.
    pub index: u32,
    pub blob_key: String,
    /// Length of the blob in bytes (for WAV, header included).
    pub bytes: u64,
    /// Audio length in milliseconds; `None` when unknown (container formats).
    pub duration_ms: Option<u64>,
    /// SHA-256 (hex) of the blob.
    pub sha256: String,
    /// Sequence numbers of the first and last chunk in the segment (0 and 0 for an upload).
    pub first_seq: u64,
    pub last_seq: u64,
}

/// The learner paused a live lecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LecturePaused {
    pub lecture_id: Uuid,
    /// Audio received so far, in milliseconds.
    pub at_ms: u64,
}

/// The learner resumed a paused lecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LectureResumed {
    pub lecture_id: Uuid,
    pub at_ms: u64,
}

/// Why a lecture finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The learner said so.
    Learner,
    /// The lecture reached the maximum length; it was finished, not discarded.
    MaxDuration,
}

/// A lecture is complete; its audio is ready to grade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LectureFinished {
    pub lecture_id: Uuid,
    /// Audio length in milliseconds; `None` when unknown (container formats).
    pub duration_ms: Option<u64>,
    /// How many segments hold the audio.
    pub segments: u32,
    pub reason: FinishReason,
}

/// The learner cancelled a lecture; it will not be graded. Stored audio is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LectureCancelled {
    pub lecture_id: Uuid,
    pub segments: u32,
}

/// A live lecture's learner did not come back within the grace period. Stored audio is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LectureAbandoned {
    pub lecture_id: Uuid,
    pub segments: u32,
    /// Audio stored, in milliseconds (`None` for container formats).
    pub duration_ms: Option<u64>,
}

/// Where a lecture's transcript came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TranscriptSource {
    /// Speech-to-text of the stored audio segments.
    Speech,
    /// The learner typed the explanation (a text lecture).
    Text,
}

/// A text lecture's explanation: the learner typed it instead of speaking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LectureTextSubmitted {
    pub lecture_id: Uuid,
    pub text: String,
}

/// One stored audio segment was transcribed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptSegmentRecognized {
    pub lecture_id: Uuid,
    /// The [`AudioSegmentStored::index`] it transcribes.
    pub index: u32,
    pub text: String,
    /// The speech-to-text service (host and port) and model.
    pub provider: String,
    pub model: String,
    /// Time the provider took, in milliseconds (retries included).
    pub latency_ms: u64,
}

/// Every segment of a finished lecture is transcribed: the whole transcript, ready to grade. An
/// empty transcript (silence, or nothing recognisable) is final and is not graded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptCompleted {
    pub lecture_id: Uuid,
    pub text: String,
    pub source: TranscriptSource,
    pub segments: u32,
    pub words: u32,
    pub empty: bool,
}

/// Which grader produced a grade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraderKind {
    /// An OpenAI-compatible chat model.
    Llm,
    /// The built-in, deterministic rubric grader.
    Rubric,
}

impl GraderKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            GraderKind::Llm => "llm",
            GraderKind::Rubric => "rubric",
        }
    }
}

/// Grading of a lecture began (attempt 1 after the transcript; later attempts are re-grades).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GradingStarted {
    pub lecture_id: Uuid,
    pub attempt: u32,
    pub grader: GraderKind,
    pub provider: Option<String>,
    pub model: Option<String>,
    /// Set when the rubric grader stands in for an LLM that failed: why.
    pub fallback_reason: Option<String>,
}

/// Feedback text as it streamed to the learner, coalesced (about every 100 ms) so that a replay
/// reproduces the stream: concatenated in order, the pieces of an attempt are its feedback text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackStreamed {
    pub lecture_id: Uuid,
    pub attempt: u32,
    /// Milliseconds since grading started when the last piece of `text` was produced.
    pub offset_ms: u64,
    pub text: String,
}

/// Sub-scores of a grade, each 0–100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubScores {
    pub accuracy: u8,
    pub completeness: u8,
    pub clarity: u8,
    pub structure: u8,
}

/// Tokens a model call used, as the provider reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// How long grading took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GradingLatency {
    /// From the start of grading to the first feedback text.
    pub first_token_ms: Option<u64>,
    /// From the start of grading to the grade.
    pub total_ms: u64,
    /// From the lecture's finish (or the re-grade request) to the grade.
    pub since_finish_ms: Option<u64>,
}

/// A lecture was graded. Re-grades append another one; the history keeps them all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LectureGraded {
    pub lecture_id: Uuid,
    pub attempt: u32,
    pub grader: GraderKind,
    /// Set when the rubric grader stood in for a failed LLM: why. Such a grade can be re-graded.
    pub fallback_reason: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    /// 0–100.
    pub score: u8,
    pub sub_scores: SubScores,
    pub feedback: String,
    pub strengths: Vec<String>,
    pub improvements: Vec<String>,
    pub misconceptions: Vec<String>,
    pub usage: Option<TokenUsage>,
    /// How the model was asked for structured output (`json_schema`, `json_object`, `prompted`).
    pub output_mode: Option<String>,
    pub latency: GradingLatency,
}

/// Processing a lecture failed for now; it can be retried (`teachback regrade`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GradingFailed {
    pub lecture_id: Uuid,
    pub attempt: u32,
    /// `transcription` or `grading`.
    pub stage: String,
    /// A stable code (`provider_timeout`, `provider_quota_exceeded`, …).
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

/// Someone asked for a lecture to be graded again (or processed again after a failure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegradeRequested {
    pub lecture_id: Uuid,
    /// The attempt this request starts.
    pub attempt: u32,
    /// `cli` or `admin`.
    pub requested_by: String,
    pub reason: Option<String>,
}

/// The learner rated how helpful a lecture's feedback was (1–5; a later rating replaces it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LectureRated {
    pub lecture_id: Uuid,
    pub user_id: Uuid,
    /// The grading attempt rated.
    pub attempt: u32,
    pub rating: u8,
}

/// A learner chose which study nudges they want, when and how (stream `user-{id}`). Each
/// setting replaces the previous one whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationPreferencesSet {
    pub user_id: Uuid,
    /// The kinds opted in to: `daily_reminder`, `streak_warning`, `weekly_digest`.
    pub kinds: Vec<String>,
    /// The delivery channel (`webhook`).
    pub channel: String,
    /// IANA time zone the nudges are timed in.
    pub time_zone: String,
    /// Preferred local hour for the daily reminder (0–23); `None`: the configured default.
    pub hour: Option<u8>,
    /// Quiet hours, local, `[start, end)` (wrapping past midnight when start > end).
    pub quiet_start: Option<u8>,
    pub quiet_end: Option<u8>,
    /// `ko` or `en`.
    pub language: String,
}

/// A nudge was scheduled (stream `notification-{id}`, its id derived from `key`, so the same
/// nudge can never be scheduled twice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationScheduled {
    pub notification_id: Uuid,
    pub user_id: Uuid,
    /// `daily_reminder`, `streak_warning` or `weekly_digest`.
    pub kind: String,
    /// The period it is for: a local date, or an ISO week (`2026-W49`).
    pub period: String,
    /// The idempotency key, `{user}:{kind}:{period}`; receivers deduplicate by it.
    pub key: String,
    pub channel: String,
    /// Not before this time (its cron firing, moved past quiet hours).
    pub send_at: jiff::Timestamp,
    pub language: String,
    pub title: String,
    pub body: String,
    /// Where the nudge leads in the web client (`#/topic/…`, `#/rankings`).
    pub link: String,
}

/// The channel accepted a nudge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSent {
    pub notification_id: Uuid,
    /// 1 for the first try.
    pub attempt: u32,
    pub channel: String,
    /// The receiver's HTTP status.
    pub status: u16,
}

/// A delivery attempt failed; another follows at `retryAt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationFailed {
    pub notification_id: Uuid,
    pub attempt: u32,
    /// `timeout`, `connect`, `http_5xx`, `http_4xx`, …
    pub code: String,
    pub message: String,
    pub retry_at: jiff::Timestamp,
}

/// Delivery gave up after `attempts` tries; the team sees it in analytics and can send it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationParked {
    pub notification_id: Uuid,
    pub attempts: u32,
    pub code: String,
    pub message: String,
}

/// A scheduled nudge will not be sent (`opted_out`: the learner opted out before delivery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationCancelled {
    pub notification_id: Uuid,
    pub reason: String,
}

/// The learner followed a nudge's link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationOpened {
    pub notification_id: Uuid,
    pub user_id: Uuid,
}

/// The instance running a live lecture let it go when its learner's connection dropped, with
/// every chunk it had received stored in segments (through `lastSeq`): the learner may resume on
/// any instance (several instances share one database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LectureReleased {
    pub lecture_id: Uuid,
    pub last_seq: u64,
}

/// Who asked for a learner's data to be erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErasureRequester {
    /// The learner, through `DELETE /api/v1/me`.
    Learner,
    /// Staff, through `teachback users erase`.
    Staff,
}

/// A learner's personal data was erased: their key was destroyed (so the nickname, transcripts
/// and feedback sealed with it in earlier events can no longer be read), their audio was deleted,
/// and every read model drops their rows. Appended to the learner's stream, last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserErased {
    pub user_id: Uuid,
    pub requested_by: ErasureRequester,
    /// The learner's lectures at the time.
    pub lectures: u32,
    /// Audio blobs deleted.
    pub blobs_deleted: u32,
}

/// Why a lecture's audio was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioDeletionReason {
    /// Older than the configured retention.
    Retention,
}

/// A lecture's audio blobs were deleted. The transcript and the grade stay; a re-grade uses the
/// transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AudioDeleted {
    pub lecture_id: Uuid,
    /// The segment indexes whose blobs were deleted.
    pub segments: Vec<u32>,
    pub reason: AudioDeletionReason,
    /// The retention in force, in days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
}

/// Declares the event kinds once: the kind enum, its names and versions, the event enum, and the
/// encode and decode of every variant.
macro_rules! events {
    ($($name:ident => $version:literal),+ $(,)?) => {
        /// The kinds of event, without their payloads: names and versions live here.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventKind {
            $($name,)+
        }

        impl EventKind {
            /// Every kind, for tools and for the snapshot test that freezes each one.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$name,)+];

            /// The type name stored with the event. Never change one: stored events carry it.
            pub const fn type_name(self) -> &'static str {
                match self {
                    $(EventKind::$name => stringify!($name),)+
                }
            }

            /// The schema version new events of this kind are written with.
            pub const fn schema_version(self) -> u32 {
                match self {
                    $(EventKind::$name => $version,)+
                }
            }
        }

        /// Every domain event.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Event {
            $($name($name),)+
        }

        impl Event {
            pub fn kind(&self) -> EventKind {
                match self {
                    $(Event::$name(_) => EventKind::$name,)+
                }
            }

            /// The payload as JSON, in the kind's current schema version.
            pub fn to_payload(&self) -> serde_json::Value {
                let value = match self {
                    $(Event::$name(e) => serde_json::to_value(e),)+
                };
                // Plain structs of strings, numbers, maps and UUIDs: serialising cannot fail.
                value.expect("domain events always serialise to JSON")
            }

            fn from_current(
                kind: EventKind,
                payload: serde_json::Value,
            ) -> Result<Event, serde_json::Error> {
                Ok(match kind {
                    $(EventKind::$name => Event::$name(serde_json::from_value(payload)?),)+
                })
            }
        }
    };
}

events! {
    DeviceRegistered => 1,
    UserRenamed => 1,
    UsernameClaimed => 1,
    UsernameReleased => 1,
    TopicPublished => 2,
    LectureStarted => 1,
    AudioSegmentStored => 1,
    LecturePaused => 1,
    LectureResumed => 1,
    LectureFinished => 1,
    LectureCancelled => 1,
    LectureAbandoned => 1,
    LectureTextSubmitted => 1,
    TranscriptSegmentRecognized => 1,
    TranscriptCompleted => 1,
    GradingStarted => 1,
    FeedbackStreamed => 1,
    LectureGraded => 1,
    GradingFailed => 1,
    RegradeRequested => 1,
    LectureRated => 1,
    NotificationPreferencesSet => 1,
    NotificationScheduled => 1,
    NotificationSent => 1,
    NotificationFailed => 1,
    NotificationParked => 1,
    NotificationCancelled => 1,
    NotificationOpened => 1,
    UserErased => 1,
    AudioDeleted => 1,
    LectureReleased => 1,
}

/// Whose personal data an event holds: the learner its `userId` names, or the learner of the
/// lecture its `lectureId` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    UserId,
    LectureId,
}

impl EventKind {
    /// Whether this kind records the processing of a lecture (transcription, grading, rating)
    /// rather than its recording. The recording's writer lets these interleave with its own.
    pub const fn is_processing(self) -> bool {
        matches!(
            self,
            EventKind::TranscriptSegmentRecognized
                | EventKind::TranscriptCompleted
                | EventKind::GradingStarted
                | EventKind::FeedbackStreamed
                | EventKind::LectureGraded
                | EventKind::GradingFailed
                | EventKind::RegradeRequested
                | EventKind::LectureRated
        )
    }

    /// The payload fields holding a learner's personal data (strings, or lists of strings),
    /// which the store seals with the learner's key, and whose learner they are.
    pub const fn personal_fields(self) -> Option<(Owner, &'static [&'static str])> {
        use EventKind as K;
        Some(match self {
            K::DeviceRegistered | K::UsernameClaimed => (Owner::UserId, &["name"]),
            K::UserRenamed => (Owner::UserId, &["name", "previousName"]),
            K::NotificationScheduled => (Owner::UserId, &["title", "body"]),
            K::LectureTextSubmitted
            | K::TranscriptSegmentRecognized
            | K::TranscriptCompleted
            | K::FeedbackStreamed => (Owner::LectureId, &["text"]),
            K::LectureGraded => (
                Owner::LectureId,
                &["feedback", "strengths", "improvements", "misconceptions"],
            ),
            _ => return None,
        })
    }

    /// Looks a kind up by its stored type name.
    pub fn from_type_name(name: &str) -> Option<EventKind> {
        EventKind::ALL
            .iter()
            .copied()
            .find(|k| k.type_name() == name)
    }
}

impl Event {
    /// Decodes a stored payload, upcasting it from `schema_version` to the current version.
    pub fn decode(
        event_type: &str,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Result<Event, DecodeError> {
        let kind = EventKind::from_type_name(event_type)
            .ok_or_else(|| DecodeError::UnknownType(event_type.to_owned()))?;
        let payload = upcast::upcast(kind, schema_version, payload)?;
        Event::from_current(kind, payload).map_err(|source| DecodeError::InvalidPayload {
            event_type: kind.type_name(),
            source,
        })
    }
}
