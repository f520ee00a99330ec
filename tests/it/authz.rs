//! The authorization matrix: every route that reads or changes a learner's data or the team's,
//! called as the owner, as another learner, as an observer with a share link, with no token,
//! with a forged token and with the admin token. Each cell states the status the route must
//! answer; the test prints every mismatch at once. Public routes (catalogue, topics, rankings,
//! `/info`, health, `/metrics`, a nudge's `/n/{id}`) and the signed upload URL (tested in
//! `live.rs`) are outside it.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};

use crate::support::{TestApp, TestDb, spawn_app_with};

crate::on_both_backends!(every_route_answers_each_caller_as_the_matrix_says);

const ADMIN: &str = "authz-test-admin-token-0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Owner,
    Other,
    /// The owner's share link (`?share=`), with no access token.
    Observer,
    Anonymous,
    /// A token signed with another key.
    Forged,
    Admin,
}

const CALLERS: [Caller; 6] = [
    Caller::Owner,
    Caller::Other,
    Caller::Observer,
    Caller::Anonymous,
    Caller::Forged,
    Caller::Admin,
];

/// What a cell expects: a status, or "any success" for answers that depend on the lecture's
/// state rather than on who asks.
#[derive(Debug, Clone, Copy)]
enum Want {
    Status(u16),
    Success,
}

use Want::{Status, Success};

