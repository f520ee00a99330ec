//! The AI pipeline end to end: a real WebSocket learner, the server, and the in-repo
//! OpenAI-compatible fake provider over real HTTP, reproducing the wire formats and failures of
//! real servers. Every path must end in a graded lecture or in a clearly failed, retryable one.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use teachback::provider::fake::{
    ChatReply, ErrorShape, FakeOpenAi, FakeOptions, SttReply, sample_grade,
};
use teachback_events::{Event, streams};

use crate::live_support::{TOPIC, Ws, chunks, learner, speech};
use crate::support::{TestApp, TestDb, spawn_app_on, spawn_app_on_pool, spawn_app_with};
use crate::{on_both_backends, sqlite_only};

const ADMIN: &str = "pipeline-admin-token";

on_both_backends!(a_live_lecture_is_transcribed_while_the_learner_talks_and_the_grade_streams);

sqlite_only!(
    every_grading_failure_ends_graded_or_with_a_labelled_fallback,
    a_transcription_that_keeps_failing_is_a_retryable_failure_and_a_regrade_completes_it,
    an_empty_transcript_is_a_final_state_and_is_not_graded,
    with_no_provider_text_lectures_get_the_rubric_grade_and_audio_waits_for_transcription,
    ratings_and_regrades_keep_the_history,
    an_uploaded_recording_is_transcribed_whole_graded_and_followed_over_sse,
    a_restart_in_the_middle_of_grading_resumes_it_from_the_log,
    a_server_like_llama_cpp_without_json_schema_or_usage_still_grades,
);

fn with_providers(fake: &FakeOpenAi) -> impl FnOnce(&mut teachback::config::Config) + use<> {
    let url = fake.base_url();
    move |c| {
        c.stt_url = Some(url.clone());
        c.llm_url = Some(url);
        c.llm_model = "fake-grader".into();
        c.stt_model = "fake-whisper".into();
        c.admin_token = Some(SecretString::from(ADMIN.to_owned()));
        c.vad_pause_ms = 500;
    }
}

