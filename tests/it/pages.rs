//! The pages projections serve: the user page, history, rankings (ties, paging, scopes, live
//! feed), the main page, analytics, and projection operations (rebuild equals live, a changed
//! projection rebuilds itself). Real server, real database, the fake provider over real HTTP
//! grading with chosen scores.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use teachback::provider::fake::{ChatReply, FakeOpenAi, FakeOptions, sample_grade};
use uuid::Uuid;

use crate::live_support::{Ws, chunks, learner, speech};
use crate::on_both_backends;
use crate::support::{TestApp, TestDb, spawn_app_on_pool, spawn_app_with};

const ADMIN: &str = "pages-admin-token";
const TCP: &str = "cs.networking.tcp-vs-udp";
const DNS: &str = "cs.networking.dns";
const DEADLOCK: &str = "cs.os.deadlock";
const MITOSIS: &str = "bio.cell.mitosis-meiosis";

on_both_backends!(
    the_user_page_shows_a_learners_own_stats_and_history_only,
    rankings_sum_best_scores_per_topic_share_tied_ranks_and_page,
    rebuilding_every_projection_yields_the_rows_the_live_runner_wrote,
    the_ranking_feed_pushes_moves_as_lectures_are_graded,
    the_main_page_recommends_retries_co_studied_and_next_topics,
    analytics_count_activity_the_funnel_latency_and_cost,
    the_time_zone_sets_the_days,
    a_changed_projection_rebuilds_itself_on_startup,
    metrics_export_projection_lag,
);

fn config(fake: &FakeOpenAi) -> impl FnOnce(&mut teachback::config::Config) + use<> {
    let url = fake.base_url();
    move |c| {
        c.llm_url = Some(url);
        c.llm_model = "fake-grader".into();
        c.admin_token = Some(SecretString::from(ADMIN.to_owned()));
        c.jwt_secret = Some(SecretString::from(
            "pages-test-secret-0123456789abcdef".to_owned(),
        ));
    }
}

async fn fake() -> FakeOpenAi {
    FakeOpenAi::start(FakeOptions {
        chunk_delay: Duration::ZERO,
        ..FakeOptions::default()
    })
    .await
    .unwrap()
}

