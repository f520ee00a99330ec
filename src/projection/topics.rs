//! The `topics` read model, from [`teachback_projections::catalog`].

use async_trait::async_trait;
use teachback_events::{RecordedEvent, TopicPublished};
use teachback_projections::catalog::{self, CatalogChange};

use std::sync::Arc;

use super::{Projector, Suffix};
use crate::db::{Db, DbTx};
use crate::{with_pool, with_tx};

#[derive(Default)]
pub struct TopicsProjector {
    t: Suffix,
}

#[async_trait]
impl Projector for TopicsProjector {
    fn name(&self) -> &str {
        catalog::NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["topics"]
    }

    fn with_suffix(&self, suffix: &str) -> Arc<dyn Projector> {
        Arc::new(TopicsProjector {
            t: Suffix::new(suffix),
        })
    }

    fn reads(&self, event_type: &str) -> bool {
        teachback_projections::catalog::reads(event_type)
    }

    async fn apply(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        for event in events {
            for CatalogChange::TopicUpserted { topic, at } in catalog::project(event)? {
                let json = serde_json::to_string(&topic)?;
                with_tx!(tx, conn => {
                    sqlx::query(&format!(
                        "INSERT INTO {} (topic_id, major_id, subject_id, topic, updated_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (topic_id) DO UPDATE SET \
                         major_id = excluded.major_id, subject_id = excluded.subject_id, \
                         topic = excluded.topic, updated_at = excluded.updated_at",
                        self.t.of("topics")
                    ))
                    .bind(&topic.topic_id)
                    .bind(&topic.major.id)
                    .bind(&topic.subject.id)
                    .bind(json)
                    .bind(at.as_microsecond())
                    .execute(conn)
                    .await?;
                });
            }
        }
        Ok(())
    }
}

fn decode(json: &str) -> Result<TopicPublished, sqlx::Error> {
    serde_json::from_str(json).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Every topic, ordered by major, subject and topic id.
pub async fn all_topics(db: &Db) -> Result<Vec<TopicPublished>, sqlx::Error> {
    let rows: Vec<String> = with_pool!(db, pool => {
        sqlx::query_scalar("SELECT topic FROM topics ORDER BY major_id, subject_id, topic_id")
            .fetch_all(pool)
            .await?
    });
    rows.iter().map(|r| decode(r)).collect()
}

pub async fn find_topic(db: &Db, topic_id: &str) -> Result<Option<TopicPublished>, sqlx::Error> {
    let row: Option<String> = with_pool!(db, pool => {
        sqlx::query_scalar("SELECT topic FROM topics WHERE topic_id = $1")
            .bind(topic_id)
            .fetch_optional(pool)
            .await?
    });
    row.as_deref().map(decode).transpose()
}
