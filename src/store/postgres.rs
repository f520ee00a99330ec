//! The PostgreSQL backend's append: the same plan as SQLite, made safe for concurrent writers.
//!
//! Every append transaction first takes `LOCK TABLE events IN EXCLUSIVE MODE`. That mode blocks
//! other writers (of any process or instance) but not readers, so positions are chosen and
//! committed strictly one transaction after another: position order is commit order, and a
//! reader tailing `WHERE position > checkpoint` can never pass an event whose transaction commits
//! later. Rolled-back transactions leave no visible hole to be filled in later.
//!
//! The common append costs three round trips, like a bare INSERT: `BEGIN; LOCK`, one INSERT that
//! computes positions from `MAX(position)` itself (its snapshot is taken after the lock was
//! granted), and `COMMIT`. Stream versions come from the writer's cache; see [`VersionCache`].

use jiff::Timestamp;
use sqlx::PgPool;

use super::plan::{self, Answers, Lookup, LookupRow, Path, VersionCache};
use super::{PreparedAppend, StoreError, is_unique_violation};

/// One try at a batch, in one transaction, on `path`. `Ok(None)`: the fast path could not decide
/// and nothing was written.
pub(crate) async fn attempt(
    pool: &PgPool,
    batch: &[PreparedAppend],
    now: Timestamp,
    cache: &mut VersionCache,
    streams: &[&str],
    path: Path,
) -> Result<Option<Answers>, StoreError> {
    let mut tx = pool
        .begin_with("BEGIN; LOCK TABLE events IN EXCLUSIVE MODE")
        .await?;
    let lookup = match path {
        Path::Fast => {
            let missing = cache.missing(streams);
            let mut lookup = if missing.is_empty() {
                Lookup::default()
            } else {
                let found: Vec<LookupRow> = sqlx::query_as(
                    "SELECT 1, s, (SELECT MAX(version) FROM events WHERE stream = s), \
                     NULL::int8, NULL::uuid FROM UNNEST($1::text[]) AS s",
                )
                .bind(&missing)
                .fetch_all(&mut *tx)
                .await?;
                Lookup::from_rows(found)
            };
            cache.fill(streams, &mut lookup);
            // Positions are planned from 0; the INSERT adds the real head.
            lookup.head = 0;
            lookup
        }
        Path::Authoritative => {
            let found: Vec<LookupRow> = sqlx::query_as(
                "SELECT 0, NULL::text, (SELECT COALESCE(MAX(position), 0) FROM events), \
                 NULL::int8, NULL::uuid \
                 UNION ALL \
                 SELECT 1, s, (SELECT MAX(version) FROM events WHERE stream = s), NULL, NULL \
                 FROM UNNEST($1::text[]) AS s \
                 UNION ALL \
                 SELECT 2, stream, version, position, id FROM events WHERE id = ANY($2)",
            )
            .bind(streams)
            .bind(plan::ids_of(batch))
            .fetch_all(&mut *tx)
            .await?;
            Lookup::from_rows(found)
        }
    };
    let planned_head = lookup.head;
    let (rows, mut results) = plan::plan(batch, &lookup, now.as_microsecond());
    if path == Path::Fast && results.iter().any(Result::is_err) {
        // A refusal might come from a stale cache or a retried id: decide it authoritatively.
        return Ok(None);
    }

    if !rows.is_empty() {
        // One statement whatever the batch size: columns travel as arrays, positions are the
        // head read under the lock plus each row's offset.
        let mut offsets = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        let mut stream_names = Vec::with_capacity(rows.len());
        let mut versions = Vec::with_capacity(rows.len());
        let mut types = Vec::with_capacity(rows.len());
        let mut schema_versions = Vec::with_capacity(rows.len());
        let mut times = Vec::with_capacity(rows.len());
        let mut metadata = Vec::with_capacity(rows.len());
        let mut payloads = Vec::with_capacity(rows.len());
        for r in &rows {
            offsets.push((r.position - planned_head) as i64);
            ids.push(r.id);
            stream_names.push(r.stream);
            versions.push(r.version as i64);
            types.push(r.event_type);
            schema_versions.push(r.schema_version as i32);
            times.push(r.recorded_at_us);
            metadata.push(r.metadata);
            payloads.push(r.payload);
        }
        let inserted: Result<i64, sqlx::Error> = sqlx::query_scalar(
            "WITH base AS (SELECT COALESCE(MAX(position), 0) AS head FROM events), \
             ins AS ( \
               INSERT INTO events (position, id, stream, version, event_type, schema_version, \
                                   recorded_at, metadata, payload) \
               SELECT base.head + t.rel, t.id, t.stream, t.version, t.event_type, \
                      t.schema_version, t.recorded_at, t.metadata, t.payload \
               FROM base, UNNEST($1::int8[], $2::uuid[], $3::text[], $4::int8[], $5::text[], \
                                 $6::int4[], $7::int8[], $8::text[], $9::text[]) \
                    AS t(rel, id, stream, version, event_type, schema_version, recorded_at, \
                         metadata, payload) \
               RETURNING 1) \
             SELECT head FROM base",
        )
        .bind(offsets)
        .bind(ids)
        .bind(stream_names)
        .bind(versions)
        .bind(types)
        .bind(schema_versions)
        .bind(times)
        .bind(metadata)
        .bind(payloads)
        .fetch_one(&mut *tx)
        .await;
        let head = match inserted {
            Ok(head) => head as u64,
            // A stale cached version, or an id stored before: roll back, decide authoritatively.
            Err(e) if path == Path::Fast && is_unique_violation(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if path == Path::Authoritative && head != planned_head {
            return Err(StoreError::Conflict(format!(
                "the log's head moved under the write lock ({planned_head} → {head})"
            )));
        }
        plan::shift_positions(&mut results, head - planned_head);
    }
    tx.commit().await?;
    cache.learn(&lookup, &results);
    Ok(Some(results))
}
