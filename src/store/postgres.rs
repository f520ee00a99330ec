//! The PostgreSQL backend's append: the same plan as SQLite, made safe for concurrent writers.
//!
//! Every append transaction first takes `LOCK TABLE events IN EXCLUSIVE MODE`. That mode blocks
//! other writers (of any process or instance) but not readers, so positions are chosen and
//! committed strictly one transaction after another: position order is commit order, and a
//! reader tailing `WHERE position > checkpoint` can never pass an event whose transaction commits
//! later. Rolled-back transactions leave no visible hole to be filled in later.

use jiff::Timestamp;
use sqlx::PgPool;
use uuid::Uuid;

use super::plan::{self, Lookup};
use super::{AppendError, AppendOutcome, PreparedAppend, StoreError};

/// Checks and writes a batch in one transaction under the table's exclusive write lock.
pub(crate) async fn append_batch(
    pool: &PgPool,
    batch: &[PreparedAppend],
    now: Timestamp,
) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    // A separate statement, so its snapshot is taken after the lock was granted.
    let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
        .fetch_one(&mut *tx)
        .await?;
    let streams: Vec<&str> = plan::streams_of(batch);
    let versions: Vec<(String, Option<i64>)> = sqlx::query_as(
        "SELECT s, (SELECT MAX(version) FROM events WHERE stream = s) FROM UNNEST($1::text[]) AS s",
    )
    .bind(&streams)
    .fetch_all(&mut *tx)
    .await?;
    let existing: Vec<(Uuid, String, i64, i64)> =
        sqlx::query_as("SELECT id, stream, version, position FROM events WHERE id = ANY($1)")
            .bind(plan::ids_of(batch))
            .fetch_all(&mut *tx)
            .await?;

    let lookup = Lookup::from_rows(head, versions, existing);
    let (rows, results) = plan::plan(batch, &lookup, now.as_microsecond());

    if !rows.is_empty() {
        // One statement whatever the batch size: columns travel as arrays.
        let mut positions = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        let mut stream_names = Vec::with_capacity(rows.len());
        let mut versions = Vec::with_capacity(rows.len());
        let mut types = Vec::with_capacity(rows.len());
        let mut schema_versions = Vec::with_capacity(rows.len());
        let mut times = Vec::with_capacity(rows.len());
        let mut metadata = Vec::with_capacity(rows.len());
        let mut payloads = Vec::with_capacity(rows.len());
        for r in &rows {
            positions.push(r.position as i64);
            ids.push(r.id);
            stream_names.push(r.stream);
            versions.push(r.version as i64);
            types.push(r.event_type);
            schema_versions.push(r.schema_version as i32);
            times.push(r.recorded_at_us);
            metadata.push(r.metadata);
            payloads.push(r.payload);
        }
        sqlx::query(
            "INSERT INTO events (position, id, stream, version, event_type, schema_version, \
             recorded_at, metadata, payload) \
             SELECT * FROM UNNEST($1::int8[], $2::uuid[], $3::text[], $4::int8[], $5::text[], \
             $6::int4[], $7::int8[], $8::text[], $9::text[])",
        )
        .bind(positions)
        .bind(ids)
        .bind(stream_names)
        .bind(versions)
        .bind(types)
        .bind(schema_versions)
        .bind(times)
        .bind(metadata)
        .bind(payloads)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(results)
}
