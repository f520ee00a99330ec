//! Rate limits, quotas and the spending guard, over real HTTP and WebSocket connections, on both
//! backends; the limits shared by two instances on PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use teachback::notify::clock::ManualClock;
use teachback::provider::fake::{FakeOpenAi, FakeOptions};
use teachback_events::RecordedEvent;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::live_support::{RATE, TOPIC, Ws};
use crate::support::{TestApp, TestDb, spawn_app_clocked, spawn_app_on_pool, spawn_app_with};
use crate::{on_both_backends, sqlite_only};

on_both_backends!(
    every_limit_answers_429_with_retry_after_and_loses_nothing_accepted,
    quotas_refuse_in_the_learners_language_until_midnight_by_the_clock,
    the_spending_guard_grades_with_the_rubric_once_the_budget_is_nearly_spent,
);
sqlite_only!(
    a_live_lecture_ends_when_the_days_audio_minutes_run_out,
    uploaded_and_cancelled_audio_count_against_the_audio_quota,
);

/// POSTs to `path` (with a token when given) and returns the status, `Retry-After` and body.
async fn post(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Option<u64>, Value) {
    let mut request = app.http.post(app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

/// `POST /api/v1/lectures` for a recording of `format` to upload.
async fn start_upload(app: &TestApp, token: &str, format: &str) -> (u16, Option<u64>, Value) {
    let body = json!({"topicId": TOPIC, "format": format});
    post(app, "/api/v1/lectures", Some(token), Some(body), &[]).await
}

/// The upload URL of a created lecture, on this server (the URL names the configured public
/// address; the test server listens elsewhere).
fn upload_url(app: &TestApp, created: &Value) -> String {
    let url = created["uploadUrl"].as_str().unwrap();
    app.url(&url[url.find("/api/v1/uploads/").unwrap()..])
}

/// Sends `seconds` of silent PCM in 100 ms chunks.
async fn send_silence(ws: &mut Ws, seconds: u64) {
    let chunk = vec![0u8; (RATE as usize / 10) * 2];
    for seq in 1..=seconds * 10 {
        ws.send_audio(seq, &chunk).await;
    }
}

/// Reads frames until the lecture's state is `state`.
async fn until_state(ws: &mut Ws, state: &str) {
    loop {
        let (frame, _) = ws.until("state").await;
        if frame["state"] == state {
            return;
        }
    }
}

/// Asserts a `429 rate_limited` with a `Retry-After` that matches the body.
fn assert_limited((status, retry_after, body): &(u16, Option<u64>, Value), what: &str) -> u64 {
    assert_eq!(*status, 429, "{what}: {body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{what}: {body}");
    let secs = retry_after.unwrap_or_else(|| panic!("{what}: no Retry-After"));
    assert!(secs >= 1, "{what}");
    assert_eq!(body["error"]["retryAfterSecs"], secs, "{what}");
    secs
}

async fn log(app: &TestApp) -> Vec<RecordedEvent> {
    app.state.store.read_all(0, 1_000_000, None).await.unwrap()
}

fn count(events: &[RecordedEvent], event_type: &str) -> usize {
    events.iter().filter(|e| e.event_type == event_type).count()
}

const ADMIN: &str = "limits-test-admin-token-1234567890";

/// The signing secret of servers that must accept each other's tokens.
const SECRET: &str = "limits-test-signing-secret-0123456789abcdef";

fn text_lecture() -> Value {
    json!({"topicId": TOPIC, "text": "TCP sets up a connection with a handshake and resends lost segments; UDP just sends datagrams.", "language": "en"})
}

async fn every_limit_answers_429_with_retry_after_and_loses_nothing_accepted(db: &TestDb) {
    let app = spawn_app_with(db, |c| {
        c.rate_limits = "only:devices.ip=3/h, refresh.ip=4/h, lectures.learner=2/h, \
             text.learner=2/h, uploads.ip=2/h, sockets.learner=2/min, admin.ip=2/h"
            .into();
        c.admin_token = Some(ADMIN.to_owned().into());
    })
    .await;

    // Device registration: three, then 429. Each of the three is a working learner.
    let mut learners = Vec::new();
    for _ in 0..3 {
        let (status, _, body) = post(&app, "/api/v1/devices", None, None, &[]).await;
        assert_eq!(status, 201, "{body}");
        learners.push(body);
    }
    let refused = post(&app, "/api/v1/devices", None, None, &[]).await;
    let wait = assert_limited(&refused, "the fourth device");
    // One registration comes back every 20 minutes.
    assert!((1_190..=1_200).contains(&wait), "{wait}");
    let token = |i: usize| learners[i]["accessToken"].as_str().unwrap().to_owned();

    // Token refresh: four from this address, then 429.
    for i in [0, 1, 2, 0] {
        let body = json!({"deviceToken": learners[i]["deviceToken"]});
        let (status, _, answer) = post(&app, "/api/v1/auth/refresh", None, Some(body), &[]).await;
        assert_eq!(status, 200, "{answer}");
    }
    let body = json!({"deviceToken": learners[1]["deviceToken"]});
    let refused = post(&app, "/api/v1/auth/refresh", None, Some(body), &[]).await;
    assert_limited(&refused, "the fifth refresh");

    // Text lectures: two per learner, then 429; another learner is not affected.
    let mut accepted = Vec::new();
    for _ in 0..2 {
        let (status, _, body) = post(
            &app,
            "/api/v1/lectures",
            Some(&token(0)),
            Some(text_lecture()),
            &[],
        )
        .await;
        assert_eq!(status, 201, "{body}");
        accepted.push(body["lectureId"].as_str().unwrap().to_owned());
    }
    let refused = post(
        &app,
        "/api/v1/lectures",
        Some(&token(0)),
        Some(text_lecture()),
        &[],
    )
    .await;
    assert_limited(&refused, "the third text lecture");
    let (status, _, body) = post(
        &app,
        "/api/v1/lectures",
        Some(&token(1)),
        Some(text_lecture()),
        &[],
    )
    .await;
    assert_eq!(status, 201, "{body}");
    accepted.push(body["lectureId"].as_str().unwrap().to_owned());

    // Lectures for upload: two per learner, then 429. Uploads: two per address, then 429.
    let wav = teachback::live::segment::wav(&vec![0u8; 3_200], RATE);
    let mut upload_urls = Vec::new();
    for _ in 0..2 {
        let (status, _, body) = start_upload(&app, &token(2), "wav").await;
        assert_eq!(status, 201, "{body}");
        accepted.push(body["lectureId"].as_str().unwrap().to_owned());
        upload_urls.push(upload_url(&app, &body));
    }
    let refused = start_upload(&app, &token(2), "wav").await;
    assert_limited(&refused, "the third lecture start");
    // Uploads: refused attempts (a forged signature) count, two an hour; then even a forged one
    // gets 429. A valid upload URL is never limited: its lecture was accepted.
    let put = |url: String| {
        app.http
            .put(url)
            .header("content-type", "audio/wav")
            .body(wav.clone())
            .send()
    };
    let forged = format!("{}x", upload_urls[0]);
    for _ in 0..2 {
        assert_eq!(put(forged.clone()).await.unwrap().status(), 403);
    }
    let response = put(forged.clone()).await.unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    for url in &upload_urls {
        let response = put(url.clone()).await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }

    // WebSocket connections: two per learner a minute, then the upgrade is refused with 429.
    let first = Ws::connect(&app, &token(1)).await;
    let second = Ws::connect(&app, &token(1)).await;
    let mut request = format!("ws://{}/api/v1/live", app.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(1)).parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!("a third socket was not refused: {:?}", other.map(|_| ())),
    }
    drop((first, second));

    // Wrong admin tokens: two a hour, then every admin request from the address is refused
    // before its token is looked at, the right one too (guessing cannot go faster).
    let admin = |token: &'static str| {
        app.http
            .get(app.url("/api/v1/admin/projections"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(admin(ADMIN).await.unwrap().status(), 200);
    for _ in 0..2 {
        assert_eq!(admin("not-the-admin-token").await.unwrap().status(), 401);
    }
    let refused = admin(ADMIN).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));

    // Nothing accepted was lost: three learners, and every accepted lecture, in the log and in
    // the read models; no refused request wrote anything.
    let events = log(&app).await;
    assert_eq!(count(&events, "DeviceRegistered"), 3);
    assert_eq!(count(&events, "LectureStarted"), accepted.len());
    assert_eq!(count(&events, "AudioSegmentStored"), 2);
    for (i, learner) in learners.iter().enumerate() {
        let me = app.get_json("/api/v1/me", Some(&token(i))).await;
        assert_eq!(me["userId"], learner["userId"]);
    }
    for (i, lecture) in accepted.iter().enumerate() {
        let owner = match i {
            0 | 1 => token(0),
            2 => token(1),
            _ => token(2),
        };
        let view = app
            .get_json(&format!("/api/v1/lectures/{lecture}"), Some(&owner))
            .await;
        assert_eq!(view["lectureId"], lecture.as_str(), "{view}");
    }
}

/// Waits until the usage read model has applied everything in the log.
async fn usage_caught_up(app: &TestApp) {
    let head = *app.state.store.committed().borrow();
    assert!(
        app.state
            .usage
            .wait_for(head, Duration::from_secs(10))
            .await,
        "the usage projection did not catch up"
    );
}

async fn start_text(app: &TestApp, token: &str, korean: bool) -> (u16, Option<u64>, Value) {
    let language = if korean { "ko" } else { "en" };
    post(
        app,
        "/api/v1/lectures",
        Some(token),
        Some(text_lecture()),
        &[("accept-language", language)],
    )
    .await
}

async fn quotas_refuse_in_the_learners_language_until_midnight_by_the_clock(db: &TestDb) {
    let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
    // Seoul: the learner's day ends at 15:00 UTC.
    let now = Timestamp::now();
    let clock = Arc::new(ManualClock::new(now));
    let url = fake.base_url();
    let app = spawn_app_clocked(
        db.db.clone(),
        move |c| {
            c.time_zone = "Asia/Seoul".into();
            c.jwt_secret = Some(SECRET.to_owned().into());
            c.llm_url = Some(url);
            c.llm_model = "fake-grader".into();
            c.quota_lectures_per_day = 2;
        },
        None,
        clock.clone(),
    )
    .await;
    let token = crate::live_support::learner(&app).await;
    for _ in 0..2 {
        let (status, _, body) = start_text(&app, &token, false).await;
        assert_eq!(status, 201, "{body}");
        app.graded(&token, body["lectureId"].as_str().unwrap())
            .await;
    }
    usage_caught_up(&app).await;

    // The third: refused, in English or Korean, until midnight in Seoul by the clock.
    let seoul = jiff::tz::TimeZone::get("Asia/Seoul").unwrap();
    let midnight = now
        .to_zoned(seoul.clone())
        .date()
        .tomorrow()
        .unwrap()
        .to_zoned(seoul)
        .unwrap()
        .timestamp();
    let until_midnight = (midnight.as_second() - now.as_second()) as u64;
    let (status, retry_after, english) = start_text(&app, &token, false).await;
    assert_eq!(status, 429, "{english}");
    assert_eq!(english["error"]["code"], "quota_exceeded");
    let retry_after = retry_after.unwrap();
    assert!(
        retry_after.abs_diff(until_midnight) <= 1,
        "{retry_after} vs {until_midnight}"
    );
    let message = english["error"]["message"].as_str().unwrap();
    assert!(message.contains("today's 2 lectures"), "{message}");
    let (status, _, korean) = start_text(&app, &token, true).await;
    assert_eq!(status, 429);
    let message = korean["error"]["message"].as_str().unwrap();
    assert!(message.contains("강의 2회"), "{message}");

    // The same over the WebSocket, in a refusal frame.
    let mut ws = Ws::connect(&app, &token).await;
    ws.send_json(json!({"type": "text", "topicId": TOPIC, "text": "UDP has no handshake."}))
        .await;
    let error = ws.error().await;
    assert_eq!(error["code"], "quota_exceeded", "{error}");
    assert!(error["retryAfterSecs"].as_u64().unwrap() >= 1, "{error}");

    // The next day (by the clock) the quota is back.
    clock.advance(SignedDuration::from_hours(24));
    let (status, _, body) = start_text(&app, &token, false).await;
    assert_eq!(status, 201, "{body}");

    // The model's tokens: the fake reports usage for each grade; a quota below one grade's
    // tokens refuses the next lecture.
    let grade = app
        .graded(&token, body["lectureId"].as_str().unwrap())
        .await;
    assert_eq!(grade["grade"]["grader"], "llm", "{grade}");
    usage_caught_up(&app).await;
    let used = app
        .state
        .quotas
        .learner_today(uuid::Uuid::parse_str(grade["userId"].as_str().unwrap()).unwrap())
        .await
        .unwrap();
    // Today (by the clock) is tomorrow: today's usage in the read model is the real day's.
    assert_eq!(used.lectures, 0, "{used:?}");
    drop(app);

    let clock = Arc::new(ManualClock::new(now));
    let url = fake.base_url();
    let app = spawn_app_clocked(
        db.reconnect().await,
        move |c| {
            c.time_zone = "Asia/Seoul".into();
            c.jwt_secret = Some(SECRET.to_owned().into());
            c.llm_url = Some(url);
            c.llm_model = "fake-grader".into();
            c.quota_llm_tokens_per_day = 1;
        },
        None,
        clock,
    )
    .await;
    usage_caught_up(&app).await;
    let (status, _, body) = start_text(&app, &token, false).await;
    assert_eq!(status, 429, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("grading allowance"), "{message}");
}

async fn the_spending_guard_grades_with_the_rubric_once_the_budget_is_nearly_spent(db: &TestDb) {
    let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp::now()));
    let url = fake.base_url();
    let app = spawn_app_clocked(
        db.db.clone(),
        move |c| {
            c.llm_url = Some(url);
            c.llm_model = "fake-grader".into();
            // A budget one grade's tokens exceed: $1 per prompt token.
            c.price_prompt_per_mtok = 1_000_000.0;
            c.daily_budget_usd = Some(5.0);
            c.budget_guard_percent = 90.0;
        },
        None,
        clock.clone(),
    )
    .await;
    let token = crate::live_support::learner(&app).await;
    let metric = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };

    // The first grade is the model's, and it reports its tokens.
    let (_, _, body) = start_text(&app, &token, false).await;
    let first = app
        .graded(&token, body["lectureId"].as_str().unwrap())
        .await;
    assert_eq!(first["grade"]["grader"], "llm", "{first}");
    usage_caught_up(&app).await;
    let spend = app.state.quotas.spend().await.unwrap();
    assert!(
        spend.usage.prompt_tokens > 0,
        "the provider reported no usage"
    );
    assert!(spend.guard_active, "{spend:?}");

    // Past 90 % of the budget: the rubric grades, labelled, and the alert metric is up.
    let (_, _, body) = start_text(&app, &token, false).await;
    let second = app
        .graded(&token, body["lectureId"].as_str().unwrap())
        .await;
    assert_eq!(second["grade"]["grader"], "rubric", "{second}");
    assert_eq!(
        second["grade"]["fallbackReason"], "budget_guard",
        "{second}"
    );
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&metrics, "teachback_budget_guard_active"), Some(1.0));
    assert_eq!(metric(&metrics, "teachback_budget_usd"), Some(5.0));
    let requests_before = fake.chat_calls();

    // A new day, a new budget: the model grades again.
    clock.advance(SignedDuration::from_hours(24));
    let (_, _, body) = start_text(&app, &token, false).await;
    let third = app
        .graded(&token, body["lectureId"].as_str().unwrap())
        .await;
    assert_eq!(third["grade"]["grader"], "llm", "{third}");
    assert_eq!(fake.chat_calls(), requests_before + 1);
}