/// A text lecture on `topic` that the fake grader scores `score`; waits until it is graded.
async fn graded(app: &TestApp, fake: &FakeOpenAi, token: &str, topic: &str, score: u8) -> String {
    let mut grade = sample_grade();
    grade["score"] = json!(score);
    grade["subScores"] = json!({"accuracy": score, "completeness": score, "clarity": score,
        "structure": score});
    fake.push_chat(ChatReply::Grade(grade));
    let r = app
        .http
        .post(app.url("/api/v1/lectures"))
        .bearer_auth(token)
        .json(&json!({"topicId": topic, "language": "en",
            "text": "TCP sets up a connection with a handshake and retransmits lost segments."}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let lecture = r.json::<Value>().await.unwrap()["lectureId"]
        .as_str()
        .unwrap()
        .to_owned();
    let view = eventually(
        app,
        &format!("/api/v1/lectures/{lecture}"),
        Some(token),
        |v| v["processing"] == "graded" || v["processing"] == "failed",
    )
    .await;
    assert_eq!(view["grade"]["score"], score, "{view}");
    lecture
}

/// Polls a GET until `done` holds (the read models follow the log within moments).
async fn eventually(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let value = app.get_json(path, token).await;
        if done(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never got there: {value}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// GETs `path` (with a bearer token when given) and returns the status and the error code.
async fn get_status(app: &TestApp, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = app.http.get(app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    status_and_code(request.send().await.unwrap()).await
}

async fn status_and_code(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].clone())
}

/// Every learner's page is theirs alone.
async fn the_user_page_shows_a_learners_own_stats_and_history_only(db: &TestDb) {
    let fake = fake().await;
    let app = spawn_app_with(db, config(&fake)).await;
    let ana = learner(&app).await;
    let ben = learner(&app).await;
    // given three graded lectures on two topics of one subject
    let first = graded(&app, &fake, &ana, TCP, 60).await;
    let second = graded(&app, &fake, &ana, TCP, 90).await;
    let third = graded(&app, &fake, &ana, DNS, 80).await;

    // then the stats add up: (60 + 90 + 80) / 3 = 76.7, best 90, one day in a row
    let stats = eventually(&app, "/api/v1/me/stats", Some(&ana), |s| {
        s["lecturesGraded"] == 3
    })
    .await;
    assert_eq!(stats["lecturesStarted"], 3);
    assert_eq!(stats["lecturesFinished"], 3);
    assert_eq!(stats["averageScore"], 76.7);
    assert_eq!(stats["bestScore"], 90);
    assert_eq!(stats["currentStreakDays"], 1);
    assert_eq!(stats["longestStreakDays"], 1);
    assert_eq!(stats["timeZone"], "UTC");
    let trend: Vec<u64> = stats["trend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["score"].as_u64().unwrap())
        .collect();
    assert_eq!(trend, [60, 90, 80], "oldest first");
    assert_eq!(
        stats["subjects"],
        json!([{"majorId": "cs", "subjectId": "cs.networking", "graded": 3,
            "averageScore": 76.7, "bestScore": 90}])
    );

    // and the topic's stats count both lectures: (60 + 90) / 2 = 75
    let tcp = eventually(&app, &format!("/api/v1/topics/{TCP}/stats"), None, |t| {
        t["graded"] == 2
    })
    .await;
    assert_eq!(
        tcp,
        json!({"topicId": TCP, "learners": 1, "lectures": 2, "graded": 2, "averageScore": 75.0})
    );
    assert_eq!(
        get_status(&app, "/api/v1/topics/nope/stats", None).await,
        (404, json!("topic_not_found"))
    );

    // and the history pages newest first, with no gaps or repeats
    let page = eventually(&app, "/api/v1/me/lectures?limit=2", Some(&ana), |p| {
        p["lectures"][0]["score"] == 80
    })
    .await;
    let ids = |page: &Value| -> Vec<String> {
        page["lectures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["lectureId"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&page), [third.clone(), second.clone()]);
    assert_eq!(page["lectures"][0]["score"], 80);
    assert_eq!(page["lectures"][0]["processing"], "graded");
    assert_eq!(page["lectures"][0]["status"], "finished");
    assert_eq!(page["lectures"][0]["topicTitle"], "How DNS works");
    let cursor = page["nextCursor"].as_str().unwrap();
    let rest = app
        .get_json(
            &format!("/api/v1/me/lectures?limit=2&cursor={cursor}"),
            Some(&ana),
        )
        .await;
    assert_eq!(ids(&rest), std::slice::from_ref(&first));
    assert_eq!(rest["nextCursor"], Value::Null);

    // and nobody else sees any of it
    let theirs = app.get_json("/api/v1/me/lectures", Some(&ben)).await;
    assert_eq!(theirs["lectures"], json!([]));
    let stats = app.get_json("/api/v1/me/stats", Some(&ben)).await;
    assert_eq!(stats["lecturesStarted"], 0);
    assert_eq!(
        get_status(&app, &format!("/api/v1/lectures/{first}"), Some(&ben))
            .await
            .0,
        404
    );
    assert_eq!(
        get_status(&app, "/api/v1/me/stats", None).await,
        (401, json!("missing_token"))
    );

    // and bad paging is refused clearly
    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=101", "invalid_limit"),
        ("cursor=nonsense", "invalid_cursor"),
        ("limit=ten", "invalid_query"),
        ("page=2", "invalid_query"),
    ] {
        assert_eq!(
            get_status(&app, &format!("/api/v1/me/lectures?{query}"), Some(&ana)).await,
            (400, json!(code)),
            "{query}"
        );
    }
}

/// Points are the sum over topics of the best score; ties share a rank.
async fn rankings_sum_best_scores_per_topic_share_tied_ranks_and_page(db: &TestDb) {
    let fake = fake().await;
    let app = spawn_app_with(db, config(&fake)).await;
    let (ana, ben, cho, dan) = (
        learner(&app).await,
        learner(&app).await,
        learner(&app).await,
        learner(&app).await,
    );
    // given: ana 80 + 70 = 150; ben's best on one topic twice = 90; cho 90 (another major);
    // dan 50
    graded(&app, &fake, &ana, TCP, 80).await;
    graded(&app, &fake, &ana, DEADLOCK, 70).await;
    graded(&app, &fake, &ben, TCP, 90).await;
    graded(&app, &fake, &ben, TCP, 60).await;
    graded(&app, &fake, &cho, MITOSIS, 90).await;
    graded(&app, &fake, &dan, DNS, 50).await;
    let ana_id = app.get_json("/api/v1/me", Some(&ana)).await["userId"].clone();
    let dan_id = app.get_json("/api/v1/me", Some(&dan)).await["userId"].clone();

    // when the week's overall ranking is read
    let page = eventually(&app, "/api/v1/rankings?period=week", Some(&dan), |p| {
        p["total"] == 4
    })
    .await;
    // then 1, 2, 2, 4
    let rows: Vec<(u64, u64)> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["rank"].as_u64().unwrap(), e["points"].as_u64().unwrap()))
        .collect();
    assert_eq!(rows, [(1, 150), (2, 90), (2, 90), (4, 50)]);
    assert_eq!(page["entries"][0]["userId"], ana_id);
    assert_eq!(page["entries"][0]["topics"], 2);
    assert_eq!(page["me"]["rank"], 4);
    assert_eq!(page["me"]["points"], 50);
    assert_eq!(page["me"]["percentile"], 100.0);
    assert!(
        page["me"]["message"].as_str().unwrap().contains("top 100%"),
        "{page}"
    );
    assert_eq!(page["entries"][3]["userId"], dan_id);

    // and in Korean when asked
    let korean: Value = app
        .http
        .get(app.url("/api/v1/rankings?period=month"))
        .bearer_auth(&ana)
        .header("accept-language", "en;q=0.5, ko-KR;q=0.9")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(korean["me"]["rank"], 1);
    assert!(
        korean["me"]["message"]
            .as_str()
            .unwrap()
            .contains("상위 25%"),
        "{korean}"
    );

    // and pages continue exactly after the cursor
    let first = app
        .get_json("/api/v1/rankings?period=all&limit=2", None)
        .await;
    assert_eq!(first["me"], Value::Null);
    let cursor = first["nextCursor"].as_str().unwrap();
    let second = app
        .get_json(
            &format!("/api/v1/rankings?period=all&limit=2&cursor={cursor}"),
            None,
        )
        .await;
    let all: Vec<Value> = first["entries"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["entries"].as_array().unwrap())
        .map(|e| e["userId"].clone())
        .collect();
    let listed: Vec<Value> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["userId"].clone())
        .collect();
    assert_eq!(all, listed);

    // and scopes count only their topics: ana's deadlock (cs.os) alone; cho alone in bio
    let os = app
        .get_json("/api/v1/rankings?subject=cs.os", Some(&ana))
        .await;
    assert_eq!(os["total"], 1);
    assert_eq!(os["entries"][0]["points"], 70);
    let bio = app.get_json("/api/v1/rankings?major=bio", Some(&ana)).await;
    assert_eq!(bio["total"], 1);
    assert_eq!(bio["entries"][0]["points"], 90);
    assert_eq!(bio["me"]["rank"], Value::Null, "ana is not ranked in bio");
    assert_eq!(bio["me"]["points"], 0);
    let week = app.get_json("/api/v1/rankings", None).await;
    assert_eq!(week["period"], "week");
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let (from, to): (jiff::civil::Date, jiff::civil::Date) = (
        week["from"].as_str().unwrap().parse().unwrap(),
        week["to"].as_str().unwrap().parse().unwrap(),
    );
    assert_eq!(from.weekday(), jiff::civil::Weekday::Monday);
    assert!(from <= today && today <= to && (to - from).get_days() == 6);

    // and bad queries are refused clearly
    for (query, code) in [
        ("period=year", "invalid_period"),
        ("major=cs&subject=cs.os", "invalid_scope"),
        ("cursor=x", "invalid_cursor"),
        ("limit=1000", "invalid_limit"),
    ] {
        assert_eq!(
            get_status(&app, &format!("/api/v1/rankings?{query}"), None).await,
            (400, json!(code)),
            "{query}"
        );
    }
    for (query, code) in [
        ("subject=cs.astrology", "unknown_subject"),
        ("major=law", "unknown_major"),
    ] {
        assert_eq!(
            get_status(&app, &format!("/api/v1/rankings?{query}"), None).await,
            (404, json!(code)),
            "{query}"
        );
    }
    assert_eq!(
        get_status(&app, "/api/v1/rankings", Some("forged")).await.0,
        401
    );
}

/// The live feed pushes a learner's move the moment their grade lands.
async fn the_ranking_feed_pushes_moves_as_lectures_are_graded(db: &TestDb) {
    let fake = fake().await;
    let app = spawn_app_with(db, config(&fake)).await;
    let (ana, ben) = (learner(&app).await, learner(&app).await);
    graded(&app, &fake, &ana, TCP, 70).await;
    eventually(&app, "/api/v1/rankings", None, |p| p["total"] == 1).await;
    let mut feed = app
        .http
        .get(app.url("/api/v1/rankings/live?period=week"))
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    // when ben overtakes ana
    graded(&app, &fake, &ben, TCP, 95).await;
    let ben_id = app.get_json("/api/v1/me", Some(&ben)).await["userId"].clone();
    // then a `ranking` event says so
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let message = loop {
        let chunk = tokio::time::timeout_at(deadline, feed.chunk())
            .await
            .expect("no ranking event")
            .unwrap()
            .expect("feed ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(data) = text
            .split("\n\n")
            .filter(|e| e.contains("event: ranking"))
            .find_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        {
            break serde_json::from_str::<Value>(data).unwrap();
        }
    };
    assert_eq!(message["period"], "week");
    assert_eq!(message["total"], 2);
    assert_eq!(
        message["changes"][0],
        json!({"userId": ben_id, "name": message["changes"][0]["name"], "points": 95,
            "rank": 1, "previousRank": null})
    );
}

/// The main page: entry points, recommendations by the documented method, recent lectures.
async fn the_main_page_recommends_retries_co_studied_and_next_topics(db: &TestDb) {
    let fake = fake().await;
    let app = spawn_app_with(db, config(&fake)).await;
    let (ana, ben) = (learner(&app).await, learner(&app).await);
    // given ben taught TCP and deadlock; ana did well on TCP and badly on DNS
    graded(&app, &fake, &ben, TCP, 70).await;
    graded(&app, &fake, &ben, DEADLOCK, 70).await;
    graded(&app, &fake, &ana, TCP, 90).await;
    let dns = graded(&app, &fake, &ana, DNS, 40).await;
    // when ana opens the main page
    let home = eventually(&app, "/api/v1/home", Some(&ana), |h| {
        h["recent"].as_array().is_some_and(|r| r.len() == 2)
            && h["recommended"][0]["reason"] == "retry"
    })
    .await;
    // then DNS is worth a retry, deadlock was co-studied with TCP, and the rest of networking
    // comes next
    let recommended = home["recommended"].as_array().unwrap();
    assert_eq!(recommended.len(), 5);
    assert_eq!(
        (
            &recommended[0]["topicId"],
            &recommended[0]["reason"],
            &recommended[0]["bestScore"]
        ),
        (&json!(DNS), &json!("retry"), &json!(40))
    );
    assert_eq!(
        (
            &recommended[1]["topicId"],
            &recommended[1]["reason"],
            &recommended[1]["because"]
        ),
        (&json!(DEADLOCK), &json!("co_study"), &json!(TCP))
    );
    assert_eq!(recommended[2]["reason"], "next_in_subject");
    assert_eq!(recommended[2]["subjectId"], "cs.networking");
    assert!(
        recommended.iter().all(|r| r["topicId"] != TCP),
        "a topic done well is not recommended"
    );
    assert_eq!(home["recent"][0]["lectureId"], dns.as_str());
    let majors: Vec<&str> = home["catalog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["majorId"].as_str().unwrap())
        .collect();
    assert!(majors.contains(&"cs") && majors.contains(&"bio"));
    assert!(
        home["catalog"][0]["subjects"][0]["topics"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(get_status(&app, "/api/v1/home", None).await.0, 401);
}

/// The team's numbers, from the learning projection.
async fn analytics_count_activity_the_funnel_latency_and_cost(db: &TestDb) {
    let fake = fake().await;
    let app = spawn_app_with(db, config(&fake)).await;
    let (ana, _ben) = (learner(&app).await, learner(&app).await);
    let lecture = graded(&app, &fake, &ana, TCP, 75).await;
    let r = app
        .http
        .post(app.url(&format!("/api/v1/lectures/{lecture}/rating")))
        .bearer_auth(&ana)
        .json(&json!({"rating": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let get = |token: &'static str| {
        app.http
            .get(app.url("/api/v1/admin/analytics"))
            .bearer_auth(token)
            .send()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let report = loop {
        let report: Value = get(ADMIN).await.unwrap().json().await.unwrap();
        if report["funnel"]["rated"] == 1 {
            break report;
        }
        assert!(tokio::time::Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(
        report["funnel"],
        json!({"registered": 2, "started": 1, "finished": 1, "graded": 1, "rated": 1})
    );
    assert_eq!(report["active"]["dau"], 2);
    assert_eq!(report["active"]["mau"], 2);
    let cohort = &report["retention"][0];
    assert_eq!(cohort["size"], 2);
    assert_eq!(cohort["d1"], Value::Null, "tomorrow has not come");
    assert_eq!(report["latency"]["scoreMs"]["count"], 1);
    assert!(report["latency"]["firstTokenMs"]["p50"].as_u64().is_some());
    let provider = &report["providers"][0];
    assert_eq!(
        (&provider["attempts"], &provider["failures"]),
        (&json!(1), &json!(0))
    );
    assert_eq!(provider["errorRate"], 0.0);
    let usage = &report["usage"];
    assert_eq!(usage["lectures"], 1);
    assert!(usage["promptTokens"].as_u64().unwrap() > 0);
    assert!(usage["estimatedCostUsd"].as_f64().unwrap() > 0.0);
    // Learners and bad ranges are refused.
    let r = get("not-the-admin-token").await.unwrap();
    assert_eq!(status_and_code(r).await.0, 401);
    assert_eq!(
        get_status(&app, "/api/v1/admin/analytics?from=2026-02-30", Some(ADMIN)).await,
        (400, json!("invalid_date"))
    );
    assert_eq!(
        get_status(
            &app,
            "/api/v1/admin/analytics?from=2026-03-02&to=2026-03-01",
            Some(ADMIN)
        )
        .await,
        (400, json!("invalid_range"))
    );
}

/// Days are calendar days in the configured zone.
async fn the_time_zone_sets_the_days(db: &TestDb) {
    let fake = fake().await;
    let tweak = config(&fake);
    // UTC+14: at any moment a different date from UTC−12 and usually from UTC.
    let app = spawn_app_with(db, |c| {
        tweak(c);
        c.time_zone = "Pacific/Kiritimati".into();
    })
    .await;
    let ana = learner(&app).await;
    graded(&app, &fake, &ana, TCP, 66).await;
    let zone = jiff::tz::TimeZone::get("Pacific/Kiritimati").unwrap();
    let today = jiff::Timestamp::now().to_zoned(zone).date().to_string();
    let month = eventually(&app, "/api/v1/rankings?period=month", None, |p| {
        p["total"] == 1
    })
    .await;
    assert_eq!(month["to"], today.as_str());
    assert_eq!(month["timeZone"], "Pacific/Kiritimati");
    let report: Value = app
        .http
        .get(app.url("/api/v1/admin/analytics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["timeZone"], "Pacific/Kiritimati");
    assert_eq!(report["active"]["daily"][0]["day"], today.as_str());
    let name = &app.state.learning.name;
    assert_eq!(&**name, "learning.v1@Pacific/Kiritimati");
}

/// Every row of every `learning_*` table, as text, sorted: for comparing a rebuild with the
/// live runner's rows.
async fn learning_dump(db: &teachback::db::Db) -> Vec<String> {
    use teachback::with_pool;
    let mut rows = Vec::new();
    with_pool!(db, pool => {
        for table in ["learning_users", "learning_lectures", "learning_topics"] {
            let part: Vec<(String, i64)> =
                sqlx::query_as(&format!("SELECT doc, position FROM {table}"))
                    .fetch_all(pool)
                    .await
                    .unwrap();
            rows.extend(part.into_iter().map(|(doc, p)| format!("{table}|{doc}|{p}")));
        }
        let part: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT topic_id, other_id, learners FROM learning_costudy")
                .fetch_all(pool)
                .await.unwrap();
        rows.extend(part.into_iter().map(|(a, b, n)| format!("costudy|{a}|{b}|{n}")));
        let part: Vec<(String, Uuid)> = sqlx::query_as("SELECT day, user_id FROM learning_activity")
            .fetch_all(pool)
            .await.unwrap();
        rows.extend(part.into_iter().map(|(d, u)| format!("activity|{d}|{u}")));
        let part: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT day, metric, value FROM learning_daily")
                .fetch_all(pool)
                .await.unwrap();
        rows.extend(part.into_iter().map(|(d, m, n)| format!("daily|{d}|{m}|{n}")));
    });
    rows.sort();
    rows
}

/// A `lectures` row.
type LectureRow = (
    Uuid,
    Uuid,
    String,
    String,
    String,
    String,
    Option<i64>,
    i64,
    i64,
);

/// Every read model, as comparable text.
/// A `notification_prefs` row.
type PrefsDump = (
    Uuid,
    String,
    String,
    String,
    Option<i32>,
    Option<i32>,
    Option<i32>,
    String,
    i64,
);
/// A `notifications` row.
#[derive(Debug, sqlx::FromRow)]
#[allow(dead_code)] // read through Debug
struct NudgeDump {
    notification_id: Uuid,
    user_id: Uuid,
    kind: String,
    period: String,
    notification_key: String,
    channel: String,
    status: String,
    attempts: i64,
    next_attempt_at: i64,
    version: i64,
    message: String,
    scheduled_at: i64,
    sent_at: Option<i64>,
    opened_at: Option<i64>,
    last_error: Option<String>,
}

async fn read_models(app: &TestApp) -> Vec<String> {
    use teachback::with_pool;
    let db = &app.state.db;
    let mut rows: Vec<String> = teachback::projection::users::all_users(db)
        .await
        .unwrap()
        .iter()
        .map(|u| format!("{u:?}"))
        .collect();
    rows.extend(
        teachback::projection::topics::all_topics(db)
            .await
            .unwrap()
            .iter()
            .map(|t| format!("{t:?}")),
    );
    let lectures: Vec<LectureRow> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT lecture_id, user_id, topic_id, mode, status, processing, CAST(score AS BIGINT), \
             started_at, updated_at FROM lectures ORDER BY lecture_id",
        )
        .fetch_all(pool)
        .await
        .unwrap()
    });
    rows.extend(lectures.iter().map(|l| format!("{l:?}")));
    let devices: Vec<(String, Uuid, Uuid, i64)> = with_pool!(db, pool => {
        sqlx::query_as("SELECT token_hash, device_id, user_id, created_at FROM devices ORDER BY token_hash")
            .fetch_all(pool)
            .await
            .unwrap()
    });
    rows.extend(devices.iter().map(|d| format!("{d:?}")));
    rows.extend(learning_dump(db).await);
    let usage: Vec<(Uuid, String, i64, i64, i64, i64)> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT user_id, day, lectures, audio_ms, prompt_tokens, completion_tokens \
             FROM usage_learner_days ORDER BY user_id, day",
        )
        .fetch_all(pool)
        .await
        .unwrap()
    });
    assert!(!usage.is_empty(), "the usage read model is empty");
    rows.extend(usage.iter().map(|u| format!("{u:?}")));
    let days: Vec<(String, i64, i64, i64, i64)> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT day, lectures, audio_ms, prompt_tokens, completion_tokens FROM usage_days \
             ORDER BY day",
        )
        .fetch_all(pool)
        .await
        .unwrap()
    });
    rows.extend(days.iter().map(|d| format!("{d:?}")));
    let prefs: Vec<PrefsDump> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT user_id, kinds, channel, time_zone, hour, quiet_start, quiet_end, language, \
             updated_at FROM notification_prefs ORDER BY user_id",
        )
        .fetch_all(pool)
        .await
        .unwrap()
    });
    rows.extend(prefs.iter().map(|p| format!("{p:?}")));
    let nudges: Vec<NudgeDump> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT notification_id, user_id, kind, period, notification_key, channel, status, \
             attempts, next_attempt_at, version, message, scheduled_at, sent_at, opened_at, \
             last_error FROM notifications ORDER BY notification_id",
        )
        .fetch_all(pool)
        .await
        .unwrap()
    });
    rows.extend(nudges.iter().map(|n| format!("{n:?}")));
    rows
}

