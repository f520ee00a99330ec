//! Projection benchmarks: rebuild throughput, live projection lag, and the ranking endpoint.
//!
//! ```text
//! cargo bench --bench projections -- rebuild  [--events 1000000]
//! cargo bench --bench projections -- lag      [--rate 1000] [--seconds 30]
//! cargo bench --bench projections -- rankings [--learners 100000] [--seconds 10] [--concurrency 32]
//! ```
//!
//! All three run on SQLite in a temporary directory under the current one, with a log shaped
//! like real use: learners register, and each lecture is LectureStarted, six stored audio
//! segments and their transcripts, LectureFinished, TranscriptCompleted, GradingStarted, twenty
//! FeedbackStreamed, LectureGraded and (a third of the time) LectureRated — 37 or 38 events.
//!
//! - `rebuild` seeds the log, then rebuilds every projection with `projection::ops::rebuild`
//!   (the code `teachback projections rebuild` runs) and reports events per second.
//! - `lag` starts the whole server in-process, appends lecture events at `--rate` events per
//!   second, and measures for every event the time from its commit to each projection having
//!   applied it.
//! - `rankings` seeds `--learners` learners with two graded lectures each, starts the server on
//!   a loopback port, and has `--concurrency` keep-alive HTTP clients read
//!   `GET /api/v1/rankings` (a random period, page and caller) for `--seconds`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use teachback::db::{ConnectOptions, Db};
use teachback::store::{EventStore, ExpectedVersion, SqlBackend, StreamAppend};
use teachback_events::{
    AudioFormat, AudioSegmentStored, DeviceRegistered, Event, FeedbackStreamed, FinishReason,
    GraderKind, GradingLatency, GradingStarted, LectureFinished, LectureGraded, LectureMode,
    LectureRated, LectureStarted, Metadata, NewEvent, SubScores, TokenUsage, TranscriptCompleted,
    TranscriptSegmentRecognized, TranscriptSource, streams,
};
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true, global = true)]
    bench: bool,
}

