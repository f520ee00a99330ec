//! The hash chain over the event log: `teachback audit verify` finds any changed byte of any
//! stored column at the event it was changed in, two writers keep one chain, rows written before
//! the chain are hashed at start, and the CLI reports a broken chain with exit code 1.

use std::time::Duration;

use serde_json::{Value, json};
use teachback::audit::{self, BreakKind, VerifyReport};
use teachback::db::Db;
use teachback::store::{ExpectedVersion, STORED_COLUMNS, StoreError, StoredEvent, StreamAppend};
use teachback::with_pool;
use teachback_events::{Metadata, NewEvent};
use uuid::Uuid;

use crate::live_support::learner;
use crate::process::{free_port, signal, start_with, teachback};
use crate::support::{TestDb, spawn_app_on_pool, store_on};
use crate::{on_both_backends, sqlite_only};

on_both_backends!(
    a_changed_bit_in_any_column_of_any_event_is_reported_at_that_event,
    two_writers_appending_at_once_keep_one_unbroken_chain,
    rows_without_a_hash_at_the_end_of_the_log_are_hashed_at_start_and_elsewhere_reported,
    a_writer_that_finds_an_unhashed_head_hashes_it_before_linking_its_batch,
);
sqlite_only!(an_unreadable_column_or_a_position_moved_below_the_first_is_reported_at_its_event);

async fn verify(db: &Db) -> VerifyReport {
    audit::verify(db, &|_, _| {}).await.unwrap()
}

async fn stored_rows(db: &Db) -> Vec<StoredEvent> {
    let sql = format!("SELECT {STORED_COLUMNS} FROM events ORDER BY position");
    with_pool!(db, pool => sqlx::query_as(&sql).fetch_all(pool).await.unwrap())
}

fn event(n: usize) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        event_type: "TestHappened".into(),
        schema_version: 1,
        payload: json!({ "n": n, "text": "héllo" }),
        metadata: Metadata::default(),
    }
}

