//! Study nudges: preferences over HTTP, scheduling at chosen instants (a clock the test moves),
//! and delivery through a webhook receiver that fails at random (errors, timeouts, slow answers,
//! the connection dropped after the body was read) while the sending worker is restarted
//! mid-batch. Every due nudge must arrive, none may be recorded as sent twice, and the log must
//! hold the whole history.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use serde_json::{Value, json};
use teachback::notify::channel::{Webhook, sign};
use teachback::notify::clock::ManualClock;
use teachback::notify::{Notifier, NotifySettings};
use teachback_events::RecordedEvent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{TestApp, TestDb, spawn_app, spawn_app_with};

crate::on_both_backends!(
    preferences_are_validated_stored_and_read_back,
    every_due_nudge_arrives_through_a_failing_receiver_and_a_restarted_worker,
);
crate::sqlite_only!(
    nudges_fire_in_each_learners_time_zone_and_wait_out_quiet_hours,
    a_nudge_the_server_gets_to_late_waits_out_quiet_hours_that_began_meanwhile,
    two_workers_at_once_never_record_a_nudge_as_sent_twice,
    a_learner_who_opts_out_before_delivery_gets_nothing,
    the_tracked_link_records_one_open_and_leads_into_the_web_client,
    a_refused_nudge_is_parked_and_listed_for_the_team,
);

const SECRET: &str = "a-shared-webhook-secret-of-forty-characters";
const ADMIN: &str = "notify-test-admin-token";

/// What the receiver does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Accept,
    Error,
    TooMany,
    /// Never answers within the sender's timeout.
    Timeout,
    /// Answers (and accepts) slowly, but within the timeout.
    Slow,
    /// Reads the whole body, then closes the connection without answering.
    Drop,
}

#[derive(Default)]
struct Received {
    /// Every request that reached the receiver with its body, by idempotency key.
    deliveries: HashMap<String, u32>,
    /// Keys accepted (answered 2xx), in order: a deduplicating receiver accepts each once.
    accepted: Vec<String>,
    bodies: HashMap<String, Value>,
    bad_signatures: u32,
    behaviours: HashMap<&'static str, u32>,
}

/// A webhook receiver over raw TCP, so it can misbehave at the byte level. `failure` is the
/// share of requests that fail (the kind of failure chosen at random, seeded).
struct Receiver {
    url: String,
    received: Arc<Mutex<Received>>,
}

impl Receiver {
    async fn start(failure: f64, seed: u64) -> Receiver {
        Self::start_with(
            move |rng: &mut rand::rngs::StdRng| {
                if rng.random_bool(failure) {
                    match rng.random_range(0..5) {
                        0 => Behaviour::Error,
                        1 => Behaviour::TooMany,
                        2 => Behaviour::Timeout,
                        3 => Behaviour::Slow,
                        _ => Behaviour::Drop,
                    }
                } else {
                    Behaviour::Accept
                }
            },
            seed,
            200,
        )
        .await
    }

    async fn start_with(
        choose: impl Fn(&mut rand::rngs::StdRng) -> Behaviour + Send + Sync + 'static,
        seed: u64,
        accept_status: u16,
    ) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/nudges", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Received::default()));
        let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)));
        let choose = Arc::new(choose);
        let shared = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (received, rng, choose) = (shared.clone(), rng.clone(), choose.clone());
                tokio::spawn(async move {
                    serve(socket, received, rng, choose, accept_status).await;
                });
            }
        });
        Receiver { url, received }
    }

    fn received(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap()
    }
}

