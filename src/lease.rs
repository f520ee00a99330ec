//! Leadership among instances sharing one PostgreSQL database: who runs each projection, the
//! nudge worker and the pipeline's sweeper.
//!
//! A lease is a session-level advisory lock (`pg_try_advisory_lock`) taken on a connection of
//! its own, keyed by the schema and the lease's name. It is held as long as that connection
//! lives: when the holder dies (or its connection breaks), PostgreSQL releases the lock and the
//! next instance to try takes over. The holder pings its connection every [`CHECK`] and gives
//! the lead up when the ping fails, so two holders overlap by at most that long; the work they
//! guard is safe against that anyway (projection checkpoints only move from where they were
//! read, appends carry expected versions), the lease only keeps instances from doing it twice.
//!
//! On SQLite there is one instance: the lease is always granted.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::db::Db;

/// How often a holder checks that its lease connection is alive.
pub const CHECK: Duration = Duration::from_secs(1);
/// How often an instance without the lease tries to take it.
pub const RETRY: Duration = Duration::from_millis(500);

/// A lease held by this instance. Dropping it gives the lead up.
pub struct Lease {
    keeper: Option<JoinHandle<()>>,
    lost: Option<oneshot::Receiver<()>>,
    name: String,
}

impl Lease {
    /// Tries to take the lease `name`; `None` if another instance holds it.
    pub async fn try_acquire(db: &Db, name: &str) -> Result<Option<Lease>, sqlx::Error> {
        match db {
            Db::Sqlite(_) => Ok(Some(Lease {
                keeper: None,
                lost: None,
                name: name.to_owned(),
            })),
            Db::Postgres(pool) => try_acquire_pg(pool, name).await,
        }
    }

    /// Waits until this instance holds the lease `name`, calling `waiting` between attempts
    /// (a follower's chance to catch up with the leader's work).
    pub async fn acquire<F, Fut>(db: &Db, name: &str, mut waiting: F) -> Lease
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut said = false;
        loop {
            match Lease::try_acquire(db, name).await {
                Ok(Some(lease)) => {
                    if said {
                        tracing::info!(lease = name, "took the lead");
                    }
                    return lease;
                }
                Ok(None) => {
                    if !said {
                        tracing::info!(lease = name, "another instance leads; following");
                        said = true;
                    }
                }
                Err(e) if db.is_closed() => {
                    tracing::debug!(error = %e, "lease: database closed");
                    std::future::pending::<()>().await;
                }
                Err(e) => tracing::warn!(lease = name, error = %e, "taking a lease failed"),
            }
            waiting().await;
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Resolves when the lease is lost (its connection broke). Never, on SQLite.
    pub async fn lost(&mut self) {
        match self.lost.as_mut() {
            Some(lost) => {
                let _ = lost.await;
                tracing::warn!(lease = %self.name, "lost the lead");
            }
            None => std::future::pending().await,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            // Dropping the connection ends the session, which releases the lock.
            keeper.abort();
        }
    }
}

async fn try_acquire_pg(pool: &PgPool, name: &str) -> Result<Option<Lease>, sqlx::Error> {
    // Tried on a pooled connection (a refusal leaves it as it was); a granted lock keeps its
    // connection out of the pool, so the lock lives exactly as long as this lease.
    let mut pooled = pool.acquire().await?;
    let taken: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_lock(hashtextextended('teachback.lease:' || current_schema() \
         || ':' || $1, 0))",
    )
    .bind(name)
    .fetch_one(&mut *pooled)
    .await?;
    if !taken {
        return Ok(None);
    }
    let mut conn = pooled.detach();
    let (lost_tx, lost) = oneshot::channel();
    let keeper = tokio::spawn(async move {
        loop {
            tokio::time::sleep(CHECK).await;
            if sqlx::query("SELECT 1").execute(&mut conn).await.is_err() {
                let _ = lost_tx.send(());
                return;
            }
        }
    });
    metrics::counter!("teachback_leases_taken_total", "lease" => name.to_owned()).increment(1);
    Ok(Some(Lease {
        keeper: Some(keeper),
        lost: Some(lost),
        name: name.to_owned(),
    }))
}
