//! The SQLite backend: the embedded default. One file, WAL journal, `synchronous=FULL`.
//!
//! SQLite has one writer at a time, so taking the write lock up front (`BEGIN IMMEDIATE`) makes
//! position order equal commit order: a reader tailing by position can never skip an event.

use jiff::Timestamp;
use sqlx::{QueryBuilder, Sqlite, SqlitePool};
use uuid::Uuid;

use super::plan::{self, Lookup};
use super::{AppendError, AppendOutcome, PreparedAppend, StoreError};

/// Nine columns a row; SQLite allows 32,766 bound values per statement.
const INSERT_CHUNK: usize = 1_000;

/// Checks and writes a batch in one `BEGIN IMMEDIATE` transaction.
pub(crate) async fn append_batch(
    pool: &SqlitePool,
    batch: &[PreparedAppend],
    now: Timestamp,
) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;

    let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
        .fetch_one(&mut *tx)
        .await?;
    let streams = serde_json::to_string(&plan::streams_of(batch)).expect("strings serialise");
    // The correlated MAX uses the (stream, version) index: one seek per stream.
    let versions: Vec<(String, Option<i64>)> = sqlx::query_as(
        "SELECT s.value, (SELECT MAX(version) FROM events WHERE stream = s.value) \
             FROM json_each($1) AS s",
    )
    .bind(streams)
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<String> = plan::ids_of(batch)
        .iter()
        .map(|id| id.simple().to_string())
        .collect();
    let existing: Vec<(Uuid, String, i64, i64)> = sqlx::query_as(
        "SELECT id, stream, version, position FROM events \
             WHERE id IN (SELECT unhex(value) FROM json_each($1))",
    )
    .bind(serde_json::to_string(&ids).expect("strings serialise"))
    .fetch_all(&mut *tx)
    .await?;

    let lookup = Lookup::from_rows(head, versions, existing);
    let (rows, results) = plan::plan(batch, &lookup, now.as_microsecond());

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
        insert.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(results)
}