/// Polls a lecture until its processing has ended (graded, failed or empty).
async fn processed(app: &TestApp, token: &str, lecture: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let view = app
            .get_json(&format!("/api/v1/lectures/{lecture}"), Some(token))
            .await;
        if matches!(
            view["processing"].as_str(),
            Some("graded" | "failed" | "transcript_empty")
        ) {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processing did not end: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The lecture's events, decoded.
async fn events(app: &TestApp, lecture: &str) -> Vec<Event> {
    let id: uuid::Uuid = lecture.parse().unwrap();
    app.state
        .store
        .read_stream_all(&streams::lecture(id))
        .await
        .unwrap()
        .iter()
        .map(|e| e.decode().unwrap())
        .collect()
}

async fn text_lecture(app: &TestApp, token: &str, text: &str, language: &str) -> String {
    let r = app
        .http
        .post(app.url("/api/v1/lectures"))
        .bearer_auth(token)
        .json(&json!({"topicId": TOPIC, "language": language, "text": text}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let view: Value = r.json().await.unwrap();
    assert_eq!(view["mode"], "text");
    view["lectureId"].as_str().unwrap().to_owned()
}

/// Streams `ms` of speech into a started lecture and waits for every chunk's acknowledgement.
async fn talk(ws: &mut Ws, ms: u64, first_seq: u64) -> (u64, Vec<Value>) {
    let pieces = chunks(&speech(ms, 7));
    ws.send_chunks(first_seq, &pieces).await;
    let last = first_seq + pieces.len() as u64 - 1;
    let seen = ws.wait_ack(last).await;
    (last, seen)
}

async fn a_live_lecture_is_transcribed_while_the_learner_talks_and_the_grade_streams(db: &TestDb) {
    let fake = FakeOpenAi::start(FakeOptions {
        stt_text: "TCP sets up a connection first.".into(),
        stt_streaming: true,
        chunk_delay: Duration::from_millis(2),
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let app = spawn_app_with(db, with_providers(&fake)).await;
    let token = learner(&app).await;
    let mut ws = Ws::connect(&app, &token).await;
    let lecture = ws.start_pcm(TOPIC).await;
    // Talk for a while: segments are cut at the pauses and transcribed while the learner goes on.
    let (last, mut before) = talk(&mut ws, 5_000, 1).await;
    let first_transcript = match before.iter().find(|f| f["type"] == "transcript") {
        Some(t) => t.clone(),
        None => {
            let (t, seen) = ws.until("transcript").await;
            before.extend(seen);
            t
        }
    };
    assert_eq!(first_transcript["text"], "TCP sets up a connection first.");
    assert!(
        before.iter().any(|f| f["type"] == "transcriptDelta"),
        "a streaming provider's deltas reach the learner live"
    );
    let (more, _) = talk(&mut ws, 3_000, last + 1).await;
    assert!(more > last);
    ws.send_json(json!({"type": "finish"})).await;
    let (completed, _) = ws.until("transcriptCompleted").await;
    assert_eq!(completed["empty"], false);
    let (grading, _) = ws.until("grading").await;
    assert_eq!(grading["grader"], "llm");
    let (graded, frames) = ws.until("graded").await;
    let streamed: String = frames
        .iter()
        .filter(|f| f["type"] == "feedbackDelta")
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    let sample = sample_grade();
    assert_eq!(
        streamed,
        sample["feedback"].as_str().unwrap(),
        "prose, not JSON, streams"
    );
    assert!(
        frames
            .iter()
            .filter(|f| f["type"] == "feedbackDelta")
            .count()
            > 5,
        "token by token"
    );
    assert_eq!(graded["score"], sample["score"]);
    assert_eq!(graded["subScores"], sample["subScores"]);
    assert_eq!(graded["misconceptions"], sample["misconceptions"]);

    // The log holds the whole story, and the coalesced feedback replays to the same text.
    let events = events(&app, &lecture).await;
    let segments = events
        .iter()
        .filter(|e| matches!(e, Event::AudioSegmentStored(_)))
        .count();
    let recognized = events
        .iter()
        .filter(|e| matches!(e, Event::TranscriptSegmentRecognized(_)))
        .count();
    assert!(segments >= 3, "{segments} segments");
    assert_eq!(
        recognized, segments,
        "every segment transcribed exactly once"
    );
    assert_eq!(fake.stt_calls(), segments, "no segment sent twice");
    let finished_at = events
        .iter()
        .position(|e| matches!(e, Event::LectureFinished(_)))
        .unwrap();
    let recognized_before_finish = events[..finished_at]
        .iter()
        .filter(|e| matches!(e, Event::TranscriptSegmentRecognized(_)))
        .count();
    assert!(
        recognized_before_finish >= 1,
        "transcription ran while the learner talked"
    );
    let replayed: String = events
        .iter()
        .filter_map(|e| match e {
            Event::FeedbackStreamed(f) => Some(f.text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(replayed, streamed);
    let Some(Event::LectureGraded(grade)) = events.last() else {
        panic!("the last event is the grade");
    };
    assert_eq!(grade.model.as_deref(), Some("fake-grader"));
    assert_eq!(grade.output_mode.as_deref(), Some("json_schema"));
    assert!(grade.usage.is_some_and(|u| u.completion_tokens > 0));
    assert!(grade.latency.first_token_ms.is_some());
    assert!(grade.latency.since_finish_ms.is_some());

    // What the model was asked: the topic, the key concepts, the fenced transcript, low
    // temperature, structured output, streaming.
    let chat = fake
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/chat/completions"))
        .unwrap();
    let body = chat.json.unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert!(body["temperature"].as_f64().unwrap() <= 0.3);
    let user = body["messages"][1]["content"].as_str().unwrap();
    assert!(
        user.contains("TCP와 UDP"),
        "the topic in the lecture's language: {user}"
    );
    assert!(user.contains("연결 설정"), "key concepts: {user}");
    assert!(user.contains("<transcript>\nTCP sets up a connection first."));

    let view = processed(&app, &token, &lecture).await;
    assert_eq!(view["processing"], "graded");
    assert_eq!(view["score"], sample["score"]);
    assert_eq!(view["grade"]["grader"], "llm");
    assert_eq!(view["transcriptComplete"], true);
}

async fn every_grading_failure_ends_graded_or_with_a_labelled_fallback(db: &TestDb) {
    let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
    let url = fake.base_url();
    let app = spawn_app_with(db, move |c| {
        c.llm_url = Some(url);
        c.llm_timeout_secs = 2;
        c.llm_first_byte_secs = 1;
    })
    .await;
    let token = learner(&app).await;
    let error_with = |status,
                      shape,
                      error_type: Option<&str>,
                      code: Option<&str>,
                      retry_after: Option<&str>,
                      should_retry: Option<bool>| ChatReply::Error {
        status,
        shape,
        message: "simulated".into(),
        error_type: error_type.map(str::to_owned),
        code: code.map(str::to_owned),
        retry_after: retry_after.map(str::to_owned),
        retry_after_ms: None,
        should_retry,
    };
    let error =
        |status, shape, error_type, code| error_with(status, shape, error_type, code, None, None);
    let text = "TCP sets up a connection with a handshake and guarantees ordering; UDP does not.";
    // (name, replies queued, expected grader, expected fallback reason, expected chat calls)
    type Case = (
        &'static str,
        Vec<ChatReply>,
        &'static str,
        Option<&'static str>,
        usize,
    );
    let cases: Vec<Case> = vec![
        ("plain success", vec![], "llm", None, 1),
        (
            "429 with retry-after, then success",
            vec![error_with(
                429,
                ErrorShape::Nested,
                Some("requests"),
                None,
                Some("0"),
                None,
            )],
            "llm",
            None,
            2,
        ),
        (
            "a 500 (flat body), then success",
            vec![error(500, ErrorShape::Flat, None, None)],
            "llm",
            None,
            2,
        ),
        (
            "503s (FastAPI body) past the retries",
            vec![
                error(503, ErrorShape::Detail, None, None),
                error(503, ErrorShape::Detail, None, None),
                error(503, ErrorShape::Detail, None, None),
            ],
            "rubric",
            Some("provider_error"),
            3,
        ),
        ("recovered", vec![], "llm", None, 1),
        (
            "insufficient_quota is never retried",
            vec![error(
                429,
                ErrorShape::Nested,
                Some("insufficient_quota"),
                Some("insufficient_quota"),
            )],
            "rubric",
            Some("provider_quota_exceeded"),
            1,
        ),
        (
            "x-should-retry: false is obeyed",
            vec![error_with(
                500,
                ErrorShape::Nested,
                None,
                None,
                None,
                Some(false),
            )],
            "rubric",
            Some("provider_error"),
            1,
        ),
        ("recovered again", vec![], "llm", None, 1),
        (
            "a stream cut after tokens reached the learner is not replayed",
            vec![ChatReply::CutAfter { chunks: 6 }],
            "rubric",
            Some("provider_stream_broken"),
            1,
        ),
        (
            "an error object mid-stream",
            vec![ChatReply::ErrorMidStream {
                chunks: 6,
                message: "overloaded".into(),
            }],
            "rubric",
            Some("provider_stream_broken"),
            1,
        ),
        (
            "a provider that never answers times out and is retried",
            vec![ChatReply::HangBeforeHeaders],
            "llm",
            None,
            2,
        ),
        (
            "a stream that hangs after tokens times out, not replayed",
            vec![ChatReply::HangAfter { chunks: 6 }],
            "rubric",
            Some("provider_timeout"),
            1,
        ),
        (
            "output that is not JSON",
            vec![ChatReply::Text(
                "I think this lecture was quite good overall.".into(),
            )],
            "rubric",
            Some("invalid_output"),
            1,
        ),
        (
            "JSON in a code fence with prose around it",
            vec![ChatReply::Text(format!(
                "Sure! Here is the grade:\n```json\n{}\n```\nHope it helps.",
                sample_grade()
            ))],
            "llm",
            None,
            1,
        ),
        // Five failures in a row open the circuit breaker: the next lecture does not wait on a
        // provider that is down; the rubric grader stands in at once.
        (
            "failing (breaker: 3 failures)",
            vec![
                error(502, ErrorShape::Nested, None, None),
                error(502, ErrorShape::Nested, None, None),
                error(502, ErrorShape::Nested, None, None),
            ],
            "rubric",
            Some("provider_error"),
            3,
        ),
        (
            "still failing (breaker opens at 5)",
            vec![
                error(502, ErrorShape::Nested, None, None),
                error(502, ErrorShape::Nested, None, None),
            ],
            "rubric",
            Some("provider_error"),
            2,
        ),
        (
            "breaker open",
            vec![],
            "rubric",
            Some("provider_circuit_open"),
            0,
        ),
    ];
    for (name, replies, grader, fallback, calls) in cases {
        let before = fake.chat_calls();
        for reply in replies {
            fake.push_chat(reply);
        }
        let lecture = text_lecture(&app, &token, text, "en").await;
        let view = processed(&app, &token, &lecture).await;
        assert_eq!(view["processing"], "graded", "{name}: {view}");
        assert_eq!(view["grade"]["grader"], grader, "{name}: {view}");
        assert_eq!(view["grade"]["fallbackReason"].as_str(), fallback, "{name}");
        assert_eq!(fake.chat_calls() - before, calls, "{name}: calls");
        if grader == "rubric" {
            assert!(!view["grade"]["feedback"].as_str().unwrap().is_empty());
        }
        // What streamed to the learner is in the log, for replays.
        let events = events(&app, &lecture).await;
        let grading = events
            .iter()
            .filter(|e| matches!(e, Event::GradingStarted(_)))
            .count();
        assert_eq!(grading, if fallback.is_some() { 2 } else { 1 }, "{name}");
    }
    // With no usage chunk (llama.cpp's server never sends one) the grade simply has no usage.
    drop(fake);
}

async fn a_transcription_that_keeps_failing_is_a_retryable_failure_and_a_regrade_completes_it(
    db: &TestDb,
) {
    let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
    let app = spawn_app_with(db, |c| {
        with_providers(&fake)(c);
        c.provider_retries = 0;
        c.provider_breaker_secs = 1;
    })
    .await;
    let token = learner(&app).await;
    for _ in 0..50 {
        fake.push_stt(SttReply::Error {
            status: 502,
            shape: ErrorShape::Flat,
            message: "bad gateway".into(),
            error_type: None,
            code: None,
            retry_after: None,
            retry_after_ms: None,
            should_retry: None,
        });
    }
    let mut ws = Ws::connect(&app, &token).await;
    let lecture = ws.start_pcm(TOPIC).await;
    talk(&mut ws, 2_000, 1).await;
    ws.send_json(json!({"type": "finish"})).await;
    let (failed, _) = ws.until("gradingFailed").await;
    assert_eq!(failed["stage"], "transcription");
    assert_eq!(failed["retryable"], true);
    let view = processed(&app, &token, &lecture).await;
    assert_eq!(view["processing"], "failed");
    let code = view["failure"]["code"].as_str().unwrap();
    assert!(
        matches!(code, "provider_error" | "provider_circuit_open"),
        "{code}"
    );
    assert_eq!(fake.chat_calls(), 0);

    // The provider recovers (and its circuit breaker lets a trial through after a second); a
    // re-grade picks up from the stored audio.
    // Use up the failures still queued, so the provider answers again.
    loop {
        let r = app
            .http
            .post(format!("{}/audio/transcriptions", fake.base_url()))
            .header("content-type", "multipart/form-data; boundary=x")
            .body("--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--x--\r\n")
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = app
        .http
        .post(app.url(&format!(
            "/api/v1/admin/lectures/{lecture}/regrade?reason=provider%20back"
        )))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["attempt"], 2);
    let view = processed(&app, &token, &lecture).await;
    assert_eq!(view["processing"], "graded", "{view}");
    assert_eq!(view["attempt"], 2);
    assert_eq!(view["grade"]["grader"], "llm");
}

async fn an_empty_transcript_is_a_final_state_and_is_not_graded(db: &TestDb) {
    let fake = FakeOpenAi::start(FakeOptions {
        stt_text: String::new(),
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let app = spawn_app_with(db, with_providers(&fake)).await;
    let token = learner(&app).await;
    let mut ws = Ws::connect(&app, &token).await;
    let lecture = ws.start_pcm(TOPIC).await;
    talk(&mut ws, 2_000, 1).await;
    ws.send_json(json!({"type": "finish"})).await;
    let (completed, _) = ws.until("transcriptCompleted").await;
    assert_eq!(completed["empty"], true);
    let view = processed(&app, &token, &lecture).await;
    assert_eq!(view["processing"], "transcript_empty");
    assert_eq!(view["score"], Value::Null);
    assert_eq!(fake.chat_calls(), 0, "an empty transcript is not graded");
    // And it cannot be re-graded into a score either.
    let r = app
        .http
        .post(app.url(&format!("/api/v1/admin/lectures/{lecture}/regrade")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "transcript_empty"
    );
}

async fn with_no_provider_text_lectures_get_the_rubric_grade_and_audio_waits_for_transcription(
    db: &TestDb,
) {
    let audio = tempfile::tempdir().unwrap();
    let blobs: Arc<dyn teachback::blob::BlobStore> =
        teachback::blob::open(&audio.path().display().to_string()).unwrap();
    // The same signing secret before and after the restart, so the learner's token still works.
    let secret = || SecretString::from("a-signing-secret-shared-by-both-runs".to_owned());
    let app = spawn_app_on(db, |c| c.jwt_secret = Some(secret()), Some(blobs.clone())).await;
    let token = learner(&app).await;
    let mut ws = Ws::connect(&app, &token).await;

    // A text lecture over the live protocol: the rubric grader, streamed, in Korean.
    ws.send_json(json!({"type": "text", "topicId": TOPIC, "language": "ko",
        "text": "TCP는 연결 설정을 먼저 하고 신뢰성 있는 전달과 순서 보장을 합니다. 예를 들어 파일 전송에 쓰입니다."}))
        .await;
    let (started, _) = ws.until("started").await;
    assert_eq!(started["format"], "text");
    let text_lecture = started["lectureId"].as_str().unwrap().to_owned();
    let (grading, _) = ws.until("grading").await;
    assert_eq!(grading["grader"], "rubric");
    assert_eq!(grading["fallbackReason"], Value::Null);
    let (graded, frames) = ws.until("graded").await;
    let streamed: String = frames
        .iter()
        .filter(|f| f["type"] == "feedbackDelta")
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, graded["feedback"].as_str().unwrap());
    assert!(graded["score"].as_u64().unwrap() > 0);
    assert!(
        streamed.chars().any(|c| ('가'..='힣').contains(&c)),
        "feedback in the lecture's language: {streamed}"
    );
    let view = processed(&app, &token, &text_lecture).await;
    assert_eq!(view["grade"]["grader"], "rubric");

    // Bad text is refused clearly.
    ws.send_json(json!({"type": "text", "topicId": TOPIC, "text": "   "}))
        .await;
    assert_eq!(ws.error().await["code"], "invalid_text");

    // An audio lecture with no speech-to-text waits, clearly.
    let lecture = ws.start_pcm(TOPIC).await;
    talk(&mut ws, 2_000, 1).await;
    ws.send_json(json!({"type": "finish"})).await;
    ws.until("state").await;
    let view = app
        .get_json(&format!("/api/v1/lectures/{lecture}"), Some(&token))
        .await;
    assert_eq!(view["status"], "finished");
    assert_eq!(view["processing"], "awaiting_transcription");
    drop(ws);
    drop(app);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Configured later: on startup the lecture is picked up from the log and graded.
    let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
    let configure = with_providers(&fake);
    let app = spawn_app_on_pool(
        db.reconnect().await,
        |c| {
            configure(c);
            c.jwt_secret = Some(secret());
        },
        Some(blobs),
    )
    .await;
    let view = processed(&app, &token, &lecture).await;
    assert_eq!(view["processing"], "graded", "{view}");
    assert!(fake.stt_calls() >= 1);
}

async fn ratings_and_regrades_keep_the_history(db: &TestDb) {
    let app = spawn_app_with(db, |c| {
        c.admin_token = Some(SecretString::from(ADMIN.to_owned()));
    })
    .await;
    let token = learner(&app).await;
    let lecture = text_lecture(
        &app,
        &token,
        "UDP sends datagrams without a connection. TCP uses a handshake.",
        "en",
    )
    .await;
    processed(&app, &token, &lecture).await;
    let rate = |rating: Value| {
        app.http
            .post(app.url(&format!("/api/v1/lectures/{lecture}/rating")))
            .bearer_auth(&token)
            .json(&json!({ "rating": rating }))
            .send()
    };
    let r = rate(json!(6)).await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_rating"
    );
    let r = rate(json!(4)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["rating"], 4);
    // Someone else's lecture cannot be rated (it does not exist for them).
    let other = learner(&app).await;
    let r = app
        .http
        .post(app.url(&format!("/api/v1/lectures/{lecture}/rating")))
        .bearer_auth(&other)
        .json(&json!({"rating": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let regrade = |token: &str| {
        app.http
            .post(app.url(&format!("/api/v1/admin/lectures/{lecture}/regrade")))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(regrade("wrong").await.unwrap().status(), 401);
    let r = regrade(ADMIN).await.unwrap();
    assert_eq!(r.status(), 202);
    let mut view = processed(&app, &token, &lecture).await;
    for _ in 0..100 {
        if view["attempt"] == 2 && view["processing"] == "graded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        view = processed(&app, &token, &lecture).await;
    }
    assert_eq!(view["grades"].as_array().unwrap().len(), 2, "{view}");
    assert_eq!(view["grades"][0]["attempt"], 1);
    assert_eq!(view["grades"][1]["attempt"], 2);
    let r = app
        .http
        .post(app.url(&format!(
            "/api/v1/admin/lectures/{}/regrade",
            uuid::Uuid::now_v7()
        )))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

async fn an_uploaded_recording_is_transcribed_whole_graded_and_followed_over_sse(db: &TestDb) {
    let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
    let app = spawn_app_with(db, |c| {
        with_providers(&fake)(c);
        c.stt_language = "lecture".into();
    })
    .await;
    let token = learner(&app).await;
    let r = app
        .http
        .post(app.url("/api/v1/lectures"))
        .bearer_auth(&token)
        .json(&json!({"topicId": TOPIC, "format": "wav", "language": "ko"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let lecture = created["lectureId"].as_str().unwrap().to_owned();
    // Follow the lecture over SSE from before the upload to the grade.
    let follow = tokio::spawn({
        let (http, url) = (
            app.http.clone(),
            app.url(&format!("/api/v1/lectures/{lecture}/events")),
        );
        let token = token.clone();
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    let recording = teachback::live::segment::wav(&speech(3_000, 3), 16_000);
    let r = app
        .http
        .put({
            // The server hands out URLs on its public address; this test server listens elsewhere.
            let url = created["uploadUrl"].as_str().unwrap();
            app.url(&url[url.find("/api/").unwrap()..])
        })
        .header("content-type", "audio/wav")
        .body(recording)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .post(app.url(&format!("/api/v1/lectures/{lecture}/finish")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let view = processed(&app, &token, &lecture).await;
    assert_eq!(view["processing"], "graded");
    let stt: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/audio/transcriptions"))
        .collect();
    assert_eq!(stt.len(), 1, "the whole recording, once");
    let fields: std::collections::HashMap<_, _> = stt[0].fields.iter().cloned().collect();
    assert_eq!(fields.get("language").map(String::as_str), Some("ko"));
    assert_eq!(
        fields.get("model").map(String::as_str),
        Some("fake-whisper")
    );
    assert!(stt[0].file.as_ref().unwrap().0.ends_with(".wav"));

    let followed = tokio::time::timeout(Duration::from_secs(20), follow)
        .await
        .expect("the feed ends once the lecture is graded")
        .unwrap();
    let kinds: Vec<String> = followed
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["type"].as_str().map(str::to_owned))
        .collect();
    for kind in [
        "started",
        "segment",
        "state",
        "transcript",
        "transcriptCompleted",
        "grading",
        "feedback",
        "graded",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    assert!(
        !kinds.iter().any(|k| k == "feedbackDelta"),
        "observers get the coalesced feedback"
    );
    assert!(followed.contains("event: end"));
}

async fn a_restart_in_the_middle_of_grading_resumes_it_from_the_log(db: &TestDb) {
    let secret = || SecretString::from("a-signing-secret-shared-by-both-runs".to_owned());
    let stuck = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
    stuck.push_chat(ChatReply::HangAfter { chunks: 8 });
    let url = stuck.base_url();
    let app = spawn_app_with(db, |c| {
        c.llm_url = Some(url);
        c.llm_timeout_secs = 120;
        c.jwt_secret = Some(secret());
    })
    .await;
    let token = learner(&app).await;
    let lecture = text_lecture(&app, &token, "TCP uses a handshake; UDP does not.", "en").await;
    // Wait until some feedback has streamed (and is in the log), then stop the server.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let streamed = events(&app, &lecture)
            .await
            .iter()
            .any(|e| matches!(e, Event::FeedbackStreamed(_)));
        if streamed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no feedback streamed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(app);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
    let url = fake.base_url();
    let app = spawn_app_on_pool(
        db.reconnect().await,
        |c| {
            c.llm_url = Some(url);
            c.jwt_secret = Some(secret());
        },
        None,
    )
    .await;
    let view = processed(&app, &token, &lecture).await;
    assert_eq!(view["processing"], "graded", "{view}");
    assert_eq!(view["grade"]["grader"], "llm");
    assert_eq!(view["attempt"], 1);
    let events = events(&app, &lecture).await;
    let started = events
        .iter()
        .filter(|e| matches!(e, Event::GradingStarted(_)))
        .count();
    assert_eq!(started, 2, "the interrupted grading, then the resumed one");
    // The feedback of the resumed grading alone replays to the grade's feedback.
    let last_start = events
        .iter()
        .rposition(|e| matches!(e, Event::GradingStarted(_)))
        .unwrap();
    let replayed: String = events[last_start..]
        .iter()
        .filter_map(|e| match e {
            Event::FeedbackStreamed(f) => Some(f.text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(replayed, view["grade"]["feedback"].as_str().unwrap());
    assert_eq!(fake.chat_calls(), 1);
}

async fn a_server_like_llama_cpp_without_json_schema_or_usage_still_grades(db: &TestDb) {
    // llama-cpp-python's server answers `json_schema` with a 500 and never sends the usage chunk.
    let fake = FakeOpenAi::start(FakeOptions {
        reject_json_schema: true,
        include_usage: false,
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let url = fake.base_url();
    let app = spawn_app_with(db, move |c| c.llm_url = Some(url)).await;
    let token = learner(&app).await;
    for round in 0..2 {
        let lecture =
            text_lecture(&app, &token, "TCP orders bytes; UDP sends datagrams.", "en").await;
        let view = processed(&app, &token, &lecture).await;
        assert_eq!(view["grade"]["grader"], "llm", "round {round}: {view}");
        assert_eq!(view["grade"]["outputMode"], "json_object");
        assert_eq!(
            view["grade"]["usage"],
            Value::Null,
            "no usage chunk is normal"
        );
    }
    let modes: Vec<String> = fake
        .requests()
        .iter()
        .filter_map(|r| r.json.as_ref())
        .map(|b| {
            b["response_format"]["type"]
                .as_str()
                .unwrap_or("none")
                .to_owned()
        })
        .collect();
    assert_eq!(
        modes,
        ["json_schema", "json_object", "json_object"],
        "degraded once, then remembered"
    );
}