/// Waits until every projection has applied the whole log.
async fn caught_up(app: &TestApp) {
    let head = app.state.store.head().await.unwrap();
    for p in app.state.projections() {
        assert!(
            p.wait_for(head, Duration::from_secs(20)).await,
            "{}",
            p.name
        );
    }
}

/// A rebuild from the log equals what the live runner wrote, and the server goes on.
async fn rebuilding_every_projection_yields_the_rows_the_live_runner_wrote(db: &TestDb) {
    let fake = fake().await;
    let app = spawn_app_with(db, config(&fake)).await;
    let (ana, ben) = (learner(&app).await, learner(&app).await);
    let lecture = graded(&app, &fake, &ana, TCP, 80).await;
    graded(&app, &fake, &ana, DNS, 60).await;
    graded(&app, &fake, &ben, TCP, 85).await;
    app.http
        .post(app.url(&format!("/api/v1/lectures/{lecture}/rating")))
        .bearer_auth(&ana)
        .json(&json!({"rating": 4}))
        .send()
        .await
        .unwrap();
    app.http
        .put(app.url("/api/v1/me"))
        .bearer_auth(&ben)
        .json(&json!({"name": "rebuilt-ben"}))
        .send()
        .await
        .unwrap();
    // Nudges: preferences, one delivered after a failure, one sent and opened.
    crate::notify::nudged(&app, &[&ana, &ben]).await;
    caught_up(&app).await;
    let live = read_models(&app).await;
    assert!(live.iter().any(|r| r.contains("rebuilt-ben")));
    assert!(live.iter().any(|r| r.contains("weekly_digest")));

    // when every projection is rebuilt while the server runs
    for projector in app.state.projectors.iter() {
        let report = teachback::projection::ops::rebuild(
            &app.state.db,
            &app.state.store,
            &**projector,
            &|_| {},
        )
        .await
        .unwrap();
        assert!(report.events > 0);
    }
    // then the rows are exactly the same
    assert_eq!(read_models(&app).await, live);

    // and the live runners carry on into the swapped-in tables
    graded(&app, &fake, &ben, DNS, 70).await;
    eventually(&app, "/api/v1/me/stats", Some(&ben), |s| {
        s["lecturesGraded"] == 2
    })
    .await;
    let (head, standings) = teachback::projection::ops::status(
        &app.state.db,
        &app.state.store,
        &app.state
            .projectors
            .iter()
            .map(|p| &**p)
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert!(head > 0);
    assert_eq!(standings.len(), app.state.projectors.len());
    assert_eq!(standings.len(), 6);
    caught_up(&app).await;
    let after = read_models(&app).await;
    for projector in app.state.projectors.iter() {
        teachback::projection::ops::rebuild(&app.state.db, &app.state.store, &**projector, &|_| {})
            .await
            .unwrap();
    }
    assert_eq!(read_models(&app).await, after);
}

/// A projection whose version changed rebuilds from the log when the server starts.
async fn a_changed_projection_rebuilds_itself_on_startup(db: &TestDb) {
    use teachback::with_pool;
    let fake = fake().await;
    let app = spawn_app_with(db, config(&fake)).await;
    let ana = learner(&app).await;
    graded(&app, &fake, &ana, TCP, 77).await;
    caught_up(&app).await;
    let before = learning_dump(&app.state.db).await;
    drop(app);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // given the stored rows came from an "older version" (another name) and are now wrong
    let pool = db.reconnect().await;
    with_pool!(&pool, p => {
        sqlx::query("UPDATE projection_checkpoints SET name = 'learning.v0@UTC' WHERE name = 'learning.v1@UTC'")
            .execute(p).await.unwrap();
        sqlx::query("DELETE FROM learning_lectures").execute(p).await.unwrap();
    });
    // when the server starts
    let app = spawn_app_on_pool(pool, config(&fake), None).await;
    // then it rebuilds the projection and drops the old checkpoint
    caught_up(&app).await;
    assert_eq!(learning_dump(&app.state.db).await, before);
    let old = teachback::projection::find_checkpoint(&app.state.db, "learning.v0@UTC")
        .await
        .unwrap();
    assert_eq!(old, None);
    let stats = app.get_json("/api/v1/me/stats", Some(&ana)).await;
    assert_eq!(stats["bestScore"], 77);
}

/// `/metrics` exports every projection's lag, and the series operators watch: HTTP, WebSockets,
/// live lectures and acks, appends, providers (latency, errors, retries, circuit state), tokens.
async fn metrics_export_projection_lag(db: &TestDb) {
    let fake = fake().await;
    let app = spawn_app_with(db, config(&fake)).await;
    let token = learner(&app).await;
    // a graded lecture (a provider call, tokens), a provider error that is retried, a live
    // lecture with acknowledged audio
    fake.push_chat(ChatReply::Error {
        status: 503,
        shape: teachback::provider::fake::ErrorShape::Nested,
        message: "overloaded".into(),
        error_type: None,
        code: None,
        retry_after: None,
        retry_after_ms: Some(1),
        should_retry: None,
    });
    graded(&app, &fake, &token, TCP, 81).await;
    let mut ws = Ws::connect(&app, &token).await;
    ws.start_pcm(TCP).await;
    let pieces = chunks(&speech(500, 3));
    ws.send_chunks(1, &pieces).await;
    ws.wait_ack(pieces.len() as u64).await;
    caught_up(&app).await;
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The recorder is the process's: other servers of this test binary set the same gauges,
    // so values are only checked where they are this server's alone.
    for name in ["users.v1", "topics.v1", "lectures.v1", "learning.v1@UTC"] {
        assert!(
            text.contains(&format!(
                "teachback_projection_lag_events{{projection=\"{name}\"}} "
            )),
            "{name} missing:\n{text}"
        );
    }
    let llm = fake
        .base_url()
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_owned();
    for series in [
        "teachback_http_requests_total{method=\"POST\",route=\"/api/v1/lectures\",status=\"201\"}",
        "teachback_http_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/lectures/{id}\"",
        "teachback_ws_connections_total{endpoint=\"live\"}",
        "teachback_ws_connections{endpoint=\"live\"} ",
        "teachback_live_lectures ",
        "teachback_audio_acks_total",
        "teachback_store_appends_total{outcome=\"committed\"}",
        "teachback_store_append_duration_seconds_bucket",
        "teachback_provider_request_duration_seconds_bucket{kind=\"llm\"",
        "teachback_provider_errors_total{kind=\"llm\"",
        "teachback_provider_retries_total{",
        "teachback_provider_circuit_state{kind=\"llm\"",
        "teachback_llm_tokens_total{type=\"prompt\",model=\"fake-grader\"}",
        "teachback_grades_total{grader=\"llm\"}",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
    assert!(
        text.contains(&format!("provider=\"{llm}\"")),
        "{llm}:\n{text}"
    );
    // Every series the Grafana dashboard charts is exported.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker/grafana/teachback.json"
    ))
    .unwrap();
    for piece in dashboard.split("teachback_").skip(1) {
        let name: String = piece
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        assert!(
            text.contains(&format!("teachback_{name}")),
            "the dashboard charts teachback_{name}, which /metrics lacks"
        );
    }
    drop(ws);
}
