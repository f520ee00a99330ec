//! The ranking page: `GET /api/v1/rankings` and its live feed `GET /api/v1/rankings/live`
//! (server-sent events). Served from the in-memory [`crate::rankings::Rankings`].

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use teachback_projections::rankings::{BoardKey, Period, Scope, standing_message};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, Result};
use super::extract::{ApiQuery, AuthUser, prefers_korean};
use super::stats::{page_limit, parse_cursor, tz_name};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankingQuery {
    period: Option<String>,
    major: Option<String>,
    subject: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub rank: u32,
    pub user_id: Uuid,
    pub name: String,
    pub points: u32,
    pub topics: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    pub rank: Option<u32>,
    pub points: u32,
    pub total: u32,
    pub percentile: Option<f64>,
    pub message: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RankingPage {
    pub period: &'static str,
    pub major_id: Option<String>,
    pub subject_id: Option<String>,
    pub from: Option<Date>,
    pub to: Option<Date>,
    pub time_zone: String,
    pub total: u32,
    pub entries: Vec<Entry>,
    pub me: Option<Me>,
    pub next_cursor: Option<String>,
}

/// The board a query names.
fn board(
    state: &AppState,
    period: Option<&str>,
    major: Option<String>,
    subject: Option<String>,
) -> Result<BoardKey> {
    let period = match period {
        None => Period::Week,
        Some(p) => Period::parse(p).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_period",
                format!("period must be week, month or all, not `{p}`"),
            )
        })?,
    };
    let scope = match (major, subject) {
        (None, None) => Scope::Overall,
        (Some(major), None) => Scope::Major(major),
        (None, Some(subject)) => Scope::Subject(subject),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_scope",
                "give a major or a subject, not both",
            ));
        }
    };
    if !state.rankings.knows(&scope) {
        return Err(match &scope {
            Scope::Major(m) => ApiError::not_found("unknown_major", format!("no major `{m}`")),
            Scope::Subject(s) => {
                ApiError::not_found("unknown_subject", format!("no subject `{s}`"))
            }
            Scope::Overall => unreachable!("every index knows the overall scope"),
        });
    }
    Ok(BoardKey::new(period, scope, state.rankings.today()))
}

fn scope_ids(scope: &Scope) -> (Option<String>, Option<String>) {
    match scope {
        Scope::Overall => (None, None),
        Scope::Major(m) => (Some(m.clone()), None),
        Scope::Subject(s) => (None, Some(s.clone())),
    }
}

/// `GET /api/v1/rankings?period=&major=&subject=&limit=&cursor=`. The token is optional; with
/// one, `me` says where the caller stands.
pub async fn rankings(
    State(state): State<AppState>,
    me: Option<AuthUser>,
    ApiQuery(query): ApiQuery<RankingQuery>,
    headers: HeaderMap,
) -> Result<Json<RankingPage>> {
    let key = board(&state, query.period.as_deref(), query.major, query.subject)?;
    let limit = page_limit(query.limit)?;
    let after = query.cursor.as_deref().map(parse_cursor).transpose()?;
    let page = state
        .rankings
        .page(key, after, limit, me.map(|AuthUser(user)| user));
    let korean = prefers_korean(&headers);
    let next_cursor = (page.rows.len() == limit)
        .then(|| page.rows.last())
        .flatten()
        .map(|r| format!("{}_{}", r.points, r.user_id));
    let (major_id, subject_id) = scope_ids(&page.key.scope);
    Ok(Json(RankingPage {
        period: page.key.period.as_str(),
        major_id,
        subject_id,
        from: page.key.days.map(|d| d.0),
        to: page.key.days.map(|d| d.1),
        time_zone: tz_name(&state),
        total: page.total,
        me: page.me.map(|s| Me {
            message: standing_message(&s, page.key.period, korean),
            rank: s.rank,
            points: s.points,
            total: s.total,
            percentile: s.percentile,
        }),
        entries: page
            .rows
            .into_iter()
            .map(|r| Entry {
                rank: r.rank,
                user_id: r.user_id,
                name: r.name,
                points: r.points,
                topics: r.topics,
            })
            .collect(),
        next_cursor,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    period: Option<String>,
    major: Option<String>,
    subject: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LiveChange {
    user_id: Uuid,
    name: String,
    points: u32,
    rank: Option<u32>,
    previous_rank: Option<u32>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LiveMessage {
    period: &'static str,
    major_id: Option<String>,
    subject_id: Option<String>,
    changes: Vec<LiveChange>,
    total: u32,
}

/// `GET /api/v1/rankings/live?period=&major=&subject=`: a `ranking` event whenever learners
/// move on that board (as lectures are graded). A client that falls behind gets a `resync`
/// event and should reload the page.
pub async fn live(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<LiveQuery>,
) -> Result<Sse<impl Stream<Item = std::result::Result<SseEvent, Infallible>>>> {
    let first = board(&state, query.period.as_deref(), query.major, query.subject)?;
    let mut subscription = state.rankings.subscribe().ok_or_else(|| {
        ApiError::unavailable(
            "too_many_subscribers",
            "the ranking feed has too many followers on this server; try again later",
        )
    })?;
    state.rankings.ensure(&first);
    let rankings = state.rankings.clone();
    let stream = async_stream::stream! {
        loop {
            let batch = match subscription.changes.recv().await {
                Ok(batch) => batch,
                Err(RecvError::Lagged(_)) => {
                    yield Ok(SseEvent::default().event("resync").data("{}"));
                    continue;
                }
                Err(RecvError::Closed) => break,
            };
            // The board rolls over at midnight: follow today's.
            let key = BoardKey::new(first.period, first.scope.clone(), rankings.today());
            rankings.ensure(&key);
            let mine: Vec<_> = batch.iter().filter(|c| c.board == key).collect();
            let Some(last) = mine.last() else { continue };
            let (major_id, subject_id) = scope_ids(&key.scope);
            let message = LiveMessage {
                period: key.period.as_str(),
                major_id,
                subject_id,
                total: last.total,
                changes: mine
                    .iter()
                    .map(|c| LiveChange {
                        user_id: c.user_id,
                        name: c.name.clone(),
                        points: c.points,
                        rank: c.rank,
                        previous_rank: c.previous_rank,
                    })
                    .collect(),
            };
            let data = serde_json::to_string(&message).unwrap_or_default();
            yield Ok(SseEvent::default().event("ranking").data(data));
        }
    };
    let stream = super::until_shutdown(&state, stream);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
