//! `teachback export` / `import`: the log as JSON Lines, byte for byte, between backends.

use std::time::Duration;

use serde_json::{Value, json};
use teachback::store::archive::{self, Filter, ImportError};
use teachback::store::{ExpectedVersion, chain};
use teachback_events::{Metadata, NewEvent};

use crate::live_support::{TOPIC, Ws, learner};
use crate::support::{TestApp, TestDb, spawn_app_on_pool, store_on};
use crate::{on_both_backends, sqlite_only};

on_both_backends!(
    import_refuses_a_store_with_events_and_bad_archives_and_writes_nothing,
    import_refuses_a_filtered_or_altered_export_and_hashes_an_archive_without_hashes,
);
sqlite_only!(an_export_takes_what_its_filter_names);

const SECRET: &str = "archive-test-signing-secret-0123456789abcdef";

fn with_secret(c: &mut teachback::config::Config) {
    c.jwt_secret = Some(SECRET.to_owned().into());
}

/// A log with learners, a rename, graded text lectures and a live lecture with audio.
async fn some_history(app: &TestApp) -> Vec<String> {
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(learner(app).await);
    }
    let renamed = app
        .http
        .put(app.url("/api/v1/me"))
        .bearer_auth(&tokens[0])
        .json(&json!({"name": "아리아"}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 200);
    for token in &tokens {
        app.graded_text_lecture(
            token,
            "TCP retransmits lost segments; UDP sends datagrams and forgets them.",
        )
        .await;
    }
    let mut ws = Ws::connect(app, &tokens[1]).await;
    ws.start_pcm(TOPIC).await;
    ws.send_audio(1, &[0u8; 3_200]).await;
    ws.wait_ack(1).await;
    ws.send_json(json!({"type": "finish"})).await;
    tokens
}

async fn export_all(db: &teachback::db::Db) -> Vec<u8> {
    let mut out = Vec::new();
    archive::export(db, &Filter::default(), &mut out, &|_| {})
        .await
        .unwrap();
    out
}

/// Waits until every projection has applied the whole log.
async fn caught_up(app: &TestApp) {
    let head = *app.state.store.committed().borrow();
    for projection in app.state.projections() {
        assert!(projection.wait_for(head, Duration::from_secs(20)).await);
    }
}

/// SQLite → PostgreSQL → SQLite: the same bytes each time, and a server on the imported log
/// serves the same pages to the same learners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_round_trips_byte_for_byte_between_backends() {
    let source = TestDb::sqlite().await;
    let app = spawn_app_on_pool(source.db.clone(), with_secret, None).await;
    let tokens = some_history(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    caught_up(&app).await;
    let stats: Vec<Value> = futures::future::join_all(
        tokens
            .iter()
            .map(|t| app.get_json("/api/v1/me/stats", Some(t))),
    )
    .await;
    drop(app);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The app closed its pool when it stopped: read the file through another.
    let exported = export_all(&source.reconnect().await).await;
    let lines = exported
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let keys = exported
        .split(|b| *b == b'\n')
        .filter(|l| l.starts_with(b"{\"learnerKey\""))
        .count();
    assert_eq!(keys, 3, "one key per learner, after the events");
    assert!(lines > 20, "{lines} lines");

    // PostgreSQL when the suite has one (else another SQLite file).
    let target = match TestDb::postgres().await {
        Some(pg) => pg,
        None => TestDb::sqlite().await,
    };
    let middle = target.db.clone();
    let summary = archive::import(&middle, &mut exported.as_slice(), &|_| {})
        .await
        .unwrap();
    assert_eq!(summary.events as usize, lines - keys);
    assert_eq!(summary.keys as usize, keys);
    let again = export_all(&middle).await;
    assert!(
        again == exported,
        "the second export differs from the first"
    );

    let back = TestDb::sqlite().await;
    archive::import(&back.db, &mut again.as_slice(), &|_| {})
        .await
        .unwrap();
    assert!(export_all(&back.db).await == exported);

    // Every line carries its hash, and the chain holds on each database, ending in the same head.
    for line in lines_of(&exported)
        .into_iter()
        .filter(|l| l.get("learnerKey").is_none())
    {
        assert_eq!(line["hash"].as_str().unwrap().len(), 64, "{line}");
    }
    let mut heads = Vec::new();
    for db in [&source.reconnect().await, &middle, &back.db] {
        let report = teachback::audit::verify(db, &|_, _| {}).await.unwrap();
        assert!(report.is_intact(), "{:?}", report.broken());
        assert_eq!(report.events as usize, lines - keys);
        heads.push(report.to_json()["head"].clone());
    }
    assert_eq!(
        heads[0],
        lines_of(&exported)
            .iter()
            .rfind(|l| l.get("learnerKey").is_none())
            .map(|l| json!({"position": l["position"], "hash": l["hash"]}))
            .unwrap()
    );
    assert!(heads.iter().all(|h| *h == heads[0]), "{heads:?}");

    // A server on the imported log rebuilds its read models from it: the same pages.
    let app = spawn_app_on_pool(middle.clone(), with_secret, None).await;
    caught_up(&app).await;
    for (token, before) in tokens.iter().zip(&stats) {
        let after = app.get_json("/api/v1/me/stats", Some(token)).await;
        assert_eq!(&after, before);
    }
    drop(app);
    tokio::time::sleep(Duration::from_millis(200)).await;
    target.cleanup().await;
}

