//! Hashing the rows written before the hash chain existed (migration `0009_event_hashes`).
//!
//! Those rows have no hash. At start, after the migrations, the rows at the end of the log that
//! have none are hashed in position order, chaining from the last row that has one, in one
//! transaction under the write lock. A writer that finds the head without a hash (a server of an
//! earlier version appended meanwhile, during a rolling deploy) does the same inside its append
//! transaction before linking its batch. This is the only UPDATE of event rows anywhere.
//!
//! Only the tail is filled in: a row without a hash *before* a hashed one is left as it is, and
//! `teachback audit verify` reports it (no writer ever leaves such a row).

use sqlx::{PgConnection, SqliteConnection};

use super::StoreError;
use super::chain::{self, Head};
use super::row::{STORED_COLUMNS, StoredEvent};
use crate::db::Db;
use crate::with_pool;

/// Rows hashed per round trip.
const PAGE: i64 = 1_000;

/// A connection inside a transaction that holds the events table's write lock.
pub(crate) enum Locked<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

/// Runs `$body` with `$conn` bound to the locked connection, once per dialect.
macro_rules! on_locked {
    ($locked:expr, $conn:ident => $body:expr) => {
        match $locked {
            Locked::Sqlite(c) => {
                let $conn = &mut **c;
                $body
            }
            Locked::Postgres(c) => {
                let $conn = &mut **c;
                $body
            }
        }
    };
}

/// At start: hashes the rows at the end of the log that have no hash yet. Returns how many it
/// hashed (0, after one cheap query, once the log is hashed).
pub async fn backfill(db: &Db) -> Result<u64, StoreError> {
    let unhashed: Option<bool> = with_pool!(db, pool => {
        sqlx::query_scalar("SELECT hash IS NULL FROM events ORDER BY position DESC LIMIT 1")
            .fetch_optional(pool)
            .await?
    });
    if unhashed != Some(true) {
        return Ok(0);
    }
    let hashed = match db {
        Db::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let (_, hashed) = hash_tail(Locked::Sqlite(&mut tx)).await?;
            tx.commit().await?;
            hashed
        }
        Db::Postgres(pool) => {
            let mut tx = pool
                .begin_with("BEGIN; LOCK TABLE events IN EXCLUSIVE MODE")
                .await?;
            let (_, hashed) = hash_tail(Locked::Postgres(&mut tx)).await?;
            tx.commit().await?;
            hashed
        }
    };
    if hashed > 0 {
        tracing::info!(
            events = hashed,
            "hashed events written before the hash chain"
        );
    }
    Ok(hashed)
}

/// Hashes every row after the last hashed one, in position order, on a connection that holds
/// the write lock. Returns the head of the chain afterwards and how many rows it hashed.
pub(crate) async fn hash_tail(mut locked: Locked<'_>) -> Result<(Head, u64), StoreError> {
    let last: Option<(i64, String)> = on_locked!(&mut locked, conn => {
        sqlx::query_as(
            "SELECT position, hash FROM events WHERE hash IS NOT NULL \
             ORDER BY position DESC LIMIT 1",
        )
        .fetch_optional(conn)
        .await?
    });
    let mut head = match last {
        None => Head::EMPTY,
        Some((position, hash)) => chain::head_of(position as u64, Some(&hash))?
            .expect("a row with a hash is a head to link to"),
    };
    let page_sql = format!(
        "SELECT {STORED_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
    );
    let mut hashed = 0;
    loop {
        let rows: Vec<StoredEvent> = on_locked!(&mut locked, conn => {
            sqlx::query_as(&page_sql)
                .bind(head.position as i64)
                .bind(PAGE)
                .fetch_all(conn)
                .await?
        });
        let Some(last) = rows.last() else {
            return Ok((head, hashed));
        };
        let fields: Vec<chain::Row<'_>> = rows.iter().map(StoredEvent::fields).collect();
        let linked = chain::link(&head.hash, &fields);
        let hashes: Vec<String> = linked.iter().map(chain::to_hex).collect();
        let positions: Vec<i64> = rows.iter().map(|r| r.position).collect();
        match &mut locked {
            Locked::Sqlite(conn) => {
                for (position, hash) in positions.iter().zip(&hashes) {
                    sqlx::query("UPDATE events SET hash = $1 WHERE position = $2")
                        .bind(hash)
                        .bind(position)
                        .execute(&mut **conn)
                        .await?;
                }
            }
            Locked::Postgres(conn) => {
                sqlx::query(
                    "UPDATE events SET hash = t.hash \
                     FROM UNNEST($1::int8[], $2::text[]) AS t(position, hash) \
                     WHERE events.position = t.position",
                )
                .bind(&positions)
                .bind(&hashes)
                .execute(&mut **conn)
                .await?;
            }
        }
        hashed += rows.len() as u64;
        head = Head {
            position: last.position as u64,
            hash: *linked.last().expect("a page is not empty"),
        };
    }
}
