//! Grades over HTTP: the learner's helpfulness rating, and re-grading for staff.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use teachback_events::{Event, LectureRated, NewEvent, streams};
use teachback_projections::lectures::Processing;
use uuid::Uuid;

use super::AppState;
use super::admin::AdminAuth;
use super::error::{ApiError, Result};
use super::extract::{ApiJson, AuthUser, RequestMeta};
use super::lectures::{load, view, with_position};
use crate::pipeline::RegradeError;
use crate::store::{AppendError, ExpectedVersion};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RatingBody {
    rating: serde_json::Value,
}

/// `POST /api/v1/lectures/{id}/rating` `{"rating": 1..5}`: how helpful the feedback was. A later
/// rating replaces an earlier one.
pub async fn rate(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(lecture_id): Path<Uuid>,
    RequestMeta(mut meta): RequestMeta,
    ApiJson(body): ApiJson<RatingBody>,
) -> Result<Response> {
    let rating = body
        .rating
        .as_u64()
        .filter(|r| (1..=5).contains(r))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_rating",
                "rating must be a whole number from 1 to 5",
            )
        })? as u8;
    let lecture = load(&state, lecture_id)
        .await?
        .filter(|l| l.owner() == user)
        .ok_or_else(|| ApiError::not_found("lecture_not_found", "no such lecture"))?;
    let Some(grade) = lecture.latest_grade() else {
        return Err(ApiError::conflict(
            "not_graded",
            format!(
                "the lecture has no feedback to rate yet (it is {})",
                match lecture.processing() {
                    Processing::None => lecture.status.as_str(),
                    p => p.as_str(),
                }
            ),
        ));
    };
    meta.acting_user = Some(user);
    let event = Event::LectureRated(LectureRated {
        lecture_id,
        user_id: user,
        attempt: grade.attempt,
        rating,
    });
    // Ratings commute with processing, so any version will do.
    let appended = state
        .store
        .append_to_stream(
            &streams::lecture(lecture_id),
            ExpectedVersion::Any,
            vec![NewEvent::from_event(&event, meta)],
        )
        .await
        .map_err(|e: AppendError| ApiError::from(e))?;
    let lecture = load(&state, lecture_id).await?.expect("just appended");
    Ok(with_position(
        StatusCode::OK,
        view(&state, &lecture),
        appended.position,
    ))
}

#[derive(Debug, Default, Deserialize)]
pub struct RegradeQuery {
    /// Why (kept in the log).
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/v1/admin/lectures/{id}/regrade[?reason=…]`: grade a finished lecture again with the current
/// providers (or retry one whose processing failed). `202` with the new attempt; the grade
/// follows on the lecture's feed.
pub async fn regrade(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(lecture_id): Path<Uuid>,
    RequestMeta(meta): RequestMeta,
    Query(query): Query<RegradeQuery>,
) -> Result<(StatusCode, Json<serde_json::Value>)> {
    let reason = query.reason.map(|r| r.chars().take(500).collect());
    match state
        .pipeline
        .regrade(lecture_id, "admin", reason, meta)
        .await
    {
        Ok(attempt) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"lectureId": lecture_id, "attempt": attempt})),
        )),
        Err(RegradeError::Store(e)) => Err(ApiError::Internal(e)),
        Err(e @ RegradeError::NotFound) => Err(ApiError::not_found(e.code(), e.to_string())),
        Err(e) => Err(ApiError::conflict(e.code(), e.to_string())),
    }
}
