//! Study nudges over HTTP: the learner's preferences (`/me/notifications`), the tracked link a
//! nudge carries (`/n/{id}`), and the team's list of nudges that could not be delivered.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use teachback_events::{Event, NewEvent, NotificationOpened, NotificationPreferencesSet, streams};
use teachback_projections::notifications::Status;
use teachback_projections::notify::{self, Kind, QuietHours};
use uuid::Uuid;

use super::admin::AdminAuth;
use super::error::{ApiError, Result};
use super::extract::{ApiJson, ApiQuery, AuthUser, RequestMeta};
use super::{AppState, POSITION_HEADER};
use crate::projection::notifications::{self as read_model, PrefsRow};
use crate::store::ExpectedVersion;

/// The channels a learner may choose. Push and SMS channels would join the webhook here.
const CHANNELS: [&str; 1] = ["webhook"];
const LANGUAGES: [&str; 2] = ["ko", "en"];

/// A learner's nudge preferences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Preferences {
    pub daily_reminder: bool,
    pub streak_warning: bool,
    pub weekly_digest: bool,
    pub channel: String,
    /// IANA time zone the nudges are timed in.
    pub time_zone: String,
    /// Preferred local hour (0–23) for the daily reminder; `null`: the server's default.
    pub hour: Option<u8>,
    /// No nudge between these local hours (a nudge due then waits until they end).
    pub quiet_hours: Option<QuietHours>,
    /// `ko` or `en`.
    pub language: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreferencesView {
    #[serde(flatten)]
    preferences: Preferences,
    /// Whether this server delivers nudges (a channel is configured).
    delivery: bool,
    channels: Vec<&'static str>,
}

impl Preferences {
    fn defaults(state: &AppState) -> Preferences {
        Preferences {
            daily_reminder: false,
            streak_warning: false,
            weekly_digest: false,
            channel: CHANNELS[0].into(),
            time_zone: state
                .rankings
                .time_zone()
                .iana_name()
                .unwrap_or("UTC")
                .into(),
            hour: None,
            quiet_hours: None,
            language: "ko".into(),
        }
    }

    fn from_row(row: PrefsRow) -> Preferences {
        let has = |k: Kind| row.kinds.iter().any(|s| s == k.as_str());
        Preferences {
            daily_reminder: has(Kind::DailyReminder),
            streak_warning: has(Kind::StreakWarning),
            weekly_digest: has(Kind::WeeklyDigest),
            quiet_hours: row
                .quiet_start
                .zip(row.quiet_end)
                .map(|(start, end)| QuietHours { start, end }),
            channel: row.channel,
            time_zone: row.time_zone,
            hour: row.hour,
            language: row.language,
        }
    }

    fn kinds(&self) -> Vec<String> {
        [
            (Kind::DailyReminder, self.daily_reminder),
            (Kind::StreakWarning, self.streak_warning),
            (Kind::WeeklyDigest, self.weekly_digest),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(k, _)| k.as_str().to_owned())
        .collect()
    }

    /// The first rule the preferences break, as a message naming the field.
    fn problem(&self) -> Option<String> {
        if !CHANNELS.contains(&self.channel.as_str()) {
            return Some(format!(
                "channel must be one of {CHANNELS:?}, not `{}`",
                self.channel
            ));
        }
        if jiff::tz::TimeZone::get(&self.time_zone).is_err() {
            return Some(format!(
                "timeZone `{}` is not a known IANA time zone (such as Asia/Seoul)",
                self.time_zone
            ));
        }
        if self.hour.is_some_and(|h| h > 23) {
            return Some("hour must be from 0 to 23".into());
        }
        if let Some(q) = self.quiet_hours {
            if q.start > 23 || q.end > 23 {
                return Some("quietHours.start and quietHours.end must be from 0 to 23".into());
            }
            if q.start == q.end {
                return Some("quietHours must not start and end at the same hour".into());
            }
        }
        if !LANGUAGES.contains(&self.language.as_str()) {
            return Some(format!("language must be one of {LANGUAGES:?}"));
        }
        None
    }
}

