//! The projection runner: tails the log and keeps SQL read models up to date.
//!
//! Each projection has a checkpoint (the last position it applied). The runner reads events after
//! the checkpoint, applies a batch of them, and writes the rows *and* the new checkpoint in one
//! transaction. A crash either commits both or neither, so no event is ever applied twice or
//! skipped. Requests that just wrote can wait for a projection to reach their position
//! (read-your-writes) through [`ProjectionStatus::wait_for`].

pub mod learning;
pub mod lectures;
pub mod notifications;
pub mod ops;
pub mod topics;
pub mod usage;
pub mod users;

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use teachback_events::RecordedEvent;
use tokio::sync::watch;
use uuid::Uuid;

use crate::db::{Db, DbTx};
use crate::lease::Lease;
use crate::store::{EventStore, SubscriptionMessage};
use crate::{with_pool, with_tx};

/// Most events applied in one read-model transaction.
const BATCH: usize = 1_000;
/// Longest a checkpoint stays behind over batches with nothing to write.
const SKIP_PERSIST: Duration = Duration::from_secs(1);

/// A read model maintained from the log.
#[async_trait]
pub trait Projector: Send + Sync + 'static {
    /// The checkpoint's name, `<base>.v<version>` (plus whatever else its rows depend on, such
    /// as a time zone). A name with no checkpoint yet rebuilds the projection from the log.
    fn name(&self) -> &str;
    /// The read-model tables it writes, by their live names.
    fn tables(&self) -> &'static [&'static str];
    /// The same projector writing to `<table><suffix>` instead (a rebuild's fresh tables).
    fn with_suffix(&self, suffix: &str) -> Arc<dyn Projector>;
    /// Whether the projection reads events of this type at all. A batch of only events it
    /// does not read writes nothing (not even the checkpoint, right away).
    fn reads(&self, event_type: &str) -> bool;
    /// Applies events (in order) inside the runner's transaction. `UserErased` events are not
    /// passed here: see [`Projector::erase`].
    async fn apply(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()>;
    /// Drops every row of an erased learner (their `UserErased` is at `position`), inside the
    /// runner's transaction, in log order with the events around it. A projector that reads
    /// `UserErased` must implement it.
    async fn erase(&self, _tx: &mut DbTx, _user: Uuid, _position: u64) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Applies a batch in log order: the runs of events between erasures through
/// [`Projector::apply`], each `UserErased` through [`Projector::erase`].
pub(crate) async fn apply_batch(
    projector: &dyn Projector,
    tx: &mut DbTx,
    batch: &[RecordedEvent],
) -> anyhow::Result<()> {
    let mut start = 0;
    for (i, event) in batch.iter().enumerate() {
        let Some(user) = erased_user(event) else {
            continue;
        };
        if start < i {
            projector.apply(tx, &batch[start..i]).await?;
        }
        if projector.reads(&event.event_type) {
            projector.erase(tx, user, event.position).await?;
        }
        start = i + 1;
    }
    if start < batch.len() {
        projector.apply(tx, &batch[start..]).await?;
    }
    Ok(())
}

/// The learner a `UserErased` event erases.
pub(crate) fn erased_user(event: &RecordedEvent) -> Option<Uuid> {
    if event.event_type != teachback_events::EventKind::UserErased.type_name() {
        return None;
    }
    event.payload.get("userId")?.as_str()?.parse().ok()
}

/// Whether an event type is `UserErased`, which every projection holding a learner's rows reads.
pub(crate) fn is_erasure(event_type: &str) -> bool {
    event_type == teachback_events::EventKind::UserErased.type_name()
}

/// Deletes a learner's rows (by `user_id`) from these tables of a projector.
pub(crate) async fn delete_user_rows(
    tx: &mut DbTx,
    t: &Suffix,
    tables: &[&str],
    user: Uuid,
) -> Result<(), sqlx::Error> {
    with_tx!(tx, conn => {
        for table in tables {
            sqlx::query(&format!("DELETE FROM {} WHERE user_id = $1", t.of(table)))
                .bind(user)
                .execute(&mut *conn)
                .await?;
        }
    });
    Ok(())
}

/// The suffix a projector appends to its table names (empty for the live tables).
#[derive(Debug, Clone, Default)]
pub struct Suffix(Arc<str>);

impl Suffix {
    pub fn new(suffix: &str) -> Suffix {
        Suffix(suffix.into())
    }

    /// The table's name with the suffix.
    pub fn of(&self, table: &str) -> String {
        format!("{table}{}", self.0)
    }
}

/// A projection name's base: `users` for `users.v1`.
pub fn base_name(name: &str) -> &str {
    name.split(['.', '@']).next().unwrap_or(name)
}

/// What a running projection has done; cheap to clone.
#[derive(Clone)]
pub struct ProjectionStatus {
    pub name: Arc<str>,
    position: watch::Receiver<u64>,
    error: watch::Receiver<Option<String>>,
}

impl ProjectionStatus {
    /// The last position applied and committed.
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// A receiver of the applied position.
    pub fn position_receiver(&self) -> watch::Receiver<u64> {
        self.position.clone()
    }

    /// The last error, if the projection is currently failing (it retries by itself).
    pub fn error(&self) -> Option<String> {
        self.error.borrow().clone()
    }

    /// Waits until the projection has applied `position`, at most `timeout`. `true` if it has.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let mut rx = self.position.clone();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// A follower's step: moves the status to the leader's stored checkpoint.
async fn follow_checkpoint(db: &Db, name: &str, position: &watch::Sender<u64>) {
    if let Ok(Some(stored)) = find_checkpoint(db, name).await {
        position.send_if_modified(|p| {
            let moved = stored > *p;
            *p = (*p).max(stored);
            moved
        });
    }
}

pub async fn load_checkpoint(db: &Db, name: &str) -> Result<u64, sqlx::Error> {
    Ok(find_checkpoint(db, name).await?.unwrap_or(0))
}

/// The checkpoint, if the projection has one under this name.
pub async fn find_checkpoint(db: &Db, name: &str) -> Result<Option<u64>, sqlx::Error> {
    let position: Option<i64> = with_pool!(db, pool => {
        sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?
    });
    Ok(position.map(|p| p as u64))
}

/// Moves the checkpoint from `from` to `to`, but only if it is still at `from`: if another runner
/// (another instance) moved it meanwhile, this transaction must not commit, or events would be
/// applied twice. A checkpoint past 0 that is gone (a newer version's rebuild deleted it, or a
/// rebuild restarted) is not recreated. Returns whether the checkpoint was moved.
pub(crate) async fn advance_checkpoint(
    tx: &mut DbTx,
    name: &str,
    from: u64,
    to: u64,
) -> Result<bool, sqlx::Error> {
    let now = jiff::Timestamp::now().as_microsecond();
    let sql = if from == 0 {
        // The first batch creates the row; if another runner created it first, the conflict's
        // WHERE fails unless that runner is still at 0 too.
        "INSERT INTO projection_checkpoints (name, position, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET position = excluded.position, \
         updated_at = excluded.updated_at WHERE projection_checkpoints.position = $4"
    } else {
        "UPDATE projection_checkpoints SET position = $2, updated_at = $3 \
         WHERE name = $1 AND position = $4"
    };
    let moved = with_tx!(tx, conn => {
        sqlx::query(sql)
            .bind(name)
            .bind(to as i64)
            .bind(now)
            .bind(from as i64)
            .execute(conn)
            .await?
            .rows_affected()
    });
    Ok(moved == 1)
}

/// Starts a projection in the background and returns its status. A projection whose name (its
/// version) has no checkpoint but whose tables hold rows of an earlier version is rebuilt first,
/// into fresh tables swapped in when done; the earlier rows serve until then.
pub async fn spawn(
    db: Db,
    store: EventStore,
    projector: Arc<dyn Projector>,
) -> anyhow::Result<ProjectionStatus> {
    let start = load_checkpoint(&db, projector.name()).await?;
    let (position_tx, position) = watch::channel(start);
    let (error_tx, error) = watch::channel(None);
    let name: Arc<str> = projector.name().into();
    let task_name = name.clone();
    let needs_rebuild = ops::needs_rebuild(&db, &*projector).await?;
    tokio::spawn(async move {
        let name = &*task_name;
        let mut backoff = Duration::from_millis(100);
        if needs_rebuild {
            tracing::info!(
                projection = name,
                "projection changed: rebuilding from the log"
            );
            loop {
                // Another instance may have finished the same rebuild meanwhile.
                if !matches!(ops::needs_rebuild(&db, &*projector).await, Ok(true)) {
                    break;
                }
                match ops::rebuild(&db, &store, &*projector, &|_| {}).await {
                    Ok(report) => {
                        error_tx.send_replace(None);
                        tracing::info!(
                            projection = name,
                            events = report.events,
                            seconds = report.elapsed.as_secs_f64(),
                            "projection rebuilt"
                        );
                        break;
                    }
                    Err(_) if db.is_closed() => return,
                    Err(e) => {
                        tracing::error!(
                            projection = name,
                            error = format!("{e:#}"),
                            "rebuild failed; retrying"
                        );
                        error_tx.send_replace(Some(format!("{e:#}")));
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
        loop {
            // One instance runs the projection; the others follow its checkpoint, so their
            // reads-after-writes and ranking boards move on with it.
            let mut lease = Lease::acquire(&db, &format!("projection:{name}"), || {
                follow_checkpoint(&db, name, &position_tx)
            })
            .await;
            metrics::gauge!("teachback_projection_leader", "projection" => name.to_owned())
                .set(1.0);
            let result = tokio::select! {
                result = run(&db, &store, &*projector, &position_tx, &error_tx) => result,
                () = lease.lost() => Err(anyhow::anyhow!("lost the lead of projection {name}")),
            };
            drop(lease);
            metrics::gauge!("teachback_projection_leader", "projection" => name.to_owned())
                .set(0.0);
            if db.is_closed() {
                // The server is stopping; the checkpoint says where to go on next time.
                return;
            }
            if let Err(e) = result {
                if e.downcast_ref::<Overtaken>().is_some() {
                    // A rebuild swapped its tables in, or another instance ran this batch.
                    tracing::info!(
                        projection = name,
                        "{e}; continuing from the stored checkpoint"
                    );
                    continue;
                }
                tracing::error!(
                    projection = name,
                    error = format!("{e:#}"),
                    "projection failed; retrying"
                );
                error_tx.send_replace(Some(format!("{e:#}")));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    });
    Ok(ProjectionStatus {
        name,
        position,
        error,
    })
}

/// The checkpoint moved under a runner: another instance applied the batch, or a rebuild swapped
/// its tables in. The runner goes on from the stored checkpoint.
#[derive(Debug, thiserror::Error)]
#[error("the {0} checkpoint was moved by another runner")]
pub struct Overtaken(String);

/// Runs from the stored checkpoint until an error.
async fn run(
    db: &Db,
    store: &EventStore,
    projector: &dyn Projector,
    position_tx: &watch::Sender<u64>,
    error_tx: &watch::Sender<Option<String>>,
) -> anyhow::Result<()> {
    // `stored`: the checkpoint in the database. `applied`: how far the read model is correct,
    // which runs ahead of `stored` over batches the projection does not read (nothing to write;
    // replaying them after a crash changes nothing). The gap is stored when the log goes quiet
    // and at least every `SKIP_PERSIST`, so status and lag stay true.
    let mut stored = load_checkpoint(db, projector.name()).await?;
    let mut applied = stored;
    let mut persisted_at = Instant::now();
    position_tx.send_replace(stored);
    let mut sub = pin!(store.subscribe_all(stored, None));
    let mut batch: Vec<RecordedEvent> = Vec::with_capacity(BATCH);
    loop {
        let first = if stored < applied {
            match tokio::time::timeout(SKIP_PERSIST, sub.next()).await {
                Ok(message) => message,
                Err(_) => {
                    persist(db, projector, &mut stored, applied, &mut persisted_at).await?;
                    continue;
                }
            }
        } else {
            sub.next().await
        };
        let Some(first) = first else {
            anyhow::bail!("the log subscription ended");
        };
        let mut next = Some(first?);
        // Take what is ready without waiting, up to a batch.
        while let Some(message) = next.take() {
            match message {
                SubscriptionMessage::Event(e) => batch.push(*e),
                SubscriptionMessage::CaughtUp { .. } => break,
            }
            if batch.len() < BATCH {
                next = sub.next().now_or_never().flatten().transpose()?;
            }
        }
        let Some(last) = batch.last().map(|e| e.position) else {
            continue;
        };
        if !batch.iter().any(|e| projector.reads(&e.event_type)) {
            batch.clear();
            applied = last;
            position_tx.send_replace(last);
            if persisted_at.elapsed() >= SKIP_PERSIST {
                persist(db, projector, &mut stored, applied, &mut persisted_at).await?;
            }
            continue;
        }
        let mut tx = db.begin_write().await?;
        apply_batch(projector, &mut tx, &batch).await?;
        if !advance_checkpoint(&mut tx, projector.name(), stored, last).await? {
            // Dropping the transaction rolls the rows back; start again from the stored checkpoint.
            return Err(Overtaken(projector.name().to_owned()).into());
        }
        tx.commit().await?;
        stored = last;
        applied = last;
        persisted_at = Instant::now();
        batch.clear();
        position_tx.send_replace(last);
        if error_tx.borrow().is_some() {
            error_tx.send_replace(None);
        }
    }
}

/// Moves the stored checkpoint (`stored`) up to `applied` over batches that had nothing to
/// write, and notes when.
async fn persist(
    db: &Db,
    projector: &dyn Projector,
    stored: &mut u64,
    applied: u64,
    persisted_at: &mut Instant,
) -> anyhow::Result<()> {
    let mut tx = db.begin_write().await?;
    if !advance_checkpoint(&mut tx, projector.name(), *stored, applied).await? {
        return Err(Overtaken(projector.name().to_owned()).into());
    }
    tx.commit().await?;
    *stored = applied;
    *persisted_at = Instant::now();
    Ok(())
}
