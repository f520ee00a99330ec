//! The stored shape of an event row, shared by the SQL backends.

use jiff::Timestamp;
use teachback_events::RecordedEvent;
use uuid::Uuid;

use super::StoreError;
use super::chain;

/// Columns selected by every read, in this order.
pub(crate) const COLUMNS: &str =
    "position, id, stream, version, event_type, schema_version, recorded_at, metadata, payload";

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    position: i64,
    id: Uuid,
    stream: String,
    version: i64,
    event_type: String,
    schema_version: i32,
    recorded_at: i64,
    metadata: String,
    payload: String,
}

impl EventRow {
    pub(crate) fn into_recorded(self) -> Result<RecordedEvent, StoreError> {
        let position = self.position as u64;
        let corrupt = |reason: String| StoreError::Corrupt { position, reason };
        Ok(RecordedEvent {
            position,
            id: self.id,
            stream: self.stream,
            stream_version: self.version as u64,
            event_type: self.event_type,
            schema_version: self.schema_version as u32,
            recorded_at: Timestamp::from_microsecond(self.recorded_at)
                .map_err(|e| corrupt(format!("time: {e}")))?,
            metadata: serde_json::from_str(&self.metadata)
                .map_err(|e| corrupt(format!("metadata: {e}")))?,
            payload: serde_json::from_str(&self.payload)
                .map_err(|e| corrupt(format!("payload: {e}")))?,
        })
    }
}

/// Every stored column of an event row, in this order (the archive and the chain's checks read
/// rows as they are stored, not as events).
pub const STORED_COLUMNS: &str = "position, id, stream, version, event_type, schema_version, \
     recorded_at, metadata, payload, hash";

/// An event row exactly as stored: what the hash chain covers, and the stored hash.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredEvent {
    pub position: i64,
    pub id: Uuid,
    pub stream: String,
    pub version: i64,
    pub event_type: String,
    pub schema_version: i32,
    /// Microseconds since the Unix epoch.
    pub recorded_at: i64,
    pub metadata: String,
    pub payload: String,
    /// Lowercase hex SHA-256 (see [`chain`]); `None` only for a row written before the chain
    /// existed and not yet backfilled.
    pub hash: Option<String>,
}

impl StoredEvent {
    /// The columns the event's hash covers. Integers are taken bit for bit (`i64` as `u64`), so
    /// any stored value, even a negative one, hashes to something of its own.
    pub fn fields(&self) -> chain::Row<'_> {
        chain::Row {
            position: self.position as u64,
            id: self.id,
            stream: &self.stream,
            version: self.version as u64,
            event_type: &self.event_type,
            schema_version: self.schema_version as u32,
            recorded_at_us: self.recorded_at,
            metadata: &self.metadata,
            payload: &self.payload,
        }
    }
}

pub(crate) fn into_recorded(rows: Vec<EventRow>) -> Result<Vec<RecordedEvent>, StoreError> {
    rows.into_iter().map(EventRow::into_recorded).collect()
}

/// Versions and positions are stored as signed 64-bit integers; `u64::MAX` means "the end".
pub(crate) fn to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The number of characters in a stream prefix, for `substr(stream, 1, n) = prefix`.
pub(crate) fn prefix_len(prefix: &str) -> i32 {
    i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX)
}