async fn a_live_lecture_ends_when_the_days_audio_minutes_run_out(db: &TestDb) {
    let app = spawn_app_with(db, |c| {
        c.quota_audio_minutes_per_day = 1;
    })
    .await;
    let token = crate::live_support::learner(&app).await;
    let mut ws = Ws::connect(&app, &token).await;
    let lecture = ws.start_pcm(TOPIC).await;
    // 70 s of audio: the lecture is finished at the minute.
    send_silence(&mut ws, 70).await;
    until_state(&mut ws, "finished").await;
    let view = app
        .get_json(&format!("/api/v1/lectures/{lecture}"), Some(&token))
        .await;
    let duration = view["durationMs"].as_u64().unwrap_or_default();
    assert!((60_000..61_000).contains(&duration), "{view}");
    usage_caught_up(&app).await;

    // The minute is used: the next audio lecture is refused, a text lecture is not.
    ws.send_json(
        json!({"type": "start", "topicId": TOPIC, "format": "pcm_s16le", "sampleRate": RATE}),
    )
    .await;
    let error = loop {
        let error = ws.error().await;
        if error["code"] != "lecture_finished" {
            break error;
        }
    };
    assert_eq!(error["code"], "quota_exceeded", "{error}");
    let (status, _, body) = start_text(&app, &token, false).await;
    assert_eq!(status, 201, "{body}");
}

