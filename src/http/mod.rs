//! The HTTP API under `/api/v1`, plus `/healthz` and `/readyz`. JSON field names are camelCase.
//!
//! # Layout
//! - [`error`]: the error type and its JSON shape.
//! - [`extract`]: JSON bodies, the authenticated learner, request metadata.
//! - [`users`]: device registration, token refresh, the learner's own profile.
//! - [`catalog`]: the catalogue of majors, subjects and topics.
//! - [`health`]: liveness and readiness.
//! - [`web`]: the embedded web client at `/`, and `/api/v1/info` for it.

pub mod admin;
pub mod analytics;
pub mod catalog;
pub mod error;
pub mod extract;
pub mod grading;
pub mod health;
pub mod lectures;
pub mod live;
pub mod notifications;
pub mod ops;
pub mod rankings;
pub mod stats;
pub mod users;
pub mod web;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

use crate::auth::Keys;
use crate::blob::BlobStore;
use crate::db::Db;
use crate::live::Live;
use crate::projection::ProjectionStatus;
use crate::store::EventStore;
use error::ApiError;

/// Response header carrying the log position a write reached.
pub const POSITION_HEADER: &str = "x-teachback-position";
/// Request header asking a read to wait (bounded) until the read models reach a position.
pub const MIN_POSITION_HEADER: &str = "x-teachback-min-position";

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub store: EventStore,
    pub keys: Keys,
    pub users: ProjectionStatus,
    pub topics: ProjectionStatus,
    pub lectures: ProjectionStatus,
    pub learning: ProjectionStatus,
    pub notifications: ProjectionStatus,
    pub usage: ProjectionStatus,
    /// The nudge scheduler and outbox, when a delivery channel is configured.
    pub notifier: Option<crate::notify::Notifier>,
    /// Every projector, for status reports.
    pub projectors: Arc<Vec<Arc<dyn crate::projection::Projector>>>,
    pub rankings: crate::rankings::Rankings,
    pub prices: crate::analytics::Prices,
    pub read_your_writes_timeout: Duration,
    pub ready_max_lag: u64,
    /// SHA-256 of the admin token; `None` turns the admin endpoints off.
    pub admin_token_hash: Option<[u8; 32]>,
    /// Where audio is stored.
    pub blobs: Arc<dyn BlobStore>,
    /// The live lectures of this instance.
    pub live: Live,
    /// Transcription and grading.
    pub pipeline: crate::pipeline::Pipeline,
    /// Base URL for links the API hands out (upload URLs), without a trailing slash.
    pub public_url: Arc<str>,
    pub upload_url_ttl: Duration,
    pub max_recording_bytes: u64,
    /// Rate limits per client address and per learner.
    pub limits: crate::limits::RateLimiter,
    /// Reverse proxies in front of the server whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<crate::limits::TrustedProxies>,
    /// Daily quotas per learner and the spending guard.
    pub quotas: crate::usage::Quotas,
}

impl AppState {
    /// All running projections, for readiness and read-your-writes.
    pub fn projections(&self) -> Vec<&ProjectionStatus> {
        vec![
            &self.users,
            &self.topics,
            &self.lectures,
            &self.learning,
            &self.notifications,
            &self.usage,
        ]
    }

    /// Waits (bounded) until the users read model has applied `position`.
    pub async fn users_reach(&self, position: u64) -> bool {
        self.users
            .wait_for(position, self.read_your_writes_timeout)
            .await
    }

    /// Waits (bounded) for a position the client asks for in [`MIN_POSITION_HEADER`], in every
    /// read model.
    pub async fn honour_min_position(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(value) = headers.get(MIN_POSITION_HEADER) else {
            return Ok(());
        };
        let position: u64 = value
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_header",
                    format!("{MIN_POSITION_HEADER} must be an unsigned integer"),
                )
            })?;
        self.all_projections_reach(position).await;
        Ok(())
    }

    /// Refuses a learner who was erased (their access token may not have expired yet).
    pub async fn refuse_erased(&self, user: uuid::Uuid) -> Result<(), ApiError> {
        let Some(vault) = self.store.vault() else {
            return Ok(());
        };
        match vault.is_erased(user).await {
            Ok(false) => Ok(()),
            Ok(true) => Err(ApiError::unauthorized(
                "user_erased",
                "this learner was erased; register a new device to start again",
            )),
            Err(e) => Err(ApiError::Internal(
                anyhow::Error::new(e).context("reading learner keys"),
            )),
        }
    }

    /// Waits (bounded by the read-your-writes timeout) for every read model to reach `position`.
    pub async fn all_projections_reach(&self, position: u64) -> bool {
        let deadline = tokio::time::Instant::now() + self.read_your_writes_timeout;
        let mut all = true;
        for projection in self.projections() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            all &= projection.wait_for(position, left).await;
        }
        all
    }
}

