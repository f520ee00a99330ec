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
}

impl EventKind {
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
