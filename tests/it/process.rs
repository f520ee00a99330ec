//! The real `teachback` binary as a process: zero-config start, SIGTERM and SIGKILL, the CLI.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use teachback_events::RecordedEvent;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_teachback");

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary with a clean environment: no TEACHBACK_* variable leaks in from the test run.
pub(crate) fn teachback(cwd: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // These tests drive one server hard from one address; limits are tested in limits.rs.
        .env("TEACHBACK_RATE_LIMITS", "off")
        .env("TEACHBACK_QUOTA_LECTURES_PER_DAY", "0")
        .env("TEACHBACK_QUOTA_AUDIO_MINUTES_PER_DAY", "0")
        .env("TEACHBACK_QUOTA_LLM_TOKENS_PER_DAY", "0");
    // Logs go to a file: an unread pipe would fill up and block the server mid-request.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cwd.join("server.log"))
        .unwrap();
    cmd.stdout(Stdio::piped()).stderr(log).kill_on_drop(true);
    cmd
}

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
}

impl Server {
    /// Registers a device; the credentials body.
    pub(crate) async fn register(&self) -> Value {
        let response = reqwest::Client::new()
            .post(format!("{}/api/v1/devices", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }
}

async fn start(cwd: &Path, port: u16) -> Server {
    start_with(cwd, port, &[]).await
}

/// Starts the server with these extra environment variables and waits until it is ready.
pub(crate) async fn start_with(cwd: &Path, port: u16, env: &[(&str, &str)]) -> Server {
    let child = teachback(cwd)
        .env("TEACHBACK_ADDR", format!("127.0.0.1:{port}"))
        .envs(env.iter().copied())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server { child, base }
}

pub(crate) fn signal(child: &Child, sig: &str) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

pub(crate) async fn tail(cwd: &Path, args: &[&str]) -> Vec<RecordedEvent> {
    let out = teachback(cwd)
        .args(["events", "tail"])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is one JSON event"))
        .collect()
}

/// Registers devices as fast as it can until told to stop; returns the learners it was told
/// were created. `done` counts acknowledged registrations across all clients.
async fn register_until(
    base: String,
    stop: tokio::sync::watch::Receiver<bool>,
    done: Arc<AtomicUsize>,
) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut created = Vec::new();
    while !*stop.borrow() {
        match http.post(format!("{base}/api/v1/devices")).send().await {
            Ok(r) if r.status() == 201 => {
                if let Ok(body) = r.json::<Value>().await {
                    created.push(body["userId"].as_str().unwrap().to_owned());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(r) => panic!("a registration failed with {}", r.status()),
            // The server went away (it was killed): stop.
            Err(_) => break,
        }
    }
    created
}

/// Starts 16 registering clients and waits until the server has acknowledged at least 50
/// registrations (on a loaded machine the first ones can take a while), so that a signal sent
/// next lands while requests are in flight.
async fn registering(
    base: &str,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    let done = Arc::new(AtomicUsize::new(0));
    let clients = (0..16)
        .map(|_| tokio::spawn(register_until(base.to_owned(), stop.clone(), done.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::Relaxed) < 50 {
        assert!(
            Instant::now() < deadline,
            "no registrations were acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    clients
}

#[tokio::test]
async fn the_binary_serves_with_no_configuration_and_keeps_its_files_in_data() {
    let cwd = tempfile::tempdir().unwrap();
    let mut server = start(cwd.path(), free_port()).await;
    assert!(cwd.path().join("data/teachback.db").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let secret = std::fs::metadata(cwd.path().join("data/jwt-secret")).unwrap();
        assert_eq!(secret.permissions().mode() & 0o777, 0o600);
        let dir = std::fs::metadata(cwd.path().join("data")).unwrap();
        assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    }
    let health: Value = reqwest::get(format!("{}/healthz", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    signal(&server.child, "-TERM");
    let out = server.child.wait().await.unwrap();
    assert!(out.success());
    // The secret never reaches the logs.
    let stderr = std::fs::read_to_string(cwd.path().join("server.log")).unwrap();
    let secret = std::fs::read_to_string(cwd.path().join("data/jwt-secret")).unwrap();
    assert!(!stderr.contains(secret.trim()));
    assert!(stderr.contains("shut down cleanly"), "{stderr}");
}

#[tokio::test]
async fn sigterm_lets_in_flight_registrations_finish_and_loses_none() {
    let cwd = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start(cwd.path(), port).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let clients = registering(&server.base, &stop).await;
    signal(&server.child, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), server.child.wait())
        .await
        .expect("the server did not stop within 30 s of SIGTERM")
        .unwrap();
    stop_tx.send_replace(true);
    assert!(status.success(), "SIGTERM should end the server cleanly");
    let mut created = Vec::new();
    for c in clients {
        created.extend(c.await.unwrap());
    }
    assert!(!created.is_empty());

    let events = tail(cwd.path(), &[]).await;
    let registered: std::collections::HashSet<String> = events
        .iter()
        .filter(|e| e.event_type == "DeviceRegistered")
        .map(|e| e.payload["userId"].as_str().unwrap().to_owned())
        .collect();
    for user in &created {
        assert!(
            registered.contains(user),
            "learner {user} was acknowledged but is not in the log"
        );
    }
}

#[tokio::test]
async fn sigterm_ends_open_event_streams_and_exits_promptly() {
    let cwd = tempfile::tempdir().unwrap();
    let mut server = start(cwd.path(), free_port()).await;
    let http = reqwest::Client::new();
    let device = server.register().await;
    let token = device["accessToken"].as_str().unwrap();
    let lecture: Value = http
        .post(format!("{}/api/v1/lectures", server.base))
        .bearer_auth(token)
        .json(&serde_json::json!({"topicId": "cs.networking.dns", "format": "wav"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Two followers that never end by themselves: the live ranking feed and a lecture's events
    // (an upload still waiting for its recording).
    let feeds = [
        format!("{}/api/v1/rankings/live", server.base),
        format!(
            "{}/api/v1/lectures/{}/events?token={token}",
            server.base,
            lecture["lectureId"].as_str().unwrap()
        ),
    ];
    let mut open = Vec::new();
    for url in feeds {
        let response = http.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        open.push(response);
    }
    signal(&server.child, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("open event streams kept the server from stopping")
        .unwrap();
    assert!(status.success());
    // The streams ended (rather than being cut mid-event): reading them to the end succeeds.
    for response in open {
        tokio::time::timeout(Duration::from_secs(5), response.bytes())
            .await
            .expect("the stream did not end")
            .unwrap();
    }
}

#[tokio::test]
async fn sigkill_mid_traffic_loses_nothing_acknowledged_and_the_projection_catches_up() {
    let cwd = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start(cwd.path(), port).await;
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let clients = registering(&server.base, &stop).await;
    signal(&server.child, "-KILL");
    server.child.wait().await.unwrap();
    let mut created = Vec::new();
    for c in clients {
        created.extend(c.await.unwrap());
    }
    assert!(!created.is_empty());

    // Restart on the same data dir: every acknowledged learner is in the log and, once ready,
    // in the read model, exactly as a fold of the log says.
    let server = start(cwd.path(), port).await;
    let events = tail(cwd.path(), &[]).await;
    let mut view = teachback_projections::users::UsersView::default();
    for e in &events {
        view.apply(e).unwrap();
    }
    let in_log: std::collections::HashSet<String> =
        view.users.keys().map(|u| u.to_string()).collect();
    for user in &created {
        assert!(
            in_log.contains(user),
            "learner {user} was acknowledged but is not in the log"
        );
    }
    let ready: Value = reqwest::get(format!("{}/readyz", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    let url = format!(
        "sqlite://{}",
        cwd.path().join("data/teachback.db").display()
    );
    let db = teachback::db::Db::connect(&url, &Default::default())
        .await
        .unwrap();
    let head = events.last().unwrap().position;
    let deadline = Instant::now() + Duration::from_secs(10);
    while teachback::projection::load_checkpoint(&db, teachback_projections::users::NAME)
        .await
        .unwrap()
        < head
    {
        assert!(
            Instant::now() < deadline,
            "the users projection did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows = teachback::projection::users::all_users(&db).await.unwrap();
    assert_eq!(rows.len(), view.users.len());
    for row in rows {
        assert_eq!(view.users[&row.user_id].name, row.name);
    }
}

#[tokio::test]
async fn events_tail_prints_the_log_in_order_from_a_position_and_follows() {
    let cwd = tempfile::tempdir().unwrap();
    let server = start(cwd.path(), free_port()).await;
    let http = reqwest::Client::new();
    for _ in 0..5 {
        assert_eq!(
            http.post(format!("{}/api/v1/devices", server.base))
                .send()
                .await
                .unwrap()
                .status(),
            201
        );
    }
    let all = tail(cwd.path(), &[]).await;
    let learners = all.iter().filter(|e| e.stream != "catalog").count();
    assert_eq!(
        learners, 10,
        "each registration is a DeviceRegistered and a UsernameClaimed"
    );
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    let from = all[4].position;
    let rest = tail(cwd.path(), &["--from", &from.to_string()]).await;
    assert_eq!(rest, all[4..]);
    let users = tail(cwd.path(), &["--stream-prefix", "user-"]).await;
    assert_eq!(users.len(), 5);
    assert!(users.iter().all(|e| e.event_type == "DeviceRegistered"));

    // --follow prints events committed after it started.
    let mut follower = teachback(cwd.path())
        .args([
            "events",
            "tail",
            "--follow",
            "--from",
            &(all.last().unwrap().position + 1).to_string(),
        ])
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        follower.stdout.take().unwrap(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let created = server.register().await;
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let event: RecordedEvent = serde_json::from_str(&line).unwrap();
    assert_eq!(event.payload["userId"], created["userId"]);
    follower.kill().await.unwrap();
}

/// Runs a CLI command to completion and returns its stdout, asserting it succeeded.
async fn run_cli(cwd: &Path, args: &[&str]) -> String {
    let out = teachback(cwd).args(args).output().await.unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn projections_are_rebuilt_by_the_cli_while_the_server_keeps_serving() {
    let cwd = tempfile::tempdir().unwrap();
    let server = start(cwd.path(), free_port()).await;
    let http = reqwest::Client::new();
    let register = || async {
        let r = http
            .post(format!("{}/api/v1/devices", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()
    };
    for _ in 0..3 {
        register().await;
    }
    // status: every projection, none behind once caught up
    let status: Value =
        serde_json::from_str(&run_cli(cwd.path(), &["projections", "status", "--json"]).await)
            .unwrap();
    let names: Vec<&str> = status["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "users.v1",
            "topics.v1",
            "lectures.v1",
            "learning.v1@UTC",
            "notifications.v1",
            "usage.v1@UTC"
        ]
    );
    // rebuild every projection in one pass while the server runs
    let rebuilt: Value =
        serde_json::from_str(&run_cli(cwd.path(), &["projections", "rebuild", "--json"]).await)
            .unwrap();
    assert_eq!(rebuilt.as_array().unwrap().len(), 6);
    assert!(rebuilt[0]["events"].as_u64().unwrap() >= 6);
    // the server still serves the learners, old and new, from the swapped-in tables
    let learner = register().await;
    let me = http
        .get(format!("{}/api/v1/me", server.base))
        .bearer_auth(learner["accessToken"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    // a rebuild of another time zone's learning projection is refused without --force
    let out = teachback(cwd.path())
        .args(["projections", "rebuild", "learning"])
        .env("TEACHBACK_TIME_ZONE", "Asia/Seoul")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("learning.v1@UTC"), "{stderr}");
    // an unknown projection is named as such
    let out = teachback(cwd.path())
        .args(["projections", "rebuild", "nope"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no projection called `nope`"));
    drop(server);
}

/// No secret of the configuration and no credential a client sends reaches the log, at debug
/// level, through startup, requests with tokens in headers and query strings, the admin
/// endpoints, a refresh, and provider calls that fail.
#[tokio::test]
async fn secrets_and_credentials_never_reach_the_log() {
    let cwd = tempfile::tempdir().unwrap();
    let secrets = [
        ("TEACHBACK_ADMIN_TOKEN", "admin-secret-7f3a9c1e5b2d4f60a8c3"),
        (
            "TEACHBACK_JWT_SECRET",
            "jwt-secret-0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a",
        ),
        (
            "TEACHBACK_LLM_API_KEY",
            "sk-llm-secret-4b6d8f0a2c4e6a8c0e2a",
        ),
        (
            "TEACHBACK_STT_API_KEY",
            "sk-stt-secret-9a7c5e3a1c9e7a5c3e1a",
        ),
        (
            "TEACHBACK_NOTIFY_WEBHOOK_SECRET",
            "webhook-secret-5e4d3c2b1a0f9e8d7c6b5a4f",
        ),
    ];
    let port = free_port();
    let mut env: Vec<(&str, &str)> = secrets.to_vec();
    env.extend([
        ("TEACHBACK_LOG", "debug"),
        // Providers that refuse connections: their failures are logged.
        ("TEACHBACK_LLM_URL", "http://127.0.0.1:9/v1"),
        ("TEACHBACK_STT_URL", "http://127.0.0.1:9/v1"),
        ("TEACHBACK_PROVIDER_RETRIES", "0"),
        ("TEACHBACK_NOTIFY_WEBHOOK_URL", "http://127.0.0.1:9/hook"),
    ]);
    let mut server = start_with(cwd.path(), port, &env).await;
    let http = reqwest::Client::new();
    let learner = server.register().await;
    let access = learner["accessToken"].as_str().unwrap().to_owned();
    let device = learner["deviceToken"].as_str().unwrap().to_owned();
    let base = &server.base;
    // A token in a query string, on a path that exists and one that does not.
    let missing = uuid::Uuid::now_v7();
    for path in [
        format!("/api/v1/lectures/{missing}/events?token={access}"),
        format!("/api/v1/nowhere?token={access}&share={access}"),
    ] {
        let _ = http.get(format!("{base}{path}")).send().await.unwrap();
    }
    let refreshed: Value = http
        .post(format!("{base}/api/v1/auth/refresh"))
        .json(&json!({ "deviceToken": device }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fresh = refreshed["accessToken"].as_str().unwrap().to_owned();
    for token in [secrets[0].1, "a-wrong-admin-token"] {
        let _ = http
            .get(format!("{base}/api/v1/admin/projections"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
    }
    // A text lecture: grading calls the (unreachable) model with its key, fails, and the rubric
    // stands in.
    let lecture: Value = http
        .post(format!("{base}/api/v1/lectures"))
        .bearer_auth(&fresh)
        .json(&json!({"topicId": "cs.networking.tcp-vs-udp", "text": "TCP retransmits; UDP does not."}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = lecture["lectureId"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view: Value = http
            .get(format!("{base}/api/v1/lectures/{id}"))
            .bearer_auth(&fresh)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if view["processing"] == "graded" {
            break;
        }
        assert!(Instant::now() < deadline, "not graded: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&server.child, "-TERM");
    assert!(server.child.wait().await.unwrap().success());
    let log = std::fs::read_to_string(cwd.path().join("server.log")).unwrap();
    assert!(log.contains("grading with the model failed"), "{log}");
    assert!(
        log.contains("/api/v1/nowhere"),
        "requests are logged: {log}"
    );
    for (name, secret) in secrets {
        assert!(!log.contains(secret), "{name} is in the log");
    }
    for (what, credential) in [
        ("an access token", access.as_str()),
        ("a refreshed access token", fresh.as_str()),
        ("a device token", device.as_str()),
    ] {
        assert!(!log.contains(credential), "{what} is in the log");
    }
}

/// `teachback export` and `teachback import` as a support engineer runs them: a server's log
/// into a file, into a new data directory, out again unchanged; a second import is refused.
#[tokio::test]
async fn export_and_import_move_a_log_to_a_new_data_directory() {
    let cwd = tempfile::tempdir().unwrap();
    let mut server = start(cwd.path(), free_port()).await;
    for _ in 0..5 {
        server.register().await;
    }
    signal(&server.child, "-TERM");
    assert!(server.child.wait().await.unwrap().success());

    let file = cwd.path().join("log.jsonl");
    let file = file.to_str().unwrap();
    let summary: Value =
        serde_json::from_str(&run_cli(cwd.path(), &["export", "--out", file, "--json"]).await)
            .unwrap();
    assert!(summary["events"].as_u64().unwrap() >= 10, "{summary}");
    let exported = std::fs::read(file).unwrap();

    let moved = tempfile::tempdir().unwrap();
    let data = moved.path().join("data");
    let data = data.to_str().unwrap();
    let import = |args: Vec<&str>| {
        let mut cmd = teachback(moved.path());
        cmd.env("TEACHBACK_DATA_DIR", data).args(args);
        cmd
    };
    let out = import(vec!["import", file, "--json"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let imported: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(imported["events"], summary["events"]);
    assert_eq!(imported["lastPosition"], summary["lastPosition"]);

    let again = moved.path().join("again.jsonl");
    let out = import(vec!["export", "--out", again.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(
        std::fs::read(&again).unwrap() == exported,
        "the log changed on the way"
    );

    let out = import(vec!["import", file]).output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not empty"), "{stderr}");
}

/// `teachback regrade --json` beside a stopped server: a lecture whose audio was never
/// transcribed (no speech-to-text then) is transcribed from its sealed audio and graded; every
/// frame is a JSON line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regrade_reads_sealed_audio_and_prints_json_frames() {
    use crate::live_support::{TOPIC, Ws, chunks, speech};
    use teachback::provider::fake::{FakeOpenAi, FakeOptions};

    let cwd = tempfile::tempdir().unwrap();
    let mut server = start(cwd.path(), free_port()).await;
    let token = server.register().await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let host = server.base.trim_start_matches("http://").to_owned();
    let mut ws = Ws::connect_to(&host, &token).await;
    let lecture = ws.start_pcm(TOPIC).await;
    let pieces = chunks(&speech(2_000, 2));
    ws.send_chunks(1, &pieces).await;
    ws.wait_ack(pieces.len() as u64).await;
    ws.send_json(json!({"type": "finish"})).await;
    let (state, _) = ws.until("state").await;
    assert_eq!(state["state"], "finished");
    drop(ws);
    signal(&server.child, "-TERM");
    assert!(server.child.wait().await.unwrap().success());
    // The audio on disk is sealed.
    let audio = cwd.path().join("data").join("audio");
    let mut blobs = Vec::new();
    let mut dirs = vec![audio];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.path().is_dir() {
                dirs.push(entry.path());
            } else {
                blobs.push(std::fs::read(entry.path()).unwrap());
            }
        }
    }
    assert!(!blobs.is_empty());
    assert!(
        blobs
            .iter()
            .all(|b| b.starts_with(teachback::vault::BLOB_MAGIC))
    );

    let fake = FakeOpenAi::start(FakeOptions {
        stt_text: "TCP sets up a connection first.".into(),
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let out = teachback(cwd.path())
        .args(["regrade", &lecture, "--json", "--reason", "stt configured"])
        .env("TEACHBACK_STT_URL", fake.base_url())
        .env("TEACHBACK_LLM_URL", fake.base_url())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frames: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let kinds: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
    assert!(kinds.contains(&"transcript"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"graded"), "{kinds:?}");
}