/// Ends a long-lived response stream (server-sent events) when the server begins to shut down:
/// graceful shutdown waits for every response to finish, and an event stream never would.
/// `EventSource` clients reconnect by themselves (to this server once it is back, or another).
pub fn until_shutdown<S: futures::Stream>(
    state: &AppState,
    stream: S,
) -> impl futures::Stream<Item = S::Item> + use<S> {
    use futures::{FutureExt, StreamExt};
    let mut shutting_down = state.live.shutting_down();
    stream.take_until(
        async move {
            let _ = shutting_down.wait_for(|s| *s).await;
        }
        .boxed(),
    )
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .route("/devices", post(users::register_device))
        .route("/auth/refresh", post(users::refresh))
        .route(
            "/me",
            get(users::me).put(users::rename).delete(users::erase),
        )
        .route("/me/stats", get(stats::me_stats))
        .route("/me/lectures", get(stats::me_lectures))
        .route(
            "/me/notifications",
            get(notifications::get_preferences).put(notifications::put_preferences),
        )
        .route("/home", get(stats::home))
        .route("/info", get(web::info))
        .route("/rankings", get(rankings::rankings))
        .route("/rankings/live", get(rankings::live))
        .route("/catalog", get(catalog::catalog))
        .route("/topics/{topic_id}", get(catalog::topic))
        .route("/topics/{topic_id}/stats", get(catalog::topic_stats))
        .route("/live", get(live::live))
        .route("/lectures", post(lectures::create))
        .route("/lectures/{id}", get(lectures::get_lecture))
        .route("/lectures/{id}/finish", post(lectures::finish))
        .route("/lectures/{id}/cancel", post(lectures::cancel))
        .route("/lectures/{id}/share", post(lectures::share))
        .route("/lectures/{id}/rating", post(grading::rate))
        .route("/lectures/{id}/watch", get(lectures::watch))
        .route("/lectures/{id}/events", get(lectures::events))
        .route(
            "/lectures/{id}/segments/{index}",
            get(lectures::segment_audio),
        )
        .route(
            "/uploads/{id}",
            axum::routing::put(lectures::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/admin/topics", post(admin::create_topic))
        .route("/admin/analytics", get(analytics::analytics))
        .route("/admin/projections", get(analytics::projections))
        .route("/admin/notifications/parked", get(notifications::parked))
        .route("/admin/lectures/{id}/regrade", post(grading::regrade))
        .route(
            "/admin/topics/{topic_id}",
            axum::routing::put(admin::put_topic),
        );
    web::routes(Router::new().nest("/api/v1", api))
        .route("/healthz", get(health::healthz))
        .route("/n/{id}", get(notifications::open))
        .route("/metrics", get(ops::metrics))
        .route("/api/openapi.json", get(ops::openapi))
        .route("/api/docs", get(ops::docs))
        .route("/readyz", get(health::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

/// One log line per request: method, path (never the query string, which may carry a token),
/// status and latency.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // The route's pattern (`/api/v1/lectures/{id}`), not the path: bounded label values.
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    let elapsed = start.elapsed();
    let method_label = method.to_string();
    metrics::counter!("teachback_http_requests_total", "method" => method_label.clone(),
        "route" => route.clone(), "status" => response.status().as_u16().to_string())
    .increment(1);
    metrics::histogram!("teachback_http_request_duration_seconds", "method" => method_label,
        "route" => route)
    .record(elapsed.as_secs_f64());
    tracing::info!(
        %method,
        path,
        status = response.status().as_u16(),
        latency_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
        "request"
    );
    response
}
