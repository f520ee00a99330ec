//! Several `teachback` processes sharing one PostgreSQL database and one blob store behave as
//! one service: a lecture streaming into one instance is watched from another and resumed on
//! another after the learner's connection drops; rankings are pushed from every instance; one
//! instance at a time runs each projection, and when it is killed another takes over without
//! applying an event twice or skipping one (a rebuild from the log equals the live rows).
//!
//! PostgreSQL only (`TEACHBACK_TEST_POSTGRES_URL`); real processes on loopback ports.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use teachback::provider::fake::{FakeOpenAi, FakeOptions};
use tokio_tungstenite::tungstenite::Message;

use crate::live_support::{TOPIC, Ws, chunks, speech, stored_pcm_at};
use crate::process::{Server, free_port, signal, start_with};
use crate::support::TestDb;

const SECRET: &str = "instances-test-signing-secret-0123456789abcdef";

/// The database URL of a test schema, for another process.
fn schema_url(db: &TestDb) -> String {
    let schema = db
        .options
        .schema
        .as_deref()
        .expect("a PostgreSQL test schema");
    let sep = if db.url.contains('?') { '&' } else { '?' };
    format!("{}{sep}options=-c%20search_path%3D{schema}", db.url)
}

async fn instance(dir: &Path, db_url: &str, blobs: &Path, provider: Option<&str>) -> Server {
    std::fs::create_dir_all(dir).unwrap();
    let blobs = blobs.display().to_string();
    let mut env = vec![
        ("TEACHBACK_DATABASE_URL", db_url),
        ("TEACHBACK_JWT_SECRET", SECRET),
        ("TEACHBACK_BLOB_URL", blobs.as_str()),
        ("TEACHBACK_VAD_PAUSE_MS", "500"),
        ("TEACHBACK_POLL_INTERVAL_MS", "50"),
        ("TEACHBACK_LOG", "info"),
    ];
    if let Some(url) = provider {
        env.push(("TEACHBACK_STT_URL", url));
        env.push(("TEACHBACK_LLM_URL", url));
    }
    start_with(dir, free_port(), &env).await
}

