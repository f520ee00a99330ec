//! Event store append throughput, next to a raw batched-INSERT baseline in the same run.
//!
//! ```text
//! cargo bench --bench event_store -- [--backend sqlite|postgres|both] [--writers 1,8,64] [--events 20000]
//! ```
//!
//! For each writer count W, W tasks each append single 200-byte events to their own stream with
//! an exact expected version, and every append waits until durable (SQLite `synchronous=FULL`,
//! PostgreSQL `synchronous_commit=on`). The baseline inserts the same rows into a fresh table of
//! the same shape from one task, W rows per multi-row INSERT and one transaction per INSERT: the
//! most that batching W writers' events together could reach without any checks (its rows carry a
//! 64-character hash like the store's, but nobody computes a chain). PostgreSQL comes from
//! `TEACHBACK_BENCH_POSTGRES_URL` (or `TEACHBACK_TEST_POSTGRES_URL`).
//!
//! First it prints what computing the hash chain costs alone: SHA-256 of one stored 200-byte
//! event and its previous hash, on one core.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use sqlx::QueryBuilder;
use teachback::db::{ConnectOptions, Db};
use teachback::store::{EventStore, ExpectedVersion, SqlBackend, chain};
use teachback::with_pool;
use teachback_events::{Metadata, NewEvent};
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "both")]
    backend: String,
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    writers: Vec<usize>,
    /// Events per measurement.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn payload(n: usize) -> serde_json::Value {
    // {"n":…,"pad":"…"} serialises to 200 bytes.
    let head = serde_json::json!({ "n": n, "pad": "" }).to_string().len();
    serde_json::json!({ "n": n, "pad": "x".repeat(200 - head) })
}

fn event(n: usize) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        event_type: "BenchHappened".into(),
        schema_version: 1,
        payload: payload(n),
        metadata: Metadata::default(),
    }
}

async fn fresh(backend: &str, url: &Option<String>, dir: &std::path::Path, tag: &str) -> Db {
    let (url, options) = match backend {
        "sqlite" => (
            format!("sqlite://{}", dir.join(format!("{tag}.db")).display()),
            ConnectOptions::default(),
        ),
        _ => (
            url.clone()
                .expect("set TEACHBACK_BENCH_POSTGRES_URL for the PostgreSQL run"),
            ConnectOptions {
                max_connections: 16,
                schema: Some(format!("bench_{}", Uuid::now_v7().simple())),
            },
        ),
    };
    let db = Db::connect(&url, &options).await.unwrap();
    db.migrate().await.unwrap();
    db
}

async fn drop_db(db: Db) {
    if let Db::Postgres(pool) = &db {
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(pool)
            .await
            .unwrap();
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(pool)
            .await
            .unwrap();
    }
    db.close().await;
}

