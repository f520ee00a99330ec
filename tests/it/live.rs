//! Live lectures over real WebSocket clients: a whole lecture, pause and resume, reconnect with
//! resend, observers, the REST fallback, and every refusal.

use std::time::Duration;

use serde_json::{Value, json};
use teachback::live::segment::wav_pcm;

use crate::live_support::*;
use crate::support::{TestDb, spawn_app, spawn_app_with};
use crate::{on_both_backends, sqlite_only};
use futures::SinkExt;

on_both_backends!(
    a_whole_lecture_is_stored_in_segments_that_concatenate_to_the_audio_sent,
    pause_and_resume_close_a_segment_and_refuse_audio_while_paused,
    a_reconnect_resends_only_what_is_missing_and_nothing_is_doubled,
    a_late_observer_gets_the_history_then_the_live_frames_without_gap_or_duplicate,
    the_rest_fallback_uploads_through_a_signed_url_and_streams_events,
);

// These cover the protocol's logic, which does not depend on the database: SQLite only.
sqlite_only!(
    bad_input_gets_clear_errors_and_the_session_stays_open,
    a_lecture_at_the_maximum_length_is_finished_not_discarded,
    a_learner_who_does_not_come_back_has_the_lecture_abandoned_with_its_audio_kept,
    a_container_recording_streams_in_and_is_stored_whole,
);

async fn a_whole_lecture_is_stored_in_segments_that_concatenate_to_the_audio_sent(db: &TestDb) {
    let app = spawn_app(db).await;
    let token = learner(&app).await;
    let mut ws = Ws::connect(&app, &token).await;
    assert_eq!(ws.hello["protocol"], 1);
    assert_eq!(ws.hello["maxFrameBytes"], 65536);
    let lecture = ws.start_pcm(TOPIC).await;
    let audio = speech(5_000, 1);
    let pieces = chunks(&audio);
    ws.send_chunks(1, &pieces).await;
    let n = pieces.len() as u64;
    let during = ws.wait_ack(n).await;
    // The 700 ms pauses cut segments while the audio streams in.
    assert!(
        during.iter().any(|f| f["type"] == "segment"),
        "segments are stored during the lecture"
    );
    ws.send_json(json!({"type": "finish"})).await;
    let (state, _) = ws.until("state").await;
    assert_eq!(state["state"], "finished");
    assert_eq!(state["reason"], "learner");
    assert_eq!(state["durationMs"], 5_000);

    let (view, pcm) = stored_pcm(&app, &token, &lecture).await;
    assert_eq!(view["status"], "finished");
    assert_eq!(
        sha256(&pcm),
        sha256(&audio),
        "stored audio is exactly what was sent"
    );
    assert_contiguous(&view, n);
    assert!(view["segments"].as_array().unwrap().len() >= 3, "{view}");

    // The log holds the lecture's story, in order.
    let events = app
        .state
        .store
        .read_stream_all(&format!("lecture-{lecture}"))
        .await
        .unwrap();
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types.first(), Some(&"LectureStarted"));
    assert_eq!(types.last(), Some(&"LectureFinished"));
    assert!(
        types[1..types.len() - 1]
            .iter()
            .all(|t| *t == "AudioSegmentStored")
    );

    // A new lecture can start on the same connection once this one is over.
    let second = ws.start_pcm(TOPIC).await;
    assert_ne!(second, lecture);
}