async fn import_refuses_a_store_with_events_and_bad_archives_and_writes_nothing(db: &TestDb) {
    let good = br#"{"position":1,"id":"01939d4e-7a2b-7c3d-8e4f-5a6b7c8d9e0f","stream":"user-01939d4e-7a2b-7c3d-8e4f-5a6b7c8d9e0f","version":0,"type":"DeviceRegistered","schemaVersion":1,"recordedAt":"2026-12-01T10:00:00.123456Z","metadata":{},"payload":{"a": 1}}"#;
    let second = String::from_utf8_lossy(good)
        .replace("\"position\":1", "\"position\":2")
        .replace(
            "01939d4e-7a2b-7c3d-8e4f-5a6b7c8d9e0f\",\"stream",
            "01939d4e-7a2b-7c3d-8e4f-5a6b7c8d9e10\",\"stream",
        )
        .replace("\"version\":0", "\"version\":1");
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{}\n{{not json\n", String::from_utf8_lossy(good)),
            "line 2",
        ),
        (
            format!("{second}\n{}\n", String::from_utf8_lossy(good)),
            "does not follow",
        ),
        (
            format!(
                "{}\n{}\n",
                String::from_utf8_lossy(good),
                second.replace("\"version\":1", "\"version\":0")
            ),
            "duplicate",
        ),
        (
            String::from_utf8_lossy(good).replace("\"payload\"", "\"extra\":1,\"payload\""),
            "unknown field",
        ),
    ];
    for (archive_text, expected) in cases {
        let refused = archive::import(&db.db, &mut archive_text.as_bytes(), &|_| {})
            .await
            .unwrap_err();
        assert!(refused.to_string().contains(expected), "{refused}");
        assert!(
            export_all(&db.db).await.is_empty(),
            "a refused import wrote"
        );
    }
    // A good one goes in, and its payload keeps its bytes (the space after the colon too). It
    // has no hash (an archive from before the chain): the import computes it, over the stored
    // columns as `chain.rs` documents.
    let mut archive_text = good.to_vec();
    archive_text.push(b'\n');
    archive::import(&db.db, &mut archive_text.as_slice(), &|_| {})
        .await
        .unwrap();
    let hash = chain::event_hash(
        &chain::GENESIS,
        &chain::Row {
            position: 1,
            id: "01939d4e-7a2b-7c3d-8e4f-5a6b7c8d9e0f".parse().unwrap(),
            stream: "user-01939d4e-7a2b-7c3d-8e4f-5a6b7c8d9e0f",
            version: 0,
            event_type: "DeviceRegistered",
            schema_version: 1,
            recorded_at_us: "2026-12-01T10:00:00.123456Z"
                .parse::<jiff::Timestamp>()
                .unwrap()
                .as_microsecond(),
            metadata: "{}",
            payload: r#"{"a": 1}"#,
        },
    );
    let with_hash = format!(
        "{},\"hash\":\"{}\"}}\n",
        String::from_utf8_lossy(&good[..good.len() - 1]),
        chain::to_hex(&hash)
    );
    assert_eq!(
        String::from_utf8(export_all(&db.db).await).unwrap(),
        with_hash
    );
    // Importing again into the now non-empty store is refused.
    let refused = archive::import(&db.db, &mut archive_text.as_slice(), &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(refused, ImportError::NotEmpty(1)), "{refused}");
}

