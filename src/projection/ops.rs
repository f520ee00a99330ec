//! Projection operations: rebuilding a projection from the log into fresh tables and swapping
//! them in while the server runs, and reporting where every projection is.
//!
//! A rebuild creates `<table>__rebuild` for each of the projector's tables with the live table's
//! schema (columns, keys and indexes), folds the whole log into them under the checkpoint
//! `<name>__rebuild`, and then, in one transaction, drops the live tables, renames the new ones
//! in and sets the live checkpoint to where the rebuild got. A live runner that was ahead finds
//! its checkpoint moved ([`super::Overtaken`]) and carries on from there, so events that arrived
//! during the swap are applied to the new tables too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{Projector, advance_checkpoint, base_name, find_checkpoint};
use crate::db::{Db, DbTx};
use crate::store::EventStore;
use crate::{with_pool, with_tx};

/// The suffix of a rebuild's tables and checkpoint.
pub const REBUILD_SUFFIX: &str = "__rebuild";
/// Events read from the log per rebuild batch.
const REBUILD_BATCH: usize = 5_000;
/// A rebuild whose checkpoint moved this recently is taken to be running still.
const REBUILD_LEASE: Duration = Duration::from_secs(30);

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    pub name: String,
    pub events: u64,
    /// The log position the rebuilt tables reached when swapped in.
    pub position: u64,
    pub elapsed: Duration,
}

/// Progress of a rebuild: events applied and the position reached.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub events: u64,
    pub position: u64,
    pub head: u64,
}

