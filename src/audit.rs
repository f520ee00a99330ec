//! Audit tools over the log: `teachback audit trail --user <id>` lists everything a learner did
//! and everything done to their data; `teachback audit verify` checks the hash chain over the
//! stored log and reports its first broken link.

use jiff::Timestamp;
use serde::Serialize;
use std::collections::HashSet;
use uuid::Uuid;

use crate::db::Db;
use crate::store::chain::{self, GENESIS};
use crate::store::{EventStore, STORED_COLUMNS, StoreError, StoredEvent};
use crate::with_pool;

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

/// The end of an intact chain: the last event's position and hash. Recorded somewhere else (a
/// ticket, another system's log), it lets a later check notice a rewritten tail too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainHead {
    pub position: u64,
    pub hash: String,
}

/// How a link is broken; see [`BreakKind::code`] for the stable codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// The stored hash is the one the next event links to, but the event's columns (and the hash
    /// before it) no longer give it: the event was changed after it was written, or the event
    /// before it was removed.
    ContentAltered,
    /// The event's columns give the hash the next event links to, but another hash is stored.
    HashAltered,
    /// The stored hash does not match the event; with no next event (or neither of the above
    /// holding) it cannot be told which of the two was changed.
    ContentOrHashAltered,
    /// No hash is stored for an event before the end of the chain.
    MissingHash,
    /// An event's position is not after the one before it.
    PositionsNotIncreasing,
    /// A stored column cannot be read as its type (for example text that is not UTF-8).
    Unreadable,
}

impl Serialize for BreakKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl BreakKind {
    /// The stable, machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            BreakKind::ContentAltered => "content_altered",
            BreakKind::HashAltered => "hash_altered",
            BreakKind::ContentOrHashAltered => "content_or_hash_altered",
            BreakKind::MissingHash => "missing_hash",
            BreakKind::PositionsNotIncreasing => "positions_not_increasing",
            BreakKind::Unreadable => "unreadable",
        }
    }

    /// A sentence for people.
    pub fn describe(self) -> &'static str {
        match self {
            BreakKind::ContentAltered => {
                "the event was altered after it was written (or the event before it removed): its \
                 stored hash is the one the next event links to, but its stored columns and the \
                 previous event's hash no longer give that hash"
            }
            BreakKind::HashAltered => {
                "the event's stored hash was altered: its columns give the hash the next event \
                 links to, but another one is stored"
            }
            BreakKind::ContentOrHashAltered => {
                "the event's content or its stored hash was altered: the stored hash is not the \
                 one its columns and the event before it give"
            }
            BreakKind::MissingHash => "the event has no stored hash",
            BreakKind::PositionsNotIncreasing => {
                "positions are not increasing: the event's position is not after the one before it"
            }
            BreakKind::Unreadable => "a stored column of the event cannot be read",
        }
    }
}

/// The first link of the chain that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokenLink {
    /// The event's position, as stored.
    pub position: i64,
    /// The event's id, stream and version as stored (`None` only when unreadable).
    pub id: Option<Uuid>,
    pub stream: Option<String>,
    pub version: Option<i64>,
    /// The hash the event's stored columns and the previous event's hash give.
    pub expected: Option<String>,
    /// The hash stored with the event.
    pub stored: Option<String>,
    pub code: BreakKind,
    pub reason: String,
}

impl std::fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the hash chain is broken at position {}", self.position)?;
        if let (Some(id), Some(stream), Some(version)) = (&self.id, &self.stream, &self.version) {
            write!(f, " (event {id}, stream `{stream}`, version {version})")?;
        }
        write!(f, ": {}", self.reason)?;
        if let Some(expected) = &self.expected {
            write!(
                f,
                "; expected hash {expected}, stored {}",
                self.stored.as_deref().unwrap_or("none")
            )?;
        }
        write!(f, " ({})", self.code.code())
    }
}

/// What `teachback audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events whose link holds (every event when the chain is intact).
    pub events: u64,
    pub outcome: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every link holds; `head` is `None` for an empty log.
    Intact {
        head: Option<ChainHead>,
    },
    Broken(BrokenLink),
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        matches!(self.outcome, Verdict::Intact { .. })
    }

    /// The first broken link, if any.
    pub fn broken(&self) -> Option<&BrokenLink> {
        match &self.outcome {
            Verdict::Broken(b) => Some(b),
            Verdict::Intact { .. } => None,
        }
    }

    /// `{"ok":true,"events":N,"head":{"position":…,"hash":…}}` (`head` null for an empty log) or
    /// `{"ok":false,"events":N,"brokenAt":{…}}`.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.outcome {
            Verdict::Intact { head } => {
                serde_json::json!({ "ok": true, "events": self.events, "head": head })
            }
            Verdict::Broken(broken) => {
                serde_json::json!({ "ok": false, "events": self.events, "brokenAt": broken })
            }
        }
    }
}

/// Rows read per query when verifying.
const VERIFY_PAGE: i64 = 1_000;

