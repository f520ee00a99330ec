//! The `learning_*` read models, from [`teachback_projections::learning`]: learner, lecture and
//! topic documents, co-study counts, active days and daily counters.
//!
//! Per batch the runner loads the documents the batch needs, folds the batch into them with the
//! pure fold, and writes back the documents it touched and the facts it added, all in the
//! runner's transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use jiff::tz::TimeZone;
use serde::Serialize;
use serde::de::DeserializeOwned;
use teachback_events::RecordedEvent;
use teachback_projections::learning::{
    self, Facts, LearningView, LectureDoc, TopicDoc, Touched, UserDoc,
};
use uuid::Uuid;

use super::{Projector, Suffix};
use crate::db::{Db, DbTx};
use crate::{with_pool, with_tx};

/// Ids bound per `IN (...)` query.
const IN_CHUNK: usize = 500;

pub struct LearningProjector {
    name: String,
    tz: TimeZone,
    t: Suffix,
}

impl LearningProjector {
    pub fn new(tz: TimeZone) -> LearningProjector {
        LearningProjector {
            name: learning::name(&tz),
            tz,
            t: Suffix::default(),
        }
    }
}

#[async_trait]
impl Projector for LearningProjector {
    fn name(&self) -> &str {
        &self.name
    }

    fn tables(&self) -> &'static [&'static str] {
        // In the order a batch reads them (a swap locks them in this order).
        &[
            "learning_lectures",
            "learning_users",
            "learning_topics",
            "learning_costudy",
            "learning_activity",
            "learning_daily",
            "learning_erased",
        ]
    }

    fn with_suffix(&self, suffix: &str) -> Arc<dyn Projector> {
        Arc::new(LearningProjector {
            name: self.name.clone(),
            tz: self.tz.clone(),
            t: Suffix::new(suffix),
        })
    }

    fn reads(&self, event_type: &str) -> bool {
        learning::reads(event_type) || super::is_erasure(event_type)
    }

    async fn erase(&self, tx: &mut DbTx, user: Uuid, position: u64) -> anyhow::Result<()> {
        // The learner's documents and activity go; topic statistics, co-study counts and daily
        // counters are totals naming nobody and stay. The erasure is recorded by position so
        // the ranking boards, which follow this read model, drop the learner too.
        let t = &self.t;
        super::delete_user_rows(
            tx,
            t,
            &["learning_users", "learning_lectures", "learning_activity"],
            user,
        )
        .await?;
        with_tx!(tx, conn => {
            sqlx::query(&format!(
                "INSERT INTO {} (user_id, position) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO UPDATE SET position = excluded.position",
                t.of("learning_erased")
            ))
            .bind(user)
            .bind(position as i64)
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    async fn apply(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let decoded = learning::decode(events)?;
        if decoded.is_empty() {
            return Ok(());
        }
        let mut needs = learning::needs(decoded.iter().map(|(_, e)| e));
        let mut view = LearningView::default();
        let t = &self.t;
        let ids: Vec<Uuid> = needs.lectures.iter().copied().collect();
        for doc in load::<_, LectureDoc>(tx, &t.of("learning_lectures"), "lecture_id", &ids).await?
        {
            view.lectures.insert(doc.lecture_id, doc);
        }
        needs.add_lecture_refs(view.lectures.values());
        let ids: Vec<Uuid> = needs.users.iter().copied().collect();
        for doc in load::<_, UserDoc>(tx, &t.of("learning_users"), "user_id", &ids).await? {
            view.users.insert(doc.user_id, doc);
        }
        let ids: Vec<String> = needs.topics.iter().cloned().collect();
        for doc in load::<_, TopicDoc>(tx, &t.of("learning_topics"), "topic_id", &ids).await? {
            view.topics.insert(doc.topic_id.clone(), doc);
        }

        let mut touched = Touched::default();
        for (event, decoded) in decoded {
            view.apply(event, decoded, &self.tz, &mut touched);
        }
        self.write(tx, &view, &touched).await?;
        Ok(())
    }
}

impl LearningProjector {
    async fn write(
        &self,
        tx: &mut DbTx,
        view: &LearningView,
        touched: &Touched,
    ) -> anyhow::Result<()> {
        let t = &self.t;
        let users = serialised(&view.users, &touched.users)?;
        let lectures = serialised(&view.lectures, &touched.lectures)?;
        let topics = serialised(&view.topics, &touched.topics)?;
        let Facts {
            costudy,
            active,
            daily,
        } = &view.facts;
        let costudy: Vec<_> = costudy.iter().collect();
        let active: Vec<_> = active.iter().collect();
        let daily: Vec<_> = daily.iter().collect();
        let (costudy_table, daily_table) = (t.of("learning_costudy"), t.of("learning_daily"));
        // Multi-row upserts, CHUNK rows each: a batch is a handful of statements.
        with_tx!(tx, conn => {
            for chunk in users.chunks(CHUNK) {
                let mut q = sqlx::QueryBuilder::new(format!(
                    "INSERT INTO {} (user_id, name, signup_day, started, finished, graded, rated, \
                     position, doc) ",
                    t.of("learning_users")
                ));
                q.push_values(chunk, |mut b, (doc, position, json)| {
                    b.push_bind(doc.user_id)
                        .push_bind(doc.name.as_str())
                        .push_bind(doc.signup_day.to_string())
                        .push_bind(i64::from(doc.started))
                        .push_bind(i64::from(doc.finished))
                        .push_bind(doc.graded.len() as i64)
                        .push_bind(i64::from(doc.rated))
                        .push_bind(*position)
                        .push_bind(json.as_str());
                });
                q.push(
                    " ON CONFLICT (user_id) DO UPDATE SET name = excluded.name, \
                     started = excluded.started, finished = excluded.finished, \
                     graded = excluded.graded, rated = excluded.rated, \
                     position = excluded.position, doc = excluded.doc",
                );
                q.build().execute(&mut *conn).await?;
            }
            for chunk in lectures.chunks(CHUNK) {
                let mut q = sqlx::QueryBuilder::new(format!(
                    "INSERT INTO {} (lecture_id, user_id, topic_id, day, score, graded_day, \
                     first_token_ms, score_ms, position, doc) ",
                    t.of("learning_lectures")
                ));
                q.push_values(chunk, |mut b, (doc, position, json)| {
                    b.push_bind(doc.lecture_id)
                        .push_bind(doc.user_id)
                        .push_bind(doc.topic_id.as_str())
                        .push_bind(doc.day.map(|d| d.to_string()))
                        .push_bind(doc.score.map(i64::from))
                        .push_bind(doc.graded_day.map(|d| d.to_string()))
                        .push_bind(doc.first_token_ms.map(|v| v as i64))
                        .push_bind(doc.score_ms.map(|v| v as i64))
                        .push_bind(*position)
                        .push_bind(json.as_str());
                });
                q.push(
                    " ON CONFLICT (lecture_id) DO UPDATE SET day = excluded.day, \
                     score = excluded.score, graded_day = excluded.graded_day, \
                     first_token_ms = excluded.first_token_ms, score_ms = excluded.score_ms, \
                     position = excluded.position, doc = excluded.doc",
                );
                q.build().execute(&mut *conn).await?;
            }
            for chunk in topics.chunks(CHUNK) {
                let mut q = sqlx::QueryBuilder::new(format!(
                    "INSERT INTO {} (topic_id, subject_id, lectures, learners, position, doc) ",
                    t.of("learning_topics")
                ));
                q.push_values(chunk, |mut b, (doc, position, json)| {
                    b.push_bind(doc.topic_id.as_str())
                        .push_bind(doc.subject_id.as_deref())
                        .push_bind(i64::from(doc.lectures))
                        .push_bind(i64::from(doc.learners))
                        .push_bind(*position)
                        .push_bind(json.as_str());
                });
                q.push(
                    " ON CONFLICT (topic_id) DO UPDATE SET subject_id = excluded.subject_id, \
                     lectures = excluded.lectures, learners = excluded.learners, \
                     position = excluded.position, doc = excluded.doc",
                );
                q.build().execute(&mut *conn).await?;
            }
            for chunk in costudy.chunks(CHUNK) {
                let mut q = sqlx::QueryBuilder::new(format!(
                    "INSERT INTO {costudy_table} (topic_id, other_id, learners) "
                ));
                q.push_values(chunk, |mut b, ((topic, other), n)| {
                    b.push_bind(topic.as_str())
                        .push_bind(other.as_str())
                        .push_bind(**n as i64);
                });
                q.push(format!(
                    " ON CONFLICT (topic_id, other_id) DO UPDATE SET \
                     learners = {costudy_table}.learners + excluded.learners"
                ));
                q.build().execute(&mut *conn).await?;
            }
            for chunk in active.chunks(CHUNK) {
                let mut q = sqlx::QueryBuilder::new(format!(
                    "INSERT INTO {} (day, user_id) ",
                    t.of("learning_activity")
                ));
                q.push_values(chunk, |mut b, (user, day)| {
                    b.push_bind(day.to_string()).push_bind(*user);
                });
                q.push(" ON CONFLICT (day, user_id) DO NOTHING");
                q.build().execute(&mut *conn).await?;
            }
            for chunk in daily.chunks(CHUNK) {
                let mut q = sqlx::QueryBuilder::new(format!(
                    "INSERT INTO {daily_table} (day, metric, value) "
                ));
                q.push_values(chunk, |mut b, ((day, metric), n)| {
                    b.push_bind(day.to_string())
                        .push_bind(metric.as_str())
                        .push_bind(**n as i64);
                });
                q.push(format!(
                    " ON CONFLICT (day, metric) DO UPDATE SET \
                     value = {daily_table}.value + excluded.value"
                ));
                q.build().execute(&mut *conn).await?;
            }
        });
        Ok(())
    }
}

/// Rows per multi-row upsert (at most 10 parameters each).
const CHUNK: usize = 100;

/// The touched documents with their positions and JSON, ready to write.
fn serialised<'a, K: Ord, D: Serialize>(
    docs: &'a BTreeMap<K, D>,
    touched: &BTreeMap<K, u64>,
) -> Result<Vec<(&'a D, i64, String)>, sqlx::Error> {
    touched
        .iter()
        .filter_map(|(id, position)| Some((docs.get(id)?, *position as i64)))
        .map(|(doc, position)| Ok((doc, position, json(doc)?)))
        .collect()
}

fn json<T: Serialize>(doc: &T) -> Result<String, sqlx::Error> {
    serde_json::to_string(doc).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

fn parse<T: DeserializeOwned>(doc: &str) -> Result<T, sqlx::Error> {
    serde_json::from_str(doc).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Loads the documents with these keys (in chunks of [`IN_CHUNK`]).
async fn load<K, T>(tx: &mut DbTx, table: &str, key: &str, ids: &[K]) -> anyhow::Result<Vec<T>>
where
    K: Clone + Send + Sync,
    for<'q> K: sqlx::Encode<'q, sqlx::Sqlite>
        + sqlx::Type<sqlx::Sqlite>
        + sqlx::Encode<'q, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>,
    T: DeserializeOwned,
{
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(IN_CHUNK) {
        let sql = format!(
            "SELECT doc FROM {table} WHERE {key} IN ({})",
            placeholders(chunk.len())
        );
        let rows: Vec<String> = with_tx!(tx, conn => {
            let mut query = sqlx::query_scalar(&sql);
            for id in chunk {
                query = query.bind(id.clone());
            }
            query.fetch_all(&mut *conn).await?
        });
        for row in rows {
            out.push(parse(&row)?);
        }
    }
    Ok(out)
}

fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A learner's document.
pub async fn user_doc(db: &Db, user: Uuid) -> Result<Option<UserDoc>, sqlx::Error> {
    let row: Option<String> = with_pool!(db, pool => {
        sqlx::query_scalar("SELECT doc FROM learning_users WHERE user_id = $1")
            .bind(user)
            .fetch_optional(pool)
            .await?
    });
    row.as_deref().map(parse).transpose()
}

/// One topic's document.
pub async fn topic_doc(db: &Db, topic: &str) -> Result<Option<TopicDoc>, sqlx::Error> {
    let row: Option<String> = with_pool!(db, pool => {
        sqlx::query_scalar("SELECT doc FROM learning_topics WHERE topic_id = $1")
            .bind(topic)
            .fetch_optional(pool)
            .await?
    });
    row.as_deref().map(parse).transpose()
}

/// Every topic document, by topic id.
pub async fn topic_docs(db: &Db) -> Result<BTreeMap<String, TopicDoc>, sqlx::Error> {
    let rows: Vec<String> = with_pool!(db, pool => {
        sqlx::query_scalar("SELECT doc FROM learning_topics")
            .fetch_all(pool)
            .await?
    });
    rows.iter()
        .map(|r| parse::<TopicDoc>(r).map(|d| (d.topic_id.clone(), d)))
        .collect()
}

/// Topics most often co-studied with `topic`, most learners first.
pub async fn costudied(
    db: &Db,
    topic: &str,
    limit: i64,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT other_id, learners FROM learning_costudy WHERE topic_id = $1 \
             ORDER BY learners DESC, other_id LIMIT $2",
        )
        .bind(topic)
        .bind(limit)
        .fetch_all(pool)
        .await
    })
}