/// Whether a projection must be rebuilt before it runs: its name (version) has no checkpoint yet
/// but its tables hold rows, written by an earlier version.
pub async fn needs_rebuild(db: &Db, projector: &dyn Projector) -> anyhow::Result<bool> {
    if find_checkpoint(db, projector.name()).await?.is_some() {
        return Ok(false);
    }
    for table in projector.tables() {
        let any: Option<i32> = with_pool!(db, pool => {
            sqlx::query_scalar(&format!("SELECT 1 FROM {table} LIMIT 1"))
                .fetch_optional(pool)
                .await?
        });
        if any.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Rebuilds a projection from the whole log into fresh tables and swaps them in.
pub async fn rebuild(
    db: &Db,
    store: &EventStore,
    projector: &dyn Projector,
    progress: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<RebuildReport> {
    let mut reports = rebuild_all(db, store, &[projector], progress).await?;
    Ok(reports.pop().expect("one report per projector"))
}

/// Rebuilds several projections in one pass over the log (each batch is read once and applied
/// to every one of them in one transaction), then swaps each one's tables in.
pub async fn rebuild_all(
    db: &Db,
    store: &EventStore,
    projectors: &[&dyn Projector],
    progress: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<Vec<RebuildReport>> {
    let started = Instant::now();
    let mut fresh = Vec::new();
    for projector in projectors {
        fresh.push((*projector, prepare(db, *projector).await?));
    }

    let head = store.head().await?;
    // Only the event types some projection reads are read at all (the rest, most of a log, is
    // filtered out by the database). Events of types this build does not know are not read
    // either: the projections would skip them.
    let types: Vec<String> = teachback_events::EventKind::ALL
        .iter()
        .map(|k| k.type_name())
        .filter(|t| fresh.iter().any(|(p, _)| p.reads(t)))
        .map(str::to_owned)
        .collect();
    let mut position = 0;
    let mut events = 0u64;
    loop {
        let batch = store
            .read_all_of_types(position, REBUILD_BATCH, &types)
            .await?;
        let Some(last) = batch.last().map(|e| e.position) else {
            break;
        };
        let mut tx = db.begin_write().await?;
        for (projector, next) in &fresh {
            if batch.iter().any(|e| projector.reads(&e.event_type)) {
                super::apply_batch(next.as_ref(), &mut tx, &batch).await?;
            }
            let checkpoint = format!("{}{REBUILD_SUFFIX}", projector.name());
            if !advance_checkpoint(&mut tx, &checkpoint, position, last).await? {
                anyhow::bail!("another rebuild of {} is running", projector.name());
            }
        }
        tx.commit().await?;
        position = last;
        events += batch.len() as u64;
        progress(Progress {
            events,
            position,
            head: head.max(position),
        });
        if batch.len() < REBUILD_BATCH {
            break;
        }
    }

    let mut reports = Vec::new();
    for (projector, _) in &fresh {
        swap(db, *projector, position).await?;
        reports.push(RebuildReport {
            name: projector.name().to_owned(),
            events,
            position,
            elapsed: started.elapsed(),
        });
    }
    Ok(reports)
}

/// Creates a projection's fresh tables (dropping a dead rebuild's) and returns the projector
/// writing to them. Refuses while another rebuild of it is running.
async fn prepare(db: &Db, projector: &dyn Projector) -> anyhow::Result<Arc<dyn Projector>> {
    let name = projector.name();
    let rebuild_name = format!("{name}{REBUILD_SUFFIX}");
    let touched: Option<i64> = with_pool!(db, pool => {
        sqlx::query_scalar("SELECT updated_at FROM projection_checkpoints WHERE name = $1")
            .bind(&rebuild_name)
            .fetch_optional(pool)
            .await?
    });
    let now = jiff::Timestamp::now().as_microsecond();
    if let Some(at) = touched
        && now.saturating_sub(at) < REBUILD_LEASE.as_micros() as i64
    {
        anyhow::bail!(
            "another rebuild of {name} is running (its checkpoint moved {:.0} s ago)",
            (now - at) as f64 / 1e6
        );
    }
    let mut tx = db.begin_write().await?;
    for table in projector.tables() {
        let next = format!("{table}{REBUILD_SUFFIX}");
        exec(&mut tx, &format!("DROP TABLE IF EXISTS {next}")).await?;
        for statement in clone_schema(db, &mut tx, table, &next).await? {
            exec(&mut tx, &statement).await?;
        }
    }
    delete_checkpoint(&mut tx, &rebuild_name).await?;
    tx.commit().await?;
    Ok(projector.with_suffix(REBUILD_SUFFIX))
}

/// Swaps a rebuilt projection's tables in at `position`. On PostgreSQL the live tables are
/// locked first, all at once, in the order the runner uses them, so a runner in the middle of a
/// batch finishes it before the swap rather than deadlocking with it.
async fn swap(db: &Db, projector: &dyn Projector, position: u64) -> anyhow::Result<()> {
    let name = projector.name();
    let mut tx = db.begin_write().await?;
    if let Db::Postgres(_) = db {
        exec(
            &mut tx,
            &format!(
                "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                projector.tables().join(", ")
            ),
        )
        .await?;
    }
    for table in projector.tables() {
        exec(&mut tx, &format!("DROP TABLE IF EXISTS {table}")).await?;
        exec(
            &mut tx,
            &format!("ALTER TABLE {table}{REBUILD_SUFFIX} RENAME TO {table}"),
        )
        .await?;
    }
    delete_checkpoint(&mut tx, &format!("{name}{REBUILD_SUFFIX}")).await?;
    set_checkpoint(&mut tx, name, position).await?;
    // Checkpoints of earlier versions of this projection have no tables any more.
    let base = base_name(name).to_owned();
    with_tx!(&mut tx, conn => {
        sqlx::query(
            "DELETE FROM projection_checkpoints WHERE (name = $1 OR name LIKE $2) AND name <> $3 \
             AND name NOT LIKE $4",
        )
        .bind(&base)
        .bind(format!("{base}.%"))
        .bind(name)
        .bind(format!("%{REBUILD_SUFFIX}"))
        .execute(conn)
        .await?;
    });
    tx.commit()
        .await
        .context("swapping the rebuilt tables in")?;
    Ok(())
}

async fn exec(tx: &mut DbTx, sql: &str) -> Result<(), sqlx::Error> {
    with_tx!(tx, conn => {
        sqlx::query(sql).execute(conn).await?;
    });
    Ok(())
}

async fn delete_checkpoint(tx: &mut DbTx, name: &str) -> Result<(), sqlx::Error> {
    with_tx!(tx, conn => {
        sqlx::query("DELETE FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .execute(conn)
            .await?;
    });
    Ok(())
}

async fn set_checkpoint(tx: &mut DbTx, name: &str, position: u64) -> Result<(), sqlx::Error> {
    let now = jiff::Timestamp::now().as_microsecond();
    with_tx!(tx, conn => {
        sqlx::query(
            "INSERT INTO projection_checkpoints (name, position, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position, \
             updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(position as i64)
        .bind(now)
        .execute(conn)
        .await?;
    });
    Ok(())
}

/// Statements creating `next` with the schema of `table`: its columns, keys and indexes.
async fn clone_schema(
    db: &Db,
    tx: &mut DbTx,
    table: &str,
    next: &str,
) -> anyhow::Result<Vec<String>> {
    match db {
        Db::Postgres(_) => {
            let exists: Option<String> = with_tx!(tx, conn => {
                sqlx::query_scalar("SELECT CAST(to_regclass($1) AS TEXT)")
                    .bind(table)
                    .fetch_one(conn)
                    .await?
            });
            anyhow::ensure!(
                exists.is_some(),
                "no table {table}: start the server of this version once, so that it migrates \
                 the database"
            );
            Ok(vec![format!(
                "CREATE TABLE {next} (LIKE {table} INCLUDING ALL)"
            )])
        }
        Db::Sqlite(_) => {
            let rows: Vec<(String, String, String)> = with_tx!(tx, conn => {
                sqlx::query_as(
                    "SELECT type, name, sql FROM sqlite_master \
                     WHERE tbl_name = $1 AND sql IS NOT NULL ORDER BY type DESC",
                )
                .bind(table)
                .fetch_all(conn)
                .await?
            });
            anyhow::ensure!(
                !rows.is_empty(),
                "no table {table}: start the server of this version once, so that it migrates \
                 the database"
            );
            rows.iter()
                .map(|(kind, name, sql)| sqlite_clone(kind, name, sql, next))
                .collect()
        }
    }
}

/// Rewrites one `CREATE TABLE` or `CREATE INDEX` statement from SQLite's schema for `next`.
/// Index names alternate between `<name>` and `<name>__b`, so the fresh table's indexes never
/// collide with the live table's (which are dropped with it at the swap).
fn sqlite_clone(kind: &str, name: &str, sql: &str, next: &str) -> anyhow::Result<String> {
    let body = |from: usize| {
        sql[from..]
            .find('(')
            .map(|i| &sql[from + i..])
            .with_context(|| format!("unexpected schema for {name}: {sql}"))
    };
    match kind {
        "table" => Ok(format!("CREATE TABLE {next} {}", body(0)?)),
        "index" => {
            let on = sql
                .find(" ON ")
                .with_context(|| format!("unexpected schema for {name}: {sql}"))?;
            let create = if sql.to_ascii_uppercase().starts_with("CREATE UNIQUE") {
                "CREATE UNIQUE INDEX"
            } else {
                "CREATE INDEX"
            };
            let index = match name.strip_suffix("__b") {
                Some(base) => base.to_owned(),
                None => format!("{name}__b"),
            };
            Ok(format!("{create} {index} ON {next} {}", body(on)?))
        }
        other => anyhow::bail!("cannot clone a {other} ({name})"),
    }
}

/// Checkpoints of other versions (or time zones) of this projection, which a server may be
/// running: a rebuild swapping its tables in would take them over.
pub async fn other_versions(db: &Db, projector: &dyn Projector) -> anyhow::Result<Vec<String>> {
    let base = base_name(projector.name());
    let names: Vec<String> = with_pool!(db, pool => {
        sqlx::query_scalar(
            "SELECT name FROM projection_checkpoints WHERE (name = $1 OR name LIKE $2) \
             AND name <> $3 AND name NOT LIKE $4 ORDER BY name",
        )
        .bind(base)
        .bind(format!("{base}.%"))
        .bind(projector.name())
        .bind(format!("%{REBUILD_SUFFIX}"))
        .fetch_all(pool)
        .await?
    });
    Ok(names)
}

/// Where one projection is.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Standing {
    pub name: String,
    /// The last position applied (0: none yet).
    pub position: u64,
    /// Events in the log after it.
    pub lag: u64,
    /// Seconds between the last event applied and the newest event in the log.
    pub lag_seconds: f64,
}

/// Most events counted for a projection's lag where positions are not dense.
const STATUS_LAG_CAP: u64 = 1_000_000;

/// Where every projection is, against the log's head.
pub async fn status(
    db: &Db,
    store: &EventStore,
    projectors: &[&dyn Projector],
) -> anyhow::Result<(u64, Vec<Standing>)> {
    if !store.dense_positions() {
        // The log is not the SQL `events` table (KurrentDB): ask the store, which counts the
        // events after each checkpoint (up to a cap).
        let head = store.head().await?;
        let mut out = Vec::new();
        for projector in projectors {
            let position = super::load_checkpoint(db, projector.name()).await?;
            let (lag, lag_seconds) = store.lag_after(position, head, STATUS_LAG_CAP).await?;
            out.push(Standing {
                name: projector.name().to_owned(),
                position,
                lag,
                lag_seconds,
            });
        }
        return Ok((head, out));
    }
    let head: Option<i64> = with_pool!(db, pool => {
        sqlx::query_scalar("SELECT MAX(position) FROM events")
            .fetch_one(pool)
            .await?
    });
    let head = head.unwrap_or(0) as u64;
    let mut out = Vec::new();
    for projector in projectors {
        let position = super::load_checkpoint(db, projector.name()).await?;
        let (lag, seconds): (i64, Option<i64>) = with_pool!(db, pool => {
            sqlx::query_as(
                "SELECT COUNT(*), MAX(recorded_at) - COALESCE((SELECT recorded_at FROM events \
                 WHERE position = $1), MIN(recorded_at)) FROM events WHERE position > $1",
            )
            .bind(position as i64)
            .fetch_one(pool)
            .await?
        });
        out.push(Standing {
            name: projector.name().to_owned(),
            position,
            lag: lag as u64,
            lag_seconds: seconds.unwrap_or(0).max(0) as f64 / 1e6,
        });
    }
    Ok((head, out))
}

#[cfg(test)]
mod tests {
    use super::sqlite_clone;

    #[test]
    fn sqlite_schema_is_cloned_for_the_fresh_table() {
        let table = sqlite_clone(
            "table",
            "lectures",
            "CREATE TABLE \"lectures\" (lecture_id BLOB PRIMARY KEY, started_at BIGINT)",
            "lectures__rebuild",
        )
        .unwrap();
        assert_eq!(
            table,
            "CREATE TABLE lectures__rebuild (lecture_id BLOB PRIMARY KEY, started_at BIGINT)"
        );
        let index = sqlite_clone(
            "index",
            "lectures_by_user",
            "CREATE INDEX lectures_by_user ON \"lectures\" (user_id, started_at)",
            "lectures__rebuild",
        )
        .unwrap();
        assert_eq!(
            index,
            "CREATE INDEX lectures_by_user__b ON lectures__rebuild (user_id, started_at)"
        );
        let again = sqlite_clone(
            "index",
            "lectures_by_user__b",
            "CREATE UNIQUE INDEX lectures_by_user__b ON lectures (user_id)",
            "lectures__rebuild",
        )
        .unwrap();
        assert_eq!(
            again,
            "CREATE UNIQUE INDEX lectures_by_user ON lectures__rebuild (user_id)"
        );
    }
}