async fn pause_and_resume_close_a_segment_and_refuse_audio_while_paused(db: &TestDb) {
    let app = spawn_app(db).await;
    let token = learner(&app).await;
    let mut ws = Ws::connect(&app, &token).await;
    let lecture = ws.start_pcm(TOPIC).await;
    // Continuous speech: no pause for the detector, so only `pause` closes the segment.
    let audio = speech(600, 2);
    let pieces = chunks(&audio);
    ws.send_chunks(1, &pieces).await;
    ws.send_json(json!({"type": "pause"})).await;
    let (state, before) = ws.until("state").await;
    assert_eq!(state["state"], "paused");
    let segment = before
        .iter()
        .find(|f| f["type"] == "segment")
        .expect("pausing stores the open segment first");
    assert_eq!(segment["lastSeq"], 6);
    assert_eq!(
        ws.acked, 6,
        "every chunk is acknowledged before the pause is"
    );

    ws.send_audio(7, &pieces[0]).await;
    let e = ws.error().await;
    assert_eq!(e["code"], "lecture_paused");
    assert_eq!(e["fatal"], false);
    assert_eq!(e["expectedSeq"], 7);
    ws.send_json(json!({"type": "pause"})).await;
    assert_eq!(ws.error().await["code"], "invalid_state");

    ws.send_json(json!({"type": "resume"})).await;
    let (state, _) = ws.until("state").await;
    assert_eq!(state["state"], "recording");
    let more = speech(400, 3);
    ws.send_chunks(7, &chunks(&more)).await;
    ws.wait_ack(10).await;
    ws.send_json(json!({"type": "finish"})).await;
    let (state, _) = ws.until("state").await;
    assert_eq!(state["state"], "finished");

    let (view, pcm) = stored_pcm(&app, &token, &lecture).await;
    assert_eq!(pcm, [audio, more].concat());
    assert_contiguous(&view, 10);
    let events = app
        .state
        .store
        .read_stream_all(&format!("lecture-{lecture}"))
        .await
        .unwrap();
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "LectureStarted",
            "AudioSegmentStored",
            "LecturePaused",
            "LectureResumed",
            "AudioSegmentStored",
            "LectureFinished"
        ]
    );
}

async fn a_reconnect_resends_only_what_is_missing_and_nothing_is_doubled(db: &TestDb) {
    let app = spawn_app(db).await;
    let token = learner(&app).await;
    let audio = speech(6_000, 4);
    let pieces = chunks(&audio);
    let mut ws = Ws::connect(&app, &token).await;
    let lecture = ws.start_pcm(TOPIC).await;
    ws.send_chunks(1, &pieces[..40]).await;
    ws.wait_ack(25).await;
    // The network drops: no close frame, the socket just goes away.
    drop(ws);

    let mut ws = Ws::connect(&app, &token).await;
    ws.send_json(json!({"type": "reconnect", "lectureId": lecture}))
        .await;
    let (answer, _) = ws.until("reconnected").await;
    let last = answer["lastSeq"].as_u64().unwrap();
    assert!(last >= 25, "everything acknowledged is kept: {answer}");
    assert!(last <= 40);
    assert_eq!(answer["state"], "recording");
    // Resend from the last stored chunk (one duplicate on purpose) to the end.
    for seq in last..=pieces.len() as u64 {
        ws.send_audio(seq, &pieces[seq as usize - 1]).await;
    }
    ws.wait_ack(pieces.len() as u64).await;
    // A gap is refused and changes nothing.
    ws.send_audio(pieces.len() as u64 + 5, &pieces[0]).await;
    let e = ws.error().await;
    assert_eq!(e["code"], "sequence_gap");
    assert_eq!(e["expectedSeq"], pieces.len() as u64 + 1);
    ws.send_json(json!({"type": "finish"})).await;
    let (state, _) = ws.until("state").await;
    assert_eq!(state["state"], "finished");

    let (view, pcm) = stored_pcm(&app, &token, &lecture).await;
    assert_eq!(
        sha256(&pcm),
        sha256(&audio),
        "nothing missing, nothing doubled"
    );
    assert_contiguous(&view, pieces.len() as u64);
}