/// Serves one connection (keep-alive: several requests).
async fn serve(
    mut socket: tokio::net::TcpStream,
    received: Arc<Mutex<Received>>,
    rng: Arc<Mutex<rand::rngs::StdRng>>,
    choose: Arc<dyn Fn(&mut rand::rngs::StdRng) -> Behaviour + Send + Sync>,
    accept_status: u16,
) {
    let mut buffer = Vec::new();
    loop {
        // Headers.
        let header_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..header_end]).to_string();
        let headers: HashMap<String, String> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buffer.len() < header_end + length {
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buffer[header_end..header_end + length].to_vec();
        buffer.drain(..header_end + length);
        let key = headers.get("idempotency-key").cloned().unwrap_or_default();
        let behaviour = choose(&mut rng.lock().unwrap());
        {
            let mut r = received.lock().unwrap();
            *r.deliveries.entry(key.clone()).or_default() += 1;
            let signature = headers
                .get("x-teachback-signature")
                .cloned()
                .unwrap_or_default();
            let t: i64 = signature
                .split(',')
                .find_map(|p| p.strip_prefix("t="))
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            if sign(SECRET.as_bytes(), t, &body) != signature {
                r.bad_signatures += 1;
            }
            *r.behaviours
                .entry(match behaviour {
                    Behaviour::Accept => "accept",
                    Behaviour::Error => "error",
                    Behaviour::TooMany => "too_many",
                    Behaviour::Timeout => "timeout",
                    Behaviour::Slow => "slow",
                    Behaviour::Drop => "drop",
                })
                .or_default() += 1;
        }
        let status = match behaviour {
            Behaviour::Drop => return,
            Behaviour::Timeout => {
                tokio::time::sleep(Duration::from_millis(900)).await;
                return;
            }
            Behaviour::Error => 503,
            Behaviour::TooMany => 429,
            Behaviour::Accept | Behaviour::Slow => {
                if behaviour == Behaviour::Slow {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                let mut r = received.lock().unwrap();
                // Deduplicates (checked as it accepts: a retry may arrive while an earlier try
                // of the same nudge is still being answered): a key accepted before is
                // answered 2xx again and not kept twice.
                let duplicate = r.accepted.contains(&key);
                if !duplicate && (200..300).contains(&accept_status) {
                    r.accepted.push(key.clone());
                    r.bodies.insert(
                        key.clone(),
                        serde_json::from_slice(&body).unwrap_or(Value::Null),
                    );
                }
                accept_status
            }
        };
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{{}}"
        );
        if socket.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn settings(url_base: &str) -> NotifySettings {
    NotifySettings {
        retry_base: Duration::from_millis(200),
        max_attempts: 40,
        concurrency: 16,
        public_url: url_base.to_owned(),
        ..NotifySettings::default()
    }
}

fn notifier(
    app: &TestApp,
    receiver: &Receiver,
    clock: &Arc<ManualClock>,
    settings: NotifySettings,
) -> Notifier {
    let webhook = Webhook::new(
        receiver.url.clone(),
        SecretString::from(SECRET.to_owned()),
        Duration::from_millis(400),
    )
    .unwrap();
    Notifier::new(
        app.state.db.clone(),
        app.state.store.clone(),
        app.state.rankings.clone(),
        app.state.notifications.clone(),
        vec![Arc::new(webhook)],
        settings,
        clock.clone(),
    )
}

async fn put_prefs(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.http
        .put(app.url("/api/v1/me/notifications"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn prefs(zone: &str, kinds: [bool; 3]) -> Value {
    json!({
        "dailyReminder": kinds[0], "streakWarning": kinds[1], "weeklyDigest": kinds[2],
        "channel": "webhook", "timeZone": zone, "hour": null, "quietHours": null, "language": "en"
    })
}

/// A learner opted in with these preferences; returns (user id, token).
async fn learner(app: &TestApp, body: Value) -> (String, String) {
    let device = app.register().await;
    let token = device["accessToken"].as_str().unwrap().to_owned();
    let r = put_prefs(app, &token, body).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    (device["userId"].as_str().unwrap().to_owned(), token)
}

/// Every event of the nudges' streams, per stream.
async fn history(app: &TestApp) -> BTreeMap<String, Vec<RecordedEvent>> {
    let mut streams: BTreeMap<String, Vec<RecordedEvent>> = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = app
            .state
            .store
            .read_all(after, 1000, Some("notification-"))
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        for e in page {
            streams.entry(e.stream.clone()).or_default().push(e);
        }
    }
    streams
}

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

async fn preferences_are_validated_stored_and_read_back(db: &TestDb) {
    let app = spawn_app(db).await;
    let device = app.register().await;
    let token = device["accessToken"].as_str().unwrap();
    // given a learner who never chose: everything off, in the server's zone
    let got = app.get_json("/api/v1/me/notifications", Some(token)).await;
    assert_eq!(got["dailyReminder"], false);
    assert_eq!(got["weeklyDigest"], false);
    assert_eq!(got["timeZone"], "UTC");
    assert_eq!(
        got["delivery"], false,
        "no channel configured on this server"
    );
    // when they opt in with a zone, an hour and quiet hours
    let body = json!({
        "dailyReminder": true, "streakWarning": false, "weeklyDigest": true,
        "channel": "webhook", "timeZone": "Asia/Seoul", "hour": 20,
        "quietHours": {"start": 22, "end": 7}, "language": "ko"
    });
    let r = put_prefs(&app, token, body.clone()).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-teachback-position"));
    // then they read back what they chose
    let got = app.get_json("/api/v1/me/notifications", Some(token)).await;
    for field in [
        "dailyReminder",
        "streakWarning",
        "weeklyDigest",
        "timeZone",
        "hour",
        "quietHours",
        "language",
    ] {
        assert_eq!(got[field], body[field], "{field}");
    }
    // and bad input is refused, naming the field, without touching what was stored
    for (change, field) in [
        (json!({"timeZone": "Mars/Olympus"}), "timeZone"),
        (json!({"hour": 24}), "hour"),
        (json!({"quietHours": {"start": 3, "end": 3}}), "quietHours"),
        (json!({"quietHours": {"start": 30, "end": 3}}), "quietHours"),
        (json!({"language": "fr"}), "language"),
        (json!({"channel": "carrier-pigeon"}), "channel"),
    ] {
        let mut bad = body.clone();
        for (k, v) in change.as_object().unwrap() {
            bad[k] = v.clone();
        }
        let r = put_prefs(&app, token, bad).await;
        assert_eq!(r.status(), 422, "{change}");
        let error: Value = r.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_preferences");
        assert!(
            error["error"]["message"].as_str().unwrap().contains(field),
            "{error}"
        );
    }
    let mut unknown = body.clone();
    unknown["sms"] = json!("+82");
    assert_eq!(put_prefs(&app, token, unknown).await.status(), 422);
    let got = app.get_json("/api/v1/me/notifications", Some(token)).await;
    assert_eq!(got["timeZone"], "Asia/Seoul");
    // the same preferences again append nothing
    let before = history_len(&app).await;
    assert_eq!(put_prefs(&app, token, body).await.status(), 200);
    assert_eq!(history_len(&app).await, before);
    // nobody else's token is needed or accepted: no token, no preferences
    let r = app
        .http
        .get(app.url("/api/v1/me/notifications"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

async fn history_len(app: &TestApp) -> usize {
    app.state
        .store
        .read_all(0, 100_000, None)
        .await
        .unwrap()
        .len()
}

async fn nudges_fire_in_each_learners_time_zone_and_wait_out_quiet_hours(db: &TestDb) {
    let app = spawn_app(db).await;
    let receiver = Receiver::start(0.0, 1).await;
    // Monday 2026-11-30, 07:59 in Seoul (UTC+9) is Sunday 22:59 UTC.
    let clock = Arc::new(ManualClock::new(at("2026-11-29T22:59:00Z")));
    let notifier = notifier(&app, &receiver, &clock, settings(&app.url("")));
    let (seoul, _) = learner(&app, prefs("Asia/Seoul", [false, false, true])).await;
    let (new_york, _) = learner(&app, prefs("America/New_York", [false, false, true])).await;
    let mut late = prefs("Asia/Seoul", [true, false, false]);
    late["hour"] = json!(23);
    late["quietHours"] = json!({"start": 22, "end": 7});
    let (owl, _) = learner(&app, late).await;

    // given a minute before the digest is due in Seoul: only the night owl's Sunday reminder
    // (23:00 Seoul time fell in quiet hours and waited until 07:00)
    assert_eq!(notifier.schedule_due().await.unwrap(), 1);
    // when it is 08:00 Monday in Seoul: the Seoul learner's digest, for ISO week 49
    clock.set(at("2026-11-29T23:00:00Z"));
    assert_eq!(notifier.schedule_due().await.unwrap(), 1);
    // and asking again schedules nothing twice
    assert_eq!(notifier.schedule_due().await.unwrap(), 0);
    // when it is 08:00 Monday in New York (UTC-5)
    clock.set(at("2026-11-30T13:00:00Z"));
    assert_eq!(notifier.schedule_due().await.unwrap(), 1);
    // the night owl's 23:00 reminder falls in quiet hours (22 → 7): not at 23:00 Seoul time...
    clock.set(at("2026-11-30T14:00:00Z"));
    assert_eq!(notifier.schedule_due().await.unwrap(), 0);
    clock.set(at("2026-11-30T21:59:00Z"));
    assert_eq!(notifier.schedule_due().await.unwrap(), 0);
    // ...but at 07:00 the next morning, for Monday's date
    clock.set(at("2026-11-30T22:00:00Z"));
    assert_eq!(notifier.schedule_due().await.unwrap(), 1);

    let scheduled: Vec<Value> = history(&app)
        .await
        .into_values()
        .map(|events| events[0].payload.clone())
        .collect();
    let keys: HashSet<String> = scheduled
        .iter()
        .map(|p| p["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        keys,
        HashSet::from([
            format!("{seoul}:weekly_digest:2026-W49"),
            format!("{new_york}:weekly_digest:2026-W49"),
            format!("{owl}:daily_reminder:2026-11-29"),
            format!("{owl}:daily_reminder:2026-11-30"),
        ])
    );
    let owl_nudge = scheduled
        .iter()
        .find(|p| p["key"] == format!("{owl}:daily_reminder:2026-11-30").as_str())
        .unwrap();
    assert_eq!(owl_nudge["sendAt"], "2026-11-30T22:00:00Z");
    assert!(
        owl_nudge["title"].as_str().unwrap().contains("Today"),
        "{owl_nudge}"
    );

    // and delivery sends all four, once each
    let pass = notifier.deliver_due().await.unwrap();
    assert_eq!(pass.sent, 4);
    assert_eq!(receiver.received().accepted.len(), 4);
    // a reminder that was missed for longer than its window is not sent days late
    clock.set(at("2026-12-03T12:00:00Z"));
    assert_eq!(notifier.schedule_due().await.unwrap(), 0);
}

async fn every_due_nudge_arrives_through_a_failing_receiver_and_a_restarted_worker(db: &TestDb) {
    const LEARNERS: usize = 60;
    let app = spawn_app(db).await;
    // Half the requests fail: 503, 429, answers after the timeout, or the connection dropped
    // after the body was read.
    let receiver = Receiver::start(0.5, 7).await;
    let clock = Arc::new(ManualClock::new(at("2026-11-29T23:00:00Z")));
    let mut users = HashSet::new();
    for _ in 0..LEARNERS {
        let (user, _) = learner(&app, prefs("Asia/Seoul", [false, false, true])).await;
        users.insert(user);
    }
    let first = notifier(&app, &receiver, &clock, settings(&app.url("")));
    assert_eq!(first.schedule_due().await.unwrap(), LEARNERS);

    // The worker is killed in the middle of its first batch...
    let killed = tokio::spawn({
        let first = first.clone();
        async move { first.deliver_due().await }
    });
    while receiver.received().deliveries.values().sum::<u32>() < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    killed.abort();
    assert!(
        killed.await.unwrap_err().is_cancelled(),
        "the batch was cut short"
    );
    // ...and a new one takes over (as after a restart), with time moving on for the retries.
    let second = notifier(&app, &receiver, &clock, settings(&app.url("")));
    for _ in 0..200 {
        second.run_once().await.unwrap();
        let pending = app.state.db.clone();
        if teachback::projection::notifications::next_due(&pending)
            .await
            .unwrap()
            .is_none()
        {
            break;
        }
        clock.advance(SignedDuration::from_secs(5));
    }

    {
        let received = receiver.received();
        let expected: HashSet<String> = users
            .iter()
            .map(|u| format!("{u}:weekly_digest:2026-W49"))
            .collect();
        // Every due nudge reached the receiver, at least once...
        let reached: HashSet<String> = received.deliveries.keys().cloned().collect();
        assert_eq!(reached, expected);
        // ...and the deduplicating receiver accepted each exactly once.
        assert_eq!(received.accepted.len(), LEARNERS);
        assert_eq!(
            received.accepted.iter().collect::<HashSet<_>>().len(),
            LEARNERS
        );
        assert_eq!(received.bad_signatures, 0);
        // The failures really happened, of every kind.
        for kind in ["error", "too_many", "timeout", "slow", "drop"] {
            assert!(
                received.behaviours.get(kind).copied().unwrap_or(0) > 0,
                "{kind}: {:?}",
                received.behaviours
            );
        }
        let deliveries: u32 = received.deliveries.values().sum();
        assert!(deliveries as usize > LEARNERS, "retries happened");
    }

    // The log holds each nudge's whole history: scheduled, failures, then sent exactly once.
    let streams = history(&app).await;
    assert_eq!(streams.len(), LEARNERS);
    for (stream, events) in &streams {
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types[0], "NotificationScheduled", "{stream}");
        assert_eq!(
            *types.last().unwrap(),
            "NotificationSent",
            "{stream}: {types:?}"
        );
        assert_eq!(
            types.iter().filter(|t| **t == "NotificationSent").count(),
            1,
            "{stream}"
        );
        assert!(
            types[1..types.len() - 1]
                .iter()
                .all(|t| *t == "NotificationFailed"),
            "{stream}: {types:?}"
        );
        // Attempts are numbered without gaps.
        let attempts: Vec<u64> = events[1..]
            .iter()
            .map(|e| e.payload["attempt"].as_u64().unwrap())
            .collect();
        assert_eq!(
            attempts,
            (1..=attempts.len() as u64).collect::<Vec<_>>(),
            "{stream}"
        );
    }
}

async fn a_learner_who_opts_out_before_delivery_gets_nothing(db: &TestDb) {
    let app = spawn_app(db).await;
    let receiver = Receiver::start(0.0, 3).await;
    let clock = Arc::new(ManualClock::new(at("2026-11-29T23:00:00Z")));
    let notifier = notifier(&app, &receiver, &clock, settings(&app.url("")));
    let (stays, _) = learner(&app, prefs("Asia/Seoul", [false, false, true])).await;
    let (leaves, token) = learner(&app, prefs("Asia/Seoul", [false, false, true])).await;
    assert_eq!(notifier.schedule_due().await.unwrap(), 2);
    // when one opts out after the nudge was scheduled but before it was sent
    assert_eq!(
        put_prefs(&app, &token, prefs("Asia/Seoul", [false, false, false]))
            .await
            .status(),
        200
    );
    let pass = notifier.deliver_due().await.unwrap();
    // then only the other learner's nudge goes out, and the log says why the other did not
    assert_eq!((pass.sent, pass.cancelled), (1, 1));
    assert_eq!(
        receiver.received().accepted,
        vec![format!("{stays}:weekly_digest:2026-W49")]
    );
    let streams = history(&app).await;
    let cancelled: Vec<&RecordedEvent> = streams
        .values()
        .flatten()
        .filter(|e| e.event_type == "NotificationCancelled")
        .collect();
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0].payload["reason"], "opted_out");
    let stream = &streams[&cancelled[0].stream];
    assert_eq!(stream[0].payload["userId"], leaves.as_str());
}

async fn the_tracked_link_records_one_open_and_leads_into_the_web_client(db: &TestDb) {
    let app = spawn_app_with(db, |c| {
        c.admin_token = Some(SecretString::from(ADMIN.to_owned()));
    })
    .await;
    let receiver = Receiver::start(0.0, 4).await;
    let clock = Arc::new(ManualClock::new(at("2026-11-29T23:00:00Z")));
    let notifier = notifier(&app, &receiver, &clock, settings(&app.url("")));
    let (user, _) = learner(&app, prefs("Asia/Seoul", [false, false, true])).await;
    // a visit before the nudge was delivered leads on but records nothing
    assert_eq!(notifier.schedule_due().await.unwrap(), 1);
    let id =
        teachback_projections::notify::notification_id(&format!("{user}:weekly_digest:2026-W49"));
    let early = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.url(&format!("/n/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(early.status(), 303);
    notifier.run_once().await.unwrap();
    let body = receiver.received().bodies.values().next().cloned().unwrap();
    assert_eq!(body["id"], id.to_string());
    let link = body["link"].as_str().unwrap().to_owned();
    assert!(link.starts_with(&app.url("/n/")), "{link}");
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for _ in 0..2 {
        let r = no_redirects.get(&link).send().await.unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/#/rankings");
    }
    let opened: Vec<RecordedEvent> = history(&app)
        .await
        .into_values()
        .flatten()
        .filter(|e| e.event_type == "NotificationOpened")
        .collect();
    assert_eq!(opened.len(), 1, "a second click records nothing more");
    let r = no_redirects
        .get(app.url(&format!("/n/{}", uuid::Uuid::now_v7())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // and the team sees it in analytics
    app.state
        .notifications
        .wait_for(opened[0].position, Duration::from_secs(5))
        .await;
    let report = app
        .get_json(
            "/api/v1/admin/analytics?from=2026-11-01&to=2026-12-31",
            Some(ADMIN),
        )
        .await;
    let digest = &report["nudges"]["kinds"][0];
    assert_eq!(digest["kind"], "weekly_digest");
    assert_eq!(
        (digest["sent"].as_u64(), digest["opened"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(digest["openRate"], 1.0);
    assert_eq!(digest["failedAttempts"], 0);
}

async fn a_refused_nudge_is_parked_and_listed_for_the_team(db: &TestDb) {
    let app = spawn_app_with(db, |c| {
        c.admin_token = Some(SecretString::from(ADMIN.to_owned()));
    })
    .await;
    // A receiver that refuses the request itself (410 Gone): retrying cannot help.
    let receiver = Receiver::start_with(|_| Behaviour::Accept, 5, 410).await;
    let clock = Arc::new(ManualClock::new(at("2026-11-29T23:00:00Z")));
    let notifier = notifier(&app, &receiver, &clock, settings(&app.url("")));
    let (user, _) = learner(&app, prefs("Asia/Seoul", [false, false, true])).await;
    let pass = notifier.run_once().await.unwrap();
    assert_eq!((pass.scheduled, pass.sent, pass.parked), (1, 0, 1));
    let parked = app
        .get_json("/api/v1/admin/notifications/parked", Some(ADMIN))
        .await;
    let list = parked["parked"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["userId"], user.as_str());
    assert!(
        list[0]["lastError"].as_str().unwrap().contains("410"),
        "{parked}"
    );
    // a parked nudge is not retried
    clock.advance(SignedDuration::from_hours(2));
    assert_eq!(notifier.run_once().await.unwrap(), Default::default());
    assert_eq!(receiver.received().deliveries.values().sum::<u32>(), 1);
}

/// The real server, killed (SIGKILL) while it delivers a batch and started again: every nudge
/// arrives, and each is recorded as sent exactly once.
#[tokio::test]
async fn the_real_server_killed_mid_batch_delivers_every_nudge_after_restart() {
    use crate::process::{free_port, signal, start_with, tail};
    const LEARNERS: usize = 40;
    let receiver = Receiver::start(0.3, 11).await;
    let cwd = tempfile::tempdir().unwrap();
    let port = free_port();
    // Daily reminders every minute, so they are due as soon as learners opt in.
    let env = [
        ("TEACHBACK_NOTIFY_WEBHOOK_URL", receiver.url.as_str()),
        ("TEACHBACK_NOTIFY_WEBHOOK_SECRET", SECRET),
        ("TEACHBACK_NOTIFY_DAILY_CRON", "* * * * *"),
        ("TEACHBACK_NOTIFY_TICK_SECS", "1"),
        ("TEACHBACK_NOTIFY_RETRY_BASE_MS", "100"),
        ("TEACHBACK_NOTIFY_TIMEOUT_SECS", "1"),
        ("TEACHBACK_NOTIFY_CONCURRENCY", "4"),
    ];
    let mut server = start_with(cwd.path(), port, &env).await;
    let http = reqwest::Client::new();
    let mut users = HashSet::new();
    for _ in 0..LEARNERS {
        let device = server.register().await;
        let r = http
            .put(format!("{}/api/v1/me/notifications", server.base))
            .bearer_auth(device["accessToken"].as_str().unwrap())
            .json(&prefs("UTC", [true, false, false]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        users.insert(device["userId"].as_str().unwrap().to_owned());
    }
    // Killed while deliveries are under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while receiver.received().deliveries.values().sum::<u32>() < 10 {
        assert!(std::time::Instant::now() < deadline, "no delivery started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(&server.child, "-KILL");
    server.child.wait().await.unwrap();
    let before = receiver.received().accepted.len();
    assert!(
        before < LEARNERS,
        "the batch was cut short ({before} accepted)"
    );

    let mut server = start_with(cwd.path(), port, &env).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while receiver.received().accepted.len() < LEARNERS {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {LEARNERS} nudges arrived",
            receiver.received().accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One daily reminder per learner (keyed by the UTC date, which the test does not assume).
    let accepted: HashSet<String> = receiver
        .received()
        .accepted
        .iter()
        .map(|key| {
            let (user, rest) = key.split_once(':').unwrap();
            assert!(rest.starts_with("daily_reminder:"), "{key}");
            user.to_owned()
        })
        .collect();
    assert_eq!(accepted, users);
    assert_eq!(receiver.received().bad_signatures, 0);
    // Let the last outcomes be recorded, stop cleanly, and read the log.
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&server.child, "-TERM");
    assert!(server.child.wait().await.unwrap().success());
    let events = tail(cwd.path(), &["--stream-prefix", "notification-"]).await;
    let mut per_stream: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in events {
        per_stream.entry(e.stream).or_default().push(e.event_type);
    }
    assert_eq!(per_stream.len(), LEARNERS);
    for (stream, types) in per_stream {
        assert_eq!(types[0], "NotificationScheduled", "{stream}");
        assert_eq!(
            types.iter().filter(|t| *t == "NotificationSent").count(),
            1,
            "{stream}: {types:?}"
        );
    }
}

async fn a_nudge_the_server_gets_to_late_waits_out_quiet_hours_that_began_meanwhile(db: &TestDb) {
    let app = spawn_app(db).await;
    let receiver = Receiver::start(0.0, 8).await;
    // given a 19:00 reminder (UTC) with quiet hours from 22:00 to 07:00, and a server that was
    // down from before 19:00 until 23:30
    let clock = Arc::new(ManualClock::new(at("2026-12-01T23:30:00Z")));
    let notifier = notifier(&app, &receiver, &clock, settings(&app.url("")));
    let mut body = prefs("UTC", [true, false, false]);
    body["hour"] = json!(19);
    body["quietHours"] = json!({"start": 22, "end": 7});
    let (user, _) = learner(&app, body).await;
    // then it is not sent in the quiet hours...
    assert_eq!(notifier.schedule_due().await.unwrap(), 0);
    clock.set(at("2026-12-02T06:59:00Z"));
    assert_eq!(notifier.schedule_due().await.unwrap(), 0);
    // ...but as they end, still within its 12-hour window
    clock.set(at("2026-12-02T07:00:00Z"));
    assert_eq!(notifier.schedule_due().await.unwrap(), 1);
    notifier.deliver_due().await.unwrap();
    assert_eq!(
        receiver.received().accepted,
        vec![format!("{user}:daily_reminder:2026-12-01")]
    );
}

async fn two_workers_at_once_never_record_a_nudge_as_sent_twice(db: &TestDb) {
    const LEARNERS: usize = 30;
    let app = spawn_app(db).await;
    // Slow answers widen the window in which both workers hold the same nudge.
    let receiver = Receiver::start_with(|_| Behaviour::Slow, 9, 200).await;
    let clock = Arc::new(ManualClock::new(at("2026-11-29T23:00:00Z")));
    for _ in 0..LEARNERS {
        learner(&app, prefs("Asia/Seoul", [false, false, true])).await;
    }
    let a = notifier(&app, &receiver, &clock, settings(&app.url("")));
    let b = notifier(&app, &receiver, &clock, settings(&app.url("")));
    assert_eq!(a.schedule_due().await.unwrap(), LEARNERS);
    // when two workers (two instances) deliver at the same time
    let (pa, pb) = tokio::join!(a.deliver_due(), b.deliver_due());
    let (pa, pb) = (pa.unwrap(), pb.unwrap());
    // then each nudge is recorded as sent once: the second worker's record of a nudge it also
    // sent is refused (the stream moved on), and it does not send that nudge again this pass
    assert_eq!(pa.sent + pb.sent, LEARNERS, "{pa:?} {pb:?}");
    for (stream, events) in history(&app).await {
        let sent = events
            .iter()
            .filter(|e| e.event_type == "NotificationSent")
            .count();
        assert_eq!(sent, 1, "{stream}");
    }
    let received = receiver.received();
    assert_eq!(received.accepted.len(), LEARNERS);
    // at least once: a nudge both workers held was delivered twice, and deduplicated
    let deliveries: u32 = received.deliveries.values().sum();
    assert!(deliveries as usize <= 2 * LEARNERS, "{deliveries}");
}

/// Gives these learners (by access token) weekly-digest preferences, then schedules and
/// delivers their digests through a receiver that fails every first attempt, and opens the
/// first one's link: every kind of nudge event, for tests of the read model.
pub(crate) async fn nudged(app: &TestApp, tokens: &[&str]) {
    let receiver = Receiver::start_with(
        {
            let attempts = AtomicCounter::default();
            move |_| {
                if attempts.next() % 2 == 0 {
                    Behaviour::Error
                } else {
                    Behaviour::Accept
                }
            }
        },
        12,
        200,
    )
    .await;
    for token in tokens {
        assert_eq!(
            put_prefs(app, token, prefs("Asia/Seoul", [false, false, true]))
                .await
                .status(),
            200
        );
    }
    let clock = Arc::new(ManualClock::new(at("2026-11-29T23:00:00Z")));
    let notifier = notifier(app, &receiver, &clock, settings(&app.url("")));
    notifier.schedule_due().await.unwrap();
    for _ in 0..20 {
        notifier.deliver_due().await.unwrap();
        clock.advance(SignedDuration::from_secs(60));
    }
    assert_eq!(receiver.received().accepted.len(), tokens.len());
    let link = receiver.received().bodies.values().next().unwrap()["link"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(link)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
}

/// Counts calls across threads.
#[derive(Default)]
struct AtomicCounter(std::sync::atomic::AtomicUsize);

impl AtomicCounter {
    fn next(&self) -> usize {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}