/// Two instances on one PostgreSQL database share their rate limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_share_their_limits() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let tweak = |c: &mut teachback::config::Config| c.rate_limits = "only:devices.ip=4/h".into();
    let a = spawn_app_on_pool(db.reconnect().await, tweak, None).await;
    let b = spawn_app_on_pool(db.reconnect().await, tweak, None).await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let app = if i % 2 == 0 { &a } else { &b };
        let (status, _, _) = post(app, "/api/v1/devices", None, None, &[]).await;
        statuses.push(status);
    }
    assert_eq!(statuses, [201, 201, 201, 201, 429, 429, 429, 429]);
    let events = log(&a).await;
    assert_eq!(count(&events, "DeviceRegistered"), 4);
    drop((a, b));
    db.cleanup().await;
}

async fn uploaded_and_cancelled_audio_count_against_the_audio_quota(db: &TestDb) {
    let app = spawn_app_with(db, |c| {
        c.quota_audio_minutes_per_day = 1;
    })
    .await;
    let token = crate::live_support::learner(&app).await;
    // A cancelled live lecture's stored audio counts: 40 s recorded, then cancelled.
    let mut ws = Ws::connect(&app, &token).await;
    ws.start_pcm(TOPIC).await;
    send_silence(&mut ws, 40).await;
    ws.wait_ack(400).await;
    ws.send_json(json!({"type": "cancel"})).await;
    until_state(&mut ws, "cancelled").await;
    drop(ws);
    usage_caught_up(&app).await;
    let user = app.get_json("/api/v1/me", Some(&token)).await["userId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let used = app.state.quotas.learner_today(user).await.unwrap();
    assert!((39_000..=40_000).contains(&used.audio_ms), "{used:?}");

    // An uploaded WAV counts its length (25 s): the minute is then used up.
    let (status, _, body) = start_upload(&app, &token, "wav").await;
    assert_eq!(status, 201, "{body}");
    let wav = teachback::live::segment::wav(&vec![0u8; RATE as usize * 2 * 25], RATE);
    let response = app
        .http
        .put(upload_url(&app, &body))
        .header("content-type", "audio/wav")
        .body(wav)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    usage_caught_up(&app).await;
    let used = app.state.quotas.learner_today(user).await.unwrap();
    assert!((64_000..=65_000).contains(&used.audio_ms), "{used:?}");
    let (status, _, body) = start_upload(&app, &token, "webm").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 minutes"),
        "{body}"
    );
}
