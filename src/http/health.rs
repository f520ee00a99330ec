//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the database answers and
//! every projection is within `TEACHBACK_READY_MAX_LAG` events of the log's head).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let mut problems = Vec::new();
    if let Err(e) = state.db.ping().await {
        tracing::warn!(error = %e, "readiness: database unreachable");
        problems.push("database unreachable".to_owned());
    }
    let head = match state.store.head().await {
        Ok(h) => h,
        Err(_) => *state.store.committed().borrow(),
    };
    let mut projections = Vec::new();
    for p in state.projections() {
        let position = p.position();
        // Counted in events on every backend: KurrentDB's positions are byte offsets, so there
        // the events past the projection are read (at most one more than the limit).
        let lag = match state
            .store
            .lag_after(position, head, state.ready_max_lag.saturating_add(1))
            .await
        {
            Ok((lag, _)) => lag,
            Err(e) => {
                tracing::warn!(error = %e, "readiness: event store unreachable");
                problems.push("event store unreachable".to_owned());
                0
            }
        };
        if lag > state.ready_max_lag {
            problems.push(format!("projection {} is {lag} events behind", p.name));
        }
        if let Some(e) = p.error() {
            problems.push(format!("projection {} is failing", p.name));
            tracing::warn!(
                projection = &*p.name,
                error = e,
                "readiness: projection failing"
            );
        }
        projections.push(json!({ "name": p.name, "position": position, "lag": lag }));
    }
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if problems.is_empty() { "ready" } else { "not_ready" },
        "head": head,
        "projections": projections,
        "problems": problems,
    });
    (status, Json(body))
}
