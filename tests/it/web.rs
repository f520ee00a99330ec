//! The web client's files, served from the binary at `/`, and `GET /api/v1/info`. The page
//! itself is tested in a real browser by `tests/browser/run.sh`.

use reqwest::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use serde_json::Value;

use crate::support::{TestDb, spawn_app, spawn_app_with};

crate::sqlite_only!(
    the_page_and_every_file_it_loads_are_served,
    unchanged_files_revalidate_with_304,
    info_says_what_the_server_can_do,
);

async fn get(app: &crate::support::TestApp, path: &str) -> reqwest::Response {
    app.http.get(app.url(path)).send().await.unwrap()
}

/// The root-relative files a page or script refers to: `src="/…"`, `href="/…"`,
/// `from '/…'`, `import('/…')` and `addModule('/…')`.
fn references(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for opener in [
        "src=\"/",
        "href=\"/",
        "from '/",
        "from \"/",
        "import('/",
        "addModule('/",
    ] {
        for (at, _) in text.match_indices(opener) {
            let rest = &text[at + opener.len() - 1..];
            let end = rest.find(['"', '\'']).unwrap_or(rest.len());
            found.push(rest[..end].to_owned());
        }
    }
    found
}

async fn the_page_and_every_file_it_loads_are_served(db: &TestDb) {
    let app = spawn_app(db).await;
    let page = get(&app, "/").await;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.headers()[CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("TeachBack"));

    // Follow every reference from the page and from each script it loads, transitively.
    let mut queue = references(&html);
    let mut seen = Vec::new();
    while let Some(path) = queue.pop() {
        if seen.contains(&path) {
            continue;
        }
        let response = get(&app, &path).await;
        assert_eq!(
            response.status(),
            200,
            "{path} is referenced but not served"
        );
        let content_type = response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.text().await.unwrap();
        if path.ends_with(".js") {
            assert!(
                content_type.starts_with("text/javascript"),
                "{path}: {content_type}"
            );
            queue.extend(references(&body));
        } else if path.ends_with(".css") {
            assert!(
                content_type.starts_with("text/css"),
                "{path}: {content_type}"
            );
        }
        seen.push(path);
    }
    for expected in ["/app.js", "/style.css", "/pcm-worklet.js", "/recorder.js"] {
        assert!(
            seen.iter().any(|s| s == expected),
            "{expected} not reached: {seen:?}"
        );
    }
    // Other paths stay the API's JSON 404.
    let missing = get(&app, "/nothing-here.js").await;
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}

async fn unchanged_files_revalidate_with_304(db: &TestDb) {
    let app = spawn_app(db).await;
    let first = get(&app, "/app.js").await;
    let etag = first.headers()[ETAG].clone();
    let again = app
        .http
        .get(app.url("/app.js"))
        .header(IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());
    // Another file's tag does not match.
    let other = app
        .http
        .get(app.url("/style.css"))
        .header(IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert!(!other.bytes().await.unwrap().is_empty());
}

async fn info_says_what_the_server_can_do(db: &TestDb) {
    let app = spawn_app(db).await;
    let info: Value = get(&app, "/api/v1/info").await.json().await.unwrap();
    assert_eq!(info["speechToText"], false);
    assert_eq!(info["llmGrader"], false);
    assert_eq!(info["maxLectureSecs"], 600);

    let app = spawn_app_with(db, |c| {
        c.stt_url = Some("http://127.0.0.1:9/v1".into());
        c.lecture_max_secs = 90;
    })
    .await;
    let info: Value = get(&app, "/api/v1/info").await.json().await.unwrap();
    assert_eq!(info["speechToText"], true);
    assert_eq!(info["maxLectureSecs"], 90);
}
