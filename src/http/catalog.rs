//! The catalogue: `GET /api/v1/catalog` (majors → subjects → topics) and one topic by id.
//! Public: no token needed to browse what can be taught.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use teachback_events::{Localized, LocalizedList, TopicPublished};

use super::AppState;
use super::error::{ApiError, Result};
use crate::projection::learning::topic_doc;
use crate::projection::topics::{all_topics, find_topic};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Catalog {
    pub majors: Vec<Major>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Major {
    pub id: String,
    pub name: Localized,
    pub subjects: Vec<Subject>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub id: String,
    pub name: Localized,
    pub topics: Vec<Topic>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Topic {
    pub topic_id: String,
    pub title: Localized,
    pub description: Localized,
    pub key_concepts: LocalizedList,
}

impl From<TopicPublished> for Topic {
    fn from(t: TopicPublished) -> Self {
        Topic {
            topic_id: t.topic_id,
            title: t.title,
            description: t.description,
            key_concepts: t.key_concepts,
        }
    }
}

/// Groups topics (ordered by major, subject, id) into the catalogue tree.
pub(super) fn tree(topics: Vec<TopicPublished>) -> Catalog {
    let mut majors: Vec<Major> = Vec::new();
    for t in topics {
        if majors.last().is_none_or(|m| m.id != t.major.id) {
            majors.push(Major {
                id: t.major.id.clone(),
                name: t.major.name.clone(),
                subjects: Vec::new(),
            });
        }
        let major = majors.last_mut().expect("just pushed");
        if major.subjects.last().is_none_or(|s| s.id != t.subject.id) {
            major.subjects.push(Subject {
                id: t.subject.id.clone(),
                name: t.subject.name.clone(),
                topics: Vec::new(),
            });
        }
        major
            .subjects
            .last_mut()
            .expect("just pushed")
            .topics
            .push(t.into());
    }
    Catalog { majors }
}

/// `GET /api/v1/catalog`.
pub async fn catalog(State(state): State<AppState>) -> Result<Json<Catalog>> {
    Ok(Json(tree(all_topics(&state.db).await?)))
}

/// `GET /api/v1/topics/{topicId}`: the topic with its major and subject.
pub async fn topic(
    State(state): State<AppState>,
    Path(topic_id): Path<String>,
) -> Result<Json<TopicPublished>> {
    find_topic(&state.db, &topic_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("topic_not_found", "there is no topic with this id"))
}

/// How a topic has been taught, from the learning projection.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicStats {
    pub topic_id: String,
    /// Learners who started a lecture on it.
    pub learners: u32,
    pub lectures: u32,
    pub graded: u32,
    /// Of the graded lectures' current scores; `null` before the first grade.
    pub average_score: Option<f64>,
}

/// `GET /api/v1/topics/{topicId}/stats`.
pub async fn topic_stats(
    State(state): State<AppState>,
    Path(topic_id): Path<String>,
) -> Result<Json<TopicStats>> {
    if find_topic(&state.db, &topic_id).await?.is_none() {
        return Err(ApiError::not_found(
            "topic_not_found",
            "there is no topic with this id",
        ));
    }
    let doc = topic_doc(&state.db, &topic_id).await?.unwrap_or_default();
    Ok(Json(TopicStats {
        topic_id,
        learners: doc.learners,
        lectures: doc.lectures,
        graded: doc.graded,
        average_score: doc.average_score(),
    }))
}
