//! The envelope every stored event travels in, and the shape of an event before it is stored.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::Event;
use crate::upcast::DecodeError;

/// Who and what caused an event. Stored beside the payload; never used for decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Ties together every event caused by one outside request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The event (or request) that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The learner (or staff member) whose action this was, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acting_user: Option<Uuid>,
    /// What the client told us about itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientInfo>,
}

/// What a client says about itself. Free text, length-limited by the server before storage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// An event ready to be appended: the store assigns its stream version, position and time.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The event's identity and its idempotency key: appending the same id twice is a no-op.
    pub id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: serde_json::Value,
    pub metadata: Metadata,
}

impl NewEvent {
    /// Wraps a domain event with a fresh UUID v7 id.
    pub fn from_event(event: &Event, metadata: Metadata) -> Self {
        Self::with_id(Uuid::now_v7(), event, metadata)
    }

    /// Wraps a domain event with a caller-chosen id (a deterministic id makes a retry idempotent).
    pub fn with_id(id: Uuid, event: &Event, metadata: Metadata) -> Self {
        Self {
            id,
            event_type: event.kind().type_name().to_owned(),
            schema_version: event.kind().schema_version(),
            payload: event.to_payload(),
            metadata,
        }
    }
}

/// An event as the log holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedEvent {
    /// Position in the global order. Opaque and ordered; never assume positions are dense.
    pub position: u64,
    pub id: Uuid,
    pub stream: String,
    /// 0-based version of this event within its stream.
    pub stream_version: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    pub recorded_at: Timestamp,
    pub metadata: Metadata,
    pub payload: serde_json::Value,
}

impl RecordedEvent {
    /// Whether this event records a lecture's processing (transcripts, grades, ratings) rather
    /// than its recording: what a recording writer may step over after a conflict.
    pub fn is_processing(&self) -> bool {
        crate::EventKind::from_type_name(&self.event_type).is_some_and(|k| k.is_processing())
    }

    /// Decodes the payload into the current shape of its domain event, upcasting older versions.
    pub fn decode(&self) -> Result<Event, DecodeError> {
        Event::decode(&self.event_type, self.schema_version, self.payload.clone())
    }
}
