//! The PostgreSQL backend's append: the same plan as SQLite, made safe for concurrent writers.
//!
//! Every append transaction first takes `LOCK TABLE events IN EXCLUSIVE MODE`. That mode blocks
//! other writers (of any process or instance) but not readers, so positions are chosen and
//! committed strictly one transaction after another: position order is commit order, and a
//! reader tailing `WHERE position > checkpoint` can never pass an event whose transaction commits
//! later. Rolled-back transactions leave no visible hole to be filled in later.
//!
//! The common append costs three round trips, like a bare INSERT: `BEGIN; LOCK`, one INSERT, and
//! `COMMIT`. Stream versions come from the writer's cache (see [`VersionCache`]), and so does the
//! head of the hash chain: the writer plans positions and links hashes from the head it last
//! committed, and the INSERT inserts nothing unless the log's real head (read by the same
//! statement, after the lock was granted) is still that one. When another process appended
//! meanwhile, the INSERT returns the real head and its hash instead; the batch is planned and
//! linked again from it and inserted, still under the same lock, in the same transaction.

use jiff::Timestamp;
use sqlx::{PgConnection, PgPool};

use super::backfill::{self, Locked};
use super::chain::{self, Head};
use super::plan::{self, Answers, Lookup, LookupRow, Path, Row, VersionCache};
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
    let (mut lookup, mut head) = match path {
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
            // Planned from the head this writer last committed; the INSERT checks it.
            let head = cache.head.unwrap_or(Head::EMPTY);
            lookup.head = head.position;
            (lookup, head)
        }
        Path::Authoritative => {
            let found: Vec<LookupRow> = sqlx::query_as(
                "SELECT 0, (SELECT hash FROM events ORDER BY position DESC LIMIT 1), \
                        (SELECT COALESCE(MAX(position), 0) FROM events), NULL::int8, NULL::uuid \
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
            let lookup = Lookup::from_rows(found);
            let head = linkable(&mut tx, lookup.head, lookup.head_hash.as_deref()).await?;
            (lookup, head)
        }
    };
    let (mut rows, mut results) = plan::plan(batch, &lookup, now.as_microsecond());
    if path == Path::Fast && results.iter().any(Result::is_err) {
        // A refusal might come from a stale cache or a retried id: decide it authoritatively.
        return Ok(None);
    }

    let mut last = head;
    if !rows.is_empty() {
        let mut hashes = chain::link(&head.hash, &rows);
        let mut inserted = insert_if_head(&mut tx, &rows, &hashes, head).await;
        if path == Path::Fast {
            if let Ok(Some(real)) = inserted {
                // Another process appended since this writer's last commit (or this is its first):
                // nothing was inserted. Plan and link again from the real head, under the lock
                // this transaction still holds. Only positions and hashes change: the decisions
                // depend on versions and ids, which the head does not touch.
                head = linkable(&mut tx, real.position, real.hash.as_deref()).await?;
                lookup.head = head.position;
                (rows, results) = plan::plan(batch, &lookup, now.as_microsecond());
                hashes = chain::link(&head.hash, &rows);
                inserted = insert_if_head(&mut tx, &rows, &hashes, head).await;
            }
        }
        match inserted {
            Ok(None) => {}
            Ok(Some(real)) => {
                return Err(StoreError::Conflict(format!(
                    "the log's head moved under the write lock ({} → {})",
                    head.position, real.position
                )));
            }
            // A stale cached version, or an id stored before: roll back, decide authoritatively.
            Err(e) if path == Path::Fast && is_unique_violation(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        last = Head {
            position: rows.last().expect("not empty").position,
            hash: *hashes.last().expect("one hash a row"),
        };
    }
    tx.commit().await?;
    cache.learn(&lookup, &results);
    cache.head = Some(last);
    Ok(Some(results))
}

/// The log's head as the guarded INSERT saw it.
struct SeenHead {
    position: u64,
    hash: Option<String>,
}

/// The head to link to: the stored one, or, if the head row has no hash yet (written by a server
/// of an earlier version), the head after hashing the rows without one.
async fn linkable(
    tx: &mut PgConnection,
    position: u64,
    hash: Option<&str>,
) -> Result<Head, StoreError> {
    match chain::head_of(position, hash)? {
        Some(head) => Ok(head),
        None => Ok(backfill::hash_tail(Locked::Postgres(tx)).await?.0),
    }
}

/// Inserts `rows` with their hashes in one statement, but only if the log's head is `expected`
/// (position and stored hash). `Ok(None)`: inserted. `Ok(Some(head))`: the head was another, and
/// nothing was inserted.
async fn insert_if_head(
    tx: &mut PgConnection,
    rows: &[Row<'_>],
    hashes: &[[u8; 32]],
    expected: Head,
) -> Result<Option<SeenHead>, sqlx::Error> {
    // Columns travel as arrays, so the statement is the same whatever the batch size.
    let mut positions = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    let mut stream_names = Vec::with_capacity(rows.len());
    let mut versions = Vec::with_capacity(rows.len());
    let mut types = Vec::with_capacity(rows.len());
    let mut schema_versions = Vec::with_capacity(rows.len());
    let mut times = Vec::with_capacity(rows.len());
    let mut metadata = Vec::with_capacity(rows.len());
    let mut payloads = Vec::with_capacity(rows.len());
    for r in rows {
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
    let hex: Vec<String> = hashes.iter().map(chain::to_hex).collect();
    let expected_hash = (expected.position > 0).then(|| chain::to_hex(&expected.hash));
    // The statement's snapshot is taken after the lock was granted, so `top` is the real head,
    // and the data-modifying CTE runs (or inserts nothing) whether or not it is referenced.
    let (position, hash): (i64, Option<String>) = sqlx::query_as(
        "WITH top AS ( \
           SELECT m.head, (SELECT hash FROM events WHERE position = m.head) AS hash \
           FROM (SELECT COALESCE(MAX(position), 0) AS head FROM events) AS m), \
         ins AS ( \
           INSERT INTO events (position, id, stream, version, event_type, schema_version, \
                               recorded_at, metadata, payload, hash) \
           SELECT t.position, t.id, t.stream, t.version, t.event_type, t.schema_version, \
                  t.recorded_at, t.metadata, t.payload, t.hash \
           FROM top, UNNEST($1::int8[], $2::uuid[], $3::text[], $4::int8[], $5::text[], \
                            $6::int4[], $7::int8[], $8::text[], $9::text[], $10::text[]) \
                AS t(position, id, stream, version, event_type, schema_version, recorded_at, \
                     metadata, payload, hash) \
           WHERE top.head = $11 AND top.hash IS NOT DISTINCT FROM $12 \
           RETURNING 1) \
         SELECT head, hash FROM top",
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
    .bind(hex)
    .bind(expected.position as i64)
    .bind(expected_hash.as_deref())
    .fetch_one(&mut *tx)
    .await?;
    let seen = SeenHead {
        position: position as u64,
        hash,
    };
    let matches = seen.position == expected.position && seen.hash == expected_hash;
    Ok((!matches).then_some(seen))
}