/// One graded lecture as rankings read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GradedRow {
    pub lecture_id: Uuid,
    pub user_id: Uuid,
    pub topic_id: String,
    pub day: Option<String>,
    pub score: Option<i64>,
}

/// What changed in the learning read model after a position.
pub struct Changed {
    /// Graded lectures.
    pub graded: Vec<GradedRow>,
    /// Learners (id, name) created or changed.
    pub users: Vec<(Uuid, String)>,
    /// Whether any topic document changed (a topic may have moved to another subject).
    pub topics: bool,
    /// Learners erased.
    pub erased: Vec<Uuid>,
}

/// Rows changed after `position`.
pub async fn changed_since(db: &Db, position: u64) -> Result<Changed, sqlx::Error> {
    let position = position as i64;
    with_pool!(db, pool => {
        let graded: Vec<GradedRow> = sqlx::query_as(
            "SELECT lecture_id, user_id, topic_id, day, score FROM learning_lectures \
             WHERE position > $1 AND score IS NOT NULL",
        )
        .bind(position)
        .fetch_all(pool)
        .await?;
        let users: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT user_id, name FROM learning_users WHERE position > $1",
        )
        .bind(position)
        .fetch_all(pool)
        .await?;
        let topics: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM learning_topics WHERE position > $1 LIMIT 1")
                .bind(position)
                .fetch_optional(pool)
                .await?;
        let erased: Vec<Uuid> =
            sqlx::query_scalar("SELECT user_id FROM learning_erased WHERE position > $1")
                .bind(position)
                .fetch_all(pool)
                .await?;
        Ok(Changed { graded, users, topics: topics.is_some(), erased })
    })
}
