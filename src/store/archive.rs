//! The log as JSON Lines, byte for byte: `teachback export` and `teachback import`.
//!
//! One line per event, in global order: position, id, stream, version, type, schema version,
//! time, the metadata and payload exactly as stored (embedded as JSON, not re-encoded), and the
//! event's hash in the chain (`chain.rs`). Importing into an empty store writes the same rows
//! (same positions, ids, versions, times, bytes and hashes), so export → import → export gives the
//! same file, on either database: this is how a deployment moves between SQLite and PostgreSQL.
//! The read models are not exported; they are folds of the log and a server rebuilds them from it
//! at start.
//!
//! Import recomputes the chain line by line and refuses an archive whose stored hashes do not
//! follow: one that was altered, or a filtered export (which leaves events out, so it is not the
//! log). Archives written before the chain existed have no hashes; import computes them.

use std::io::{BufRead, Write};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::chain;
use super::row::{STORED_COLUMNS, StoredEvent, prefix_len, to_db};
use crate::db::Db;
use crate::{with_pool, with_tx};

/// Which events an export takes.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Streams whose name starts with this.
    pub stream_prefix: Option<String>,
    /// Only these event types (none: every type).
    pub types: Vec<String>,
    /// Recorded at or after.
    pub since: Option<Timestamp>,
    /// Recorded before.
    pub until: Option<Timestamp>,
    /// Leave the learners' keys out (the personal fields of such an archive cannot be read).
    pub without_keys: bool,
}

/// A learner's key as a line of the archive, after the events: `{"learnerKey": {…}}`. Without
/// it, an imported log's personal fields could not be read; an erased learner's line has no
/// key, so they stay erased.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArchivedKey {
    pub user_id: Uuid,
    /// Base64 (standard, padded); absent once the learner was erased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KeyLine {
    learner_key: ArchivedKey,
}

/// One event as a line of the archive.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArchivedEvent {
    pub position: u64,
    pub id: Uuid,
    pub stream: String,
    pub version: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    pub recorded_at: Timestamp,
    pub metadata: Box<RawValue>,
    pub payload: Box<RawValue>,
    /// The event's hash in the chain, as stored. Optional when reading: archives written before
    /// the chain existed have none, and import computes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

impl ArchivedEvent {
    /// The columns the event's hash covers, as they will be stored.
    fn fields(&self) -> chain::Row<'_> {
        chain::Row {
            position: self.position,
            id: self.id,
            stream: &self.stream,
            version: self.version,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            recorded_at_us: self.recorded_at.as_microsecond(),
            metadata: self.metadata.get(),
            payload: self.payload.get(),
        }
    }
}

/// What an export or an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub events: u64,
    /// Learner keys written or read.
    pub keys: u64,
    pub first_position: Option<u64>,
    pub last_position: Option<u64>,
}

impl Summary {
    fn add(&mut self, position: u64) {
        self.events += 1;
        self.first_position.get_or_insert(position);
        self.last_position = Some(position);
    }
}

/// Why an import was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the store is not empty ({0} events): import only into a new, empty database")]
    NotEmpty(u64),
    #[error("line {line}: {reason}")]
    BadLine { line: u64, reason: String },
    #[error(
        "line {line}: the hash of the event at position {position} does not follow from the \
         lines before it: the archive is a filtered export (--stream-prefix, --type, --since or \
         --until leave events out, and only a whole log can be imported), or it was altered"
    )]
    ChainBroken { line: u64, position: u64 },
    #[error("reading the archive: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// user id, key, created at, erased at.
type KeyRow = (Uuid, Option<Vec<u8>>, i64, Option<i64>);

/// Rows read per query.
const PAGE: i64 = 1_000;

