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

/// The kinds of event, without their payloads: names and versions live here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    DeviceRegistered,
    UserRenamed,
    UsernameClaimed,
    UsernameReleased,
    TopicPublished,
}

impl EventKind {
    /// Every kind, for tools and for the snapshot test that freezes each one.
    pub const ALL: &'static [EventKind] = &[
        EventKind::DeviceRegistered,
        EventKind::UserRenamed,
        EventKind::UsernameClaimed,
        EventKind::UsernameReleased,
        EventKind::TopicPublished,
    ];

    /// The type name stored with the event. Never change one: stored events carry it.
    pub const fn type_name(self) -> &'static str {
        match self {
            EventKind::DeviceRegistered => "DeviceRegistered",
            EventKind::UserRenamed => "UserRenamed",
            EventKind::UsernameClaimed => "UsernameClaimed",
            EventKind::UsernameReleased => "UsernameReleased",
            EventKind::TopicPublished => "TopicPublished",
        }
    }

    /// The schema version new events of this kind are written with.
    pub const fn schema_version(self) -> u32 {
        match self {
            EventKind::TopicPublished => 2,
            EventKind::DeviceRegistered
            | EventKind::UserRenamed
            | EventKind::UsernameClaimed
            | EventKind::UsernameReleased => 1,
        }
    }

    /// Looks a kind up by its stored type name.
    pub fn from_type_name(name: &str) -> Option<EventKind> {
        EventKind::ALL
            .iter()
            .copied()
            .find(|k| k.type_name() == name)
    }
}

/// Every domain event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    DeviceRegistered(DeviceRegistered),
    UserRenamed(UserRenamed),
    UsernameClaimed(UsernameClaimed),
    UsernameReleased(UsernameReleased),
    TopicPublished(TopicPublished),
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::DeviceRegistered(_) => EventKind::DeviceRegistered,
            Event::UserRenamed(_) => EventKind::UserRenamed,
            Event::UsernameClaimed(_) => EventKind::UsernameClaimed,
            Event::UsernameReleased(_) => EventKind::UsernameReleased,
            Event::TopicPublished(_) => EventKind::TopicPublished,
        }
    }

    /// The payload as JSON, in the kind's current schema version.
    pub fn to_payload(&self) -> serde_json::Value {
        let value = match self {
            Event::DeviceRegistered(e) => serde_json::to_value(e),
            Event::UserRenamed(e) => serde_json::to_value(e),
            Event::UsernameClaimed(e) => serde_json::to_value(e),
            Event::UsernameReleased(e) => serde_json::to_value(e),
            Event::TopicPublished(e) => serde_json::to_value(e),
        };
        // These are plain structs of strings, maps and UUIDs: serialising them cannot fail.
        value.expect("domain events always serialise to JSON")
    }

    /// Decodes a stored payload, upcasting it from `schema_version` to the current version.
    pub fn decode(
        event_type: &str,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Result<Event, DecodeError> {
        let kind = EventKind::from_type_name(event_type)
            .ok_or_else(|| DecodeError::UnknownType(event_type.to_owned()))?;
        let payload = upcast::upcast(kind, schema_version, payload)?;
        let bad = |source| DecodeError::InvalidPayload {
            event_type: kind.type_name(),
            source,
        };
        Ok(match kind {
            EventKind::DeviceRegistered => {
                Event::DeviceRegistered(serde_json::from_value(payload).map_err(bad)?)
            }
            EventKind::UserRenamed => {
                Event::UserRenamed(serde_json::from_value(payload).map_err(bad)?)
            }
            EventKind::UsernameClaimed => {
                Event::UsernameClaimed(serde_json::from_value(payload).map_err(bad)?)
            }
            EventKind::UsernameReleased => {
                Event::UsernameReleased(serde_json::from_value(payload).map_err(bad)?)
            }
            EventKind::TopicPublished => {
                Event::TopicPublished(serde_json::from_value(payload).map_err(bad)?)
            }
        })
    }
}
