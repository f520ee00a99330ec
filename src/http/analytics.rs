//! Admin reads: `GET /api/v1/admin/analytics` (the team's numbers) and
//! `GET /api/v1/admin/projections` (where every projection is). Admin token required.

use axum::Json;
use axum::extract::State;
use jiff::ToSpan;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::admin::AdminAuth;
use super::error::{ApiError, Result};
use super::extract::ApiQuery;
use super::stats::tz_name;
use crate::analytics::{self, Report};
use crate::projection::ops::{self, Standing};

/// Longest range one analytics request covers.
const MAX_DAYS: i32 = 366;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    from: Option<String>,
    to: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalyticsResponse {
    pub time_zone: String,
    #[serde(flatten)]
    pub report: Report,
}

fn parse_day(name: &str, value: Option<String>) -> Result<Option<Date>> {
    value
        .map(|v| {
            v.parse::<Date>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_date",
                    format!("{name} must be a date like 2026-12-01, not `{v}`"),
                )
            })
        })
        .transpose()
}

/// `GET /api/v1/admin/analytics?from=&to=`: days in the server's time zone; default the last
/// 30 days.
pub async fn analytics(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiQuery(range): ApiQuery<Range>,
) -> Result<Json<AnalyticsResponse>> {
    let today = state.rankings.today();
    let to = parse_day("to", range.to)?.unwrap_or(today);
    let from =
        parse_day("from", range.from)?.unwrap_or_else(|| to.checked_sub(29.days()).unwrap_or(to));
    if from > to {
        return Err(ApiError::bad_request("invalid_range", "from is after to"));
    }
    if (to - from).get_days() >= MAX_DAYS {
        return Err(ApiError::bad_request(
            "invalid_range",
            format!("a report covers at most {MAX_DAYS} days"),
        ));
    }
    let report = analytics::report(&state.db, from, to, today, state.prices).await?;
    Ok(Json(AnalyticsResponse {
        time_zone: tz_name(&state),
        report,
    }))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionsResponse {
    pub head: u64,
    pub projections: Vec<ProjectionView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionView {
    #[serde(flatten)]
    pub standing: Standing,
    /// The error it is retrying after, if failing.
    pub error: Option<String>,
}

/// `GET /api/v1/admin/projections`.
pub async fn projections(
    _: AdminAuth,
    State(state): State<AppState>,
) -> Result<Json<ProjectionsResponse>> {
    let projectors = state.projectors.iter().map(|p| &**p).collect::<Vec<_>>();
    let (head, standings) = ops::status(&state.db, &state.store, &projectors).await?;
    let projections = standings
        .into_iter()
        .map(|standing| {
            let error = state
                .projections()
                .into_iter()
                .find(|p| *p.name == standing.name)
                .and_then(|p| p.error());
            ProjectionView { standing, error }
        })
        .collect();
    Ok(Json(ProjectionsResponse { head, projections }))
}
