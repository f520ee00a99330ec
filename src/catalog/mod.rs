//! The catalogue lectures are given on: majors → subjects → topics, each topic with a
//! description and key concepts in Korean and English.
//!
//! The starter catalogue (`starter.json`) is published as `TopicPublished` events on every start.
//! Each event's id is derived from the topic's content, so republishing an unchanged topic is an
//! idempotent no-op, and an edited topic is published again (the latest version wins).

use sha2::{Digest, Sha256};
use teachback_events::{Event, Metadata, NewEvent, TopicPublished, streams};
use uuid::Uuid;

use crate::store::{AppendError, EventStore, ExpectedVersion};

const STARTER: &str = include_str!("starter.json");

#[derive(serde::Deserialize)]
struct Starter {
    topics: Vec<TopicPublished>,
}

/// The starter catalogue shipped in the binary.
pub fn starter() -> Vec<TopicPublished> {
    serde_json::from_str::<Starter>(STARTER)
        .expect("the starter catalogue is valid (a unit test checks it)")
        .topics
}

/// The event id of a topic's content: the same content always gets the same id.
pub fn content_id(topic: &TopicPublished) -> Uuid {
    let json = serde_json::to_vec(topic).expect("topics serialise");
    let digest = Sha256::digest([b"TopicPublished\0".as_slice(), &json].concat());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Publishes topics; those already published with the same content are skipped by the log's
/// idempotency. Returns the highest position involved.
pub async fn publish(store: &EventStore, topics: Vec<TopicPublished>) -> Result<u64, AppendError> {
    let appends = topics.into_iter().map(|topic| {
        let id = content_id(&topic);
        let event = NewEvent::with_id(id, &Event::TopicPublished(topic), Metadata::default());
        // One append per topic: an unchanged topic is a no-op even when others changed.
        store.append_to_stream(streams::CATALOG, ExpectedVersion::Any, vec![event])
    });
    let mut top = 0;
    for result in futures::future::join_all(appends).await {
        top = top.max(result?.position);
    }
    Ok(top)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_starter_catalogue_has_thirty_bilingual_topics_in_three_majors() {
        let topics = starter();
        assert!(topics.len() >= 30, "{}", topics.len());
        let majors: HashSet<_> = topics.iter().map(|t| t.major.id.clone()).collect();
        assert!(majors.len() >= 3);
        let ids: HashSet<_> = topics.iter().map(|t| t.topic_id.clone()).collect();
        assert_eq!(ids.len(), topics.len(), "topic ids are unique");
        for t in &topics {
            for lang in ["ko", "en"] {
                assert!(
                    !t.title[lang].is_empty(),
                    "{} has no {lang} title",
                    t.topic_id
                );
                assert!(
                    !t.description[lang].is_empty(),
                    "{} has no {lang} description",
                    t.topic_id
                );
                assert!(
                    t.key_concepts[lang].len() >= 3,
                    "{} has few {lang} key concepts",
                    t.topic_id
                );
                assert!(!t.major.name[lang].is_empty() && !t.subject.name[lang].is_empty());
            }
            assert!(t.topic_id.starts_with(&format!("{}.", t.subject.id)));
        }
    }

    #[test]
    fn content_ids_change_with_the_content_and_only_then() {
        let mut topic = starter().remove(0);
        let id = content_id(&topic);
        assert_eq!(id, content_id(&topic.clone()));
        topic.description.insert("en".into(), "edited".into());
        assert_ne!(id, content_id(&topic));
    }
}
