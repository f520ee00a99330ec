//! The usage read model, from [`teachback_projections::usage`].

use std::sync::Arc;

use async_trait::async_trait;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use teachback_events::RecordedEvent;
use teachback_projections::usage::{self, Usage, UsageChange, Whose};
use uuid::Uuid;

use super::{Projector, Suffix};
use crate::db::{Db, DbTx};
use crate::{with_pool, with_tx};

pub struct UsageProjector {
    name: String,
    tz: TimeZone,
    t: Suffix,
}

impl UsageProjector {
    pub fn new(tz: TimeZone) -> UsageProjector {
        UsageProjector {
            name: usage::name(&tz),
            tz,
            t: Suffix::default(),
        }
    }
}

#[async_trait]
impl Projector for UsageProjector {
    fn name(&self) -> &str {
        &self.name
    }

    fn tables(&self) -> &'static [&'static str] {
        &["usage_lectures", "usage_learner_days", "usage_days"]
    }

    fn with_suffix(&self, suffix: &str) -> Arc<dyn Projector> {
        Arc::new(UsageProjector {
            name: self.name.clone(),
            tz: self.tz.clone(),
            t: Suffix::new(suffix),
        })
    }

    fn reads(&self, event_type: &str) -> bool {
        usage::reads(event_type) || super::is_erasure(event_type)
    }

    async fn apply(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        for event in events {
            for change in usage::project(event, &self.tz)? {
                apply_change(&self.t, tx, change).await?;
            }
        }
        Ok(())
    }

    async fn erase(&self, tx: &mut DbTx, user: Uuid, _position: u64) -> anyhow::Result<()> {
        super::delete_user_rows(tx, &self.t, &["usage_lectures", "usage_learner_days"], user)
            .await?;
        Ok(())
    }
}

const ADD: &str = "lectures = {t}.lectures + excluded.lectures, \
     audio_ms = {t}.audio_ms + excluded.audio_ms, \
     prompt_tokens = {t}.prompt_tokens + excluded.prompt_tokens, \
     completion_tokens = {t}.completion_tokens + excluded.completion_tokens";

async fn apply_change(t: &Suffix, tx: &mut DbTx, change: UsageChange) -> Result<(), sqlx::Error> {
    let (whose, day, usage) = match change {
        UsageChange::Owner {
            lecture_id,
            user_id,
        } => {
            with_tx!(tx, conn => {
                sqlx::query(&format!(
                    "INSERT INTO {} (lecture_id, user_id) VALUES ($1, $2) \
                     ON CONFLICT (lecture_id) DO NOTHING",
                    t.of("usage_lectures")
                ))
                .bind(lecture_id)
                .bind(user_id)
                .execute(conn)
                .await?;
            });
            return Ok(());
        }
        UsageChange::Add { whose, day, usage } => (whose, day, usage),
    };
    let learner: Option<Uuid> = match whose {
        Whose::Learner(user) => Some(user),
        Whose::LectureOwner(lecture) => with_tx!(tx, conn => {
            sqlx::query_scalar(&format!(
                "SELECT user_id FROM {} WHERE lecture_id = $1",
                t.of("usage_lectures")
            ))
            .bind(lecture)
            .fetch_optional(conn)
            .await?
        }),
    };
    let day = day.to_string();
    let amounts = [
        usage.lectures as i64,
        usage.audio_ms as i64,
        usage.prompt_tokens as i64,
        usage.completion_tokens as i64,
    ];
    if let Some(learner) = learner {
        let table = t.of("usage_learner_days");
        with_tx!(tx, conn => {
            sqlx::query(&format!(
                "INSERT INTO {table} (user_id, day, lectures, audio_ms, prompt_tokens, \
                 completion_tokens) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (user_id, day) DO UPDATE SET {}",
                ADD.replace("{t}", &table)
            ))
            .bind(learner)
            .bind(&day)
            .bind(amounts[0])
            .bind(amounts[1])
            .bind(amounts[2])
            .bind(amounts[3])
            .execute(conn)
            .await?;
        });
    }
    let table = t.of("usage_days");
    with_tx!(tx, conn => {
        sqlx::query(&format!(
            "INSERT INTO {table} (day, lectures, audio_ms, prompt_tokens, completion_tokens) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (day) DO UPDATE SET {}",
            ADD.replace("{t}", &table)
        ))
        .bind(&day)
        .bind(amounts[0])
        .bind(amounts[1])
        .bind(amounts[2])
        .bind(amounts[3])
        .execute(conn)
        .await?;
    });
    Ok(())
}

type Row = (i64, i64, i64, i64);

fn usage_of(row: Option<Row>) -> Usage {
    let (lectures, audio_ms, prompt_tokens, completion_tokens) = row.unwrap_or_default();
    Usage {
        lectures: lectures as u64,
        audio_ms: audio_ms as u64,
        prompt_tokens: prompt_tokens as u64,
        completion_tokens: completion_tokens as u64,
    }
}

/// A learner's usage on a day.
pub async fn learner_day(db: &Db, user: Uuid, day: Date) -> Result<Usage, sqlx::Error> {
    let row: Option<Row> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT lectures, audio_ms, prompt_tokens, completion_tokens \
             FROM usage_learner_days WHERE user_id = $1 AND day = $2",
        )
        .bind(user)
        .bind(day.to_string())
        .fetch_optional(pool)
        .await?
    });
    Ok(usage_of(row))
}

/// Everyone's usage on a day.
pub async fn day_total(db: &Db, day: Date) -> Result<Usage, sqlx::Error> {
    let row: Option<Row> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT lectures, audio_ms, prompt_tokens, completion_tokens \
             FROM usage_days WHERE day = $1",
        )
        .bind(day.to_string())
        .fetch_optional(pool)
        .await?
    });
    Ok(usage_of(row))
}
