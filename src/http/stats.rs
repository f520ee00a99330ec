//! The learner's pages: `GET /api/v1/me/stats`, `GET /api/v1/me/lectures` (their history,
//! paged) and `GET /api/v1/home` (the main page: catalogue entry points, recommended topics,
//! recent activity). All read projections; nothing is computed from the log on request.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use teachback_events::{Localized, TopicPublished};
use teachback_projections::learning::UserStats;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, Result};
use super::extract::{ApiQuery, AuthUser};
use crate::projection::learning::{costudied, topic_docs, user_doc};
use crate::projection::topics::all_topics;
use crate::projection::users::find_user;
use crate::with_pool;

/// Longest page of history.
const MAX_PAGE: usize = 100;
const DEFAULT_PAGE: usize = 20;
/// Recommendations on the main page, and lectures under "recent".
const RECOMMENDED: usize = 5;
const RECENT: usize = 5;
/// A best score under this is worth another try.
const RETRY_BELOW: u8 = 70;
/// A best score at least this is "did well": its co-studied topics are suggested.
const STRONG_FROM: u8 = 80;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeStats {
    pub user_id: Uuid,
    pub name: String,
    pub time_zone: String,
    #[serde(flatten)]
    pub stats: UserStats,
}

/// `GET /api/v1/me/stats`.
pub async fn me_stats(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
) -> Result<Json<MeStats>> {
    state.honour_min_position(&headers).await?;
    let today = state.rankings.today();
    let (name, stats) = match user_doc(&state.db, user).await? {
        Some(doc) => (doc.name.clone(), doc.stats(today)),
        None => {
            // Registered a moment ago: the learning projection has not seen them yet.
            let found = find_user(&state.db, user)
                .await?
                .ok_or_else(|| ApiError::not_found("user_not_found", "no such learner"))?;
            (found.name, UserStats::default())
        }
    };
    Ok(Json(MeStats {
        user_id: user,
        name,
        time_zone: tz_name(&state),
        stats,
    }))
}

