//! TeachBack's projections: pure folds from recorded events to read-model changes. No IO.
//!
//! A projection here turns one [`RecordedEvent`] into a list of typed changes. The server's
//! projection runner writes those changes to SQL together with its checkpoint in one
//! transaction; tests fold them into the in-memory views defined here, which also serve as the
//! reference the SQL read models are compared against.
//!
//! # Layout
//! - [`users`]: learners and their devices (the `users` and `devices` read models).
//! - [`catalog`]: the latest version of every published topic.
//! - [`lectures`]: one lecture folded from its stream; the `lectures` read model.
//! - [`notify`]: when a study nudge is due in the learner's time zone, and its texts.
//! - [`usage`]: lectures, audio and model tokens per learner and day (quotas, the spending guard).

pub mod catalog;
pub mod learning;
pub mod lectures;
pub mod notifications;
pub mod notify;
pub mod rankings;
pub mod usage;
pub mod users;

use teachback_events::{DecodeError, Event, EventKind, RecordedEvent};

/// A zone's name in a projection's checkpoint name: its IANA name, or its fixed offset.
pub fn zone_label(tz: &jiff::tz::TimeZone) -> String {
    match tz.iana_name() {
        Some(name) => name.to_owned(),
        None => tz
            .to_fixed_offset()
            .map_or_else(|_| "custom".to_owned(), |o| o.to_string()),
    }
}

/// Decodes an event if this build knows its type. Types a projection has never heard of (written
/// by a newer build) are skipped; a known type that fails to decode is an error, because
/// silently skipping it would make the read model wrong.
pub fn decode_known(event: &RecordedEvent) -> Result<Option<Event>, DecodeError> {
    decode_kinds(event, |_| true)
}

/// Like [`decode_known`], but only events of kinds `wanted` accepts are decoded; the rest are
/// skipped without parsing their payload (a rebuild reads every event of the log).
pub fn decode_kinds(
    event: &RecordedEvent,
    wanted: impl Fn(EventKind) -> bool,
) -> Result<Option<Event>, DecodeError> {
    match EventKind::from_type_name(&event.event_type) {
        Some(kind) if wanted(kind) => event.decode().map(Some),
        _ => Ok(None),
    }
}