/// The `WHERE` clause of a filter, after `position > $1`; binds start at `$2`.
fn conditions(filter: &Filter) -> (String, Vec<Bind>) {
    let mut sql = String::new();
    let mut binds = Vec::new();
    let mut next = 2;
    if let Some(prefix) = &filter.stream_prefix {
        sql.push_str(&format!(" AND substr(stream, 1, ${next}) = ${}", next + 1));
        binds.push(Bind::Int(i64::from(prefix_len(prefix))));
        binds.push(Bind::Text(prefix.clone()));
        next += 2;
    }
    if !filter.types.is_empty() {
        let placeholders: Vec<String> = (0..filter.types.len())
            .map(|i| format!("${}", next + i))
            .collect();
        sql.push_str(&format!(" AND event_type IN ({})", placeholders.join(", ")));
        binds.extend(filter.types.iter().cloned().map(Bind::Text));
        next += filter.types.len();
    }
    if let Some(since) = filter.since {
        sql.push_str(&format!(" AND recorded_at >= ${next}"));
        binds.push(Bind::Int(since.as_microsecond()));
        next += 1;
    }
    if let Some(until) = filter.until {
        sql.push_str(&format!(" AND recorded_at < ${next}"));
        binds.push(Bind::Int(until.as_microsecond()));
    }
    (sql, binds)
}

#[derive(Debug, Clone)]
enum Bind {
    Int(i64),
    Text(String),
}

/// How many events `filter` takes (for a progress bar).
pub async fn count(db: &Db, filter: &Filter) -> Result<u64, sqlx::Error> {
    let (conditions, binds) = conditions(filter);
    let sql = format!("SELECT COUNT(*) FROM events WHERE position > $1{conditions}");
    let n: i64 = with_pool!(db, pool => {
        let mut query = sqlx::query_scalar(&sql).bind(0i64);
        for bind in &binds {
            query = match bind {
                Bind::Int(i) => query.bind(*i),
                Bind::Text(t) => query.bind(t.clone()),
            };
        }
        query.fetch_one(pool).await?
    });
    Ok(n as u64)
}