async fn a_late_observer_gets_the_history_then_the_live_frames_without_gap_or_duplicate(
    db: &TestDb,
) {
    let app = spawn_app(db).await;
    let token = learner(&app).await;
    let mut ws = Ws::connect(&app, &token).await;
    let lecture = ws.start_pcm(TOPIC).await;
    let audio = speech(8_000, 5);
    let pieces = chunks(&audio);
    ws.send_chunks(1, &pieces[..35]).await;
    ws.wait_ack(35).await;

    let share: Value = app
        .http
        .post(app.url(&format!("/api/v1/lectures/{lecture}/share")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let watch_url = share["watchUrl"].as_str().unwrap().to_owned();
    assert!(watch_url.starts_with("ws://"));
    let watch_url = format!(
        "ws://{}{}",
        app.addr,
        &watch_url[watch_url.find("/api/").unwrap()..]
    );
    let mut observer = Observer::open(&watch_url).await;
    // The owner's token in the query works too (browsers).
    let mut owner_view = Observer::open(&format!(
        "ws://{}/api/v1/lectures/{lecture}/watch?token={token}",
        app.addr
    ))
    .await;

    // Meanwhile the lecture goes on.
    ws.send_json(json!({"type": "pause"})).await;
    ws.send_json(json!({"type": "resume"})).await;
    ws.send_chunks(36, &pieces[35..]).await;
    let seen = ws.wait_ack(pieces.len() as u64).await;
    ws.send_json(json!({"type": "finish"})).await;
    let (finished, before) = ws.until("state").await;
    let states: Vec<_> = seen
        .iter()
        .chain(&before)
        .chain([&finished])
        .filter(|f| f["type"] == "state")
        .map(|f| f["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["paused", "recording", "finished"]);

    let events = app
        .state
        .store
        .read_stream_all(&format!("lecture-{lecture}"))
        .await
        .unwrap();
    for o in [&mut observer, &mut owner_view] {
        let frames = o.all().await;
        let caught_up = frames
            .iter()
            .position(|f| f["type"] == "caughtUp")
            .expect("a caughtUp frame");
        assert!(caught_up >= 2, "history came first: {frames:?}");
        let versions: Vec<u64> = frames
            .iter()
            .filter_map(|f| f.get("version").filter(|_| f["type"] != "caughtUp"))
            .map(|v| v.as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (0..events.len() as u64).collect();
        assert_eq!(versions, expected, "every event once, in order");
        assert_eq!(frames[0]["type"], "started");
        assert_eq!(frames.last().unwrap()["state"], "finished");
        assert_eq!(o.close_code, Some(1000));
    }

    // A stranger sees nothing, and cannot tell the lecture exists.
    let stranger = learner(&app).await;
    let r = app
        .http
        .get(app.url(&format!("/api/v1/lectures/{lecture}")))
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let missing = app
        .http
        .get(app.url(&format!("/api/v1/lectures/{}", uuid::Uuid::now_v7())))
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        missing.json::<Value>().await.unwrap()
    );

    // Server-Sent Events give the same frames, with the stream version as the event id.
    let sse = app
        .http
        .get(app.url(&format!("/api/v1/lectures/{lecture}/events")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        sse.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let body = sse.text().await.unwrap();
    let ids: Vec<u64> = body
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(ids, (0..events.len() as u64).collect::<Vec<_>>());
    // Resuming with Last-Event-ID skips what was seen.
    let resumed = app
        .http
        .get(app.url(&format!("/api/v1/lectures/{lecture}/events")))
        .bearer_auth(&token)
        .header("last-event-id", "2")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let first_id = resumed
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap();
    assert_eq!(first_id, "3");
}

/// An observer's WebSocket, read to the end.
struct Observer {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    close_code: Option<u16>,
}

impl Observer {
    async fn open(url: &str) -> Observer {
        let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Observer {
            stream,
            close_code: None,
        }
    }

    /// Every text frame until the server closes.
    async fn all(&mut self) -> Vec<Value> {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let mut frames = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(20), self.stream.next())
                .await
                .expect("frames in time");
            match next {
                Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(frame))) => {
                    self.close_code = frame.map(|f| f.code.into());
                    return frames;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return frames,
            }
        }
    }
}

async fn the_rest_fallback_uploads_through_a_signed_url_and_streams_events(db: &TestDb) {
    let app = spawn_app_with(db, |c| c.max_recording_bytes = 100_000).await;
    let token = learner(&app).await;
    let create = |body: Value| {
        app.http
            .post(app.url("/api/v1/lectures"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let r = create(json!({"topicId": "nope", "format": "webm"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "unknown_topic"
    );
    let r = create(json!({"topicId": TOPIC, "format": "flac"}))
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "unsupported_format"
    );

    let r = create(json!({"topicId": TOPIC, "format": "webm", "language": "en"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let lecture = created["lectureId"].as_str().unwrap().to_owned();
    assert_eq!(created["contentType"], "audio/webm");
    assert_eq!(created["maxBytes"], 100_000);
    let upload_url = created["uploadUrl"].as_str().unwrap();
    let upload_url = app.url(&upload_url[upload_url.find("/api/").unwrap()..]);
    let recording: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();

    // Finishing before the upload is refused.
    let finish = || {
        app.http
            .post(app.url(&format!("/api/v1/lectures/{lecture}/finish")))
            .bearer_auth(&token)
            .send()
    };
    let r = finish().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "no_audio"
    );

    // A REST client follows the lecture with SSE from before the upload: no polling.
    let follow = tokio::spawn(
        app.http
            .get(app.url(&format!("/api/v1/lectures/{lecture}/events")))
            .bearer_auth(&token)
            .send(),
    );
    let put = |url: String, ct: &'static str, body: Vec<u8>| {
        app.http
            .put(url)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let r = put(upload_url.clone(), "audio/ogg", recording.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "content_type_mismatch"
    );
    let r = put(upload_url.clone(), "audio/webm", vec![1; 100_001])
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let tampered = upload_url.replace("sig=", "sig=x");
    let r = put(tampered, "audio/webm", recording.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_signature"
    );
    // The signature is bound to its lecture.
    let other = upload_url.replace(&lecture, &uuid::Uuid::now_v7().to_string());
    assert_eq!(
        put(other, "audio/webm", recording.clone())
            .await
            .unwrap()
            .status(),
        403
    );
    // Bytes that are plainly another container (a WAV, an Ogg file) are refused, and nothing
    // is stored.
    let wav = teachback::live::segment::wav(&[0u8; 3_200], 16_000);
    for other in [wav, b"OggS\0\x02\0\0\0\0\0\0\0\0".to_vec()] {
        let r = put(upload_url.clone(), "audio/webm", other).await.unwrap();
        assert_eq!(r.status(), 415);
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["code"],
            "recording_format_mismatch"
        );
    }
    let r = finish().await.unwrap();
    assert_eq!(r.status(), 409, "nothing was stored");

    let r = put(
        upload_url.clone(),
        "audio/webm;codecs=opus",
        recording.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["sha256"],
        sha256(&recording)
    );
    // The same upload again is idempotent; a different one is refused.
    assert_eq!(
        put(upload_url.clone(), "audio/webm", recording.clone())
            .await
            .unwrap()
            .status(),
        200
    );
    let r = put(upload_url.clone(), "audio/webm", vec![9; 10])
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "already_uploaded"
    );

    let r = finish().await.unwrap();
    assert_eq!(r.status(), 200);
    let view: Value = r.json().await.unwrap();
    assert_eq!(view["status"], "finished");
    assert_eq!(view["mode"], "upload");
    assert_eq!(view["segments"][0]["sha256"], sha256(&recording));
    // Finishing twice is fine; cancelling a finished lecture is not.
    assert_eq!(finish().await.unwrap().status(), 200);
    let r = app
        .http
        .post(app.url(&format!("/api/v1/lectures/{lecture}/cancel")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    let followed = tokio::time::timeout(Duration::from_secs(10), async {
        follow.await.unwrap().unwrap().text().await.unwrap()
    })
    .await
    .expect("the SSE stream ends when the lecture does");
    let kinds: Vec<String> = followed
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["type"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    // Whether the upload landed before or after the feed read the log, every event comes once,
    // in order, and the stream ends with the lecture.
    let events_only: Vec<&str> = kinds
        .iter()
        .map(String::as_str)
        .filter(|k| *k != "caughtUp")
        .collect();
    assert_eq!(
        events_only,
        ["started", "segment", "state", ""],
        "{followed}"
    );
    assert_eq!(kinds.iter().filter(|k| *k == "caughtUp").count(), 1);
    assert!(followed.contains("\"state\":\"finished\""));

    let stored = app
        .http
        .get(app.url(&format!("/api/v1/lectures/{lecture}/segments/0")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.headers()["content-type"], "audio/webm");
    assert_eq!(stored.bytes().await.unwrap().to_vec(), recording);

    let sse = app
        .http
        .get(app.url(&format!("/api/v1/lectures/{lecture}/events")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let frames: Vec<Value> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let kinds: Vec<_> = frames
        .iter()
        .map(|f| f["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["started", "segment", "state", "caughtUp", ""]);
    assert!(sse.contains("event: end"));
}

async fn bad_input_gets_clear_errors_and_the_session_stays_open(db: &TestDb) {
    let app = spawn_app(db).await;
    let token = learner(&app).await;

    // No token, or a bad one: 401 before any upgrade.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/api/v1/live", app.addr))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let err = tokio_tungstenite::connect_async(format!("ws://{}/api/v1/live?token=x", app.addr))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    // The token in the query string works (browsers).
    let mut ws = Ws::open(format!("ws://{}/api/v1/live?token={token}", app.addr)).await;
    let cases = [
        (
            json!({"type": "start", "topicId": "no.such.topic", "format": "pcm_s16le"}),
            "unknown_topic",
        ),
        (
            json!({"type": "start", "topicId": TOPIC, "format": "flac"}),
            "unsupported_format",
        ),
        (
            json!({"type": "start", "topicId": TOPIC, "format": "pcm_s16le", "channels": 2}),
            "unsupported_format",
        ),
        (
            json!({"type": "start", "topicId": TOPIC, "format": "pcm_s16le", "language": "korean"}),
            "invalid_language",
        ),
        (json!({"type": "dance"}), "unknown_message_type"),
        (json!({"type": "start"}), "invalid_message"),
        (json!({"type": "finish"}), "no_lecture"),
        (
            json!({"type": "reconnect", "lectureId": uuid::Uuid::now_v7()}),
            "lecture_not_live",
        ),
    ];
    for (message, code) in cases {
        ws.send_json(message.clone()).await;
        let e = ws.error().await;
        assert_eq!(e["code"], code, "{message}: {e}");
        assert_eq!(e["fatal"], false);
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    ws.stream
        .send(tokio_tungstenite::tungstenite::Message::Text(
            "{not json".into(),
        ))
        .await
        .unwrap();
    assert_eq!(ws.error().await["code"], "invalid_message");
    ws.send_audio(1, &[0; 320]).await;
    assert_eq!(ws.error().await["code"], "no_lecture");
    // Still open: a ping gets its pong.
    ws.send_json(json!({"type": "ping", "nonce": 7})).await;
    let (pong, _) = ws.until("pong").await;
    assert_eq!(pong["nonce"], 7);

    let lecture = ws.start_pcm(TOPIC).await;
    ws.send_json(json!({"type": "start", "topicId": TOPIC, "format": "pcm_s16le"}))
        .await;
    let e = ws.error().await;
    assert_eq!(e["code"], "lecture_in_progress");
    assert_eq!(e["lectureId"], lecture.as_str());
    ws.send_audio(1, &[1; 3]).await;
    assert_eq!(ws.error().await["code"], "invalid_audio");
    ws.stream
        .send(tokio_tungstenite::tungstenite::Message::Binary(
            vec![0, 1].into(),
        ))
        .await
        .unwrap();
    assert_eq!(ws.error().await["code"], "invalid_audio");
    let audio = speech(300, 9);
    let pieces = chunks(&audio);
    ws.send_audio(1, &pieces[0]).await;
    ws.send_audio(3, &pieces[2]).await;
    let e = ws.error().await;
    assert_eq!(e["code"], "sequence_gap");
    assert_eq!(e["expectedSeq"], 2);
    ws.send_audio(2, &pieces[1]).await;
    ws.send_audio(2, &pieces[1]).await; // a duplicate: acknowledged, not stored twice
    ws.send_audio(3, &pieces[2]).await;
    ws.wait_ack(3).await;

    // A second live lecture for the same learner is refused, naming the first.
    let mut other = Ws::connect(&app, &token).await;
    other
        .send_json(json!({"type": "start", "topicId": TOPIC, "format": "pcm_s16le"}))
        .await;
    let e = other.error().await;
    assert_eq!(e["code"], "too_many_live_lectures");
    assert_eq!(e["lectureId"], lecture.as_str());
    // Another learner cannot take the lecture over.
    let stranger = learner(&app).await;
    let mut theirs = Ws::connect(&app, &stranger).await;
    theirs
        .send_json(json!({"type": "reconnect", "lectureId": lecture}))
        .await;
    assert_eq!(theirs.error().await["code"], "lecture_not_live");

    ws.send_json(json!({"type": "finish"})).await;
    let (state, _) = ws.until("state").await;
    assert_eq!(state["state"], "finished");
    ws.send_audio(4, &pieces[0]).await;
    let e = ws.error().await;
    assert_eq!(e["code"], "lecture_finished");
    let (_, pcm) = stored_pcm(&app, &token, &lecture).await;
    assert_eq!(pcm, audio, "refused frames changed nothing");

    // A frame over 64 KiB closes the connection with 1009; what was stored stays.
    let mut big = Ws::connect(&app, &token).await;
    big.start_pcm(TOPIC).await;
    big.send_audio(1, &vec![0; 70 * 1024]).await;
    assert_eq!(big.closed().await, 1009);
    let mut huge = Ws::connect(&app, &token).await;
    huge.stream
        .send(tokio_tungstenite::tungstenite::Message::Binary(
            vec![0; 2 * 1024 * 1024].into(),
        ))
        .await
        .ok();
    assert_eq!(huge.closed().await, 1009);
}

async fn a_lecture_at_the_maximum_length_is_finished_not_discarded(db: &TestDb) {
    let app = spawn_app_with(db, |c| c.lecture_max_secs = 2).await;
    let token = learner(&app).await;
    let mut ws = Ws::connect(&app, &token).await;
    let lecture = ws.start_pcm(TOPIC).await;
    let audio = speech(3_000, 6);
    let pieces = chunks(&audio);
    ws.send_chunks(1, &pieces).await;
    let (state, _) = ws.until("state").await;
    assert_eq!(state["state"], "finished");
    assert_eq!(state["reason"], "max_duration");
    assert_eq!(state["durationMs"], 2_000);
    let e = ws.error().await;
    assert_eq!(e["code"], "lecture_finished");
    let (view, pcm) = stored_pcm(&app, &token, &lecture).await;
    assert_eq!(
        pcm,
        audio[..20 * CHUNK_BYTES],
        "the audio up to the limit is all kept"
    );
    assert_contiguous(&view, 20);
}

async fn a_learner_who_does_not_come_back_has_the_lecture_abandoned_with_its_audio_kept(
    db: &TestDb,
) {
    let app = spawn_app_with(db, |c| c.resume_grace_secs = 1).await;
    let token = learner(&app).await;
    let mut ws = Ws::connect(&app, &token).await;
    let lecture = ws.start_pcm(TOPIC).await;
    let audio = speech(1_000, 7);
    ws.send_chunks(1, &chunks(&audio)).await;
    ws.wait_ack(10).await;
    drop(ws);
    let path = format!("/api/v1/lectures/{lecture}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let view = app.get_json(&path, Some(&token)).await;
        if view["status"] == "abandoned" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not abandoned: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (view, pcm) = stored_pcm(&app, &token, &lecture).await;
    assert_eq!(pcm, audio);
    assert_contiguous(&view, 10);
    // The slot is free again.
    let mut ws = Ws::connect(&app, &token).await;
    ws.start_pcm(TOPIC).await;
}

async fn a_container_recording_streams_in_and_is_stored_whole(db: &TestDb) {
    let app = spawn_app(db).await;
    let token = learner(&app).await;
    let mut ws = Ws::connect(&app, &token).await;
    ws.send_json(json!({"type": "start", "topicId": TOPIC, "format": "webm"}))
        .await;
    let (started, _) = ws.until("started").await;
    let lecture = started["lectureId"].as_str().unwrap().to_owned();
    assert_eq!(started["sampleRate"], Value::Null);
    let recording: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    for (i, c) in recording.chunks(4_001).enumerate() {
        ws.send_audio(i as u64 + 1, c).await;
    }
    let n = recording.len().div_ceil(4_001) as u64;
    ws.wait_ack(n).await;
    ws.send_json(json!({"type": "finish"})).await;
    let (state, before) = ws.until("state").await;
    assert_eq!(state["state"], "finished");
    let segment = before.iter().find(|f| f["type"] == "segment").unwrap();
    assert_eq!(segment["index"], 0);
    assert_eq!(segment["lastSeq"], n);
    let stored = segment_at(&app.http, &app.url(""), &token, &lecture, 0).await;
    assert_eq!(stored.to_vec(), recording);
    assert!(wav_pcm(&stored).is_none());
}
