//! Extractors: JSON bodies with clear errors, the authenticated learner, request metadata.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, USER_AGENT};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use teachback_events::{ClientInfo, Metadata};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;

/// `axum::Json`, but its rejections are [`ApiError`]s with stable codes.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}

/// The learner an access token names. Missing, expired or forged tokens are 401s.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser(pub Uuid);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized(
                "missing_token",
                "this endpoint needs `Authorization: Bearer <access token>`",
            )
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "invalid_token",
                    "the Authorization header is not `Bearer <token>`",
                )
            })?;
        let claims = state.keys.verify(token.trim())?;
        Ok(AuthUser(claims.sub))
    }
}

/// Metadata for the events a request appends: correlation id, acting user, client.
#[derive(Debug, Clone)]
pub struct RequestMeta(pub Metadata);

/// Longest client-supplied text kept in metadata.
const MAX_CLIENT_TEXT: usize = 200;

pub fn clip(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_CLIENT_TEXT)
        .collect()
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let correlation_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Uuid::parse_str(v).ok())
            .unwrap_or_else(Uuid::now_v7);
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(clip);
        Ok(RequestMeta(Metadata {
            correlation_id: Some(correlation_id),
            causation_id: None,
            acting_user: None,
            client: user_agent.map(|ua| ClientInfo {
                user_agent: Some(ua),
                ..ClientInfo::default()
            }),
        }))
    }
}

/// `axum::extract::Query`, but its rejections are [`ApiError`]s (`invalid_query`).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|e| ApiError::bad_request("invalid_query", format!("bad query string: {e}")))
    }
}

impl axum::extract::OptionalFromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    /// No `Authorization` header: `None`. A header with a bad token is still a 401.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        if parts.headers.contains_key(AUTHORIZATION) {
            <AuthUser as FromRequestParts<AppState>>::from_request_parts(parts, state)
                .await
                .map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Whether the client prefers Korean to English by `Accept-Language` (quality values honoured;
/// no header, or neither language: English).
pub fn prefers_korean(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let quality = |lang: &str| {
        value
            .split(',')
            .filter_map(|item| {
                let mut parts = item.split(';');
                let tag = parts.next()?.trim().to_ascii_lowercase();
                let q = parts
                    .find_map(|p| p.trim().strip_prefix("q="))
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                (tag == lang || tag.starts_with(&format!("{lang}-"))).then_some(q)
            })
            .fold(0.0f32, f32::max)
    };
    let ko = quality("ko");
    ko > 0.0 && ko > quality("en")
}

/// The client's address: the TCP peer, or, when the peer is one of the
/// `TEACHBACK_TRUSTED_PROXIES`, the right-most untrusted address of `X-Forwarded-For` (see
/// [`crate::limits::TrustedProxies::client`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

impl ClientIp {
    pub fn of(
        headers: &axum::http::HeaderMap,
        peer: Option<std::net::IpAddr>,
        proxies: &crate::limits::TrustedProxies,
    ) -> ClientIp {
        let peer = peer.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        if proxies.is_empty() {
            return ClientIp(peer);
        }
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        ClientIp(proxies.client(peer, &forwarded))
    }
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(ClientIp::of(&parts.headers, peer, &state.trusted_proxies))
    }
}
