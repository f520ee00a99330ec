//! Prometheus metrics: the process's recorder and a guard for gauges of things in progress.
//!
//! Series (see `/metrics` and `docs/protocol.md`):
//! - HTTP: `teachback_http_requests_total{method,route,status}`,
//!   `teachback_http_request_duration_seconds{method,route}`.
//! - WebSockets: `teachback_ws_connections_total{endpoint}`, `teachback_ws_connections{endpoint}`.
//! - Live lectures: `teachback_live_lectures`, `teachback_audio_acks_total`.
//! - The log: `teachback_store_appends_total{outcome}`, `teachback_store_append_duration_seconds`,
//!   `teachback_store_appended_events_total`, `teachback_log_head_position`.
//! - Projections: `teachback_projection_position`, `teachback_projection_lag_events`,
//!   `teachback_projection_failing` (per `projection`).
//! - Providers: `teachback_provider_request_duration_seconds{kind,provider,outcome}`,
//!   `teachback_provider_errors_total{kind,provider,code}`,
//!   `teachback_provider_retries_total{provider,call}`,
//!   `teachback_provider_circuit_state{kind,provider,state}` (1 for the current state).
//! - Grading: `teachback_llm_tokens_total{type,model}`, `teachback_grades_total{grader}`,
//!   `teachback_finish_to_first_token_seconds{grader}`, `teachback_finish_to_score_seconds{grader}`.
//! - Abuse and cost: `teachback_rate_limited_total{action,scope}`,
//!   `teachback_rate_limit_errors_total`, `teachback_quota_refusals_total{quota}`,
//!   `teachback_budget_spent_usd`, `teachback_budget_usd`, `teachback_budget_guard_active`,
//!   `teachback_budget_guard_grades_total`.
//! - Several instances: `teachback_projection_leader{projection}` (1 on the instance running it),
//!   `teachback_leases_taken_total{lease}`, `teachback_live_takeovers_total`.
//! - Erasure and retention: `teachback_erasures_total`, `teachback_audio_expired_blobs_total`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Histogram buckets, in seconds: from a millisecond to a minute.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The process's metrics recorder (installed once; every server in the process shares it).
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder installed first (a test harness): ours still renders its own.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Counts a WebSocket connection of `endpoint` while it lives.
pub struct Connection(&'static str);

impl Connection {
    pub fn open(endpoint: &'static str) -> Connection {
        metrics::counter!("teachback_ws_connections_total", "endpoint" => endpoint).increment(1);
        metrics::gauge!("teachback_ws_connections", "endpoint" => endpoint).increment(1.0);
        Connection(endpoint)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        metrics::gauge!("teachback_ws_connections", "endpoint" => self.0).decrement(1.0);
    }
}
