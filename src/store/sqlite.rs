//! The SQLite backend's append. One file, WAL journal, `synchronous=FULL`.
//!
//! SQLite has one writer at a time, so taking the write lock up front (`BEGIN IMMEDIATE`) makes
//! position order equal commit order: a reader tailing by position can never skip an event. The
//! lookup inside that lock reads the head's hash too, so each batch links to the real head of the
//! hash chain.

use jiff::Timestamp;
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use super::backfill::{self, Locked};
use super::chain;
use super::plan::{self, Answers, Lookup, LookupRow, Path, VersionCache};
use super::{PreparedAppend, StoreError, is_unique_violation};

/// Ten columns a row; SQLite allows 32,766 bound values per statement.
const INSERT_CHUNK: usize = 1_000;

/// One try at a batch, in one transaction, on `path`. `Ok(None)`: the fast path could not decide
/// and nothing was written.
pub(crate) async fn attempt(
    pool: &SqlitePool,
    batch: &[PreparedAppend],
    now: Timestamp,
    cache: &mut VersionCache,
    streams: &[&str],
    path: Path,
) -> Result<Option<Answers>, StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    // Head, its hash and stream versions (and on the authoritative path, already-stored ids) in
    // one round trip, inside the write lock. The correlated MAX seeks the (stream, version) index.
    let (lookup_streams, ids) = match path {
        Path::Fast => (cache.missing(streams), Vec::new()),
        Path::Authoritative => (
            streams.to_vec(),
            plan::ids_of(batch)
                .iter()
                .map(|id| id.simple().to_string())
                .collect(),
        ),
    };
    let found: Vec<LookupRow> = sqlx::query_as(
        "SELECT 0, (SELECT hash FROM events ORDER BY position DESC LIMIT 1), \
                (SELECT COALESCE(MAX(position), 0) FROM events), NULL, NULL \
         UNION ALL \
         SELECT 1, s.value, (SELECT MAX(version) FROM events WHERE stream = s.value), NULL, NULL \
         FROM json_each($1) AS s \
         UNION ALL \
         SELECT 2, stream, version, position, id FROM events \
         WHERE id IN (SELECT unhex(value) FROM json_each($2))",
    )
    .bind(serde_json::to_string(&lookup_streams).expect("strings serialise"))
    .bind(serde_json::to_string(&ids).expect("strings serialise"))
    .fetch_all(&mut *tx)
    .await?;
    let mut lookup = Lookup::from_rows(found);
    if path == Path::Fast {
        cache.fill(streams, &mut lookup);
    }
    let (rows, results) = plan::plan(batch, &lookup, now.as_microsecond());
    if path == Path::Fast && results.iter().any(Result::is_err) {
        // A refusal might come from a stale cache or a retried id: decide it authoritatively.
        return Ok(None);
    }
    let head = match chain::head_of(lookup.head, lookup.head_hash.as_deref())? {
        Some(head) => head,
        // The head was written before the hash chain existed: hash it (and the rows before it
        // that have no hash) first, under this same lock.
        None => backfill::hash_tail(Locked::Sqlite(&mut tx)).await?.0,
    };
    debug_assert_eq!(head.position, lookup.head);
    let hashes: Vec<String> = chain::link(&head.hash, &rows)
        .iter()
        .map(chain::to_hex)
        .collect();

    for (chunk, hashes) in rows.chunks(INSERT_CHUNK).zip(hashes.chunks(INSERT_CHUNK)) {
        let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO events (position, id, stream, version, event_type, schema_version, \
             recorded_at, metadata, payload, hash) ",
        );
        insert.push_values(chunk.iter().zip(hashes), |mut b, (r, hash)| {
            b.push_bind(r.position as i64)
                .push_bind(r.id)
                .push_bind(r.stream)
                .push_bind(r.version as i64)
                .push_bind(r.event_type)
                .push_bind(r.schema_version as i32)
                .push_bind(r.recorded_at_us)
                .push_bind(r.metadata)
                .push_bind(r.payload)
                .push_bind(hash);
        });
        match insert.build().execute(&mut *tx).await {
            Ok(_) => {}
            // A stale cached version, or an id stored before: roll back, decide authoritatively.
            Err(e) if path == Path::Fast && is_unique_violation(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    tx.commit().await?;
    cache.learn(&lookup, &results);
    Ok(Some(results))
}