/// Writes the events `filter` takes to `out`, one JSON line each, in global order; `progress`
/// is told how many are written so far.
pub async fn export(
    db: &Db,
    filter: &Filter,
    out: &mut dyn Write,
    progress: &dyn Fn(u64),
) -> anyhow::Result<Summary> {
    let (conditions, binds) = conditions(filter);
    let sql = format!(
        "SELECT {STORED_COLUMNS} FROM events WHERE position > $1{conditions} ORDER BY position \
         LIMIT {PAGE}"
    );
    let mut after = 0i64;
    let mut summary = Summary::default();
    loop {
        let rows: Vec<StoredEvent> = with_pool!(db, pool => {
            let mut query = sqlx::query_as(&sql).bind(after);
            for bind in &binds {
                query = match bind {
                    Bind::Int(i) => query.bind(*i),
                    Bind::Text(t) => query.bind(t.clone()),
                };
            }
            query.fetch_all(pool).await?
        });
        let Some(last) = rows.last().map(|r| r.position) else {
            break;
        };
        for row in rows {
            let position = row.position;
            let corrupt = |what: &str, e: &dyn std::fmt::Display| {
                anyhow::anyhow!("the event at position {position} has a corrupt {what}: {e}")
            };
            let line = ArchivedEvent {
                position: position as u64,
                id: row.id,
                stream: row.stream,
                version: row.version as u64,
                event_type: row.event_type,
                schema_version: row.schema_version as u32,
                recorded_at: Timestamp::from_microsecond(row.recorded_at)
                    .map_err(|e| corrupt("time", &e))?,
                metadata: RawValue::from_string(row.metadata)
                    .map_err(|e| corrupt("metadata", &e))?,
                payload: RawValue::from_string(row.payload).map_err(|e| corrupt("payload", &e))?,
                hash: row.hash,
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
            summary.add(position as u64);
        }
        progress(summary.events);
        after = last;
    }
    if !filter.without_keys {
        let keys: Vec<KeyRow> = with_pool!(db, pool => {
            sqlx::query_as(
                "SELECT user_id, key, created_at, erased_at FROM learner_keys ORDER BY user_id",
            )
            .fetch_all(pool)
            .await?
        });
        for (user_id, key, created_at, erased_at) in keys {
            use base64::Engine;
            let line = KeyLine {
                learner_key: ArchivedKey {
                    user_id,
                    key: key.map(|k| base64::engine::general_purpose::STANDARD.encode(k)),
                    created_at,
                    erased_at,
                },
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
            summary.keys += 1;
        }
    }
    out.flush()?;
    Ok(summary)
}

/// Reads an archive into an empty store, in one transaction: every event or none. Lines must be
/// in increasing position order; blank lines are skipped. Each event's hash is recomputed from
/// the one before; a line with a stored hash that differs refuses the whole import. `progress`
/// is told how many events are read so far.
pub async fn import(
    db: &Db,
    input: &mut dyn BufRead,
    progress: &dyn Fn(u64),
) -> Result<Summary, ImportError> {
    let existing: i64 = with_pool!(db, pool => {
        sqlx::query_scalar("SELECT COUNT(*) FROM events").fetch_one(pool).await?
    });
    if existing > 0 {
        return Err(ImportError::NotEmpty(existing as u64));
    }
    let mut tx = db.begin_write().await?;
    let mut summary = Summary::default();
    let mut previous = 0u64;
    let mut prev_hash = chain::GENESIS;
    let mut line_no = 0u64;
    let mut text = String::new();
    loop {
        text.clear();
        if input.read_line(&mut text)? == 0 {
            break;
        }
        line_no += 1;
        if text.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| ImportError::BadLine {
            line: line_no,
            reason,
        };
        if text.trim_start().starts_with("{\"learnerKey\"") {
            let KeyLine { learner_key: k } =
                serde_json::from_str(text.trim_end()).map_err(|e| bad(format!("{e}")))?;
            let key = match &k.key {
                Some(encoded) => {
                    use base64::Engine;
                    let key = base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .map_err(|e| bad(format!("learnerKey.key: {e}")))?;
                    if key.len() != 32 {
                        return Err(bad("learnerKey.key: a key has 32 bytes".into()));
                    }
                    Some(key)
                }
                None => None,
            };
            let inserted = with_tx!(&mut tx, conn => {
                sqlx::query(
                    "INSERT INTO learner_keys (user_id, key, created_at, erased_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(k.user_id)
                .bind(key)
                .bind(k.created_at)
                .bind(k.erased_at)
                .execute(conn)
                .await
                .map(|_| ())
            });
            if let Err(e) = inserted {
                return Err(match &e {
                    sqlx::Error::Database(d) if d.is_unique_violation() => {
                        bad(format!("a second key for learner {}", k.user_id))
                    }
                    _ => ImportError::Db(e),
                });
            }
            summary.keys += 1;
            continue;
        }
        let event: ArchivedEvent =
            serde_json::from_str(text.trim_end()).map_err(|e| bad(format!("{e}")))?;
        if event.position <= previous {
            return Err(bad(format!(
                "position {} does not follow {previous}: events must be in increasing order",
                event.position
            )));
        }
        if event.position > i64::MAX as u64 || event.version > i64::MAX as u64 {
            return Err(bad("position or version out of range".into()));
        }
        previous = event.position;
        let hash = chain::event_hash(&prev_hash, &event.fields());
        let hash_hex = chain::to_hex(&hash);
        if event
            .hash
            .as_ref()
            .is_some_and(|stored| *stored != hash_hex)
        {
            return Err(ImportError::ChainBroken {
                line: line_no,
                position: event.position,
            });
        }
        prev_hash = hash;
        let inserted = with_tx!(&mut tx, conn => {
            sqlx::query(
                "INSERT INTO events (position, id, stream, version, event_type, schema_version, \
                 recorded_at, metadata, payload, hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(to_db(event.position))
            .bind(event.id)
            .bind(&event.stream)
            .bind(to_db(event.version))
            .bind(&event.event_type)
            .bind(event.schema_version as i32)
            .bind(event.recorded_at.as_microsecond())
            .bind(event.metadata.get())
            .bind(event.payload.get())
            .bind(&hash_hex)
            .execute(conn)
            .await
            .map(|_| ())
        });
        if let Err(e) = inserted {
            return Err(match &e {
                sqlx::Error::Database(d) if d.is_unique_violation() => bad(format!(
                    "a duplicate id, or a duplicate version of `{}`",
                    event.stream
                )),
                _ => ImportError::Db(e),
            });
        }
        summary.add(event.position);
        if summary.events % PAGE as u64 == 0 {
            progress(summary.events);
        }
    }
    tx.commit().await?;
    progress(summary.events);
    Ok(summary)
}
