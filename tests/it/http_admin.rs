//! The admin catalogue endpoints over HTTP, on every backend.

use secrecy::SecretString;
use serde_json::{Value, json};
use teachback::http::POSITION_HEADER;
use teachback::store::Direction;

use crate::support::{TestApp, TestDb, spawn_app, spawn_app_with};

crate::on_both_backends!(
    admin_endpoints_do_not_exist_without_an_admin_token,
    a_missing_or_wrong_admin_token_is_refused,
    a_created_topic_is_served_and_a_second_create_conflicts,
    put_creates_and_edits_and_the_same_put_twice_appends_once,
    put_can_revert_a_topic_to_an_earlier_version,
    invalid_topics_are_refused_with_a_reason,
    a_put_body_must_name_the_topic_in_the_path,
);

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

async fn spawn_admin_app(db: &TestDb) -> TestApp {
    spawn_app_with(db, |c| {
        c.admin_token = Some(SecretString::from(ADMIN_TOKEN.to_owned()));
    })
    .await
}

fn topic(id: &str, title_en: &str) -> Value {
    json!({
        "topicId": id,
        "major": { "id": "cs", "name": { "en": "Computer Science", "ko": "컴퓨터공학" } },
        "subject": { "id": "cs.networking", "name": { "en": "Networking", "ko": "네트워크" } },
        "title": { "en": title_en, "ko": "QUIC 프로토콜" },
        "description": { "en": "Why QUIC runs over UDP.", "ko": "QUIC이 UDP 위에서 동작하는 이유." },
        "keyConcepts": { "en": ["0-RTT", "streams"], "ko": ["0-RTT", "스트림"] }
    })
}

/// Every event in the `catalog` stream.
async fn catalog_events(app: &TestApp) -> Vec<teachback_events::RecordedEvent> {
    app.state
        .store
        .read_stream("catalog", 0, Direction::Forwards, 100_000)
        .await
        .unwrap()
}

