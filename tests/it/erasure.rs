//! The right to erasure and audio retention: after `DELETE /api/v1/me` no plaintext of the
//! learner's nickname or transcript is left in the database files or the blobs, their rows are
//! gone from every read model, the rankings are recomputed, and the log still reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use teachback::blob::BlobStore;
use teachback::blob::local::LocalBlobStore;
use teachback::provider::fake::{FakeOpenAi, FakeOptions};

use crate::live_support::{TOPIC, Ws, chunks, learner, speech};
use crate::on_both_backends;
use crate::support::{TestApp, TestDb, spawn_app_on};

on_both_backends!(
    an_erased_learner_leaves_no_plaintext_and_no_rows_and_ranks_are_recomputed,
    audio_past_the_retention_is_deleted_and_the_deletion_recorded,
);

const NICKNAME: &str = "Quokkazanzibar";
const TRANSCRIPT: &str = "Marmalade-Xylophone explains how TCP retransmits.";

/// Every regular file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The files under `dirs` whose bytes contain `needle`.
fn holding(dirs: &[&Path], needle: &str) -> Vec<PathBuf> {
    dirs.iter()
        .flat_map(|d| files(d))
        .filter(|path| {
            let bytes = std::fs::read(path).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .collect()
}

/// The directory of a SQLite test database (its file, `-wal` and `-shm`).
fn sqlite_dir(db: &TestDb) -> Option<PathBuf> {
    let path = db.url.strip_prefix("sqlite://")?;
    Some(Path::new(path).parent()?.to_path_buf())
}

async fn eventually(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = app.get_json(path, token).await;
        if done(&page) {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never got there: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn user_id(app: &TestApp, token: &str) -> String {
    app.get_json("/api/v1/me", Some(token)).await["userId"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn an_erased_learner_leaves_no_plaintext_and_no_rows_and_ranks_are_recomputed(db: &TestDb) {
    let fake = FakeOpenAi::start(FakeOptions {
        stt_text: TRANSCRIPT.into(),
        chunk_delay: Duration::from_millis(1),
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let url = fake.base_url();
    let blob_dir = tempfile::tempdir().unwrap();
    let blobs: Arc<dyn BlobStore> = Arc::new(LocalBlobStore::new(blob_dir.path()));
    let app = spawn_app_on(
        db,
        move |c| {
            c.stt_url = Some(url.clone());
            c.llm_url = Some(url);
            c.vad_pause_ms = 500;
        },
        Some(blobs),
    )
    .await;
    let (ana, ben) = (learner(&app).await, learner(&app).await);
    let (ana_id, ben_id) = (user_id(&app, &ana).await, user_id(&app, &ben).await);
    let renamed = app
        .http
        .put(app.url("/api/v1/me"))
        .bearer_auth(&ana)
        .json(&json!({"name": NICKNAME}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 200);

    // Ana speaks a live lecture; Ben types one.
    let mut ws = Ws::connect(&app, &ana).await;
    let lecture = ws.start_pcm(TOPIC).await;
    let pieces = chunks(&speech(2_000, 7));
    ws.send_chunks(1, &pieces).await;
    ws.wait_ack(pieces.len() as u64).await;
    ws.send_json(json!({"type": "finish"})).await;
    ws.until("graded").await;
    let typed = app
        .post_json(
            "/api/v1/lectures",
            &ben,
            Some(json!({"topicId": TOPIC, "text": "Ben explains that UDP does not retransmit.", "language": "en"})),
        )
        .await;
    app.graded(&ben, typed["lectureId"].as_str().unwrap()).await;
    let view = app
        .get_json(&format!("/api/v1/lectures/{lecture}"), Some(&ana))
        .await;
    assert!(
        view["transcript"]
            .as_str()
            .unwrap_or_default()
            .contains("Marmalade-Xylophone"),
        "the learner reads her own transcript: {view}"
    );
    let board = eventually(&app, "/api/v1/rankings?period=all", None, |p| {
        p["total"] == 2
    })
    .await;
    assert!(
        board["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["userId"] == ana_id.as_str())
    );

    // The log holds her transcript and nickname only sealed; her audio blobs are sealed too.
    let mut exported = Vec::new();
    teachback::store::archive::export(&app.state.db, &Default::default(), &mut exported, &|_| {})
        .await
        .unwrap();
    let log = String::from_utf8(exported).unwrap();
    assert!(
        !log.contains("Marmalade-Xylophone"),
        "a transcript in the log in plain text"
    );
    assert!(
        !log.contains(NICKNAME),
        "a nickname in the log in plain text"
    );
    let stored = files(blob_dir.path());
    assert!(!stored.is_empty());
    for path in &stored {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            bytes.starts_with(teachback::vault::BLOB_MAGIC),
            "{} is not sealed",
            path.display()
        );
    }
    // The read models do hold her nickname: the byte search below can find it.
    let db_dir = sqlite_dir(db);
    if let Some(dir) = &db_dir {
        assert!(
            !holding(&[dir], NICKNAME).is_empty(),
            "the search finds the nickname before"
        );
    }

    // She erases herself.
    let response = app
        .http
        .delete(app.url("/api/v1/me"))
        .bearer_auth(&ana)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let erased: Value = response.json().await.unwrap();
    assert_eq!(erased["userId"], ana_id.as_str());
    assert_eq!(erased["lectures"], 1);
    assert!(erased["blobsDeleted"].as_u64().unwrap() >= 1, "{erased}");

    // Her rows are gone from every read model, her audio from the store, her rank from the boards.
    let me = app
        .http
        .get(app.url("/api/v1/me"))
        .bearer_auth(&ana)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 404);
    let refused = app
        .http
        .post(app.url("/api/v1/lectures"))
        .bearer_auth(&ana)
        .json(&json!({"topicId": TOPIC, "text": "Still here?", "language": "en"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        401,
        "an erased learner's token starts nothing"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "user_erased");
    assert!(
        files(blob_dir.path()).is_empty(),
        "audio left: {:?}",
        files(blob_dir.path())
    );
    let board = eventually(&app, "/api/v1/rankings?period=all", None, |p| {
        p["total"] == 1
    })
    .await;
    assert_eq!(board["entries"][0]["userId"], ben_id.as_str());
    assert_eq!(board["entries"][0]["rank"], 1);
    let ana_uuid: uuid::Uuid = ana_id.parse().unwrap();
    for (table, column) in [
        ("users", "user_id"),
        ("devices", "user_id"),
        ("lectures", "user_id"),
        ("learning_users", "user_id"),
        ("learning_lectures", "user_id"),
        ("learning_activity", "user_id"),
        ("usage_learner_days", "user_id"),
        ("usage_lectures", "user_id"),
        ("notification_prefs", "user_id"),
        ("notifications", "user_id"),
    ] {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE {column} = $1");
        let n: i64 = teachback::with_pool!(&db.db, pool => {
            sqlx::query_scalar(&sql).bind(ana_uuid).fetch_one(pool).await.unwrap()
        });
        assert_eq!(n, 0, "{table} still holds her rows");
    }
    // Ben's data is untouched.
    assert_eq!(
        app.get_json("/api/v1/me", Some(&ben)).await["userId"],
        ben_id.as_str()
    );

    // The log still reads: her lecture's events are there, their personal fields empty.
    let events = app
        .state
        .store
        .read_stream_all(&format!("lecture-{lecture}"))
        .await
        .unwrap();
    let completed = events
        .iter()
        .find(|e| e.event_type == "TranscriptCompleted")
        .expect("the transcript event stays");
    assert_eq!(completed.payload["text"], "");
    let erasure = app
        .state
        .store
        .last_event(&format!("user-{ana_id}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(erasure.event_type, "UserErased");
    assert_eq!(erasure.payload["requestedBy"], "learner");

    // Nothing in the log was rewritten: the hash chain still verifies.
    let chain = teachback::audit::verify(&app.state.db, &|_, _| {})
        .await
        .unwrap();
    assert!(chain.is_intact(), "{:?}", chain.broken());
    assert!(chain.events as usize >= events.len());

    // No plaintext anywhere in the database files or the blobs.
    if let Some(dir) = &db_dir {
        for needle in [NICKNAME, "Marmalade-Xylophone"] {
            let found = holding(&[dir, blob_dir.path()], needle);
            assert!(found.is_empty(), "`{needle}` is still in {found:?}");
        }
    }

    // Erasing again is refused; the name is free for someone else.
    let again = app
        .http
        .delete(app.url("/api/v1/me"))
        .bearer_auth(&ana)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    let taken = app
        .http
        .put(app.url("/api/v1/me"))
        .bearer_auth(&ben)
        .json(&json!({"name": NICKNAME}))
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 200, "the erased learner's name is released");
}

async fn audio_past_the_retention_is_deleted_and_the_deletion_recorded(db: &TestDb) {
    let blob_dir = tempfile::tempdir().unwrap();
    let blobs: Arc<dyn BlobStore> = Arc::new(LocalBlobStore::new(blob_dir.path()));
    let fake = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
    let url = fake.base_url();
    let app = spawn_app_on(
        db,
        move |c| {
            c.stt_url = Some(url.clone());
            c.llm_url = Some(url);
            c.vad_pause_ms = 500;
        },
        Some(blobs.clone()),
    )
    .await;
    let token = learner(&app).await;
    let mut ws = Ws::connect(&app, &token).await;
    let lecture = ws.start_pcm(TOPIC).await;
    let pieces = chunks(&speech(1_500, 3));
    ws.send_chunks(1, &pieces).await;
    ws.wait_ack(pieces.len() as u64).await;
    ws.send_json(json!({"type": "finish"})).await;
    ws.until("graded").await;
    let segment = format!("/api/v1/lectures/{lecture}/segments/0");
    let before = app
        .http
        .get(app.url(&segment))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(before.status(), 200);
    let store = &app.state.store;
    // A retention run of 30 days, as of `at`.
    let expire = async |at: jiff::Timestamp| {
        let cutoff = teachback::erasure::cutoff(at, 30);
        teachback::erasure::expire_audio(store, &app.state.blobs, cutoff, 30, &|_, _| {})
            .await
            .unwrap()
    };

    // Nothing is older than 30 days.
    let now = jiff::Timestamp::now();
    let kept = expire(now).await;
    assert_eq!(kept, teachback::erasure::Expired::default());
    assert!(!files(blob_dir.path()).is_empty());

    // Thirty-one days later, everything is.
    let later = now + jiff::SignedDuration::from_hours(24 * 31);
    let expired = expire(later).await;
    assert_eq!(expired.lectures, 1);
    assert!(expired.blobs_deleted >= 1);
    assert!(files(blob_dir.path()).is_empty());
    let last = store
        .last_event(&format!("lecture-{lecture}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.event_type, "AudioDeleted");
    assert_eq!(last.payload["reason"], "retention");
    assert_eq!(last.payload["retentionDays"], 30);
    assert_eq!(
        last.payload["segments"].as_array().unwrap().len() as u32,
        expired.blobs_deleted
    );
    // A second run finds nothing left to do.
    let again = expire(later).await;
    assert_eq!(again, teachback::erasure::Expired::default());
    // The audio is gone, the grade stays.
    let after = app
        .http
        .get(app.url(&segment))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 410);
    let body: Value = after.json().await.unwrap();
    assert_eq!(body["error"]["code"], "audio_deleted");
    let view = app
        .get_json(&format!("/api/v1/lectures/{lecture}"), Some(&token))
        .await;
    assert_eq!(view["processing"], "graded");
}