pub fn tz_name(state: &AppState) -> String {
    state
        .rankings
        .time_zone()
        .iana_name()
        .unwrap_or("UTC")
        .to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// A lecture in the learner's history.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryItem {
    pub lecture_id: Uuid,
    pub topic_id: String,
    pub topic_title: Option<String>,
    pub mode: String,
    pub status: String,
    pub processing: String,
    pub score: Option<i64>,
    pub started_at: jiff::Timestamp,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub lectures: Vec<HistoryItem>,
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/me/lectures?limit=&cursor=`: newest first.
pub async fn me_lectures(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiQuery(query): ApiQuery<PageQuery>,
    headers: HeaderMap,
) -> Result<Json<History>> {
    state.honour_min_position(&headers).await?;
    let limit = page_limit(query.limit)?;
    let after = query.cursor.as_deref().map(parse_cursor).transpose()?;
    let korean = super::extract::prefers_korean(&headers);
    let (lectures, more) = history(&state, user, after, limit, korean).await?;
    let next_cursor = more
        .then(|| lectures.last())
        .flatten()
        .map(|l| format!("{}_{}", l.started_at.as_microsecond(), l.lecture_id));
    Ok(Json(History {
        lectures,
        next_cursor,
    }))
}

/// Checks a page size: 1 to [`MAX_PAGE`], default [`DEFAULT_PAGE`].
pub fn page_limit(limit: Option<usize>) -> Result<usize> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        n => Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_PAGE}, not {n}"),
        )),
    }
}

/// Parses a `<key>_<uuid>` cursor as this API hands them out.
pub fn parse_cursor<K: std::str::FromStr>(cursor: &str) -> Result<(K, Uuid)> {
    cursor
        .split_once('_')
        .and_then(|(key, id)| Some((key.parse().ok()?, Uuid::parse_str(id).ok()?)))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_cursor",
                "cursor is not one this endpoint handed out",
            )
        })
}

type HistoryRow = (
    Uuid,
    String,
    String,
    String,
    String,
    Option<i64>,
    i64,
    Option<String>,
);

/// Up to `limit` of the learner's lectures started before `after`, newest first, and whether
/// there are more.
async fn history(
    state: &AppState,
    user: Uuid,
    after: Option<(i64, Uuid)>,
    limit: usize,
    korean: bool,
) -> Result<(Vec<HistoryItem>, bool)> {
    let (at, id) = after.unwrap_or((i64::MAX, Uuid::max()));
    let rows: Vec<HistoryRow> = with_pool!(&state.db, pool => {
        sqlx::query_as(
            "SELECT l.lecture_id, l.topic_id, l.mode, l.status, l.processing, CAST(l.score AS BIGINT), \
             l.started_at, t.topic FROM lectures l LEFT JOIN topics t ON t.topic_id = l.topic_id \
             WHERE l.user_id = $1 AND (l.started_at < $2 OR (l.started_at = $2 AND l.lecture_id < $3)) \
             ORDER BY l.started_at DESC, l.lecture_id DESC LIMIT $4",
        )
        .bind(user)
        .bind(at)
        .bind(id)
        .bind(limit as i64 + 1)
        .fetch_all(pool)
        .await?
    });
    let more = rows.len() > limit;
    let items = rows
        .into_iter()
        .take(limit)
        .map(
            |(lecture_id, topic_id, mode, status, processing, score, started, topic)| {
                let title = topic
                    .and_then(|t| serde_json::from_str::<TopicPublished>(&t).ok())
                    .and_then(|t| pick(&t.title, korean));
                HistoryItem {
                    lecture_id,
                    topic_id,
                    topic_title: title,
                    mode,
                    status,
                    processing,
                    score,
                    started_at: jiff::Timestamp::from_microsecond(started).unwrap_or_default(),
                }
            },
        )
        .collect();
    Ok((items, more))
}

/// The text in the preferred language, else the other one, else any.
fn pick(text: &Localized, korean: bool) -> Option<String> {
    let (first, second) = if korean { ("ko", "en") } else { ("en", "ko") };
    text.get(first)
        .or_else(|| text.get(second))
        .or_else(|| text.values().next())
        .cloned()
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Home {
    pub catalog: Vec<MajorEntry>,
    pub recommended: Vec<Recommendation>,
    pub recent: Vec<HistoryItem>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MajorEntry {
    pub major_id: String,
    pub name: Localized,
    pub subjects: Vec<SubjectEntry>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubjectEntry {
    pub subject_id: String,
    pub name: Localized,
    pub topics: usize,
}

/// Why a topic is recommended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Learners who taught a topic this learner did well on also taught this one.
    CoStudy,
    /// The learner's best score here is low: worth another try.
    Retry,
    /// Not yet taught, in a subject the learner is working on.
    NextInSubject,
    /// Taught by the most learners.
    Popular,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recommendation {
    pub topic_id: String,
    pub title: Localized,
    pub major_id: String,
    pub subject_id: String,
    pub reason: Reason,
    /// The learner's topic that led here (co-study).
    pub because: Option<String>,
    /// The learner's best score on it (retry).
    pub best_score: Option<u8>,
}

/// `GET /api/v1/home`.
pub async fn home(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
) -> Result<Json<Home>> {
    state.honour_min_position(&headers).await?;
    let topics = all_topics(&state.db).await?;
    let korean = super::extract::prefers_korean(&headers);
    let (recent, _) = history(&state, user, None, RECENT, korean).await?;
    let doc = user_doc(&state.db, user).await?;
    let best: BTreeMap<String, u8> = doc
        .as_ref()
        .map(|d| {
            d.best_by_topic(None)
                .into_iter()
                .map(|(t, s)| (t.to_owned(), s))
                .collect()
        })
        .unwrap_or_default();
    let studied: BTreeSet<String> = doc.map(|d| d.topics).unwrap_or_default();
    let mut picks = Picks::new(&topics, &studied);
    // 1. Weak topics worth retrying, weakest first.
    let mut weak: Vec<(&String, &u8)> = best.iter().filter(|(_, s)| **s < RETRY_BELOW).collect();
    weak.sort_by_key(|(t, s)| (**s, (*t).clone()));
    for (topic, score) in weak.into_iter().take(2) {
        picks.push(topic, Reason::Retry, None, Some(*score));
    }
    // 2. Topics co-studied with the ones the learner did best on.
    let mut strong: Vec<(&String, &u8)> = best.iter().filter(|(_, s)| **s >= STRONG_FROM).collect();
    strong.sort_by_key(|(t, s)| (std::cmp::Reverse(**s), (*t).clone()));
    for (topic, _) in strong.into_iter().take(3) {
        for (other, _) in costudied(&state.db, topic, 10).await? {
            if picks.push(&other, Reason::CoStudy, Some(topic.to_string()), None) {
                break;
            }
        }
    }
    // 3. The next untaught topics in subjects the learner has started.
    let subjects: BTreeSet<&str> = topics
        .iter()
        .filter(|t| studied.contains(&t.topic_id))
        .map(|t| t.subject.id.as_str())
        .collect();
    for topic in topics
        .iter()
        .filter(|t| subjects.contains(t.subject.id.as_str()))
    {
        picks.push(&topic.topic_id, Reason::NextInSubject, None, None);
    }
    // 4. What most learners teach.
    let mut popular: Vec<(String, u32)> = topic_docs(&state.db)
        .await?
        .into_values()
        .map(|d| (d.topic_id, d.learners))
        .collect();
    popular.sort_by_key(|(t, n)| (std::cmp::Reverse(*n), t.clone()));
    for (topic, _) in popular {
        picks.push(&topic, Reason::Popular, None, None);
    }
    for topic in &topics {
        picks.push(&topic.topic_id, Reason::Popular, None, None);
    }
    let recommended = picks.chosen;
    Ok(Json(Home {
        catalog: entry_points(topics),
        recommended,
        recent,
    }))
}

/// Recommendations so far: each topic once, published topics only, untaught ones unless retried.
struct Picks<'a> {
    topics: BTreeMap<&'a str, &'a TopicPublished>,
    studied: &'a BTreeSet<String>,
    chosen: Vec<Recommendation>,
}

impl<'a> Picks<'a> {
    fn new(topics: &'a [TopicPublished], studied: &'a BTreeSet<String>) -> Self {
        Picks {
            topics: topics.iter().map(|t| (t.topic_id.as_str(), t)).collect(),
            studied,
            chosen: Vec::new(),
        }
    }

    /// Adds a topic if there is room and it qualifies; whether it was added.
    fn push(
        &mut self,
        topic: &str,
        reason: Reason,
        because: Option<String>,
        best_score: Option<u8>,
    ) -> bool {
        let full = self.chosen.len() >= RECOMMENDED;
        let taken = self.chosen.iter().any(|r| r.topic_id == topic);
        let taught = reason != Reason::Retry && self.studied.contains(topic);
        let Some(t) = self
            .topics
            .get(topic)
            .filter(|_| !full && !taken && !taught)
        else {
            return false;
        };
        self.chosen.push(Recommendation {
            topic_id: t.topic_id.clone(),
            title: t.title.clone(),
            major_id: t.major.id.clone(),
            subject_id: t.subject.id.clone(),
            reason,
            because,
            best_score,
        });
        true
    }
}

/// Majors and their subjects with topic counts, from the catalogue tree.
fn entry_points(topics: Vec<TopicPublished>) -> Vec<MajorEntry> {
    super::catalog::tree(topics)
        .majors
        .into_iter()
        .map(|major| MajorEntry {
            major_id: major.id,
            name: major.name,
            subjects: major
                .subjects
                .into_iter()
                .map(|subject| SubjectEntry {
                    subject_id: subject.id,
                    name: subject.name,
                    topics: subject.topics.len(),
                })
                .collect(),
        })
        .collect()
}