/// Method, path, which share link an observer uses, body, and what each caller gets.
type Row = (&'static str, String, usize, Option<Value>, [Want; 6]);

struct Credentials {
    owner: String,
    other: String,
    /// Share tokens of the text lecture and of the upload lecture.
    share: [String; 2],
}

/// A forged access token: well formed, signed with a key the server does not have.
const FORGED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIwMTkwMDAwMC0wMDAwLTcwMDAtODAwMC0wMDAwMDAwMDAwMDEiLCJleHAiOjQxMDI0NDQ4MDB9.c2lnbmVkLXdpdGgtYW5vdGhlci1rZXktMDEyMzQ1Njc4OWFi";

async fn call(
    app: &TestApp,
    creds: &Credentials,
    caller: Caller,
    method: &str,
    path: &str,
    share: usize,
    body: Option<Value>,
) -> u16 {
    let mut url = app.url(path);
    let mut request = match method {
        "GET" => app.http.get(&url),
        "POST" => app.http.post(&url),
        "PUT" => app.http.put(&url),
        _ => unreachable!(),
    };
    match caller {
        Caller::Owner => request = request.bearer_auth(&creds.owner),
        Caller::Other => request = request.bearer_auth(&creds.other),
        Caller::Forged => request = request.bearer_auth(FORGED),
        Caller::Admin => request = request.bearer_auth(ADMIN),
        Caller::Anonymous => {}
        Caller::Observer => {
            url = format!(
                "{url}{}share={}",
                if url.contains('?') { '&' } else { '?' },
                creds.share[share]
            );
            request = match method {
                "GET" => app.http.get(&url),
                "POST" => app.http.post(&url),
                _ => app.http.put(&url),
            };
        }
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

/// Connects a WebSocket observer; the handshake's status (101 when accepted).
async fn ws_status(app: &TestApp, creds: &Credentials, caller: Caller, path: &str) -> u16 {
    let query = match caller {
        Caller::Owner => format!("?token={}", creds.owner),
        Caller::Other => format!("?token={}", creds.other),
        Caller::Forged => format!("?token={FORGED}"),
        Caller::Admin => format!("?token={ADMIN}"),
        Caller::Observer => format!("?share={}", creds.share[0]),
        Caller::Anonymous => String::new(),
    };
    let url = format!("ws://{}{path}{query}", app.addr);
    match tokio_tungstenite::connect_async(url).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{path}: {e}"),
    }
}

async fn every_route_answers_each_caller_as_the_matrix_says(db: &TestDb) {
    let app = spawn_app_with(db, |c| {
        c.admin_token = Some(SecretString::from(ADMIN.to_owned()));
    })
    .await;
    let owner = app.register().await;
    let other = app.register().await;
    let token = owner["accessToken"].as_str().unwrap().to_owned();
    // A typed lecture, graded by the rubric grader, and an uploaded recording with one segment.
    let text = app
        .post_json(
            "/api/v1/lectures",
            &token,
            Some(json!({
                "topicId": "cs.networking.dns",
                "language": "en",
                "text": "DNS resolves names through resolvers, root, TLD and authoritative servers."
            })),
        )
        .await;
    let text_id = text["lectureId"].as_str().unwrap().to_owned();
    let created = app
        .post_json(
            "/api/v1/lectures",
            &token,
            Some(json!({"topicId": "cs.networking.tcp-vs-udp", "format": "wav", "language": "en"})),
        )
        .await;
    let audio_id = created["lectureId"].as_str().unwrap().to_owned();
    let upload = created["uploadUrl"].as_str().unwrap();
    let upload = app.url(&upload[upload.find("/api/").unwrap()..]);
    let wav = teachback::live::segment::wav(&crate::live_support::speech(1_500, 3), 16_000);
    let r = app
        .http
        .put(upload)
        .header("content-type", "audio/wav")
        .body(wav)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .post(app.url(&format!("/api/v1/lectures/{audio_id}/finish")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The typed lecture is graded before the matrix rates it.
    for _ in 0..200 {
        let lecture = app
            .get_json(&format!("/api/v1/lectures/{text_id}"), Some(&token))
            .await;
        if lecture["processing"] == "graded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let share = |id: String| {
        let (app, token) = (&app, token.clone());
        async move {
            let r = app
                .post_json(&format!("/api/v1/lectures/{id}/share"), &token, None)
                .await;
            r["token"].as_str().unwrap().to_owned()
        }
    };
    let creds = Credentials {
        owner: token.clone(),
        other: other["accessToken"].as_str().unwrap().to_owned(),
        share: [share(text_id.clone()).await, share(audio_id.clone()).await],
    };

    // Lecture routes: only the owner (and, for reads, the share link) gets through; another
    // learner's lecture is indistinguishable from a missing one (404); no token or a forged
    // or admin token is 401; a share link does not act for the owner.
    let lecture_read = [
        Status(200),
        Status(404),
        Status(200),
        Status(401),
        Status(401),
        Status(401),
    ];
    let owner_only = |ok: Want| {
        [
            ok,
            Status(404),
            Status(401),
            Status(401),
            Status(401),
            Status(401),
        ]
    };
    let learner_self = [
        Status(200),
        Status(200),
        Status(401),
        Status(401),
        Status(401),
        Status(401),
    ];
    let admin_only = |ok: Want| {
        [
            Status(401),
            Status(401),
            Status(401),
            Status(401),
            Status(401),
            ok,
        ]
    };
    let t = &text_id;
    let a = &audio_id;
    let rows: Vec<Row> = vec![
        (
            "GET",
            format!("/api/v1/lectures/{t}"),
            0,
            None,
            lecture_read,
        ),
        (
            "GET",
            format!("/api/v1/lectures/{a}"),
            1,
            None,
            lecture_read,
        ),
        (
            "GET",
            format!("/api/v1/lectures/{a}/segments/0"),
            1,
            None,
            lecture_read,
        ),
        (
            "GET",
            format!("/api/v1/lectures/{t}/events"),
            0,
            None,
            lecture_read,
        ),
        (
            "POST",
            format!("/api/v1/lectures/{t}/rating"),
            0,
            Some(json!({"rating": 4})),
            owner_only(Status(200)),
        ),
        (
            "POST",
            format!("/api/v1/lectures/{t}/share"),
            0,
            None,
            owner_only(Status(200)),
        ),
        (
            "POST",
            format!("/api/v1/lectures/{a}/finish"),
            1,
            None,
            owner_only(Success),
        ),
        (
            "POST",
            format!("/api/v1/lectures/{a}/cancel"),
            1,
            None,
            owner_only(Success),
        ),
        ("GET", "/api/v1/me".into(), 0, None, learner_self),
        ("GET", "/api/v1/me/stats".into(), 0, None, learner_self),
        ("GET", "/api/v1/me/lectures".into(), 0, None, learner_self),
        (
            "GET",
            "/api/v1/me/notifications".into(),
            0,
            None,
            learner_self,
        ),
        ("GET", "/api/v1/home".into(), 0, None, learner_self),
        (
            "GET",
            "/api/v1/admin/analytics".into(),
            0,
            None,
            admin_only(Status(200)),
        ),
        (
            "GET",
            "/api/v1/admin/projections".into(),
            0,
            None,
            admin_only(Status(200)),
        ),
        (
            "GET",
            "/api/v1/admin/notifications/parked".into(),
            0,
            None,
            admin_only(Status(200)),
        ),
        (
            "POST",
            format!("/api/v1/admin/lectures/{t}/regrade"),
            0,
            None,
            admin_only(Success),
        ),
    ];
    let mut mismatches = Vec::new();
    for (method, path, share, body, wants) in &rows {
        for (caller, want) in CALLERS.iter().zip(wants) {
            let got = call(&app, &creds, *caller, method, path, *share, body.clone()).await;
            let ok = match want {
                Status(s) => got == *s,
                Success => (200..300).contains(&got) || got == 409,
            };
            if !ok {
                mismatches.push(format!(
                    "{method} {path} as {caller:?}: {got}, want {want:?}"
                ));
            }
        }
    }
    // The observer WebSocket: the owner or the share link; another learner's is a 404.
    let watch = format!("/api/v1/lectures/{t}/watch");
    for (caller, want) in CALLERS.iter().zip([101, 404, 101, 401, 401, 401]) {
        let got = ws_status(&app, &creds, *caller, &watch).await;
        if got != want {
            mismatches.push(format!("WS {watch} as {caller:?}: {got}, want {want}"));
        }
    }
    // The live socket takes learners only.
    for (caller, want) in CALLERS.iter().zip([101, 101, 401, 401, 401, 401]) {
        let got = ws_status(&app, &creds, *caller, "/api/v1/live").await;
        if got != want {
            mismatches.push(format!("WS /api/v1/live as {caller:?}: {got}, want {want}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