/// A realistic log written by the server (the catalogue, learners, a rename, a graded text
/// lecture), after which the server is stopped so nothing else is appended.
async fn realistic_log(db: &TestDb) {
    let app = spawn_app_on_pool(db.reconnect().await, |_| {}, None).await;
    let (ana, _ben) = (learner(&app).await, learner(&app).await);
    let renamed = app
        .http
        .put(app.url("/api/v1/me"))
        .bearer_auth(&ana)
        .json(&json!({"name": "아리아"}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 200);
    app.graded_text_lecture(&ana, "TCP retransmits lost segments; UDP does not.")
        .await;
    drop(app);
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// A value for one column of one row.
enum Cell {
    Id(Uuid),
    Int(i64),
    Int32(i32),
    Text(String),
}

async fn set(db: &Db, column: &str, position: i64, value: &Cell) {
    let sql = format!("UPDATE events SET {column} = $1 WHERE position = $2");
    let done = with_pool!(db, pool => {
        let query = sqlx::query(&sql);
        let query = match value {
            Cell::Id(v) => query.bind(*v),
            Cell::Int(v) => query.bind(*v),
            Cell::Int32(v) => query.bind(*v),
            Cell::Text(v) => query.bind(v.clone()),
        };
        query.bind(position).execute(pool).await.unwrap().rows_affected()
    });
    assert_eq!(done, 1);
}

/// The text with its byte at `at` XORed with 0x01 (an ASCII byte, so it stays UTF-8). The last
/// byte of stored JSON is always ASCII (`}`, `]`, `"`, a digit or a letter).
fn flip_text(text: &str, at: usize) -> String {
    let mut bytes = text.as_bytes().to_vec();
    assert!(bytes[at].is_ascii(), "{text}: byte {at} is not ASCII");
    bytes[at] ^= 0x01;
    String::from_utf8(bytes).unwrap()
}

/// For one row: each column's name, its value with one bit changed, and its stored value.
fn flips(row: &StoredEvent) -> Vec<(&'static str, Cell, Cell)> {
    let hash = row.hash.clone().expect("every row is hashed");
    let mut id = *row.id.as_bytes();
    id[15] ^= 0x01;
    vec![
        ("id", Cell::Id(Uuid::from_bytes(id)), Cell::Id(row.id)),
        (
            "stream",
            Cell::Text(flip_text(&row.stream, 0)),
            Cell::Text(row.stream.clone()),
        ),
        // A high bit: the flipped version cannot collide with another of the stream's.
        (
            "version",
            Cell::Int(row.version ^ (1 << 40)),
            Cell::Int(row.version),
        ),
        (
            "event_type",
            Cell::Text(flip_text(&row.event_type, 0)),
            Cell::Text(row.event_type.clone()),
        ),
        (
            "schema_version",
            Cell::Int32(row.schema_version ^ (1 << 16)),
            Cell::Int32(row.schema_version),
        ),
        (
            "recorded_at",
            Cell::Int(row.recorded_at ^ 1),
            Cell::Int(row.recorded_at),
        ),
        (
            "metadata",
            Cell::Text(flip_text(&row.metadata, row.metadata.len() - 1)),
            Cell::Text(row.metadata.clone()),
        ),
        (
            "payload",
            Cell::Text(flip_text(&row.payload, row.payload.len() - 1)),
            Cell::Text(row.payload.clone()),
        ),
        (
            "hash",
            Cell::Text(flip_text(&hash, 10)),
            Cell::Text(hash.clone()),
        ),
    ]
}

async fn a_changed_bit_in_any_column_of_any_event_is_reported_at_that_event(db: &TestDb) {
    realistic_log(db).await;
    let rows = stored_rows(&db.db).await;
    assert!(rows.len() > 40, "{} events", rows.len());
    let intact = verify(&db.db).await;
    assert!(intact.is_intact(), "{:?}", intact.broken());
    assert_eq!(intact.events, rows.len() as u64);
    let last = rows.last().unwrap();
    assert_eq!(
        intact.to_json()["head"],
        json!({"position": last.position, "hash": last.hash})
    );
    let types: std::collections::HashSet<&str> =
        rows.iter().map(|r| r.event_type.as_str()).collect();
    for t in [
        "DeviceRegistered",
        "UserRenamed",
        "LectureGraded",
        "TopicPublished",
    ] {
        assert!(types.contains(t), "no {t} in {types:?}");
    }

    for row in &rows {
        let is_head = row.position == last.position;
        for (column, changed, original) in flips(row) {
            set(&db.db, column, row.position, &changed).await;
            let report = verify(&db.db).await;
            let broken = report.broken().unwrap_or_else(|| {
                panic!("{column} of position {} changed unnoticed", row.position)
            });
            assert_eq!(
                broken.position, row.position,
                "{column} changed at {}, reported {broken}",
                row.position
            );
            assert_eq!(
                report.events,
                rows.iter().filter(|r| r.position < row.position).count() as u64
            );
            // Which of the two changed is told by the next event's link; the head has none.
            let expected_code = match (is_head, column) {
                (true, _) => BreakKind::ContentOrHashAltered,
                (false, "hash") => BreakKind::HashAltered,
                (false, _) => BreakKind::ContentAltered,
            };
            assert_eq!(
                broken.code, expected_code,
                "{column} at {}: {broken}",
                row.position
            );
            if column == "hash" {
                assert_eq!(broken.expected.as_ref(), row.hash.as_ref());
                assert_ne!(broken.stored, row.hash);
            } else {
                assert_eq!(broken.stored, row.hash);
                assert_ne!(broken.expected, row.hash);
            }
            set(&db.db, column, row.position, &original).await;
            let again = verify(&db.db).await;
            assert!(
                again.is_intact(),
                "restoring {column} at {} left {:?}",
                row.position,
                again.broken()
            );
        }
    }
    assert_eq!(stored_rows(&db.db).await, rows, "the log was not restored");

    // An event removed from the middle: the next event's link no longer holds.
    let removed = &rows[rows.len() / 2];
    with_pool!(&db.db, pool => {
        sqlx::query("DELETE FROM events WHERE position = $1")
            .bind(removed.position)
            .execute(pool)
            .await
            .unwrap().rows_affected()
    });
    let report = verify(&db.db).await;
    let broken = report.broken().unwrap();
    assert_eq!(
        broken.position,
        rows[rows.len() / 2 + 1].position,
        "{broken}"
    );
    assert_eq!(broken.code, BreakKind::ContentAltered);
    insert_stored(&db.db, removed).await;
    assert!(verify(&db.db).await.is_intact());
}

/// Puts a stored row back exactly as it was.
async fn insert_stored(db: &Db, row: &StoredEvent) {
    with_pool!(db, pool => {
        sqlx::query(&format!(
            "INSERT INTO events ({STORED_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(row.position)
        .bind(row.id)
        .bind(&row.stream)
        .bind(row.version)
        .bind(&row.event_type)
        .bind(row.schema_version)
        .bind(row.recorded_at)
        .bind(&row.metadata)
        .bind(&row.payload)
        .bind(&row.hash)
        .execute(pool)
        .await
        .unwrap().rows_affected()
    });
}

async fn two_writers_appending_at_once_keep_one_unbroken_chain(db: &TestDb) {
    // Two stores on two pools stand in for two server processes, each with its own group-commit
    // writer (and its own idea of the chain's head).
    let a = db.store().await;
    let b = store_on(db.reconnect().await).await;
    let mut writers = Vec::new();
    for (name, store) in [("a", a.clone()), ("b", b.clone())] {
        for w in 0..6 {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                for n in 0..60 {
                    // Single events, multi-event and multi-stream appends alike.
                    let streams = if n % 3 == 0 {
                        vec![
                            StreamAppend::new(
                                format!("{name}-{w}"),
                                ExpectedVersion::Any,
                                vec![event(n), event(n)],
                            ),
                            StreamAppend::new(
                                format!("{name}-{w}-side"),
                                ExpectedVersion::Any,
                                vec![event(n)],
                            ),
                        ]
                    } else {
                        vec![StreamAppend::new(
                            format!("{name}-{w}"),
                            ExpectedVersion::Any,
                            vec![event(n)],
                        )]
                    };
                    store.append(streams).await.unwrap();
                }
            }));
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    // Each writer's remembered head is now stale for one of them at least; both still link
    // their next events to the real head.
    for store in [&a, &b, &a] {
        store
            .append_to_stream("after", ExpectedVersion::Any, vec![event(0)])
            .await
            .unwrap();
    }
    let expected = 2 * 6 * (40 + 20 * 3) + 3;
    let report = verify(&db.db).await;
    assert!(report.is_intact(), "{:?}", report.broken());
    assert_eq!(report.events, expected);
    let json = report.to_json();
    assert_eq!(json["head"]["position"], a.head().await.unwrap());
    let rows = stored_rows(&db.db).await;
    assert_eq!(rows.len() as u64, expected);
    assert_eq!(json["head"]["hash"], json!(rows.last().unwrap().hash));
}

/// Inserts a row the way a server of an earlier version did: without a hash.
async fn insert_unhashed(db: &Db, position: i64, stream: &str, version: i64) {
    with_pool!(db, pool => {
        sqlx::query(
            "INSERT INTO events (position, id, stream, version, event_type, schema_version, \
             recorded_at, metadata, payload) VALUES ($1, $2, $3, $4, 'OldHappened', 1, $5, '{}', \
             '{\"old\": true}')",
        )
        .bind(position)
        .bind(Uuid::now_v7())
        .bind(stream)
        .bind(version)
        .bind(1_780_000_000_000_000i64 + position)
        .execute(pool)
        .await
        .unwrap().rows_affected()
    });
}

async fn set_hash_null(db: &Db, condition: &str) {
    let sql = format!("UPDATE events SET hash = NULL WHERE {condition}");
    with_pool!(db, pool => sqlx::query(&sql).execute(pool).await.unwrap().rows_affected());
}

async fn rows_without_a_hash_at_the_end_of_the_log_are_hashed_at_start_and_elsewhere_reported(
    db: &TestDb,
) {
    let store = db.store().await;
    for n in 0..30 {
        store
            .append_to_stream("s", ExpectedVersion::Any, vec![event(n)])
            .await
            .unwrap();
    }
    let written = stored_rows(&db.db).await;

    // A log from before the chain: no row has a hash. Opening it (migrations, then the
    // backfill) gives every row exactly the hash the writer gave it.
    set_hash_null(&db.db, "1 = 1").await;
    let report = verify(&db.db).await;
    let broken = report.broken().unwrap();
    assert_eq!((broken.position, broken.code), (1, BreakKind::MissingHash));
    db.db.migrate().await.unwrap();
    assert_eq!(stored_rows(&db.db).await, written);

    // Rows an earlier server appended after the chain's head are hashed, chaining on.
    insert_unhashed(&db.db, 31, "old", 0).await;
    insert_unhashed(&db.db, 32, "old", 1).await;
    let broken = verify(&db.db).await.broken().cloned().unwrap();
    assert_eq!((broken.position, broken.code), (31, BreakKind::MissingHash));
    assert!(broken.stored.is_none());
    db.db.migrate().await.unwrap();
    let report = verify(&db.db).await;
    assert!(report.is_intact(), "{:?}", report.broken());
    assert_eq!(report.events, 32);
    assert_eq!(
        stored_rows(&db.db).await[..30],
        written[..],
        "hashed rows were rewritten"
    );

    // A missing hash before hashed rows is no row from before the chain: it is reported, and
    // starting does not fill it in.
    set_hash_null(&db.db, "position = 12").await;
    db.db.migrate().await.unwrap();
    let broken = verify(&db.db).await.broken().cloned().unwrap();
    assert_eq!((broken.position, broken.code), (12, BreakKind::MissingHash));
    assert_eq!(broken.expected, written[11].hash);
}

async fn a_writer_that_finds_an_unhashed_head_hashes_it_before_linking_its_batch(db: &TestDb) {
    // A rolling deploy: this writer last committed position 3, then a server of an earlier
    // version appended two rows without hashes.
    let store = db.store().await;
    for n in 0..3 {
        store
            .append_to_stream("s", ExpectedVersion::Any, vec![event(n)])
            .await
            .unwrap();
    }
    insert_unhashed(&db.db, 4, "old", 0).await;
    insert_unhashed(&db.db, 5, "old", 1).await;
    let appended = store
        .append_to_stream("s", ExpectedVersion::Exact(2), vec![event(3)])
        .await
        .unwrap();
    assert_eq!(appended.position, 6);
    let report = verify(&db.db).await;
    assert!(report.is_intact(), "{:?}", report.broken());
    assert_eq!(report.events, 6);

    // A head whose stored hash is no hash stops the writer instead of linking to it.
    with_pool!(&db.db, pool => {
        sqlx::query("UPDATE events SET hash = 'not a hash' WHERE position = 6")
            .execute(pool)
            .await
            .unwrap().rows_affected()
    });
    let other = store_on(db.reconnect().await).await;
    let refused = other
        .append_to_stream("t", ExpectedVersion::Any, vec![event(0)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            teachback::store::AppendError::Store(StoreError::Corrupt { position: 6, .. })
        ),
        "{refused:?}"
    );
    assert_eq!(stored_rows(&db.db).await.len(), 6, "a refused append wrote");
}

async fn an_unreadable_column_or_a_position_moved_below_the_first_is_reported_at_its_event(
    db: &TestDb,
) {
    // SQLite stores whatever it is given: a stream name that is a blob, not text, cannot be read
    // as one. The rows before it are still checked.
    let store = db.store().await;
    for n in 0..20 {
        store
            .append_to_stream("s", ExpectedVersion::Any, vec![event(n)])
            .await
            .unwrap();
    }
    let rows = stored_rows(&db.db).await;
    let sql = |q: &'static str| async move {
        with_pool!(&db.db, pool => sqlx::query(q).execute(pool).await.unwrap().rows_affected())
    };
    sql("UPDATE events SET stream = X'ff' WHERE position = 14").await;
    let report = verify(&db.db).await;
    let broken = report.broken().unwrap();
    assert_eq!((broken.position, broken.code), (14, BreakKind::Unreadable));
    assert_eq!(report.events, 13);
    sql("UPDATE events SET stream = 's' WHERE position = 14").await;
    assert!(verify(&db.db).await.is_intact());

    // A row moved below the first position is still read, and reported.
    sql("UPDATE events SET position = -3 WHERE position = 1").await;
    let broken = verify(&db.db).await.broken().cloned().unwrap();
    assert_eq!(
        (broken.position, broken.code),
        (-3, BreakKind::PositionsNotIncreasing)
    );
    assert_eq!(broken.id, Some(rows[0].id));
    sql("UPDATE events SET position = 1 WHERE position = -3").await;
    assert!(verify(&db.db).await.is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_an_empty_log_as_intact_with_no_head() {
    let db = TestDb::sqlite().await;
    let report = verify(&db.db).await;
    assert_eq!(
        report.to_json(),
        json!({"ok": true, "events": 0, "head": null})
    );
    db.cleanup().await;
}

/// `teachback audit verify --json` as an operator runs it, on a server's data directory: intact
/// (exit 0, the head to record elsewhere), then after one payload byte was changed in the
/// database file, broken at that event (exit 1, the reason on stderr).
#[tokio::test]
async fn audit_verify_prints_the_head_then_the_broken_link_and_exits_1() {
    let cwd = tempfile::tempdir().unwrap();
    let mut server = start_with(cwd.path(), free_port(), &[]).await;
    for _ in 0..3 {
        server.register().await;
    }
    signal(&server.child, "-TERM");
    assert!(server.child.wait().await.unwrap().success());

    let run = async || {
        let out = teachback(cwd.path())
            .args(["audit", "verify", "--json"])
            .output()
            .await
            .unwrap();
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
        });
        (
            out.status.code(),
            stdout,
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, intact, _) = run().await;
    assert_eq!(code, Some(0), "{intact}");
    assert_eq!(intact["ok"], true);
    let events = intact["events"].as_u64().unwrap();
    assert!(events >= 6, "{intact}");
    assert_eq!(intact["head"]["position"], events);
    assert_eq!(intact["head"]["hash"].as_str().unwrap().len(), 64);

    let url = format!(
        "sqlite://{}",
        cwd.path().join("data/teachback.db").display()
    );
    let db = Db::connect(&url, &Default::default()).await.unwrap();
    let rows = stored_rows(&db).await;
    let victim = rows
        .iter()
        .find(|r| r.event_type == "DeviceRegistered")
        .unwrap();
    set(
        &db,
        "payload",
        victim.position,
        &Cell::Text(flip_text(&victim.payload, 1)),
    )
    .await;
    db.close().await;

    let (code, broken, stderr) = run().await;
    assert_eq!(code, Some(1), "{broken}");
    assert_eq!(broken["ok"], false);
    let at = &broken["brokenAt"];
    assert_eq!(at["position"], victim.position);
    assert_eq!(at["id"], victim.id.to_string());
    assert_eq!(at["stream"], victim.stream);
    assert_eq!(at["version"], victim.version);
    assert_eq!(at["stored"], json!(victim.hash));
    assert_eq!(at["code"], "content_altered");
    assert_ne!(at["expected"], at["stored"]);
    assert_eq!(broken["events"], victim.position - 1);
    assert!(
        stderr.contains(&format!(
            "the hash chain is broken at position {}",
            victim.position
        )),
        "{stderr}"
    );
}
