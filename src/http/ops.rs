//! Operations endpoints: `/metrics` (Prometheus text format), `/api/openapi.json` (the API's
//! OpenAPI document) and `/api/docs` (an interactive page rendering it).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse, Response};

use super::AppState;

/// The OpenAPI document, kept beside the handlers it describes.
pub const OPENAPI: &str = include_str!("openapi.json");
const DOCS_PAGE: &str = include_str!("docs.html");
/// Most events counted for a projection's lag where positions are not dense.
const LAG_COUNT_CAP: u64 = 10_000;

/// `GET /metrics`. Gauges that are cheap to read are refreshed on every scrape.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let head = *state.store.committed().borrow();
    for projection in state.projections() {
        let position = projection.position();
        let name = projection.name.to_string();
        metrics::gauge!("teachback_projection_position", "projection" => name.clone())
            .set(position as f64);
        // A subtraction on the SQL log; on KurrentDB (byte-offset positions) the events past
        // the projection are counted, up to a cap, and only while it is behind.
        if let Ok((lag, _)) = state.store.lag_after(position, head, LAG_COUNT_CAP).await {
            metrics::gauge!("teachback_projection_lag_events", "projection" => name.clone())
                .set(lag as f64);
        }
        metrics::gauge!("teachback_projection_failing", "projection" => name)
            .set(f64::from(u8::from(projection.error().is_some())));
    }
    metrics::gauge!("teachback_log_head_position").set(head as f64);
    metrics::gauge!("teachback_live_lectures").set(state.live.len() as f64);
    for (kind, provider, current) in state.pipeline.provider_states() {
        for s in ["closed", "open", "half_open"] {
            metrics::gauge!("teachback_provider_circuit_state", "kind" => kind,
                "provider" => provider.clone(), "state" => s)
            .set(f64::from(u8::from(s == current)));
        }
    }
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::metrics::recorder().render(),
    )
        .into_response()
}

/// `GET /api/openapi.json`.
pub async fn openapi() -> Response {
    ([(CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `GET /api/docs`.
pub async fn docs() -> Html<&'static str> {
    Html(DOCS_PAGE)
}