fn host(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// Every text frame of a watch socket until it closes.
async fn watch_all(url: String) -> Vec<Value> {
    let (mut stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut frames = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("watch frames in time");
        match next {
            Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return frames,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lecture_is_watched_and_resumed_across_instances_and_rankings_are_pushed_from_each() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let fake = FakeOpenAi::start(FakeOptions {
        stt_text: "TCP sets up a connection first.".into(),
        chunk_delay: Duration::from_millis(2),
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let url = schema_url(&db);
    let blobs = root.path().join("audio");
    let provider = fake.base_url();
    let a = instance(&root.path().join("a"), &url, &blobs, Some(&provider)).await;
    let b = instance(&root.path().join("b"), &url, &blobs, Some(&provider)).await;
    let http = reqwest::Client::new();

    let token = a.register().await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let me: Value = http
        .get(format!("{}/api/v1/me", b.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user_id = me["userId"]
        .as_str()
        .expect("instance B knows the learner A registered")
        .to_owned();

    // B's ranking board, built, and its live feed.
    let board: Value = http
        .get(format!("{}/api/v1/rankings?period=all", b.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(board["total"], 0);
    let mut feed = http
        .get(format!("{}/api/v1/rankings/live?period=all", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);

    // The learner speaks into A; an observer watches from B.
    let first = speech(3_000, 5);
    let second = speech(2_000, 6);
    let mut all = first.clone();
    all.extend_from_slice(&second);
    let pieces = chunks(&all);
    let split = chunks(&first).len();
    let mut ws = Ws::connect_to(&host(&a), &token).await;
    let lecture = ws.start_pcm(TOPIC).await;
    let watcher = tokio::spawn(watch_all(format!(
        "ws://{}/api/v1/lectures/{lecture}/watch?token={token}",
        host(&b)
    )));
    ws.send_chunks(1, &pieces[..split]).await;
    ws.wait_ack(split as u64).await;
    // The connection to A drops.
    drop(ws);

    // The learner comes back through B and carries on where A's acknowledgements ended.
    let mut ws = Ws::connect_to(&host(&b), &token).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let answer = loop {
        ws.send_json(json!({"type": "reconnect", "lectureId": lecture}))
            .await;
        let v = loop {
            let v = ws.next_json().await;
            if v["type"] == "reconnected" || v["type"] == "error" {
                break v;
            }
        };
        if v["type"] == "reconnected" {
            break v;
        }
        assert_eq!(v["code"], "lecture_elsewhere", "{v}");
        assert!(v["retryAfterSecs"].as_u64().is_some());
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never let the lecture go"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        answer["lastSeq"], split as u64,
        "everything A acknowledged is stored: {answer}"
    );
    ws.send_chunks(split as u64 + 1, &pieces[split..]).await;
    ws.wait_ack(pieces.len() as u64).await;
    ws.send_json(json!({"type": "finish"})).await;
    ws.until("graded").await;

    // Nothing lost, nothing doubled, wherever it was read from.
    for server in [&a, &b] {
        let (view, pcm) = stored_pcm_at(&http, &server.base, &token, &lecture).await;
        assert_eq!(pcm, all, "the stored audio is what was sent");
        crate::live_support::assert_contiguous(&view, pieces.len() as u64);
    }

    // A let the lecture go when the connection dropped, with everything it had acknowledged.
    let events = db
        .store()
        .await
        .read_stream_all(&format!("lecture-{lecture}"))
        .await
        .unwrap();
    let released: Vec<&teachback_events::RecordedEvent> = events
        .iter()
        .filter(|e| e.event_type == "LectureReleased")
        .collect();
    assert_eq!(released.len(), 1, "one hand-over");
    assert_eq!(released[0].payload["lastSeq"], split as u64);

    // The observer on B saw the lecture streaming into A, then the rest.
    let frames = watcher.await.unwrap();
    let kinds: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
    for kind in ["started", "segment", "transcript", "graded"] {
        assert!(
            kinds.contains(&kind),
            "the watcher on B saw no {kind}: {kinds:?}"
        );
    }

    // A second lecture, left on A by a dropped connection, is finished over REST through B.
    let mut ws = Ws::connect_to(&host(&a), &token).await;
    let other = ws.start_pcm(TOPIC).await;
    let few = chunks(&speech(1_000, 9));
    ws.send_chunks(1, &few).await;
    ws.wait_ack(few.len() as u64).await;
    drop(ws);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let finished = loop {
        let r = http
            .post(format!("{}/api/v1/lectures/{other}/finish", b.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        if status == 200 {
            break body;
        }
        assert_eq!(body["error"]["code"], "lecture_elsewhere", "{body}");
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(finished["status"], "finished");
    let (_, pcm) = stored_pcm_at(&http, &b.base, &token, &other).await;
    assert_eq!(
        pcm,
        few.concat(),
        "what A acknowledged was stored before B finished it"
    );

    // B's live ranking feed tells of the grade (graded wherever the pipeline ran).
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !text
        .split("\n\n")
        .any(|e| e.contains("event: ranking") && e.contains(&user_id))
    {
        let chunk = tokio::time::timeout_at(deadline, feed.chunk())
            .await
            .expect("no ranking event on B")
            .unwrap()
            .expect("feed ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(feed);
    drop(a);
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    db.cleanup().await;
}

/// Every row of every read-model table, as JSON text, sorted.
async fn read_models(db: &teachback::db::Db) -> Vec<String> {
    let projectors =
        teachback::app::projectors(&teachback::config::Config::defaults().tz().unwrap());
    let mut rows = Vec::new();
    let teachback::db::Db::Postgres(pool) = db else {
        unreachable!("PostgreSQL only");
    };
    for projector in &projectors {
        for table in projector.tables() {
            let part: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT to_jsonb(t)::text FROM {table} t ORDER BY 1"
            ))
            .fetch_all(pool)
            .await
            .unwrap();
            rows.extend(part.into_iter().map(|r| format!("{table}|{r}")));
        }
    }
    rows.sort();
    rows
}

/// Which instance leads the users projection, from its metrics.
async fn leads(server: &Server) -> bool {
    let text = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .any(|l| l.starts_with("teachback_projection_leader{projection=\"users.v1\"} 1"))
}

async fn graded_text_lecture(http: &reqwest::Client, base: &str, token: &str, text: &str) {
    let created: Value = http
        .post(format!("{base}/api/v1/lectures"))
        .bearer_auth(token)
        .json(&json!({"topicId": TOPIC, "text": text, "language": "en"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["lectureId"].as_str().expect("a lecture").to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let view: Value = http
            .get(format!("{base}/api/v1/lectures/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if view["processing"] == "graded" {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "not graded: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_projection_leader_hands_every_projection_over_without_gaps_or_doubles() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let url = schema_url(&db);
    let blobs = root.path().join("audio");
    let first = instance(&root.path().join("a"), &url, &blobs, None).await;
    let second = instance(&root.path().join("b"), &url, &blobs, None).await;
    let http = reqwest::Client::new();
    // Exactly one of them leads.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (leader, follower) = loop {
        match (leads(&first).await, leads(&second).await) {
            (true, false) => break (first, second),
            (false, true) => break (second, first),
            (true, true) => panic!("two leaders of one projection"),
            (false, false) => {
                assert!(tokio::time::Instant::now() < deadline, "no leader");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    // Traffic through both while the leader lives: the follower reads its own writes.
    let mut tokens = Vec::new();
    for server in [&leader, &follower, &follower] {
        let token = server.register().await["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        let me = http
            .get(format!("{}/api/v1/me", follower.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), 200);
        graded_text_lecture(
            &http,
            &follower.base,
            &token,
            "TCP retransmits; UDP does not.",
        )
        .await;
        tokens.push(token);
    }

    // The leader dies mid-traffic.
    let writer = {
        let base = follower.base.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut made = Vec::new();
            for i in 0..10 {
                let r: Value = http
                    .post(format!("{base}/api/v1/devices"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let token = r["accessToken"].as_str().unwrap().to_owned();
                if i % 3 == 0 {
                    graded_text_lecture(&http, &base, &token, "DNS maps names to addresses.").await;
                }
                made.push(token);
            }
            made
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    signal(&leader.child, "-KILL");
    let made = writer.await.unwrap();
    drop(leader);

    // The survivor took every projection over: its reads see everything written after the kill.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !leads(&follower).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody took the lead"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for token in tokens.iter().chain(&made) {
        let me = http
            .get(format!("{}/api/v1/me", follower.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), 200);
    }
    let stats: Value = http
        .get(format!("{}/api/v1/me/stats", follower.base))
        .bearer_auth(&tokens[0])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["lecturesGraded"], 1);

    // Every projection's checkpoint reaches the head, and a rebuild from the log gives the
    // very rows the live runners wrote across the hand-over.
    let store = db.store().await;
    let head = store.head().await.unwrap();
    let projectors =
        teachback::app::projectors(&teachback::config::Config::defaults().tz().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for projector in &projectors {
        while teachback::projection::load_checkpoint(&db.db, projector.name())
            .await
            .unwrap()
            < head
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} is stuck",
                projector.name()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Stop the survivor so nothing moves while the rows are compared.
    signal(&follower.child, "-TERM");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let live = read_models(&db.db).await;
    assert!(live.iter().filter(|r| r.starts_with("users|")).count() == 3 + made.len());
    for projector in &projectors {
        teachback::projection::ops::rebuild(&db.db, &store, &**projector, &|_| {})
            .await
            .unwrap();
    }
    assert_eq!(read_models(&db.db).await, live);
    drop(follower);
    db.cleanup().await;
}

/// A rolling deploy: the instance a learner is recording on is stopped (SIGTERM); it stores what
/// it acknowledged and lets the lecture go before it exits, and the learner carries on through
/// the other instance without losing or doubling audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lecture_survives_its_instance_being_stopped_for_a_deploy() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let url = schema_url(&db);
    let blobs = root.path().join("audio");
    let mut old = instance(&root.path().join("old"), &url, &blobs, None).await;
    let new = instance(&root.path().join("new"), &url, &blobs, None).await;
    let http = reqwest::Client::new();
    let token = old.register().await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let audio = speech(4_000, 8);
    let pieces = chunks(&audio);
    let split = pieces.len() / 2;
    let mut ws = Ws::connect_to(&host(&old), &token).await;
    let lecture = ws.start_pcm(TOPIC).await;
    ws.send_chunks(1, &pieces[..split]).await;
    ws.wait_ack(split as u64).await;

    // The deploy stops the old instance: the learner's socket is closed with 1012.
    signal(&old.child, "-TERM");
    assert_eq!(ws.closed().await, 1012);
    let status = tokio::time::timeout(Duration::from_secs(30), old.child.wait())
        .await
        .expect("the old instance exits")
        .unwrap();
    assert!(status.success());

    let mut ws = Ws::connect_to(&host(&new), &token).await;
    ws.send_json(json!({"type": "reconnect", "lectureId": lecture}))
        .await;
    let (answer, _) = ws.until("reconnected").await;
    assert_eq!(answer["lastSeq"], split as u64, "{answer}");
    ws.send_chunks(split as u64 + 1, &pieces[split..]).await;
    ws.wait_ack(pieces.len() as u64).await;
    ws.send_json(json!({"type": "finish"})).await;
    let (state, _) = ws.until("state").await;
    assert_eq!(state["state"], "finished");
    let (view, pcm) = stored_pcm_at(&http, &new.base, &token, &lecture).await;
    assert_eq!(pcm, audio);
    crate::live_support::assert_contiguous(&view, pieces.len() as u64);
    drop(new);
    drop(old);
    db.cleanup().await;
}
