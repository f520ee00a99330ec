//! Device auto-login, token refresh, and the learner's own profile.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use teachback_events::ClientInfo;
use uuid::Uuid;

use super::error::{ApiError, Result, payload_too_large};
use super::extract::{ApiJson, AuthUser, ClientIp, RequestMeta, clip};
use super::{AppState, POSITION_HEADER};
use crate::auth;
use crate::projection::users::{User, find_device_user, find_user};
use crate::users::{self as commands, RenameError};

/// Optional facts a device may state about itself when registering.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterDevice {
    pub platform: Option<String>,
    pub app_version: Option<String>,
    pub device_model: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCredentials {
    pub user_id: Uuid,
    pub name: String,
    pub access_token: String,
    pub access_token_expires_at: String,
    pub token_type: &'static str,
    /// Keep it safe: it is shown once and is the only way back into this account.
    pub device_token: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessToken {
    pub access_token: String,
    pub access_token_expires_at: String,
    pub token_type: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub user_id: Uuid,
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<User> for Profile {
    fn from(u: User) -> Self {
        Profile {
            user_id: u.user_id,
            name: u.name,
            created_at: u.created_at.to_string(),
            updated_at: u.updated_at.to_string(),
        }
    }
}

fn expires_at(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// `POST /api/v1/devices`: creates a learner and returns their credentials. The body is optional.
pub async fn register_device(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    RequestMeta(mut meta): RequestMeta,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    state
        .limits
        .check(crate::limits::Action::Devices, ip, None)
        .await?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            payload_too_large()
        } else {
            ApiError::bad_request("invalid_body", e.body_text())
        }
    })?;
    let device: RegisterDevice = if body.iter().all(u8::is_ascii_whitespace) {
        RegisterDevice::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
            } else {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    format!("the body does not have the expected fields and types: {e}"),
                )
            }
        })?
    };
    let mut client = meta.client.take().unwrap_or_default();
    client.platform = device.platform.as_deref().map(clip);
    client.app_version = device.app_version.as_deref().map(clip);
    client.device_model = device.device_model.as_deref().map(clip);
    meta.client = (client != ClientInfo::default()).then_some(client);

    let registered = commands::register_device(&state.store, meta).await?;
    state.users_reach(registered.position).await;
    let (access_token, exp) = state.keys.issue(registered.user_id)?;
    let body = DeviceCredentials {
        user_id: registered.user_id,
        name: registered.name,
        access_token,
        access_token_expires_at: expires_at(exp),
        token_type: "Bearer",
        device_token: registered.device_token,
    };
    Ok(with_position(
        (StatusCode::CREATED, Json(body)).into_response(),
        registered.position,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Refresh {
    pub device_token: String,
}

/// `POST /api/v1/auth/refresh`: a device token buys a fresh access token.
pub async fn refresh(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<Refresh>,
) -> Result<Json<AccessToken>> {
    state
        .limits
        .check(crate::limits::Action::Refresh, ip, None)
        .await?;
    let hash = auth::hash_device_token(body.device_token.trim());
    let mut user = find_device_user(&state.db, &hash).await?;
    if user.is_none() {
        // A device registered a moment ago may not be projected yet: wait for the log's head.
        let head = *state.store.committed().borrow();
        if state.users_reach(head).await {
            user = find_device_user(&state.db, &hash).await?;
        }
    }
    let user = user.ok_or_else(|| {
        ApiError::unauthorized("invalid_device_token", "this device token is not known")
    })?;
    state
        .limits
        .check_learner(crate::limits::Action::Refresh, user)
        .await?;
    let (access_token, exp) = state.keys.issue(user)?;
    Ok(Json(AccessToken {
        access_token,
        access_token_expires_at: expires_at(exp),
        token_type: "Bearer",
    }))
}

/// `GET /api/v1/me`.
pub async fn me(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
) -> Result<Json<Profile>> {
    state.honour_min_position(&headers).await?;
    let found = find_user(&state.db, user).await?;
    let found = match found {
        Some(u) => u,
        None => {
            let head = *state.store.committed().borrow();
            state.users_reach(head).await;
            find_user(&state.db, user).await?.ok_or_else(|| {
                ApiError::not_found("user_not_found", "this learner does not exist")
            })?
        }
    };
    Ok(Json(found.into()))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rename {
    pub name: String,
}

/// `PUT /api/v1/me`: rename. 400 for a name that breaks the rules, 409 for a taken one.
pub async fn rename(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    RequestMeta(mut meta): RequestMeta,
    ApiJson(body): ApiJson<Rename>,
) -> Result<Response> {
    meta.acting_user = Some(user);
    let renamed = commands::rename(&state.store, user, &body.name, meta)
        .await
        .map_err(|e| match e {
            RenameError::Invalid(message) => ApiError::bad_request("invalid_name", message),
            RenameError::Taken(_) => ApiError::conflict("name_taken", e.to_string()),
            RenameError::UnknownUser => {
                ApiError::not_found("user_not_found", "this learner does not exist")
            }
            RenameError::Store(e) => e.into(),
        })?;
    let position = match renamed.position {
        Some(p) => p,
        None => *state.users.position_receiver().borrow(),
    };
    state.users_reach(position).await;
    // The rename is committed. If the read model is slower than our bounded wait, still answer
    // with what was written rather than pretend it failed.
    let body = match find_user(&state.db, user).await? {
        Some(found) => {
            let mut profile = Profile::from(found);
            profile.name = renamed.name;
            serde_json::to_value(profile).map_err(anyhow::Error::from)?
        }
        None => serde_json::json!({ "userId": user, "name": renamed.name }),
    };
    Ok(with_position(Json(body).into_response(), position))
}

fn with_position(mut response: Response, position: u64) -> Response {
    response
        .headers_mut()
        .insert(POSITION_HEADER, HeaderValue::from(position));
    response
}

/// `DELETE /api/v1/me`: erases the learner (see `erasure.rs`). Answers once every read model
/// has dropped their rows (or the read-your-writes timeout passed: they will).
pub async fn erase(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    RequestMeta(mut meta): RequestMeta,
) -> Result<Json<crate::erasure::Erased>> {
    meta.acting_user = Some(user);
    let erased = crate::erasure::erase(
        &state.store,
        &state.blobs,
        user,
        teachback_events::ErasureRequester::Learner,
        meta,
        &|_, _| {},
    )
    .await
    .map_err(|e| match e {
        crate::erasure::EraseError::UnknownUser(_)
        | crate::erasure::EraseError::AlreadyErased(_) => {
            ApiError::not_found("user_not_found", "this learner does not exist")
        }
        other => ApiError::Internal(anyhow::Error::new(other).context("erasing a learner")),
    })?;
    state.all_projections_reach(erased.position).await;
    if let Err(e) = crate::erasure::compact(&state.db).await {
        tracing::warn!(error = %e, "compacting the database after an erasure failed");
    }
    Ok(Json(erased))
}
