//! The catalogue lectures are given on: majors → subjects → topics, each topic with a
//! description and key concepts in Korean and English.
//!
//! The starter catalogue (`starter.json`) is published as `TopicPublished` events on every start.
//! Each event's id is derived from the topic's content, so republishing an unchanged topic is an
//! idempotent no-op, and an edited topic is published again (the latest version wins).
//!
//! Admins add and edit single topics through [`publish_one`] (see `http::admin`).

use sha2::{Digest, Sha256};
use teachback_events::{DecodeError, Event, Metadata, NewEvent, TopicPublished, streams};
use uuid::Uuid;

use crate::store::{AppendError, Direction, EventStore, ExpectedVersion, StoreError};

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

/// Publishes topics; those already published with the same content are skipped (content ids
/// already in the catalogue stream are not appended again). Returns the highest position
/// involved.
pub async fn publish(store: &EventStore, topics: Vec<TopicPublished>) -> Result<u64, AppendError> {
    // Looked up here rather than left to the log's idempotency alone: KurrentDB recognises a
    // re-appended id under `Any` only within its idempotency window, and this runs at every
    // start.
    let stored: std::collections::HashMap<Uuid, u64> = store
        .read_stream_all(streams::CATALOG)
        .await?
        .into_iter()
        .map(|e| (e.id, e.position))
        .collect();
    let mut top = 0;
    let mut missing = Vec::new();
    for topic in topics {
        let id = content_id(&topic);
        match stored.get(&id) {
            Some(position) => top = top.max(*position),
            None => missing.push((id, topic)),
        }
    }
    let appends = missing.into_iter().map(|(id, topic)| {
        let event = NewEvent::with_id(id, &Event::TopicPublished(topic), Metadata::default());
        // One append per topic: an unchanged topic is a no-op even when others changed.
        store.append_to_stream(streams::CATALOG, ExpectedVersion::Any, vec![event])
    });
    for result in futures::future::join_all(appends).await {
        top = top.max(result?.position);
    }
    Ok(top)
}

/// Optimistic-concurrency retries of [`publish_one`] (each retry re-reads the catalogue stream).
const RETRIES: usize = 5;
/// Page size when reading the catalogue stream.
const PAGE: usize = 1_000;

/// What [`publish_one`] does with a topic id the catalogue already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfExists {
    /// Refuse with [`PublishError::Exists`].
    Refuse,
    /// Publish the new version (the latest one wins).
    Replace,
}

/// What [`publish_one`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedOne {
    /// Log position of the topic's current version: wait for the projection to reach it.
    pub position: u64,
    /// The topic was not in the catalogue before.
    pub created: bool,
    /// An event was appended (`false`: the catalogue already held exactly this content).
    pub appended: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("topic `{0}` is already in the catalogue")]
    Exists(String),
    #[error("catalogue event at position {position} is unreadable")]
    Unreadable {
        position: u64,
        #[source]
        source: DecodeError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Append(#[from] AppendError),
}

/// The latest published version of a topic, as the log holds it.
struct Latest {
    topic: TopicPublished,
    event_id: Uuid,
    position: u64,
}

/// Reads the whole catalogue stream: the latest version of `topic_id`, and the stream's version
/// (`None`: no topic was ever published). The stream is small: one event per topic edit.
async fn latest(
    store: &EventStore,
    topic_id: &str,
) -> Result<(Option<Latest>, Option<u64>), PublishError> {
    let mut found = None;
    let mut version = None;
    loop {
        let from = version.map_or(0, |v: u64| v + 1);
        let page = store
            .read_stream(streams::CATALOG, from, Direction::Forwards, PAGE)
            .await?;
        for event in &page {
            version = Some(event.stream_version);
            let decoded = event.decode().map_err(|source| PublishError::Unreadable {
                position: event.position,
                source,
            })?;
            match decoded {
                Event::TopicPublished(topic) if topic.topic_id == topic_id => {
                    found = Some(Latest {
                        topic,
                        event_id: event.id,
                        position: event.position,
                    });
                }
                _ => {}
            }
        }
        if page.len() < PAGE {
            return Ok((found, version));
        }
    }
}

/// The id of an edit: derived from the new content *and* the version it replaces. An edit back
/// to earlier content is then a new event (a content-only id would be a no-op that leaves the
/// intermediate version in place), while a retried edit still has the same id.
fn edit_id(topic: &TopicPublished, replaces: Uuid) -> Uuid {
    let json = serde_json::to_vec(topic).expect("topics serialise");
    let digest = Sha256::digest(
        [
            b"TopicPublished\0".as_slice(),
            &json,
            b"\0replaces\0",
            replaces.as_bytes(),
        ]
        .concat(),
    );
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Publishes one topic (an admin's create or edit) with the request's metadata, in one append.
///
/// Publishing the content the catalogue already holds for this id appends nothing. The append
/// expects the catalogue stream's current version, so two writers cannot both create the same
/// topic; a writer that loses the race re-reads and decides again.
pub async fn publish_one(
    store: &EventStore,
    topic: TopicPublished,
    metadata: Metadata,
    if_exists: IfExists,
) -> Result<PublishedOne, PublishError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (current, version) = latest(store, &topic.topic_id).await?;
        let id = match &current {
            Some(_) if if_exists == IfExists::Refuse => {
                return Err(PublishError::Exists(topic.topic_id));
            }
            Some(c) if c.topic == topic => {
                return Ok(PublishedOne {
                    position: c.position,
                    created: false,
                    appended: false,
                });
            }
            Some(c) => edit_id(&topic, c.event_id),
            // Topics are never removed, so a topic not in the stream was never published: its
            // content id is new. The starter catalogue uses the same id for the same content.
            None => content_id(&topic),
        };
        let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        let event = NewEvent::with_id(id, &Event::TopicPublished(topic.clone()), metadata.clone());
        match store
            .append_to_stream(streams::CATALOG, expected, vec![event])
            .await
        {
            Ok(appended) => {
                return Ok(PublishedOne {
                    position: appended.position,
                    created: current.is_none(),
                    appended: true,
                });
            }
            Err(AppendError::WrongExpectedVersion { .. }) if attempt < RETRIES => continue,
            Err(e) => return Err(e.into()),
        }
    }
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

    #[test]
    fn edit_ids_depend_on_the_content_and_on_the_version_replaced() {
        let topic = starter().remove(0);
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(edit_id(&topic, a), edit_id(&topic.clone(), a));
        assert_ne!(edit_id(&topic, a), edit_id(&topic, b));
        assert_ne!(edit_id(&topic, a), content_id(&topic));
    }
}
