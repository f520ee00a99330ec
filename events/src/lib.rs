//! TeachBack's event schema: every fact the service records, as a versioned wire format.
//!
//! This crate does no IO. It is the contract between the event store (which keeps payloads as
//! JSON text), the projections (which fold events into read models) and every tool that reads the
//! log. Changing a payload's shape means a new schema version and an upcaster, never an edit in
//! place: events written years ago must still decode.
//!
//! # Layout
//! - [`envelope`]: the recorded envelope (id, stream, version, position, type, schema version,
//!   time, metadata) and the shape of an event about to be appended.
//! - [`domain`]: the domain events, each with its type name and current schema version.
//! - [`upcast`]: turning payloads of older schema versions into the current shape on read.
//! - [`streams`]: how stream names are built, so every writer and reader agrees on them.

pub mod domain;
pub mod envelope;
pub mod streams;
pub mod upcast;

pub use domain::{
    AudioDeleted, AudioDeletionReason, AudioFormat, AudioSegmentStored, CatalogEntry,
    DeviceRegistered, ErasureRequester, Event, EventKind, FeedbackStreamed, FinishReason,
    GraderKind, GradingFailed, GradingLatency, GradingStarted, LectureAbandoned, LectureCancelled,
    LectureFinished, LectureGraded, LectureMode, LecturePaused, LectureRated, LectureReleased,
    LectureResumed, LectureStarted, LectureTextSubmitted, Localized, LocalizedList,
    NotificationCancelled, NotificationFailed, NotificationOpened, NotificationParked,
    NotificationPreferencesSet, NotificationScheduled, NotificationSent, Owner, RegradeRequested,
    SubScores, TokenUsage, TopicPublished, TranscriptCompleted, TranscriptSegmentRecognized,
    TranscriptSource, UserErased, UserRenamed, UsernameClaimed, UsernameReleased,
};
pub use envelope::{ClientInfo, Metadata, NewEvent, RecordedEvent};
pub use upcast::DecodeError;
