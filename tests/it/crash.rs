//! SIGKILL the real server while 20 lectures stream; restart it; every acknowledged chunk is in
//! storage and in the log, and every learner resumes where the server says and finishes with
//! exactly the audio it sent.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::live_support::{
    CHUNK_BYTES, TOPIC, Ws, assert_contiguous, chunks, frame, sha256, speech, stored_pcm_at,
    view_at,
};
use crate::process::{free_port, signal};

const BIN: &str = env!("CARGO_BIN_EXE_teachback");
const LECTURES: usize = 20;
/// Chunks per lecture: 8 s of audio.
const CHUNKS: usize = 80;

/// Registers a learner; returns its access token.
async fn register(http: &reqwest::Client, host: &str) -> String {
    let body: Value = http
        .post(format!("http://{host}/api/v1/devices"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["accessToken"].as_str().unwrap().to_owned()
}

async fn start(cwd: &Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cwd.join("server.log"))
        .unwrap();
    let child = Command::new(BIN)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TEACHBACK_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && r.status() == 200
        {
            return child;
        }
        assert!(Instant::now() < deadline, "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Streams chunks until the connection breaks; returns the highest acknowledged sequence.
async fn stream_until_killed(mut ws: Ws, pieces: Vec<Vec<u8>>) -> u64 {
    let mut acked = 0;
    for (i, piece) in pieces.iter().enumerate() {
        if ws
            .stream
            .send(Message::Binary(frame(i as u64 + 1, piece).into()))
            .await
            .is_err()
        {
            break;
        }
        // Read whatever arrived meanwhile, pacing the stream at about 10 ms per chunk.
        let pause = tokio::time::sleep(Duration::from_millis(10));
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                next = ws.stream.next() => match next {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        if v["type"] == "ack" {
                            acked = acked.max(v["seq"].as_u64().unwrap());
                        }
                    }
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => return acked,
                }
            }
        }
    }
    // Everything was sent before the kill: wait for the connection to break.
    while let Some(Ok(message)) = ws.stream.next().await {
        if let Message::Text(t) = message {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "ack" {
                acked = acked.max(v["seq"].as_u64().unwrap());
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_twenty_lectures_stream_loses_no_acknowledged_audio() {
    let cwd = tempfile::tempdir().unwrap();
    let port = free_port();
    let host = format!("127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut server = start(cwd.path(), port).await;

    let mut learners = Vec::new();
    for i in 0..LECTURES {
        let token = register(&http, &host).await;
        let mut ws = Ws::connect_to(&host, &token).await;
        let lecture = ws.start_pcm(TOPIC).await;
        let audio = speech(CHUNKS as u64 * 100, i as u32 * 37);
        learners.push((token, lecture, audio, ws));
    }
    let mut streams = Vec::new();
    let mut rest = Vec::new();
    for (token, lecture, audio, ws) in learners {
        streams.push(tokio::spawn(stream_until_killed(ws, chunks(&audio))));
        rest.push((token, lecture, audio));
    }
    // Let the lectures get well under way (segments stored, chunks in the WAL), then kill.
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(&server, "-KILL");
    server.wait().await.unwrap();
    let mut acked = Vec::new();
    for s in streams {
        acked.push(s.await.unwrap());
    }
    assert!(
        acked.iter().filter(|a| **a > 0).count() >= LECTURES / 2,
        "most lectures had acknowledged audio when killed: {acked:?}"
    );
    assert!(
        acked.iter().any(|a| (*a as usize) < CHUNKS),
        "the kill landed mid-stream: {acked:?}"
    );

    let _server = start(cwd.path(), port).await;
    let base = format!("http://{host}");
    let mut from_wal = 0;
    for ((token, lecture, audio), acked) in rest.iter().zip(&acked) {
        // What the log held in segments when the server came back...
        let before = view_at(&http, &base, token, lecture).await;
        assert_eq!(before["status"], "recording", "{before}");
        let in_segments = before["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["lastSeq"].as_u64().unwrap())
            .max()
            .unwrap_or(0);
        // ...and what the server holds, the open segment recovered from the audio WAL included.
        let mut ws = Ws::connect_to(&host, token).await;
        ws.send_json(json!({"type": "reconnect", "lectureId": lecture}))
            .await;
        let (answer, _) = ws.until("reconnected").await;
        let last = answer["lastSeq"].as_u64().unwrap();
        assert!(
            last >= *acked,
            "lecture {lecture}: acknowledged {acked} but the server kept only {last}"
        );
        assert!(last >= in_segments);
        if last > in_segments {
            from_wal += 1;
        }
        // Resume: resend only what is missing, then finish.
        let pieces = chunks(audio);
        for seq in last + 1..=pieces.len() as u64 {
            ws.send_audio(seq, &pieces[seq as usize - 1]).await;
        }
        ws.wait_ack(pieces.len() as u64).await;
        ws.send_json(json!({"type": "finish"})).await;
        let (state, _) = ws.until("state").await;
        assert_eq!(state["state"], "finished", "{state}");

        let (view, stored) = stored_pcm_at(&http, &base, token, lecture).await;
        assert_contiguous(&view, CHUNKS as u64);
        assert_eq!(stored.len(), CHUNKS * CHUNK_BYTES);
        assert_eq!(
            sha256(&stored),
            sha256(audio),
            "lecture {lecture}: nothing lost, nothing doubled"
        );
    }
    assert!(
        from_wal > 0,
        "some lectures had acknowledged audio only in the WAL when killed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_live_connections_with_1012_and_the_lecture_resumes_after_restart() {
    let cwd = tempfile::tempdir().unwrap();
    let port = free_port();
    let host = format!("127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut server = start(cwd.path(), port).await;
    let token = register(&http, &host).await;
    let mut ws = Ws::connect_to(&host, &token).await;
    let lecture = ws.start_pcm(TOPIC).await;
    let audio = speech(1_000, 3);
    let pieces = chunks(&audio);
    for (i, c) in pieces.iter().enumerate() {
        ws.send_audio(i as u64 + 1, c).await;
    }
    ws.wait_ack(10).await;

    signal(&server, "-TERM");
    assert_eq!(ws.closed().await, 1012, "clients are told to reconnect");
    assert!(server.wait().await.unwrap().success());

    let _server = start(cwd.path(), port).await;
    let mut ws = Ws::connect_to(&host, &token).await;
    ws.send_json(json!({"type": "reconnect", "lectureId": lecture}))
        .await;
    let (answer, _) = ws.until("reconnected").await;
    assert_eq!(answer["lastSeq"], 10);
    ws.send_json(json!({"type": "finish"})).await;
    let (state, _) = ws.until("state").await;
    assert_eq!(state["state"], "finished");
    assert_eq!(state["durationMs"], 1_000);
}