#[derive(Subcommand)]
enum Command {
    Rebuild {
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
    },
    Lag {
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    Rankings {
        #[arg(long, default_value_t = 100_000)]
        learners: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
}

/// The starter catalogue's topic ids (published by the server at start; the projections do not
/// need them published to count lectures).
const TOPICS: [&str; 12] = [
    "cs.networking.tcp-vs-udp",
    "cs.networking.http-request",
    "cs.networking.dns",
    "cs.os.process-vs-thread",
    "cs.os.deadlock",
    "cs.os.virtual-memory",
    "cs.algorithms.big-o",
    "cs.algorithms.hash-table",
    "cs.databases.transactions",
    "bio.cell.photosynthesis",
    "bio.cell.mitosis-meiosis",
    "bio.genetics.dna-replication",
];

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn new(event: &Event) -> NewEvent {
    NewEvent::from_event(event, Metadata::default())
}

fn registration(user: Uuid, n: usize) -> StreamAppend {
    let event = Event::DeviceRegistered(DeviceRegistered {
        user_id: user,
        device_id: Uuid::now_v7(),
        name: format!("learner{n}"),
        device_token_hash: format!("{:064x}", n),
    });
    StreamAppend::new(streams::user(user), ExpectedVersion::Any, vec![new(&event)])
}

/// A whole lecture's events; `full: false` keeps only start, finish and grade.
fn lecture(rng: &mut Rng, user: Uuid, full: bool) -> StreamAppend {
    let lecture_id = Uuid::now_v7();
    let topic = TOPICS[rng.below(TOPICS.len() as u64) as usize];
    let score = 40 + rng.below(61) as u8;
    let mut events = vec![Event::LectureStarted(LectureStarted {
        lecture_id,
        user_id: user,
        topic_id: topic.into(),
        format: AudioFormat::PcmS16le,
        sample_rate: Some(16_000),
        language: "ko".into(),
        mode: LectureMode::Live,
    })];
    let segments = if full { 6 } else { 0 };
    for index in 0..segments {
        events.push(Event::AudioSegmentStored(AudioSegmentStored {
            lecture_id,
            index,
            blob_key: format!("lectures/{lecture_id}/segment-{index:06}.wav"),
            bytes: 320_044,
            duration_ms: Some(10_000),
            sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
            first_seq: u64::from(index) * 100 + 1,
            last_seq: u64::from(index) * 100 + 100,
        }));
    }
    for index in 0..segments {
        events.push(Event::TranscriptSegmentRecognized(
            TranscriptSegmentRecognized {
                lecture_id,
                index,
                text: "TCP는 연결을 먼저 설정하고 손실된 세그먼트를 다시 보냅니다.".into(),
                provider: "api.openai.com".into(),
                model: "whisper-1".into(),
                latency_ms: 600,
            },
        ));
    }
    events.push(Event::LectureFinished(LectureFinished {
        lecture_id,
        duration_ms: Some(60_000),
        segments,
        reason: FinishReason::Learner,
    }));
    if full {
        events.push(Event::TranscriptCompleted(TranscriptCompleted {
            lecture_id,
            text: "TCP는 연결을 먼저 설정하고 손실된 세그먼트를 다시 보냅니다. ".repeat(6),
            source: TranscriptSource::Speech,
            segments,
            words: 60,
            empty: false,
        }));
        events.push(Event::GradingStarted(GradingStarted {
            lecture_id,
            attempt: 1,
            grader: GraderKind::Llm,
            provider: Some("api.openai.com".into()),
            model: Some("gpt-4o-mini".into()),
            fallback_reason: None,
        }));
        for i in 0..20 {
            events.push(Event::FeedbackStreamed(FeedbackStreamed {
                lecture_id,
                attempt: 1,
                offset_ms: 300 + i * 100,
                text: "연결 설정을 분명하게 설명했어요. ".into(),
            }));
        }
    }
    events.push(Event::LectureGraded(LectureGraded {
        lecture_id,
        attempt: 1,
        grader: GraderKind::Llm,
        fallback_reason: None,
        provider: Some("api.openai.com".into()),
        model: Some("gpt-4o-mini".into()),
        score,
        sub_scores: SubScores {
            accuracy: score,
            completeness: score,
            clarity: score,
            structure: score,
        },
        feedback: "연결 설정을 분명하게 설명했어요. 흐름 제어도 다뤄 보세요.".into(),
        strengths: vec!["connection setup".into()],
        improvements: vec!["flow control".into()],
        misconceptions: vec![],
        usage: Some(TokenUsage {
            prompt_tokens: 900,
            completion_tokens: 250,
        }),
        output_mode: Some("json_schema".into()),
        latency: GradingLatency {
            first_token_ms: Some(350),
            total_ms: 2_500,
            since_finish_ms: Some(4_000),
        },
    }));
    if full && rng.below(3) == 0 {
        events.push(Event::LectureRated(LectureRated {
            lecture_id,
            user_id: user,
            attempt: 1,
            rating: 1 + rng.below(5) as u8,
        }));
    }
    StreamAppend::new(
        streams::lecture(lecture_id),
        ExpectedVersion::NoStream,
        events.iter().map(new).collect(),
    )
}

async fn open(dir: &std::path::Path) -> (Db, EventStore) {
    let url = format!("sqlite://{}", dir.join("teachback.db").display());
    let db = Db::connect(&url, &ConnectOptions::default()).await.unwrap();
    db.migrate().await.unwrap();
    let store = EventStore::start(
        Arc::new(SqlBackend::new(db.clone())),
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    (db, store)
}

/// Appends learners and their lectures until the log holds about `events` events.
async fn seed(store: &EventStore, learners: usize, events: usize, full: bool) -> usize {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let users: Vec<Uuid> = (0..learners).map(|_| Uuid::now_v7()).collect();
    let started = Instant::now();
    let mut written = 0;
    for chunk in users.chunks(1_000) {
        let appends = chunk
            .iter()
            .enumerate()
            .map(|(i, u)| registration(*u, written + i))
            .collect();
        store.append(appends).await.unwrap();
        written += chunk.len();
    }
    let mut lectures = 0;
    while written < events {
        // Round robin: every learner teaches.
        let batch: Vec<StreamAppend> = (0..100)
            .map(|i| lecture(&mut rng, users[(lectures + i) % users.len()], full))
            .collect();
        written += batch.iter().map(|a| a.events.len()).sum::<usize>();
        lectures += batch.len();
        store.append(batch).await.unwrap();
    }
    eprintln!(
        "seeded {written} events ({learners} learners, {lectures} lectures) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    written
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("teachback-bench")
        .tempdir_in(std::env::current_dir().unwrap())
        .unwrap()
}

async fn rebuild(events: usize) {
    let dir = tempdir();
    let (db, store) = open(dir.path()).await;
    let written = seed(&store, events / 200, events, true).await;
    let tz = jiff::tz::TimeZone::UTC;
    println!("| projection | events | seconds | events/s |");
    println!("|---|---:|---:|---:|");
    let mut total = Duration::ZERO;
    for projector in teachback::app::projectors(&tz) {
        let report = teachback::projection::ops::rebuild(&db, &store, &*projector, &|_| {})
            .await
            .unwrap();
        total += report.elapsed;
        // Throughput over the whole log covered, whatever part of it the projection reads.
        println!(
            "| {} | {written} ({} read) | {:.2} | {:.0} |",
            report.name,
            report.events,
            report.elapsed.as_secs_f64(),
            written as f64 / report.elapsed.as_secs_f64()
        );
    }
    println!(
        "| every projection, one after another | {written} | {:.2} | {:.0} |",
        total.as_secs_f64(),
        written as f64 / total.as_secs_f64()
    );
    let projectors = teachback::app::projectors(&tz);
    let list: Vec<&dyn teachback::projection::Projector> =
        projectors.iter().map(|p| &**p).collect();
    let reports = teachback::projection::ops::rebuild_all(&db, &store, &list, &|_| {})
        .await
        .unwrap();
    let elapsed = reports.last().expect("at least one projection").elapsed;
    println!(
        "| every projection in one pass (`teachback projections rebuild`) | {written} | {:.2} | {:.0} |",
        elapsed.as_secs_f64(),
        written as f64 / elapsed.as_secs_f64()
    );
    store.flush().await;
    db.close().await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn start_app(dir: &std::path::Path) -> teachback::app::App {
    let mut config = teachback::config::Config::defaults();
    // A benchmark drives the server from one address: no rate limits or quotas in the way.
    config.rate_limits = "off".into();
    config.quota_lectures_per_day = 0;
    config.quota_audio_minutes_per_day = 0;
    config.quota_llm_tokens_per_day = 0;
    config.data_dir = dir.to_path_buf();
    teachback::app::App::build(&config).await.unwrap()
}

async fn lag(rate: u64, seconds: u64) {
    let dir = tempdir();
    let app = start_app(dir.path()).await;
    let state = app.state.clone();
    let store = state.store.clone();
    let users: Vec<Uuid> = (0..200).map(|_| Uuid::now_v7()).collect();
    let appends = users
        .iter()
        .enumerate()
        .map(|(i, u)| registration(*u, i))
        .collect();
    let head = store.append(appends).await.unwrap().position;
    for p in state.projections() {
        p.wait_for(head, Duration::from_secs(30)).await;
    }

    // Each projection's watcher: when its position passes an appended event, that event's lag
    // is now − its commit.
    let committed: Arc<std::sync::Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut watchers = Vec::new();
    for projection in state.projections() {
        let mut position = projection.position_receiver();
        let committed = committed.clone();
        let mut stopped = stopped.clone();
        let name = projection.name.to_string();
        watchers.push(tokio::spawn(async move {
            let mut lags = Vec::new();
            let mut seen = 0;
            loop {
                tokio::select! {
                    changed = position.changed() => if changed.is_err() { break },
                    _ = stopped.changed() => break,
                }
                let applied = *position.borrow_and_update();
                let now = Instant::now();
                let list = committed.lock().unwrap();
                while seen < list.len() && list[seen].0 <= applied {
                    lags.push(now - list[seen].1);
                    seen += 1;
                }
            }
            (name, lags)
        }));
    }

    // Every 10 ms, append a tick's worth of events, continuing whole lectures stream by stream.
    let mut rng = Rng(7);
    let mut current: Option<(String, VecDeque<NewEvent>)> = None;
    let per_tick = (rate / 100).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut appended = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let mut appends: Vec<StreamAppend> = Vec::new();
        for _ in 0..per_tick {
            if current.as_ref().is_none_or(|(_, q)| q.is_empty()) {
                let user = users[rng.below(users.len() as u64) as usize];
                let next = lecture(&mut rng, user, true);
                current = Some((next.stream, next.events.into()));
            }
            let (stream, queue) = current.as_mut().expect("set above");
            let event = queue.pop_front().expect("not empty");
            match appends.last_mut() {
                Some(last) if last.stream == *stream => last.events.push(event),
                _ => appends.push(StreamAppend::new(
                    stream.clone(),
                    ExpectedVersion::Any,
                    vec![event],
                )),
            }
        }
        let outcome = store.append(appends).await.unwrap();
        let now = Instant::now();
        appended += per_tick as u64;
        committed
            .lock()
            .unwrap()
            .extend(std::iter::repeat_n((outcome.position, now), per_tick));
    }
    let elapsed = started.elapsed();
    let head = store.head().await.unwrap();
    for p in state.projections() {
        p.wait_for(head, Duration::from_secs(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send_replace(true);
    println!(
        "appended {appended} events in {:.1} s ({:.0} events/s), in 10 ms ticks",
        elapsed.as_secs_f64(),
        appended as f64 / elapsed.as_secs_f64()
    );
    println!("| projection | events | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for watcher in watchers {
        let (name, mut lags) = watcher.await.unwrap();
        lags.sort_unstable();
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} |",
            lags.len(),
            ms(percentile(&lags, 0.50)),
            ms(percentile(&lags, 0.99)),
            ms(lags.last().copied().unwrap_or_default())
        );
    }
    drop(app);
}

async fn rankings(learners: usize, seconds: u64, concurrency: usize) {
    let dir = tempdir();
    {
        let (db, store) = open(dir.path()).await;
        // Two graded lectures per learner (start, finish, grade), on random topics.
        seed(&store, learners, learners * 7, false).await;
        store.flush().await;
        db.close().await;
    }
    let started = Instant::now();
    let app = start_app(dir.path()).await;
    let state = app.state.clone();
    let head = state.store.head().await.unwrap();
    for p in state.projections() {
        assert!(
            p.wait_for(head, Duration::from_secs(600)).await,
            "{} caught up",
            p.name
        );
    }
    // Let the ranking index load what the projection wrote.
    let key = |period| {
        teachback_projections::rankings::BoardKey::new(
            period,
            teachback_projections::rankings::Scope::Overall,
            state.rankings.today(),
        )
    };
    loop {
        let total = state
            .rankings
            .page(
                key(teachback_projections::rankings::Period::All),
                None,
                1,
                None,
            )
            .total;
        if total as usize >= learners {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "server caught up with {head} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let users: Vec<Uuid> = teachback::with_pool!(&state.db, pool => {
        sqlx::query_scalar("SELECT user_id FROM learning_users LIMIT 1000")
            .fetch_all(pool)
            .await
            .unwrap()
    });
    let tokens: Arc<Vec<String>> = Arc::new(
        users
            .iter()
            .map(|u| state.keys.issue(*u).unwrap().0)
            .collect(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.run(listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut clients = Vec::new();
    for c in 0..concurrency {
        let tokens = tokens.clone();
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut rng = Rng(1 + c as u64);
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let period = ["week", "month", "all"][rng.below(3) as usize];
                let token = &tokens[rng.below(tokens.len() as u64) as usize];
                let sent = Instant::now();
                let response = http
                    .get(format!(
                        "http://{addr}/api/v1/rankings?period={period}&limit=20"
                    ))
                    .bearer_auth(token)
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().is_success() => {
                        let body = r.bytes().await.unwrap();
                        assert!(body.len() > 100);
                        latencies.push(sent.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for client in clients {
        let (latencies, e) = client.await.unwrap();
        all.extend(latencies);
        errors += e;
    }
    let _ = stop.send(());
    let _ = server.await;
    all.sort_unstable();
    println!(
        "| ranked learners | clients | requests | errors | requests/s | p50 ms | p99 ms | max ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {learners} | {concurrency} | {} | {errors} | {:.0} | {:.2} | {:.2} | {:.2} |",
        all.len(),
        all.len() as f64 / seconds as f64,
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.99)),
        ms(all.last().copied().unwrap_or_default())
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    match args.command {
        Command::Rebuild { events } => rebuild(events).await,
        Command::Lag { rate, seconds } => lag(rate, seconds).await,
        Command::Rankings {
            learners,
            seconds,
            concurrency,
        } => rankings(learners, seconds, concurrency).await,
    }
}
