//! The `lectures` read model, from [`teachback_projections::lectures`]: one row per lecture with
//! its owner and status. Lists a learner's lectures and, at start, the lectures to recover.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use teachback_events::{LectureMode, RecordedEvent};
use teachback_projections::lectures::{self, LectureStatus, LecturesChange, Processing};
use uuid::Uuid;

use super::{Projector, Suffix};
use crate::db::{Db, DbTx};
use crate::{with_pool, with_tx};

#[derive(Default)]
pub struct LecturesProjector {
    t: Suffix,
}

#[async_trait]
impl Projector for LecturesProjector {
    fn name(&self) -> &str {
        lectures::NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["lectures"]
    }

    fn with_suffix(&self, suffix: &str) -> Arc<dyn Projector> {
        Arc::new(LecturesProjector {
            t: Suffix::new(suffix),
        })
    }

    fn reads(&self, event_type: &str) -> bool {
        lectures::reads(event_type) || super::is_erasure(event_type)
    }

    async fn apply(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        // A batch's changes are merged per lecture first: each row is written once per batch
        // (the last status, the last processing, the last score, the last change's time), with
        // lectures started in the batch inserted together.
        let mut rows: BTreeMap<Uuid, Pending> = BTreeMap::new();
        let mut order = Vec::new();
        for event in events {
            for change in lectures::project(event)? {
                let id = change.lecture_id();
                let row = rows.entry(id).or_insert_with(|| {
                    order.push(id);
                    Pending::default()
                });
                row.merge(change);
            }
        }
        let table = self.t.of("lectures");
        let (started, updated): (Vec<Uuid>, Vec<Uuid>) =
            order.into_iter().partition(|id| rows[id].start.is_some());
        for chunk in started.chunks(INSERT_CHUNK) {
            with_tx!(tx, conn => {
                let mut insert = sqlx::QueryBuilder::new(format!(
                    "INSERT INTO {table} (lecture_id, user_id, topic_id, mode, status, \
                     processing, score, started_at, updated_at) "
                ));
                insert.push_values(chunk, |mut b, id| {
                    let row = &rows[id];
                    let (user, topic, mode, at) = row.start.clone().expect("partitioned");
                    b.push_bind(*id)
                        .push_bind(user)
                        .push_bind(topic)
                        .push_bind(mode)
                        .push_bind(row.status.unwrap_or(LectureStatus::Recording).as_str())
                        .push_bind(row.processing.unwrap_or(Processing::None).as_str())
                        .push_bind(row.score.map(i32::from))
                        .push_bind(at)
                        .push_bind(row.updated_at);
                });
                insert.push(" ON CONFLICT (lecture_id) DO NOTHING");
                insert.build().execute(&mut *conn).await?;
            });
        }
        let update = format!(
            "UPDATE {table} SET status = COALESCE($2, status), \
             processing = COALESCE($3, processing), score = COALESCE($4, score), \
             updated_at = $5 WHERE lecture_id = $1"
        );
        for id in updated {
            let row = &rows[&id];
            with_tx!(tx, conn => {
                sqlx::query(&update)
                    .bind(id)
                    .bind(row.status.map(LectureStatus::as_str))
                    .bind(row.processing.map(Processing::as_str))
                    .bind(row.score.map(i32::from))
                    .bind(row.updated_at)
                    .execute(&mut *conn)
                    .await?;
            });
        }
        Ok(())
    }

    async fn erase(&self, tx: &mut DbTx, user: Uuid, _position: u64) -> anyhow::Result<()> {
        super::delete_user_rows(tx, &self.t, &["lectures"], user).await?;
        Ok(())
    }
}

/// Rows per multi-row INSERT (9 parameters each).
const INSERT_CHUNK: usize = 100;

/// One lecture's changes in a batch, merged.
#[derive(Default)]
struct Pending {
    start: Option<(Uuid, String, &'static str, i64)>,
    status: Option<LectureStatus>,
    processing: Option<Processing>,
    score: Option<u8>,
    updated_at: i64,
}

impl Pending {
    fn merge(&mut self, change: LecturesChange) {
        match change {
            LecturesChange::Started {
                user_id,
                topic_id,
                mode,
                at,
                ..
            } => {
                let mode = match mode {
                    LectureMode::Live => "live",
                    LectureMode::Upload => "upload",
                    LectureMode::Text => "text",
                };
                self.start = Some((user_id, topic_id, mode, at.as_microsecond()));
                self.updated_at = at.as_microsecond();
            }
            LecturesChange::StatusChanged { status, at, .. } => {
                self.status = Some(status);
                self.updated_at = at.as_microsecond();
            }
            LecturesChange::ProcessingChanged {
                processing,
                score,
                at,
                ..
            } => {
                self.processing = Some(processing);
                self.score = score.or(self.score);
                self.updated_at = at.as_microsecond();
            }
        }
    }
}

/// Live lectures that have not ended: after a restart each one is recovered (and resumed or,
/// after the grace period, abandoned).
pub async fn unfinished_lectures(db: &Db) -> Result<Vec<Uuid>, sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query_scalar(
            "SELECT lecture_id FROM lectures WHERE mode = 'live' AND status IN ('recording', 'paused') \
             ORDER BY started_at",
        )
        .fetch_all(pool)
        .await
    })
}

/// Finished lectures whose processing (transcription or grading) has not ended: after a restart
/// the pipeline picks each one up from its log.
pub async fn unprocessed_lectures(db: &Db) -> Result<Vec<Uuid>, sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query_scalar(
            "SELECT lecture_id FROM lectures WHERE processing IN ('transcribing', 'grading') \
             ORDER BY updated_at",
        )
        .fetch_all(pool)
        .await
    })
}