/// Events/s through the store with `writers` concurrent appenders.
async fn store_run(db: Db, writers: usize, total: usize) -> f64 {
    let store = EventStore::start(
        Arc::new(SqlBackend::new(db.clone())),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    let per = total / writers;
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..per {
                    let expected = if n == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(n as u64 - 1)
                    };
                    store
                        .append_to_stream(format!("bench-{w}"), expected, vec![event(n)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = (per * writers) as f64 / start.elapsed().as_secs_f64();
    let stats = store.stats();
    eprintln!(
        "  {writers} writers: {} commits, {:.1} appends per commit",
        stats.commits.load(std::sync::atomic::Ordering::Relaxed),
        stats.requests.load(std::sync::atomic::Ordering::Relaxed) as f64
            / stats
                .commits
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(1) as f64
    );
    assert_eq!(store.head().await.unwrap(), (per * writers) as u64);
    drop_db(db).await;
    rate
}

/// What the raw baseline stores as every row's hash: as long as a real one, computed by nobody.
const FIXED_HASH: &str = "00000000000000000000000000000000000000000000000000000000000000ff";

/// Nanoseconds to hash one stored 200-byte event into the chain, and hashes per second.
fn hashing_cost() -> (f64, f64) {
    let meta = serde_json::to_string(&Metadata::default()).unwrap();
    let bodies: Vec<String> = (0..1_000).map(|n| payload(n).to_string()).collect();
    let ids: Vec<Uuid> = (0..1_000).map(|_| Uuid::now_v7()).collect();
    let rounds = 500;
    let mut prev = chain::GENESIS;
    let start = Instant::now();
    for round in 0..rounds {
        for (i, (body, id)) in bodies.iter().zip(&ids).enumerate() {
            let row = chain::Row {
                position: (round * 1_000 + i + 1) as u64,
                id: *id,
                stream: "bench-0",
                version: i as u64,
                event_type: "BenchHappened",
                schema_version: 1,
                recorded_at_us: 1_790_000_000_000_000,
                metadata: &meta,
                payload: body,
            };
            prev = chain::event_hash(&prev, &row);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    std::hint::black_box(prev);
    let n = (rounds * bodies.len()) as f64;
    (elapsed * 1e9 / n, n / elapsed)
}

/// Events/s for raw multi-row INSERTs of `batch` rows, one transaction each.
async fn raw_run(db: Db, batch: usize, total: usize) -> f64 {
    let meta = serde_json::to_string(&Metadata::default()).unwrap();
    let start = Instant::now();
    let mut position = 0i64;
    let mut n = 0usize;
    while n < total {
        let rows: Vec<_> = (n..(n + batch).min(total))
            .map(|i| (Uuid::now_v7(), payload(i).to_string(), i))
            .collect();
        n += rows.len();
        with_pool!(&db, pool => {
            let mut tx = pool.begin().await.unwrap();
            let mut insert = QueryBuilder::new(
                "INSERT INTO events (position, id, stream, version, event_type, schema_version, \
                 recorded_at, metadata, payload, hash) ",
            );
            insert.push_values(&rows, |mut b, (id, body, i)| {
                position += 1;
                b.push_bind(position)
                    .push_bind(*id)
                    .push_bind(format!("bench-{}", i % batch))
                    .push_bind((*i / batch) as i64)
                    .push_bind("BenchHappened")
                    .push_bind(1i32)
                    .push_bind(0i64)
                    .push_bind(meta.as_str())
                    .push_bind(body.as_str())
                    .push_bind(FIXED_HASH);
            });
            insert.build().execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        });
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    drop_db(db).await;
    rate
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let pg_url = std::env::var("TEACHBACK_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("TEACHBACK_TEST_POSTGRES_URL"))
        .ok();
    let backends: Vec<&str> = match args.backend.as_str() {
        "both" => vec!["sqlite", "postgres"],
        "sqlite" => vec!["sqlite"],
        "postgres" => vec!["postgres"],
        other => panic!("unknown backend {other}"),
    };
    let dir = tempfile::Builder::new()
        .prefix("teachback-bench")
        .tempdir_in(std::env::current_dir().unwrap())
        .unwrap();
    let (ns, per_second) = hashing_cost();
    println!(
        "hash chain alone: {ns:.0} ns per 200-byte event ({per_second:.0} events/s on one core)\n"
    );
    println!("| backend | writers | events | store events/s | raw INSERT events/s | store / raw |");
    println!("|---|---:|---:|---:|---:|---:|");
    for backend in backends {
        if backend == "postgres" && pg_url.is_none() {
            println!("| postgres | skipped: TEACHBACK_BENCH_POSTGRES_URL is not set | | | | |");
            continue;
        }
        for &w in &args.writers {
            let store = store_run(
                fresh(backend, &pg_url, dir.path(), &format!("s{w}")).await,
                w,
                args.events,
            )
            .await;
            let raw = raw_run(
                fresh(backend, &pg_url, dir.path(), &format!("r{w}")).await,
                w,
                args.events,
            )
            .await;
            println!(
                "| {backend} | {w} | {} | {store:.0} | {raw:.0} | {:.0}% |",
                args.events,
                100.0 * store / raw
            );
        }
    }
}
