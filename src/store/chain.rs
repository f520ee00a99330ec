//! The hash chain over the event log. Every event row stores a hash that covers the previous
//! event's hash and every stored column of the event itself, so changing, removing, inserting or
//! reordering stored events breaks the chain from that event on, and `teachback audit verify`
//! finds the first broken link.
//!
//! The hash of the event at position `p`, following the event whose hash is `prev`:
//!
//! ```text
//! SHA-256( "teachback/event/v1"   domain tag, 18 bytes
//!        ‖ prev                   32 bytes; 32 zero bytes before the first event
//!        ‖ position               u64
//!        ‖ id                     the UUID's 16 bytes
//!        ‖ len ‖ stream           UTF-8
//!        ‖ version                u64
//!        ‖ len ‖ event_type       UTF-8
//!        ‖ schema_version         u32
//!        ‖ recorded_at            i64, microseconds since the Unix epoch
//!        ‖ len ‖ metadata         the stored bytes, exactly (not re-encoded JSON)
//!        ‖ len ‖ payload          the stored bytes, exactly )
//! ```
//!
//! Integers are big-endian; `len` is the next field's length in bytes as a u64, so no two
//! different rows give the same input. The hash is stored as 64 lowercase hex digits.
//! This module only computes; the writer links each batch to the head it read under the write
//! lock (`sqlite.rs`, `postgres.rs`), and `backfill.rs` hashes rows written before the chain.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::StoreError;

/// Prefixed to every hashed input, so these hashes cannot be confused with any other SHA-256 use.
pub const DOMAIN: &[u8] = b"teachback/event/v1";

/// The `prev` of the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// The stored columns of one event: everything its hash covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row<'a> {
    pub position: u64,
    pub id: Uuid,
    pub stream: &'a str,
    pub version: u64,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub recorded_at_us: i64,
    pub metadata: &'a str,
    pub payload: &'a str,
}

/// The hash of `row` following an event whose hash is `prev` ([`GENESIS`] for the first).
pub fn event_hash(prev: &[u8; 32], row: &Row<'_>) -> [u8; 32] {
    fn bytes(h: &mut Sha256, field: &[u8]) {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(prev);
    h.update(row.position.to_be_bytes());
    h.update(row.id.as_bytes());
    bytes(&mut h, row.stream.as_bytes());
    h.update(row.version.to_be_bytes());
    bytes(&mut h, row.event_type.as_bytes());
    h.update(row.schema_version.to_be_bytes());
    h.update(row.recorded_at_us.to_be_bytes());
    bytes(&mut h, row.metadata.as_bytes());
    bytes(&mut h, row.payload.as_bytes());
    h.finalize().into()
}

/// The hashes of consecutive rows, the first following `prev`.
pub fn link(prev: &[u8; 32], rows: &[Row<'_>]) -> Vec<[u8; 32]> {
    let mut prev = *prev;
    rows.iter()
        .map(|row| {
            prev = event_hash(&prev, row);
            prev
        })
        .collect()
}

/// A hash as it is stored: 64 lowercase hex digits.
pub fn to_hex(hash: &[u8; 32]) -> String {
    hex::encode(hash)
}

/// A stored hash as bytes, if it is 64 lowercase hex digits.
pub fn from_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut hash = [0; 32];
    hex::decode_to_slice(text, &mut hash).ok()?;
    Some(hash)
}

/// The last event of the chain: what the next event links to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub position: u64,
    pub hash: [u8; 32],
}

impl Head {
    /// The head of an empty log.
    pub const EMPTY: Head = Head {
        position: 0,
        hash: GENESIS,
    };
}

