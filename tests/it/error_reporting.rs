//! Error reporting to Sentry (`SENTRY_DSN`): the real binary reports to a Sentry-compatible
//! endpoint run by the test, which records every envelope it is sent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};

use crate::process::{free_port, start_with, teachback};

/// One envelope as Sentry's ingestion endpoint receives it.
#[derive(Clone, Debug)]
struct Envelope {
    project: String,
    auth: String,
    body: String,
}

/// A stand-in for Sentry's ingestion endpoint (`POST /api/{project}/envelope/`).
struct Ingest {
    dsn: String,
    envelopes: Arc<Mutex<Vec<Envelope>>>,
}

impl Ingest {
    async fn start() -> Ingest {
        let envelopes = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route(
                "/api/{project}/envelope/",
                axum::routing::post(
                    |State(seen): State<Arc<Mutex<Vec<Envelope>>>>,
                     UrlPath(project): UrlPath<String>,
                     headers: HeaderMap,
                     body: axum::body::Bytes| async move {
                        seen.lock().unwrap().push(Envelope {
                            project,
                            auth: headers
                                .get("x-sentry-auth")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned(),
                            body: String::from_utf8_lossy(&body).into_owned(),
                        });
                        axum::Json(json!({}))
                    },
                ),
            )
            .with_state(envelopes.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ingest {
            dsn: format!("http://publickey123@{addr}/42"),
            envelopes,
        }
    }

    /// Waits (at most `within`) for an envelope whose body contains `needle`.
    async fn wait_for(&self, needle: &str, within: Duration) -> Envelope {
        let deadline = Instant::now() + within;
        loop {
            if let Some(e) = self
                .envelopes
                .lock()
                .unwrap()
                .iter()
                .find(|e| e.body.contains(needle))
            {
                return e.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no envelope with {needle:?} arrived; got {:#?}",
                self.envelopes.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn sentry_test_delivers_an_event_to_the_configured_dsn() {
    let ingest = Ingest::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let out = teachback(cwd.path())
        .arg("sentry-test")
        .env("SENTRY_DSN", &ingest.dsn)
        .env("SENTRY_ENVIRONMENT", "ci")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let envelope = ingest
        .wait_for("TeachBack test event", Duration::from_secs(5))
        .await;
    assert_eq!(envelope.project, "42");
    assert!(
        envelope.auth.contains("sentry_key=publickey123"),
        "{}",
        envelope.auth
    );
    assert!(envelope.body.contains("\"environment\":\"ci\""));
    assert!(envelope.body.contains("teachback@"));

    // Without a DSN, or with a broken one, the command says why and fails.
    let out = teachback(cwd.path())
        .arg("sentry-test")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SENTRY_DSN is not set"));
    let out = teachback(cwd.path())
        .arg("sentry-test")
        .env("SENTRY_DSN", "not a dsn")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid Sentry DSN"));
}

#[tokio::test]
async fn a_lecture_that_cannot_be_transcribed_is_reported_without_secrets() {
    let ingest = Ingest::start().await;
    let cwd = tempfile::tempdir().unwrap();
    // Speech-to-text at a port nobody listens on: every attempt fails at once.
    let dead_stt = format!("http://127.0.0.1:{}/v1", free_port());
    let server = start_with(
        cwd.path(),
        free_port(),
        &[
            ("SENTRY_DSN", &ingest.dsn),
            ("TEACHBACK_STT_URL", &dead_stt),
            ("TEACHBACK_PROVIDER_RETRIES", "0"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let device = server.register().await;
    let token = device["accessToken"].as_str().unwrap();
    let created: Value = http
        .post(format!("{}/api/v1/lectures", server.base))
        .bearer_auth(token)
        .json(&json!({"topicId": "cs.networking.tcp-vs-udp", "format": "wav", "language": "en"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lecture = created["lectureId"].as_str().unwrap();
    let wav = teachback::live::segment::wav(&crate::live_support::speech(2_000, 1), 16_000);
    let put = http
        .put(created["uploadUrl"].as_str().unwrap())
        .header("content-type", "audio/wav")
        .body(wav)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let finish = http
        .post(format!("{}/api/v1/lectures/{lecture}/finish", server.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(finish.status(), 200);

    let envelope = ingest
        .wait_for("could not be transcribed", Duration::from_secs(60))
        .await;
    assert!(
        envelope.body.contains(lecture),
        "the event names the lecture"
    );
    for secret in [token, device["deviceToken"].as_str().unwrap()] {
        assert!(!envelope.body.contains(secret), "a token reached Sentry");
    }
    let log = std::fs::read_to_string(cwd.path().join("server.log")).unwrap();
    assert!(!log.contains("publickey123"), "the DSN reached the log");
}
