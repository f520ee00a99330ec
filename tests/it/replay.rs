//! `teachback replay`: the frames a live watcher got, again, from the log.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use teachback::provider::fake::{FakeOpenAi, FakeOptions};
use teachback::replay::{self, Pace};
use tokio_tungstenite::tungstenite::Message;

use crate::live_support::{TOPIC, Ws, chunks, learner, speech};
use crate::sqlite_only;
use crate::support::{TestDb, spawn_app_with};

sqlite_only!(a_replay_sends_the_frames_a_live_watcher_got);

/// Every text frame of a watch socket until it closes.
async fn watch_all(url: &str) -> Vec<Value> {
    let (mut stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut frames = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("frames in time");
        match next {
            Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return frames,
            Some(Ok(_)) => {}
        }
    }
}

async fn a_replay_sends_the_frames_a_live_watcher_got(db: &TestDb) {
    let fake = FakeOpenAi::start(FakeOptions {
        stt_text: "TCP sets up a connection first.".into(),
        chunk_delay: Duration::from_millis(2),
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let url = fake.base_url();
    let app = spawn_app_with(db, move |c| {
        c.stt_url = Some(url.clone());
        c.llm_url = Some(url);
        c.vad_pause_ms = 500;
    })
    .await;
    let token = learner(&app).await;
    let mut ws = Ws::connect(&app, &token).await;
    let lecture = ws.start_pcm(TOPIC).await;
    // A watcher from the start, to the end.
    let watch_url = format!(
        "ws://{}/api/v1/lectures/{lecture}/watch?token={token}",
        app.addr
    );
    let watcher = tokio::spawn(async move { watch_all(&watch_url).await });
    // Two stretches of speech, so the watcher sees segments come in while the learner talks.
    let mut next = 1;
    for ms in [3_000u64, 2_000] {
        let pieces = chunks(&speech(ms, 3));
        ws.send_chunks(next, &pieces).await;
        next += pieces.len() as u64;
        ws.wait_ack(next - 1).await;
    }
    ws.send_json(json!({"type": "finish"})).await;
    ws.until("graded").await;
    let live: Vec<Value> = watcher
        .await
        .unwrap()
        .into_iter()
        .filter(|f| f["type"] != "caughtUp")
        .collect();
    let kinds: Vec<&str> = live.iter().map(|f| f["type"].as_str().unwrap()).collect();
    for kind in ["started", "segment", "transcript", "feedback", "graded"] {
        assert!(
            kinds.contains(&kind),
            "the watcher saw no {kind}: {kinds:?}"
        );
    }

    // The timeline from the log: the same frames, in the same order, at non-decreasing times.
    let events = app
        .state
        .store
        .read_stream_all(&format!("lecture-{lecture}"))
        .await
        .unwrap();
    let frames = replay::timeline(&events);
    let replayed: Vec<Value> = frames
        .iter()
        .map(|f| serde_json::from_str(&f.message.to_json()).unwrap())
        .collect();
    assert_eq!(replayed, live);
    assert!(frames.windows(2).all(|w| w[0].at <= w[1].at));
    let last = events.last().unwrap().recorded_at;
    let span = last.duration_since(events[0].recorded_at);
    assert_eq!(
        frames.last().unwrap().at.as_micros() as i128,
        span.as_micros()
    );

    // Served to an observer as a live watch: the same frames again.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lecture_id = lecture.parse().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(replay::serve(
        listener,
        lecture_id,
        frames.clone(),
        Pace::Speed(50.0),
        async {
            let _ = stopped.await;
        },
    ));
    let served = watch_all(&replay::watch_url(addr, lecture_id)).await;
    assert_eq!(served, live);
    let _ = stop.send(());
    server.await.unwrap().unwrap();

    // And printed by the CLI, as JSON lines with their times.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_teachback"))
        .args(["replay", &lecture, "--instant", "--json"])
        .env("TEACHBACK_DATABASE_URL", &db.url)
        .env("TEACHBACK_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let printed_frames: Vec<Value> = printed.iter().map(|l| l["frame"].clone()).collect();
    assert_eq!(printed_frames, live);
    let times: Vec<u64> = printed
        .iter()
        .map(|l| l["atMs"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = frames.iter().map(|f| f.at.as_millis() as u64).collect();
    assert_eq!(times, expected);
}