async fn post(app: &TestApp, body: &Value, token: Option<&str>) -> reqwest::Response {
    let mut request = app.http.post(app.url("/api/v1/admin/topics")).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn put(app: &TestApp, id: &str, body: &Value, token: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .put(app.url(&format!("/api/v1/admin/topics/{id}")))
        .json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn position(response: &reqwest::Response) -> u64 {
    response
        .headers()
        .get(POSITION_HEADER)
        .expect("a write answers with its position")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The topics of the catalogue tree with this id, with their subject's and major's ids.
fn find_in_catalog<'a>(catalog: &'a Value, id: &str) -> Vec<(&'a str, &'a str, &'a Value)> {
    let mut found = Vec::new();
    for major in catalog["majors"].as_array().unwrap() {
        for subject in major["subjects"].as_array().unwrap() {
            for topic in subject["topics"].as_array().unwrap() {
                if topic["topicId"] == id {
                    found.push((
                        major["id"].as_str().unwrap(),
                        subject["id"].as_str().unwrap(),
                        topic,
                    ));
                }
            }
        }
    }
    found
}

async fn admin_endpoints_do_not_exist_without_an_admin_token(db: &TestDb) {
    let app = spawn_app(db).await;
    let before = catalog_events(&app).await.len();
    let body = topic("cs.networking.quic", "QUIC");
    for token in [None, Some(ADMIN_TOKEN), Some("")] {
        let response = post(&app, &body, token).await;
        assert_eq!(response.status(), 404);
        assert_eq!(error_code(response).await, "not_found");
        let response = put(&app, "cs.networking.quic", &body, token).await;
        assert_eq!(response.status(), 404);
        assert_eq!(error_code(response).await, "not_found");
    }
    assert_eq!(catalog_events(&app).await.len(), before);
}

async fn a_missing_or_wrong_admin_token_is_refused(db: &TestDb) {
    let app = spawn_admin_app(db).await;
    let before = catalog_events(&app).await.len();
    let learner = app.register().await;
    let access_token = learner["accessToken"].as_str().unwrap().to_owned();
    let body = topic("cs.networking.quic", "QUIC");
    let wrong = format!("{ADMIN_TOKEN}x");
    for token in [
        None,
        Some(""),
        Some("wrong"),
        Some(wrong.as_str()),
        Some(access_token.as_str()),
    ] {
        let response = post(&app, &body, token).await;
        assert_eq!(response.status(), 401, "{token:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(error_code(response).await, "invalid_admin_token");
        let response = put(&app, "cs.networking.quic", &body, token).await;
        assert_eq!(response.status(), 401, "{token:?}");
        assert_eq!(error_code(response).await, "invalid_admin_token");
    }
    // The right token under another scheme is not accepted either.
    let response = app
        .http
        .post(app.url("/api/v1/admin/topics"))
        .header("authorization", format!("Basic {ADMIN_TOKEN}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(catalog_events(&app).await.len(), before);
    let missing = app
        .http
        .get(app.url("/api/v1/topics/cs.networking.quic"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

async fn a_created_topic_is_served_and_a_second_create_conflicts(db: &TestDb) {
    let app = spawn_admin_app(db).await;
    let before = catalog_events(&app).await.len();
    let mut body = topic("cs.networking.quic", "  QUIC  ");
    let correlation = uuid::Uuid::now_v7();
    let response = app
        .http
        .post(app.url("/api/v1/admin/topics"))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-request-id", correlation.to_string())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let at = position(&response);
    let created: Value = response.json().await.unwrap();
    // Texts are stored trimmed; the answer is the topic as stored.
    body["title"]["en"] = json!("QUIC");
    assert_eq!(created, body);

    // Visible at once, without waiting, in both reads.
    let read: Value = app
        .get_json("/api/v1/topics/cs.networking.quic", None)
        .await;
    assert_eq!(read, body);
    let catalog = app.get_json("/api/v1/catalog", None).await;
    let found = find_in_catalog(&catalog, "cs.networking.quic");
    assert_eq!(found.len(), 1, "{catalog}");
    let (major, subject, t) = found[0];
    assert_eq!((major, subject), ("cs", "cs.networking"));
    assert_eq!(t["title"]["en"], "QUIC");
    assert_eq!(t["keyConcepts"]["ko"], json!(["0-RTT", "스트림"]));

    // One event, at the answered position, carrying the request's metadata.
    let events = catalog_events(&app).await;
    assert_eq!(events.len(), before + 1);
    let event = events.last().unwrap();
    assert_eq!(event.position, at);
    assert_eq!(event.event_type, "TopicPublished");
    assert_eq!(event.payload, body);
    assert_eq!(event.metadata.correlation_id, Some(correlation));

    // A second create of the same id (same or other content) conflicts and appends nothing.
    for again in [body.clone(), topic("cs.networking.quic", "Other")] {
        let response = post(&app, &again, Some(ADMIN_TOKEN)).await;
        assert_eq!(response.status(), 409);
        assert_eq!(error_code(response).await, "topic_exists");
    }
    // So does creating a topic of the starter catalogue.
    let mut starter = app
        .get_json("/api/v1/topics/cs.networking.tcp-vs-udp", None)
        .await;
    starter["title"]["en"] = json!("changed");
    let response = post(&app, &starter, Some(ADMIN_TOKEN)).await;
    assert_eq!(response.status(), 409);
    assert_eq!(error_code(response).await, "topic_exists");
    assert_eq!(catalog_events(&app).await.len(), before + 1);
    let read: Value = app
        .get_json("/api/v1/topics/cs.networking.quic", None)
        .await;
    assert_eq!(read["title"]["en"], "QUIC");
}

async fn put_creates_and_edits_and_the_same_put_twice_appends_once(db: &TestDb) {
    let app = spawn_admin_app(db).await;
    let before = catalog_events(&app).await.len();

    // An edit of a starter topic.
    let mut tcp = app
        .get_json("/api/v1/topics/cs.networking.tcp-vs-udp", None)
        .await;
    assert_ne!(tcp["title"]["en"], "TCP and UDP, edited");
    tcp["title"]["en"] = json!("TCP and UDP, edited");
    tcp["keyConcepts"]["en"]
        .as_array_mut()
        .unwrap()
        .push(json!("head-of-line blocking"));
    let first = put(&app, "cs.networking.tcp-vs-udp", &tcp, Some(ADMIN_TOKEN)).await;
    assert_eq!(first.status(), 200);
    let first_position = position(&first);
    assert_eq!(first.json::<Value>().await.unwrap(), tcp);
    let read = app
        .get_json("/api/v1/topics/cs.networking.tcp-vs-udp", None)
        .await;
    assert_eq!(read, tcp);
    let catalog = app.get_json("/api/v1/catalog", None).await;
    let found = find_in_catalog(&catalog, "cs.networking.tcp-vs-udp");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].2["title"]["en"], "TCP and UDP, edited");
    assert_eq!(catalog_events(&app).await.len(), before + 1);

    // The same PUT again is a no-op answering with the same position.
    let second = put(&app, "cs.networking.tcp-vs-udp", &tcp, Some(ADMIN_TOKEN)).await;
    assert_eq!(second.status(), 200);
    assert_eq!(position(&second), first_position);
    assert_eq!(second.json::<Value>().await.unwrap(), tcp);
    let events = catalog_events(&app).await;
    assert_eq!(events.len(), before + 1, "the same PUT appended again");
    assert_eq!(events.last().unwrap().position, first_position);

    // PUT of an unknown id creates the topic.
    let quic = topic("cs.networking.quic", "QUIC");
    let response = put(&app, "cs.networking.quic", &quic, Some(ADMIN_TOKEN)).await;
    assert_eq!(response.status(), 200);
    let read = app
        .get_json("/api/v1/topics/cs.networking.quic", None)
        .await;
    assert_eq!(read, quic);
    assert_eq!(catalog_events(&app).await.len(), before + 2);

    // A restart republishes the starter catalogue without undoing the edit.
    let again = spawn_admin_app(db).await;
    assert_eq!(catalog_events(&again).await.len(), before + 2);
    let read = again
        .get_json("/api/v1/topics/cs.networking.tcp-vs-udp", None)
        .await;
    assert_eq!(read["title"]["en"], "TCP and UDP, edited");
}

async fn put_can_revert_a_topic_to_an_earlier_version(db: &TestDb) {
    let app = spawn_admin_app(db).await;
    let before = catalog_events(&app).await.len();
    let original = app.get_json("/api/v1/topics/cs.os.deadlock", None).await;
    let mut edited = original.clone();
    edited["description"]["en"] = json!("edited");

    let response = put(&app, "cs.os.deadlock", &edited, Some(ADMIN_TOKEN)).await;
    assert_eq!(response.status(), 200);
    let response = put(&app, "cs.os.deadlock", &original, Some(ADMIN_TOKEN)).await;
    assert_eq!(response.status(), 200);
    let reverted = position(&response);
    // Back to the starter content: a new event, not a no-op on the starter's own event.
    let read = app.get_json("/api/v1/topics/cs.os.deadlock", None).await;
    assert_eq!(read, original);
    let events = catalog_events(&app).await;
    assert_eq!(events.len(), before + 2);
    assert_eq!(events.last().unwrap().position, reverted);

    // And forwards again to the edit.
    let response = put(&app, "cs.os.deadlock", &edited, Some(ADMIN_TOKEN)).await;
    assert_eq!(response.status(), 200);
    let read = app.get_json("/api/v1/topics/cs.os.deadlock", None).await;
    assert_eq!(read, edited);
    assert_eq!(catalog_events(&app).await.len(), before + 3);
}

/// A change that makes a valid topic invalid.
type Change = Box<dyn Fn(&mut Value)>;

async fn invalid_topics_are_refused_with_a_reason(db: &TestDb) {
    let app = spawn_admin_app(db).await;
    let before = catalog_events(&app).await.len();
    let valid = topic("cs.networking.quic", "QUIC");
    let long = |n: usize| "가".repeat(n);
    let many = |n: usize| (0..n).map(|i| format!("concept {i}")).collect::<Vec<_>>();
    // (what is wrong, a change making it so, a word the message must contain)
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "uppercase id",
            Box::new(|t| t["topicId"] = json!("cs.networking.QUIC")),
            "topicId",
        ),
        (
            "underscore in id",
            Box::new(|t| t["topicId"] = json!("cs.networking.q_uic")),
            "topicId",
        ),
        (
            "empty id part",
            Box::new(|t| t["topicId"] = json!("cs.networking..quic")),
            "topicId",
        ),
        (
            "id of 101 characters",
            Box::new(|t| t["topicId"] = json!(format!("cs.networking.{}", "q".repeat(87)))),
            "topicId",
        ),
        (
            "id outside its subject",
            Box::new(|t| t["topicId"] = json!("cs.os.quic")),
            "subject",
        ),
        (
            "id that is only the subject",
            Box::new(|t| t["topicId"] = json!("cs.networking.")),
            "topicId",
        ),
        (
            "major id not a slug",
            Box::new(|t| t["major"]["id"] = json!("Computer Science")),
            "major.id",
        ),
        (
            "subject id not a slug",
            Box::new(|t| {
                t["subject"]["id"] = json!("cs_networking");
                t["topicId"] = json!("cs_networking.quic");
            }),
            "subject.id",
        ),
        ("no title", Box::new(|t| t["title"] = json!({})), "title"),
        (
            "blank title",
            Box::new(|t| t["title"] = json!({ "en": "   " })),
            "title.en",
        ),
        (
            "no description",
            Box::new(|t| t["description"] = json!({})),
            "description",
        ),
        (
            "uppercase language",
            Box::new(|t| t["title"]["EN"] = json!("QUIC")),
            "EN",
        ),
        (
            "3-letter language",
            Box::new(|t| t["description"]["eng"] = json!("x")),
            "eng",
        ),
        (
            "bad key-concept language",
            Box::new(|t| t["keyConcepts"]["k"] = json!([])),
            "keyConcepts",
        ),
        (
            "bad name language",
            Box::new(|t| t["major"]["name"]["en-US"] = json!("CS")),
            "major.name",
        ),
        (
            "no major name",
            Box::new(|t| t["major"]["name"] = json!({})),
            "major.name",
        ),
        (
            "description of 2001 characters",
            Box::new(move |t| t["description"]["ko"] = json!(format!(" {} ", long(2001)))),
            "description.ko",
        ),
        (
            "title of 2001 characters",
            Box::new(move |t| t["title"]["en"] = json!(long(2001))),
            "title.en",
        ),
        (
            "31 key concepts",
            Box::new(move |t| t["keyConcepts"]["en"] = json!(many(31))),
            "keyConcepts.en",
        ),
        (
            "a key concept of 201 characters",
            Box::new(move |t| t["keyConcepts"]["ko"][1] = json!(long(201))),
            "keyConcepts.ko[1]",
        ),
        (
            "an empty key concept",
            Box::new(|t| t["keyConcepts"]["en"][0] = json!(" ")),
            "keyConcepts.en[0]",
        ),
    ];
    for (what, change, mentions) in &cases {
        let mut body = valid.clone();
        change(&mut body);
        let id = body["topicId"].as_str().unwrap().to_owned();
        for response in [
            post(&app, &body, Some(ADMIN_TOKEN)).await,
            put(&app, &id, &body, Some(ADMIN_TOKEN)).await,
        ] {
            assert_eq!(response.status(), 422, "{what}");
            let error: Value = response.json().await.unwrap();
            assert_eq!(error["error"]["code"], "invalid_topic", "{what}: {error}");
            let message = error["error"]["message"].as_str().unwrap();
            assert!(message.contains(mentions), "{what}: {message}");
        }
    }

    // The limits themselves are allowed (texts count characters, after trimming).
    let mut at_limits = valid.clone();
    at_limits["topicId"] = json!(format!("cs.networking.{}", "q".repeat(86)));
    at_limits["description"]["ko"] = json!(format!("  {}  ", long(2000)));
    at_limits["keyConcepts"]["en"] = json!(many(30));
    at_limits["keyConcepts"]["ko"] = json!([long(200)]);
    let response = post(&app, &at_limits, Some(ADMIN_TOKEN)).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    assert_eq!(catalog_events(&app).await.len(), before + 1);

    // Unknown fields are refused by the body parser.
    let mut unknown = valid.clone();
    unknown["author"] = json!("me");
    let response = post(&app, &unknown, Some(ADMIN_TOKEN)).await;
    assert_eq!(response.status(), 422);
    assert_eq!(error_code(response).await, "invalid_body");
    assert_eq!(catalog_events(&app).await.len(), before + 1);
}

async fn a_put_body_must_name_the_topic_in_the_path(db: &TestDb) {
    let app = spawn_admin_app(db).await;
    let before = catalog_events(&app).await.len();
    let body = topic("cs.networking.quic", "QUIC");
    let response = put(&app, "cs.networking.other", &body, Some(ADMIN_TOKEN)).await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "topic_id_mismatch");
    assert_eq!(catalog_events(&app).await.len(), before);
    for id in ["cs.networking.quic", "cs.networking.other"] {
        let response = app
            .http
            .get(app.url(&format!("/api/v1/topics/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{id}");
    }
}
