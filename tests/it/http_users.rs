//! Device auto-login, refresh, the profile and renames, over real HTTP, on every backend.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use teachback::projection::users::all_users;
use teachback_projections::users::UsersView;

use crate::support::{TestDb, spawn_app};

crate::on_both_backends!(
    a_new_device_gets_a_learner_with_a_default_name_and_working_tokens,
    a_device_token_buys_a_fresh_access_token_and_an_unknown_one_does_not,
    a_rename_is_visible_to_the_very_next_read,
    names_are_unique_ignoring_case_and_a_released_name_can_be_taken,
    of_many_learners_racing_for_one_name_exactly_one_gets_it,
    bad_input_gets_a_clear_error_and_leaves_the_log_untouched,
    the_users_read_model_equals_a_fold_of_the_log,
);

async fn error_code(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "an error without a message: {body}");
    (status, body["error"]["code"].as_str().unwrap().to_owned())
}

async fn a_new_device_gets_a_learner_with_a_default_name_and_working_tokens(db: &TestDb) {
    let app = spawn_app(db).await;
    let response = app
        .http
        .post(app.url("/api/v1/devices"))
        .json(&json!({ "platform": "android", "appVersion": "1.0.0" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let position: u64 = response.headers()["x-teachback-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let creds: Value = response.json().await.unwrap();
    let name = creds["name"].as_str().unwrap();
    assert!(
        name.starts_with("사용자") && name.chars().count() == 9,
        "{name}"
    );
    assert!(creds["deviceToken"].as_str().unwrap().starts_with("tbd_"));
    assert_eq!(creds["tokenType"], "Bearer");

    let me: Value = app
        .get_json("/api/v1/me", Some(creds["accessToken"].as_str().unwrap()))
        .await;
    assert_eq!(me["userId"], creds["userId"]);
    assert_eq!(me["name"], creds["name"]);

    // The log holds the registration with the client's facts, and never the device token.
    let events = app.state.store.read_all(0, 100, None).await.unwrap();
    assert_eq!(events.last().unwrap().position, position);
    let registered = events
        .iter()
        .find(|e| e.event_type == "DeviceRegistered")
        .unwrap();
    assert_eq!(
        registered
            .metadata
            .client
            .as_ref()
            .unwrap()
            .platform
            .as_deref(),
        Some("android")
    );
    let token = creds["deviceToken"].as_str().unwrap();
    for e in &events {
        assert!(
            !e.payload.to_string().contains(&token[4..]),
            "device token stored in the log"
        );
    }
    // Two devices, two distinct learners and names.
    let other = app.register().await;
    assert_ne!(other["userId"], creds["userId"]);
    assert_ne!(other["name"], creds["name"]);
}

async fn a_device_token_buys_a_fresh_access_token_and_an_unknown_one_does_not(db: &TestDb) {
    let app = spawn_app(db).await;
    let creds = app.register().await;
    let fresh: Value = app
        .http
        .post(app.url("/api/v1/auth/refresh"))
        .json(&json!({ "deviceToken": creds["deviceToken"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let me = app
        .http
        .get(app.url("/api/v1/me"))
        .bearer_auth(fresh["accessToken"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    assert_eq!(me.json::<Value>().await.unwrap()["userId"], creds["userId"]);

    let refused = app
        .http
        .post(app.url("/api/v1/auth/refresh"))
        .json(&json!({ "deviceToken": "tbd_not-a-real-token" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(refused).await,
        (StatusCode::UNAUTHORIZED, "invalid_device_token".into())
    );
}

async fn rename(app: &crate::support::TestApp, token: &Value, name: &str) -> reqwest::Response {
    app.http
        .put(app.url("/api/v1/me"))
        .bearer_auth(token.as_str().unwrap())
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap()
}

async fn a_rename_is_visible_to_the_very_next_read(db: &TestDb) {
    let app = spawn_app(db).await;
    let creds = app.register().await;
    for name in ["Ada", "에이다 러브레이스", "Grace"] {
        let put = rename(&app, &creds["accessToken"], name).await;
        assert_eq!(put.status(), 200);
        assert_eq!(put.json::<Value>().await.unwrap()["name"], name);
        let me: Value = app
            .get_json("/api/v1/me", Some(creds["accessToken"].as_str().unwrap()))
            .await;
        assert_eq!(me["name"], name);
    }
    // Renaming to the current name changes nothing and appends nothing.
    let head = app.state.store.head().await.unwrap();
    assert_eq!(
        rename(&app, &creds["accessToken"], "Grace").await.status(),
        200
    );
    assert_eq!(app.state.store.head().await.unwrap(), head);
}

async fn names_are_unique_ignoring_case_and_a_released_name_can_be_taken(db: &TestDb) {
    let app = spawn_app(db).await;
    let a = app.register().await;
    let b = app.register().await;
    assert_eq!(rename(&app, &a["accessToken"], "Ada").await.status(), 200);
    let taken = rename(&app, &b["accessToken"], "aDA").await;
    assert_eq!(
        error_code(taken).await,
        (StatusCode::CONFLICT, "name_taken".into())
    );
    // A learner may change the case of their own name.
    assert_eq!(rename(&app, &a["accessToken"], "ADA").await.status(), 200);
    // b cannot take a's default name either, until a gives "Ada" up.
    let a_default = a["name"].as_str().unwrap();
    assert_eq!(
        rename(&app, &b["accessToken"], a_default).await.status(),
        200,
        "a's default name was released when a renamed"
    );
    assert_eq!(rename(&app, &a["accessToken"], "Grace").await.status(), 200);
    assert_eq!(rename(&app, &b["accessToken"], "ada").await.status(), 200);
}

async fn of_many_learners_racing_for_one_name_exactly_one_gets_it(db: &TestDb) {
    let app = spawn_app(db).await;
    let mut tokens = Vec::new();
    for _ in 0..8 {
        tokens.push(app.register().await["accessToken"].clone());
    }
    let spellings = ["Turing", "TURING", "turing", "TuRiNg"];
    let results = futures::future::join_all(
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| rename(&app, t, spellings[i % 4])),
    )
    .await;
    let statuses: Vec<u16> = results.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    let names: Vec<String> = all_users(&app.state.db)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name.to_lowercase())
        .collect();
    assert_eq!(names.iter().filter(|n| *n == "turing").count(), 1);
    assert_eq!(
        names.iter().collect::<HashSet<_>>().len(),
        names.len(),
        "duplicate names: {names:?}"
    );
}

async fn bad_input_gets_a_clear_error_and_leaves_the_log_untouched(db: &TestDb) {
    let app = spawn_app(db).await;
    let creds = app.register().await;
    let token = creds["accessToken"].as_str().unwrap().to_owned();
    let head = app.state.store.head().await.unwrap();
    let put = |body: reqwest::Body, content_type: &'static str| {
        app.http
            .put(app.url("/api/v1/me"))
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases: Vec<(reqwest::Response, StatusCode, &str)> = vec![
        (
            put("{\"name\": ".into(), "application/json").await.unwrap(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            put("{\"name\": 42}".into(), "application/json")
                .await
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            put("{}".into(), "application/json").await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            put(
                "{\"name\": \"Ada\", \"admin\": true}".into(),
                "application/json",
            )
            .await
            .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            put("name=Ada".into(), "text/plain").await.unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            put(
                format!("{{\"name\": \"{}\"}}", "a".repeat(70_000)).into(),
                "application/json",
            )
            .await
            .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            put("{\"name\": \"A\"}".into(), "application/json")
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            put(
                format!("{{\"name\": \"{}\"}}", "가".repeat(21)).into(),
                "application/json",
            )
            .await
            .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            put("{\"name\": \"Ad\\u0000a\"}".into(), "application/json")
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            app.http
                .post(app.url("/api/v1/devices"))
                .body("{oops")
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            app.http
                .post(app.url("/api/v1/devices"))
                .body(vec![b' '; 70_000])
                .send()
                .await
                .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            app.http
                .post(app.url("/api/v1/devices"))
                .json(&json!({"platform": 7}))
                .send()
                .await
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            app.http.get(app.url("/api/v1/me")).send().await.unwrap(),
            StatusCode::UNAUTHORIZED,
            "missing_token",
        ),
        (
            app.http
                .get(app.url("/api/v1/me"))
                .header("authorization", "Basic abc")
                .send()
                .await
                .unwrap(),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            app.http
                .get(app.url("/api/v1/me"))
                .bearer_auth("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.forged")
                .send()
                .await
                .unwrap(),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            app.http
                .get(app.url("/api/v1/nothing-here"))
                .send()
                .await
                .unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            app.http
                .delete(app.url("/api/v1/devices"))
                .send()
                .await
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (i, (response, status, code)) in cases.into_iter().enumerate() {
        assert_eq!(
            error_code(response).await,
            (status, code.to_owned()),
            "case {i}"
        );
    }

    // An expired token, and a token signed with another secret, are refused.
    let user: uuid::Uuid = creds["userId"].as_str().unwrap().parse().unwrap();
    let now = jiff::Timestamp::now().as_second();
    let (expired, _) = app
        .state
        .keys
        .issue_at(user, now - 7200, now - 3600)
        .unwrap();
    let response = app
        .http
        .get(app.url("/api/v1/me"))
        .bearer_auth(expired)
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("www-authenticate"));
    assert_eq!(
        error_code(response).await,
        (StatusCode::UNAUTHORIZED, "token_expired".into())
    );
    let forger =
        teachback::auth::Keys::new(&"f".repeat(40).into(), std::time::Duration::from_secs(60));
    let (forged, _) = forger.issue(user).unwrap();
    let response = app
        .http
        .get(app.url("/api/v1/me"))
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(response).await,
        (StatusCode::UNAUTHORIZED, "invalid_token".into())
    );
    let response = rename(&app, &Value::String("garbage".into()), "Ada").await;
    assert_eq!(
        error_code(response).await,
        (StatusCode::UNAUTHORIZED, "invalid_token".into())
    );

    assert_eq!(
        app.state.store.head().await.unwrap(),
        head,
        "bad input reached the log"
    );
    let me: Value = app.get_json("/api/v1/me", Some(&token)).await;
    assert_eq!(me["name"], creds["name"], "bad input changed the learner");
}

async fn the_users_read_model_equals_a_fold_of_the_log(db: &TestDb) {
    let app = spawn_app(db).await;
    let mut tokens = Vec::new();
    for _ in 0..6 {
        tokens.push(app.register().await["accessToken"].clone());
    }
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(rename(&app, t, &format!("learner {i}")).await.status(), 200);
    }
    assert_eq!(rename(&app, &tokens[0], "learner zero").await.status(), 200);

    let mut view = UsersView::default();
    for e in app.state.store.read_all(0, 10_000, None).await.unwrap() {
        view.apply(&e).unwrap();
    }
    let live = all_users(&app.state.db).await.unwrap();
    let folded: Vec<_> = view.users.values().cloned().collect();
    assert_eq!(live.len(), folded.len());
    for (l, f) in live.iter().zip(&folded) {
        assert_eq!(
            (l.user_id, &l.name, l.created_at, l.updated_at),
            (f.user_id, &f.name, f.created_at, f.updated_at)
        );
    }
}
