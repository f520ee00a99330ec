//! Audit tools over the log: `teachback audit trail --user <id>` lists everything a learner did
//! and everything done to their data.

use jiff::Timestamp;
use serde::Serialize;
use std::collections::HashSet;
use uuid::Uuid;

use crate::store::{EventStore, StoreError};

/// One event of a learner's trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrailEntry {
    pub position: u64,
    pub recorded_at: Timestamp,
    #[serde(rename = "type")]
    pub event_type: String,
    pub stream: String,
    /// Who did it: the learner themselves, someone else (`actingUser`), or the system.
    pub by: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acting_user: Option<Uuid>,
}

/// Events read per page.
const PAGE: usize = 1_000;

/// Every event of the log that the learner `user` did, or that concerns their data: their own
/// stream, events they were the acting user of, events naming them (`userId`), and every event
/// of the lectures and nudges that are theirs. One pass over the log, in order; `progress` is
/// told the position reached and the head.
pub async fn trail(
    store: &EventStore,
    user: Uuid,
    progress: &dyn Fn(u64, u64),
) -> Result<Vec<TrailEntry>, StoreError> {
    let head = *store.committed().borrow();
    let own_stream = teachback_events::streams::user(user);
    let user_text = user.to_string();
    // Streams that are the learner's (their lectures, their nudges), found as the log is read:
    // such a stream's first event names them.
    let mut theirs: HashSet<String> = HashSet::new();
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_all(after, PAGE, None).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            break;
        };
        for event in page {
            let names_them =
                event.payload.get("userId").and_then(|v| v.as_str()) == Some(user_text.as_str());
            if names_them && event.stream != own_stream {
                theirs.insert(event.stream.clone());
            }
            let acting = event.metadata.acting_user;
            let concerns = event.stream == own_stream
                || acting == Some(user)
                || names_them
                || theirs.contains(&event.stream);
            if !concerns {
                continue;
            }
            entries.push(TrailEntry {
                position: event.position,
                recorded_at: event.recorded_at,
                event_type: event.event_type,
                stream: event.stream,
                by: match acting {
                    Some(a) if a == user => "learner",
                    Some(_) => "someone else",
                    None => "system",
                },
                acting_user: acting.filter(|a| *a != user),
            });
        }
        after = last;
        progress(after, head);
    }
    Ok(entries)
}
