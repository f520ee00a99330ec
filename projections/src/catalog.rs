//! The catalogue projection: the latest published version of every topic.

use std::collections::BTreeMap;

use jiff::Timestamp;
use teachback_events::{DecodeError, Event, EventKind, RecordedEvent, TopicPublished};

/// The projection's name; its checkpoint is stored under it.
pub const NAME: &str = "topics.v1";

/// A change to the topics read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogChange {
    /// A topic as now published; replaces any earlier version of it.
    TopicUpserted {
        topic: Box<TopicPublished>,
        at: Timestamp,
    },
}

/// Whether the projection reads events of this type.
pub fn reads(event_type: &str) -> bool {
    EventKind::from_type_name(event_type) == Some(EventKind::TopicPublished)
}

/// Maps one event to the changes it makes. Pure.
pub fn project(event: &RecordedEvent) -> Result<Vec<CatalogChange>, DecodeError> {
    let wanted = |k| k == EventKind::TopicPublished;
    Ok(match crate::decode_kinds(event, wanted)? {
        Some(Event::TopicPublished(topic)) => vec![CatalogChange::TopicUpserted {
            topic: Box::new(topic),
            at: event.recorded_at,
        }],
        _ => Vec::new(),
    })
}

/// The catalogue in memory: the reference the SQL table must equal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogView {
    pub topics: BTreeMap<String, TopicPublished>,
}

impl CatalogView {
    pub fn apply(&mut self, event: &RecordedEvent) -> Result<(), DecodeError> {
        for CatalogChange::TopicUpserted { topic, .. } in project(event)? {
            self.topics.insert(topic.topic_id.clone(), *topic);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use teachback_events::{CatalogEntry, Metadata, NewEvent};

    fn published(id: &str, title: &str) -> RecordedEvent {
        let topic = TopicPublished {
            topic_id: id.into(),
            major: CatalogEntry {
                id: "cs".into(),
                name: [("en".into(), "CS".into())].into(),
            },
            subject: CatalogEntry {
                id: "cs.os".into(),
                name: [("en".into(), "OS".into())].into(),
            },
            title: [("en".into(), title.into())].into(),
            description: Default::default(),
            key_concepts: Default::default(),
        };
        let new = NewEvent::from_event(&Event::TopicPublished(topic), Metadata::default());
        RecordedEvent {
            position: 1,
            id: new.id,
            stream: "catalog".into(),
            stream_version: 0,
            event_type: new.event_type,
            schema_version: new.schema_version,
            recorded_at: Timestamp::UNIX_EPOCH,
            metadata: new.metadata,
            payload: new.payload,
        }
    }

    #[test]
    fn a_republished_topic_replaces_its_earlier_version_and_leaves_others() {
        let mut view = CatalogView::default();
        view.apply(&published("a", "first")).unwrap();
        view.apply(&published("b", "other")).unwrap();
        view.apply(&published("a", "edited")).unwrap();
        assert_eq!(view.topics.len(), 2);
        assert_eq!(view.topics["a"].title["en"], "edited");
        assert_eq!(view.topics["b"].title["en"], "other");
    }
}