/// Walks the stored log in position order, recomputing every event's hash from its stored
/// columns and the previous event's hash, and stops at the first link that does not hold.
/// Reads the rows as stored, not as events (nothing is parsed, so any byte that changed shows).
/// `progress` is told the position reached and the log's head.
pub async fn verify(db: &Db, progress: &dyn Fn(u64, u64)) -> Result<VerifyReport, sqlx::Error> {
    let head: i64 = with_pool!(db, pool => {
        sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
            .fetch_one(pool)
            .await?
    });
    let mut prev_hash = GENESIS;
    let mut prev_position: i64 = 0;
    let mut events = 0u64;
    // A row whose stored hash did not match, waiting for the next row to tell whether its
    // content or its hash was changed.
    let mut suspect: Option<(StoredEvent, [u8; 32])> = None;
    // From the lowest possible position: a row moved below 1 must be seen too.
    let mut after = i64::MIN;
    let broken = loop {
        let (page, unreadable) = read_page(db, after).await?;
        let mut found = None;
        for row in &page {
            if let Some((altered, expected)) = suspect.take() {
                found = Some(classify(altered, expected, Some(row)));
                break;
            }
            if row.position <= prev_position {
                let mut broken = link(row, BreakKind::PositionsNotIncreasing, None);
                broken.reason = format!(
                    "{}: {} does not follow {prev_position}",
                    broken.reason, row.position
                );
                found = Some(broken);
                break;
            }
            let expected = chain::event_hash(&prev_hash, &row.fields());
            match &row.hash {
                None => {
                    found = Some(link(row, BreakKind::MissingHash, Some(&expected)));
                    break;
                }
                Some(stored) if *stored == chain::to_hex(&expected) => {
                    prev_hash = expected;
                    prev_position = row.position;
                    events += 1;
                }
                Some(_) => suspect = Some((row.clone(), expected)),
            }
        }
        if found.is_some() {
            break found;
        }
        if let Some((position, error)) = unreadable {
            if let Some((altered, expected)) = suspect.take() {
                break Some(classify(altered, expected, None));
            }
            break Some(BrokenLink {
                position,
                id: None,
                stream: None,
                version: None,
                expected: None,
                stored: None,
                code: BreakKind::Unreadable,
                reason: format!("{}: {error}", BreakKind::Unreadable.describe()),
            });
        }
        let Some(last) = page.last() else {
            break suspect
                .take()
                .map(|(altered, expected)| classify(altered, expected, None));
        };
        after = last.position;
        progress(after.max(0) as u64, head.max(0) as u64);
    };
    let outcome = match broken {
        Some(broken) => Verdict::Broken(broken),
        None => Verdict::Intact {
            head: (events > 0).then(|| ChainHead {
                position: prev_position as u64,
                hash: chain::to_hex(&prev_hash),
            }),
        },
    };
    Ok(VerifyReport { events, outcome })
}

/// A broken link at `row`.
fn link(row: &StoredEvent, code: BreakKind, expected: Option<&[u8; 32]>) -> BrokenLink {
    BrokenLink {
        position: row.position,
        id: Some(row.id),
        stream: Some(row.stream.clone()),
        version: Some(row.version),
        expected: expected.map(chain::to_hex),
        stored: row.hash.clone(),
        code,
        reason: code.describe().to_owned(),
    }
}

/// Which of a mismatching row's content and hash changed, judged by the row after it, whose hash
/// was computed from the mismatching row's original hash.
fn classify(altered: StoredEvent, expected: [u8; 32], next: Option<&StoredEvent>) -> BrokenLink {
    let links_from = |prev: &[u8; 32], next: &StoredEvent| {
        next.hash.as_deref()
            == Some(chain::to_hex(&chain::event_hash(prev, &next.fields())).as_str())
    };
    let stored = altered.hash.as_deref().and_then(chain::from_hex);
    let code = match next {
        Some(next) if stored.is_some_and(|s| links_from(&s, next)) => BreakKind::ContentAltered,
        Some(next) if links_from(&expected, next) => BreakKind::HashAltered,
        _ => BreakKind::ContentOrHashAltered,
    };
    link(&altered, code, Some(&expected))
}

/// One page of stored rows after `after`. A row that cannot be decoded ends the page early and is
/// returned as `(position, error)`, so the rows before it are still checked.
async fn read_page(
    db: &Db,
    after: i64,
) -> Result<(Vec<StoredEvent>, Option<(i64, String)>), sqlx::Error> {
    let sql = format!(
        "SELECT {STORED_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
    );
    let page: Result<Vec<StoredEvent>, sqlx::Error> = with_pool!(db, pool => {
        sqlx::query_as(&sql).bind(after).bind(VERIFY_PAGE).fetch_all(pool).await
    });
    match page {
        Ok(rows) => Ok((rows, None)),
        Err(e) if is_decode_error(&e) => {
            // Find the row: read the page's positions, then its rows one at a time.
            let positions: Vec<i64> = with_pool!(db, pool => {
                sqlx::query_scalar(
                    "SELECT position FROM events WHERE position > $1 ORDER BY position LIMIT $2",
                )
                .bind(after)
                .bind(VERIFY_PAGE)
                .fetch_all(pool)
                .await?
            });
            let one = format!("SELECT {STORED_COLUMNS} FROM events WHERE position = $1");
            let mut rows = Vec::with_capacity(positions.len());
            for position in positions {
                let row: Result<StoredEvent, sqlx::Error> = with_pool!(db, pool => {
                    sqlx::query_as(&one).bind(position).fetch_one(pool).await
                });
                match row {
                    Ok(row) => rows.push(row),
                    Err(e) if is_decode_error(&e) => {
                        return Ok((rows, Some((position, e.to_string()))));
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok((rows, None))
        }
        Err(e) => Err(e),
    }
}

fn is_decode_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_))
}
