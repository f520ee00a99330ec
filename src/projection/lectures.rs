//! The `lectures` read model, from [`teachback_projections::lectures`]: one row per lecture with
//! its owner and status. Lists a learner's lectures and, at start, the lectures to recover.

use async_trait::async_trait;
use teachback_events::{LectureMode, RecordedEvent};
use teachback_projections::lectures::{self, LectureStatus, LecturesChange};
use uuid::Uuid;

use std::sync::Arc;

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

    async fn apply(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let table = self.t.of("lectures");
        for event in events {
            for change in lectures::project(event)? {
                apply_change(&table, tx, change).await?;
            }
        }
        Ok(())
    }
}

async fn apply_change(
    table: &str,
    tx: &mut DbTx,
    change: LecturesChange,
) -> Result<(), sqlx::Error> {
    with_tx!(tx, conn => {
        match change {
            LecturesChange::Started { lecture_id, user_id, topic_id, mode, at } => {
                let mode = match mode {
                    LectureMode::Live => "live",
                    LectureMode::Upload => "upload",
                    LectureMode::Text => "text",
                };
                sqlx::query(&format!(
                    "INSERT INTO {table} \
                     (lecture_id, user_id, topic_id, mode, status, started_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (lecture_id) DO NOTHING"
                ))
                .bind(lecture_id)
                .bind(user_id)
                .bind(topic_id)
                .bind(mode)
                .bind(LectureStatus::Recording.as_str())
                .bind(at.as_microsecond())
                .execute(conn)
                .await?;
            }
            LecturesChange::StatusChanged { lecture_id, status, at } => {
                sqlx::query(&format!(
                    "UPDATE {table} SET status = $2, updated_at = $3 WHERE lecture_id = $1"
                ))
                .bind(lecture_id)
                .bind(status.as_str())
                .bind(at.as_microsecond())
                .execute(conn)
                .await?;
            }
            LecturesChange::ProcessingChanged { lecture_id, processing, score, at } => {
                sqlx::query(&format!(
                    "UPDATE {table} SET processing = $2, score = COALESCE($3, score), \
                     updated_at = $4 WHERE lecture_id = $1"
                ))
                .bind(lecture_id)
                .bind(processing.as_str())
                .bind(score.map(i32::from))
                .bind(at.as_microsecond())
                .execute(conn)
                .await?;
            }
        }
    });
    Ok(())
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