/// The head to link new events to, from the log's highest position and that row's stored hash.
/// `Ok(None)`: that row has no hash yet (written before the chain existed), so the rows without
/// one must be hashed first (see `backfill.rs`). A hash that is not 64 lowercase hex digits stops
/// the writer rather than link new events to something that is not a hash.
pub(crate) fn head_of(position: u64, stored: Option<&str>) -> Result<Option<Head>, StoreError> {
    if position == 0 {
        return Ok(Some(Head::EMPTY));
    }
    let Some(text) = stored else {
        return Ok(None);
    };
    match from_hex(text) {
        Some(hash) => Ok(Some(Head { position, hash })),
        None => Err(StoreError::Corrupt {
            position,
            reason: "its stored hash is not 64 lowercase hex digits; run `teachback audit verify`"
                .into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row<'static> {
        Row {
            position: 7,
            id: Uuid::from_u128(0x0193_9d4e_7a2b_7c3d_8e4f_5a6b_7c8d_9e0f),
            stream: "user-1",
            version: 2,
            event_type: "UserRenamed",
            schema_version: 1,
            recorded_at_us: 1_790_000_000_123_456,
            metadata: r#"{"requestId":"r-1"}"#,
            payload: r#"{"name": "아리아"}"#,
        }
    }

    #[test]
    fn the_hash_is_sha256_over_the_documented_layout() {
        let r = row();
        let prev = [0xab; 32];
        let mut input = Vec::new();
        input.extend_from_slice(b"teachback/event/v1");
        input.extend_from_slice(&prev);
        input.extend_from_slice(&7u64.to_be_bytes());
        input.extend_from_slice(r.id.as_bytes());
        input.extend_from_slice(&6u64.to_be_bytes());
        input.extend_from_slice(b"user-1");
        input.extend_from_slice(&2u64.to_be_bytes());
        input.extend_from_slice(&11u64.to_be_bytes());
        input.extend_from_slice(b"UserRenamed");
        input.extend_from_slice(&1u32.to_be_bytes());
        input.extend_from_slice(&1_790_000_000_123_456i64.to_be_bytes());
        input.extend_from_slice(&(r.metadata.len() as u64).to_be_bytes());
        input.extend_from_slice(r.metadata.as_bytes());
        input.extend_from_slice(&(r.payload.len() as u64).to_be_bytes());
        input.extend_from_slice(r.payload.as_bytes());
        let expected: [u8; 32] = Sha256::digest(&input).into();
        assert_eq!(event_hash(&prev, &r), expected);
    }

    #[test]
    fn changing_any_single_field_or_the_previous_hash_changes_the_hash() {
        let base = row();
        let prev = GENESIS;
        let original = event_hash(&prev, &base);
        let mut flipped_prev = prev;
        flipped_prev[31] ^= 1;
        let mut variants: Vec<(&str, [u8; 32])> = vec![("prev", event_hash(&flipped_prev, &base))];
        let mut with = |name: &'static str, change: &dyn Fn(&mut Row<'static>)| {
            let mut r = base.clone();
            change(&mut r);
            variants.push((name, event_hash(&prev, &r)));
        };
        with("position", &|r| r.position ^= 1);
        with("id", &|r| r.id = Uuid::from_u128(r.id.as_u128() ^ 1));
        with("stream", &|r| r.stream = "user-0");
        with("version", &|r| r.version ^= 1);
        with("event_type", &|r| r.event_type = "UserRenamee");
        with("schema_version", &|r| r.schema_version ^= 1);
        with("recorded_at", &|r| r.recorded_at_us ^= 1);
        with("metadata", &|r| r.metadata = r#"{"requestId":"r-0"}"#);
        // One space less: the same JSON value, other bytes.
        with("payload", &|r| r.payload = r#"{"name":"아리아"}"#);
        for (name, hash) in &variants {
            assert_ne!(*hash, original, "changing {name} kept the hash");
        }
    }

    #[test]
    fn moving_bytes_between_adjacent_fields_changes_the_hash() {
        // Without length prefixes these two would hash the same input.
        let a = Row {
            metadata: "{}x",
            payload: "{}",
            ..row()
        };
        let b = Row {
            metadata: "{}",
            payload: "x{}",
            ..row()
        };
        assert_ne!(event_hash(&GENESIS, &a), event_hash(&GENESIS, &b));
    }

    #[test]
    fn link_chains_each_row_to_the_one_before() {
        let first = row();
        let second = Row {
            position: 8,
            version: 3,
            ..row()
        };
        let hashes = link(&GENESIS, &[first.clone(), second.clone()]);
        assert_eq!(hashes[0], event_hash(&GENESIS, &first));
        assert_eq!(hashes[1], event_hash(&hashes[0], &second));
    }

    #[test]
    fn hashes_are_stored_as_lowercase_hex_and_nothing_else_is_read_as_one() {
        let hash = event_hash(&GENESIS, &row());
        let text = to_hex(&hash);
        assert_eq!(text.len(), 64);
        assert_eq!(from_hex(&text), Some(hash));
        assert_eq!(from_hex(&text.to_uppercase()), None);
        assert_eq!(from_hex(&text[1..]), None);
        assert_eq!(from_hex(&format!("{}g", &text[1..])), None);
    }

    #[test]
    fn the_head_to_link_to_comes_from_the_stored_hash() {
        assert_eq!(head_of(0, None).unwrap(), Some(Head::EMPTY));
        assert_eq!(head_of(5, None).unwrap(), None);
        let hash = [7; 32];
        assert_eq!(
            head_of(5, Some(&to_hex(&hash))).unwrap(),
            Some(Head { position: 5, hash })
        );
        assert!(matches!(
            head_of(5, Some("not a hash")),
            Err(StoreError::Corrupt { position: 5, .. })
        ));
    }
}
