//! Study nudges benchmark: the weekly digest for many learners, scheduled and delivered to a
//! local webhook receiver.
//!
//! ```text
//! cargo bench --bench notifications -- [--learners 100000] [--concurrency 64]
//! ```
//!
//! Seeds `--learners` learners opted in to the weekly digest (spread over four time zones that
//! are all at 08:00 on a Monday at the chosen instant, so every digest is due at once), starts
//! the server in-process on SQLite in a temporary directory, and a receiver (an HTTP server on a
//! loopback port, in its own thread with its own runtime) that checks each request's signature
//! and counts distinct idempotency keys. Then one scheduling pass (every
//! `NotificationScheduled` appended) and one delivery pass (every POST, then every
//! `NotificationSent` appended), each timed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use jiff::Timestamp;
use secrecy::SecretString;
use teachback::notify::channel::{Webhook, sign};
use teachback::notify::clock::ManualClock;
use teachback::notify::{Notifier, NotifySettings};
use teachback::store::{ExpectedVersion, StreamAppend};
use teachback_events::{Event, Metadata, NewEvent, NotificationPreferencesSet, streams};
use uuid::Uuid;

const SECRET: &str = "bench-webhook-secret-at-least-32-characters";

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    learners: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Default)]
struct Seen {
    keys: HashSet<String>,
    requests: u64,
    bad_signatures: u64,
}

/// The receiver: answers 202 to every correctly signed nudge, on its own runtime thread.
fn receiver() -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (tx, rx) = std::sync::mpsc::channel();
    let shared = seen.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let app = axum::Router::new().route(
                "/nudges",
                axum::routing::post(
                    move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                        let seen = shared.clone();
                        async move {
                            let header = |name: &str| {
                                headers
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned()
                            };
                            let signature = header("x-teachback-signature");
                            let t: i64 = signature
                                .split(',')
                                .find_map(|p| p.strip_prefix("t="))
                                .and_then(|t| t.parse().ok())
                                .unwrap_or(0);
                            let valid = sign(SECRET.as_bytes(), t, &body) == signature;
                            let mut seen = seen.lock().unwrap();
                            seen.requests += 1;
                            if !valid {
                                seen.bad_signatures += 1;
                                return axum::http::StatusCode::UNAUTHORIZED;
                            }
                            seen.keys.insert(header("idempotency-key"));
                            axum::http::StatusCode::ACCEPTED
                        }
                    },
                ),
            );
            axum::serve(listener, app).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    (format!("http://{addr}/nudges"), seen)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = tempfile::Builder::new()
        .prefix("teachback-bench")
        .tempdir_in(std::env::current_dir().unwrap())
        .unwrap();
    let mut config = teachback::config::Config::defaults();
    // A benchmark drives the server from one address: no rate limits or quotas in the way.
    config.rate_limits = "off".into();
    config.quota_lectures_per_day = 0;
    config.quota_audio_minutes_per_day = 0;
    config.quota_llm_tokens_per_day = 0;
    config.data_dir = dir.path().to_path_buf();
    let app = teachback::app::App::build(&config).await.unwrap();
    let state = app.state.clone();

    // Four zones at UTC+9: Monday 2026-11-30 08:00 in each is 2026-11-29T23:00Z.
    let zones = [
        "Asia/Seoul",
        "Asia/Tokyo",
        "Asia/Pyongyang",
        "Asia/Jayapura",
    ];
    let started = Instant::now();
    let mut appends = Vec::with_capacity(args.learners);
    for i in 0..args.learners {
        let user = Uuid::now_v7();
        let event = Event::NotificationPreferencesSet(NotificationPreferencesSet {
            user_id: user,
            kinds: vec!["weekly_digest".into()],
            channel: "webhook".into(),
            time_zone: zones[i % zones.len()].into(),
            hour: None,
            quiet_start: Some(22),
            quiet_end: Some(7),
            language: if i % 2 == 0 { "ko" } else { "en" }.into(),
        });
        appends.push(StreamAppend::new(
            streams::user(user),
            ExpectedVersion::Any,
            vec![NewEvent::from_event(&event, Metadata::default())],
        ));
    }
    let mut head = 0;
    for chunk in appends.chunks(1_000) {
        head = state.store.append(chunk.to_vec()).await.unwrap().position;
    }
    assert!(
        state
            .notifications
            .wait_for(head, Duration::from_secs(600))
            .await
    );
    println!(
        "seeded {} learners' preferences in {:.1} s",
        args.learners,
        started.elapsed().as_secs_f64()
    );

    let (url, seen) = receiver();
    let clock = Arc::new(ManualClock::new(
        "2026-11-29T23:00:00Z".parse::<Timestamp>().unwrap(),
    ));
    let webhook = Webhook::new(
        url,
        SecretString::from(SECRET.to_owned()),
        Duration::from_secs(10),
    )
    .unwrap();
    let notifier = Notifier::new(
        state.db.clone(),
        state.store.clone(),
        state.rankings.clone(),
        state.notifications.clone(),
        vec![Arc::new(webhook)],
        NotifySettings {
            concurrency: args.concurrency,
            ..NotifySettings::default()
        },
        clock,
    );

    let t = Instant::now();
    let scheduled = notifier.schedule_due().await.unwrap();
    let schedule_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let pass = notifier.deliver_due().await.unwrap();
    let deliver_s = t.elapsed().as_secs_f64();
    let seen = seen.lock().unwrap();
    assert_eq!(scheduled, args.learners, "every digest was due");
    assert_eq!(pass.sent, args.learners, "every digest was sent");
    assert_eq!(seen.keys.len(), args.learners, "the receiver saw every key");
    assert_eq!(seen.bad_signatures, 0);
    println!("| step | nudges | seconds | nudges/s |");
    println!("|---|---:|---:|---:|");
    println!(
        "| schedule (compute due, render, append `NotificationScheduled`) | {scheduled} | {schedule_s:.2} | {:.0} |",
        scheduled as f64 / schedule_s
    );
    println!(
        "| deliver (signed POST, append `NotificationSent`), concurrency {} | {} | {deliver_s:.2} | {:.0} |",
        args.concurrency,
        pass.sent,
        pass.sent as f64 / deliver_s
    );
    println!(
        "| both | {} | {:.2} | {:.0} |",
        pass.sent,
        schedule_s + deliver_s,
        pass.sent as f64 / (schedule_s + deliver_s)
    );
    println!(
        "receiver: {} requests, {} distinct keys, {} bad signatures",
        seen.requests,
        seen.keys.len(),
        seen.bad_signatures
    );
}