fn view(state: &AppState, preferences: Preferences) -> PreferencesView {
    PreferencesView {
        preferences,
        delivery: state.notifier.is_some(),
        channels: CHANNELS.to_vec(),
    }
}

/// `GET /api/v1/me/notifications`.
pub async fn get_preferences(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<PreferencesView>> {
    let preferences = match read_model::prefs(&state.db, user).await? {
        Some(row) => Preferences::from_row(row),
        None => Preferences::defaults(&state),
    };
    Ok(Json(view(&state, preferences)))
}

/// `PUT /api/v1/me/notifications`: replaces the learner's preferences whole. Opting out also
/// stops nudges already scheduled and not yet sent.
pub async fn put_preferences(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    RequestMeta(mut meta): RequestMeta,
    ApiJson(body): ApiJson<Preferences>,
) -> Result<Response> {
    if let Some(problem) = body.problem() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_preferences",
            problem,
        ));
    }
    let current = read_model::prefs(&state.db, user).await?;
    if current.map(Preferences::from_row).as_ref() == Some(&body) {
        return Ok(Json(view(&state, body)).into_response());
    }
    meta.acting_user = Some(user);
    let event = Event::NotificationPreferencesSet(NotificationPreferencesSet {
        user_id: user,
        kinds: body.kinds(),
        channel: body.channel.clone(),
        time_zone: body.time_zone.clone(),
        hour: body.hour,
        quiet_start: body.quiet_hours.map(|q| q.start),
        quiet_end: body.quiet_hours.map(|q| q.end),
        language: body.language.clone(),
    });
    let appended = state
        .store
        .append_to_stream(
            streams::user(user),
            ExpectedVersion::StreamExists,
            vec![NewEvent::from_event(&event, meta)],
        )
        .await?;
    state
        .notifications
        .wait_for(appended.position, state.read_your_writes_timeout)
        .await;
    let mut response = Json(view(&state, body)).into_response();
    response
        .headers_mut()
        .insert(POSITION_HEADER, HeaderValue::from(appended.position));
    Ok(response)
}

/// `GET /n/{id}`: the link a nudge carries. Records that it was opened (once), then sends the
/// browser into the web client where the nudge leads.
pub async fn open(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    RequestMeta(meta): RequestMeta,
) -> Result<Response> {
    let Some((user, message, status, opened)) = read_model::link(&state.db, id).await? else {
        return Err(ApiError::not_found(
            "notification_not_found",
            "no such notification",
        ));
    };
    // Only a delivered nudge can have been opened (and an open appended while it is still being
    // delivered would race the worker's record of the delivery).
    if status == Status::Sent && !opened {
        let event = Event::NotificationOpened(NotificationOpened {
            notification_id: id,
            user_id: user,
        });
        // One id per nudge: a second click (or a retried request) appends nothing.
        let event_id = notify::notification_id(&format!("opened:{id}"));
        state
            .store
            .append_to_stream(
                streams::notification(id),
                ExpectedVersion::StreamExists,
                vec![NewEvent::with_id(event_id, &event, meta)],
            )
            .await?;
    }
    let target = format!("/{}", message.link.trim_start_matches('/'));
    let location = HeaderValue::from_str(&target).unwrap_or(HeaderValue::from_static("/"));
    Ok((StatusCode::SEE_OTHER, [(LOCATION, location)]).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParkedQuery {
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Parked {
    notification_id: Uuid,
    user_id: Uuid,
    kind: String,
    last_error: String,
}

/// `GET /api/v1/admin/notifications/parked`: nudges whose delivery gave up, newest first.
pub async fn parked(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ParkedQuery>,
) -> Result<Json<serde_json::Value>> {
    let limit = super::stats::page_limit(query.limit)?;
    let parked: Vec<Parked> = read_model::parked(&state.db, limit)
        .await?
        .into_iter()
        .map(|(notification_id, user_id, kind, last_error)| Parked {
            notification_id,
            user_id,
            kind,
            last_error,
        })
        .collect();
    Ok(Json(serde_json::json!({ "parked": parked })))
}