async fn an_export_takes_what_its_filter_names(db: &TestDb) {
    let app = spawn_app_on_pool(db.db.clone(), with_secret, None).await;
    some_history(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all: Vec<Value> = lines_of(&export_all(&db.db).await)
        .into_iter()
        .filter(|line| line.get("learnerKey").is_none())
        .collect();
    let middle = all[all.len() / 2]["recordedAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let filter = Filter {
        stream_prefix: Some("lecture-".into()),
        types: vec!["LectureStarted".into(), "LectureGraded".into()],
        since: Some(middle),
        until: None,
        without_keys: true,
    };
    let mut out = Vec::new();
    let summary = archive::export(&db.db, &filter, &mut out, &|_| {})
        .await
        .unwrap();
    let taken = lines_of(&out);
    let expected: Vec<&Value> = all
        .iter()
        .filter(|e| {
            e["stream"].as_str().unwrap().starts_with("lecture-")
                && ["LectureStarted", "LectureGraded"].contains(&e["type"].as_str().unwrap())
                && e["recordedAt"]
                    .as_str()
                    .unwrap()
                    .parse::<jiff::Timestamp>()
                    .unwrap()
                    >= middle
        })
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(taken.iter().collect::<Vec<_>>(), expected);
    assert_eq!(summary.events as usize, expected.len());
    assert_eq!(
        archive::count(&db.db, &filter).await.unwrap() as usize,
        expected.len()
    );
}

fn lines_of(bytes: &[u8]) -> Vec<Value> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// The archive's lines without their `"hash"` field, as an export written before the chain.
fn without_hashes(archive_text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in String::from_utf8(archive_text.to_vec()).unwrap().lines() {
        let at = line.rfind(",\"hash\":").expect("a line with a hash");
        out.extend_from_slice(&line.as_bytes()[..at]);
        out.extend_from_slice(b"}\n");
    }
    out
}

async fn import_refuses_a_filtered_or_altered_export_and_hashes_an_archive_without_hashes(
    db: &TestDb,
) {
    let source = TestDb::sqlite().await;
    let store = store_on(source.db.clone()).await;
    for (n, stream) in ["a", "b", "a", "b", "b"].into_iter().enumerate() {
        let event = NewEvent {
            id: uuid::Uuid::now_v7(),
            event_type: "TestHappened".into(),
            schema_version: 1,
            payload: json!({ "n": n, "text": "héllo" }),
            metadata: Metadata::default(),
        };
        store
            .append_to_stream(stream, ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
    }
    let whole = export_all(&source.db).await;
    let refused_at = async |archive_text: &[u8]| {
        let refused = archive::import(&db.db, &mut &archive_text[..], &|_| {})
            .await
            .unwrap_err();
        assert!(
            export_all(&db.db).await.is_empty(),
            "a refused import wrote"
        );
        refused
    };

    // A filtered export leaves events out: its first line does not follow from nothing.
    let mut filtered = Vec::new();
    let only_b = Filter {
        stream_prefix: Some("b".into()),
        ..Filter::default()
    };
    archive::export(&source.db, &only_b, &mut filtered, &|_| {})
        .await
        .unwrap();
    let refused = refused_at(&filtered).await;
    assert!(
        matches!(
            refused,
            ImportError::ChainBroken {
                line: 1,
                position: 2
            }
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains("filtered export"), "{refused}");

    // One changed byte of a payload, or of a hash, refuses the archive at that line.
    let text = String::from_utf8(whole.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let altered = |line: usize, from: &str, to: &str| -> Vec<u8> {
        let mut out = String::new();
        for (i, l) in lines.iter().enumerate() {
            out.push_str(&if i + 1 == line {
                l.replacen(from, to, 1)
            } else {
                (*l).to_owned()
            });
            out.push('\n');
        }
        assert_ne!(out, text);
        out.into_bytes()
    };
    let refused = refused_at(&altered(3, "\"n\":2", "\"n\":3")).await;
    assert!(
        matches!(
            refused,
            ImportError::ChainBroken {
                line: 3,
                position: 3
            }
        ),
        "{refused}"
    );
    let hash_of_4 = lines_of(&whole)[3]["hash"].as_str().unwrap().to_owned();
    let mut other_hash = hash_of_4.clone().into_bytes();
    other_hash[0] = if other_hash[0] == b'0' { b'1' } else { b'0' };
    let refused = refused_at(&altered(
        4,
        &hash_of_4,
        std::str::from_utf8(&other_hash).unwrap(),
    ))
    .await;
    assert!(
        matches!(
            refused,
            ImportError::ChainBroken {
                line: 4,
                position: 4
            }
        ),
        "{refused}"
    );

    // An archive from before the chain imports, and gets exactly the hashes the writer gave.
    let old = without_hashes(&whole);
    assert!(!String::from_utf8_lossy(&old).contains("hash"));
    archive::import(&db.db, &mut old.as_slice(), &|_| {})
        .await
        .unwrap();
    assert!(export_all(&db.db).await == whole);
    source.cleanup().await;
}
