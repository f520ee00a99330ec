//! The SQLite backend's append. One file, WAL journal, `synchronous=FULL`.
//!
//! SQLite has one writer at a time, so taking the write lock up front (`BEGIN IMMEDIATE`) makes
//! position order equal commit order: a reader tailing by position can never skip an event.

use jiff::Timestamp;
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use super::plan::{self, Answers, Lookup, LookupRow, Path, VersionCache};
use super::{PreparedAppend, StoreError, is_unique_violation};

/// Nine columns a row; SQLite allows 32,766 bound values per statement.
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
    // Head and stream versions (and on the authoritative path, already-stored ids) in one round
    // trip, inside the write lock. The correlated MAX seeks the (stream, version) index.
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
        "SELECT 0, NULL, (SELECT COALESCE(MAX(position), 0) FROM events), NULL, NULL \
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

    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO events (position, id, stream, version, event_type, schema_version, \
             recorded_at, metadata, payload) ",
        );
        insert.push_values(chunk, |mut b, r| {
            b.push_bind(r.position as i64)
                .push_bind(r.id)
                .push_bind(r.stream)
                .push_bind(r.version as i64)
                .push_bind(r.event_type)
                .push_bind(r.schema_version as i32)
                .push_bind(r.recorded_at_us)
                .push_bind(r.metadata)
                .push_bind(r.payload);
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
