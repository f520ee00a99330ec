//! Upcasting: stored payloads of older schema versions become the current shape on read.
//!
//! Upcasters are keyed by (event type, schema version) and applied one version step at a time,
//! so a v1 payload passes through v1→v2, v2→v3, … until it reaches the current version. The log
//! itself is never rewritten.

use serde_json::Value;

use crate::domain::EventKind;

/// Why a stored event could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("{event_type} schema version {found} is newer than this build understands ({current})")]
    FutureVersion {
        event_type: &'static str,
        found: u32,
        current: u32,
    },
    #[error("no upcaster for {event_type} from schema version {from}")]
    MissingUpcaster { event_type: &'static str, from: u32 },
    #[error("{event_type} payload does not match its schema: {source}")]
    InvalidPayload {
        event_type: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// One step: turns a payload of `from` into a payload of `from + 1`.
type Step = fn(Value) -> Result<Value, String>;

/// Every upcasting step, keyed by (kind, from version).
const STEPS: &[(EventKind, u32, Step)] =
    &[(EventKind::TopicPublished, 1, topic_published_v1_to_v2)];

/// Brings `payload`, written at `version`, to the current schema version of `kind`.
pub fn upcast(kind: EventKind, mut version: u32, mut payload: Value) -> Result<Value, DecodeError> {
    let current = kind.schema_version();
    if version > current {
        return Err(DecodeError::FutureVersion {
            event_type: kind.type_name(),
            found: version,
            current,
        });
    }
    while version < current {
        let step = STEPS
            .iter()
            .find(|(k, from, _)| *k == kind && *from == version)
            .map(|(_, _, step)| *step)
            .ok_or(DecodeError::MissingUpcaster {
                event_type: kind.type_name(),
                from: version,
            })?;
        payload = step(payload).map_err(|message| DecodeError::InvalidPayload {
            event_type: kind.type_name(),
            source: serde::de::Error::custom(message),
        })?;
        version += 1;
    }
    Ok(payload)
}

/// TopicPublished v1 had no key concepts; v2 carries them per language. A v1 topic has none.
fn topic_published_v1_to_v2(mut payload: Value) -> Result<Value, String> {
    let object = payload
        .as_object_mut()
        .ok_or_else(|| "TopicPublished v1 payload is not an object".to_owned())?;
    object
        .entry("keyConcepts")
        .or_insert_with(|| Value::Object(Default::default()));
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_below_its_current_version_has_a_complete_upcast_chain() {
        for kind in EventKind::ALL {
            for from in 1..kind.schema_version() {
                assert!(
                    STEPS.iter().any(|(k, f, _)| k == kind && *f == from),
                    "{} has no upcaster from v{from}",
                    kind.type_name()
                );
            }
        }
    }

    #[test]
    fn a_version_newer_than_the_build_is_refused_not_misread() {
        let err = upcast(EventKind::UserRenamed, 7, serde_json::json!({})).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::FutureVersion {
                found: 7,
                current: 1,
                ..
            }
        ));
    }

    #[test]
    fn a_non_object_v1_topic_is_an_invalid_payload() {
        let err = upcast(EventKind::TopicPublished, 1, serde_json::json!([1])).unwrap_err();
        assert!(matches!(err, DecodeError::InvalidPayload { .. }), "{err}");
    }
}
