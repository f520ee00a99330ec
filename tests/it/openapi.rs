//! The OpenAPI document (`src/http/openapi.json`): it is served, every operation it describes is
//! routed, every route is described, and the docs page renders it.

use reqwest::header::CONTENT_TYPE;
use secrecy::SecretString;
use serde_json::Value;
use uuid::Uuid;

use crate::support::{TestDb, spawn_app, spawn_app_with};

crate::sqlite_only!(
    the_document_is_served_as_openapi_3_1,
    every_documented_operation_is_routed,
    the_docs_page_loads_the_served_document,
);

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn read(relative: &str) -> String {
    let path = format!("{}/{relative}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The document as the repository holds it.
fn document() -> Value {
    serde_json::from_str(&read("src/http/openapi.json")).expect("openapi.json is JSON")
}

/// A path with its parameters' names erased, so `{topic_id}` and `{topicId}` compare equal.
fn shape(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some((before, after)) = rest.split_once('{') {
        out.push_str(before);
        out.push_str("{}");
        rest = after.split_once('}').map_or("", |(_, after)| after);
    }
    out + rest
}

/// Follows a local `$ref` (`#/components/…`).
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(pointer) => doc
            .pointer(pointer.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("unresolved $ref {pointer}")),
        None => value,
    }
}

/// `path` with each `{parameter}` replaced by a sample: a fresh UUID v7 where the parameter is a
/// UUID, `x` otherwise.
fn sample(doc: &Value, path: &str, parameters: &[&Value]) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some((before, after)) = rest.split_once('{') {
        let (name, after) = after.split_once('}').expect("a closed path parameter");
        let is_uuid = parameters.iter().map(|p| resolve(doc, p)).any(|p| {
            p["in"] == "path" && p["name"] == name && resolve(doc, &p["schema"])["format"] == "uuid"
        });
        out.push_str(before);
        out.push_str(&if is_uuid {
            Uuid::now_v7().to_string()
        } else {
            "x".to_owned()
        });
        rest = after;
    }
    out + rest
}

fn content_type(response: &reqwest::Response) -> &str {
    let value = response.headers().get(CONTENT_TYPE);
    value.and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// Whether a response is the router's own refusal: its fallback (`404 not_found`, "no such
/// endpoint") or `405`. Handlers answer 404 with other codes, so the body decides.
async fn is_unrouted(response: reqwest::Response) -> bool {
    match response.status().as_u16() {
        405 => true,
        404 => {
            let body: Value = response.json().await.unwrap_or_default();
            body["error"]["code"] == "not_found" && body["error"]["message"] == "no such endpoint"
        }
        _ => false,
    }
}

async fn the_document_is_served_as_openapi_3_1(db: &TestDb) {
    let app = spawn_app(db).await;
    let response = app
        .http
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(content_type(&response).starts_with("application/json"));
    let served: Value = response.json().await.unwrap();
    assert!(
        served["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "openapi: {}",
        served["openapi"]
    );
    assert_eq!(served, document());
}

async fn every_documented_operation_is_routed(db: &TestDb) {
    // Without an admin token the admin endpoints answer exactly like the fallback.
    let app = spawn_app_with(db, |c| {
        c.admin_token = Some(SecretString::from("openapi-test-admin-token".to_owned()));
    })
    .await;
    let doc = document();
    let mut operations = 0;
    let mut unrouted = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            let parameters: Vec<&Value> = [&item["parameters"], &operation["parameters"]]
                .into_iter()
                .filter_map(Value::as_array)
                .flatten()
                .collect();
            let url = sample(&doc, path, &parameters);
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            // No credentials and no body: a 401, 400 or 415 from the handler shows the route
            // exists. WebSocket endpoints get a plain GET, whose upgrade is refused (400) by the
            // route's own extractor.
            let response = app
                .http
                .request(method.clone(), app.url(&url))
                .send()
                .await
                .unwrap();
            if is_unrouted(response).await {
                unrouted.push(format!("{method} {path} (as {url})"));
            }
        }
    }
    assert!(operations > 0, "the document has no operations");
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:#?}"
    );
}

/// The paths `src/http/mod.rs` routes, as the router serves them: routes set up before the
/// router nests the API under `/api/v1` get that prefix; the ones after are at the root.
fn routed_paths() -> Vec<String> {
    let source = read("src/http/mod.rs");
    let nest = source
        .find(".nest(\"/api/v1\"")
        .expect("the router nests the API under /api/v1");
    source
        .match_indices(".route")
        .filter_map(|(at, _)| {
            let rest = &source[at + ".route".len()..];
            let rest = rest
                .strip_prefix('(')
                .or_else(|| rest.strip_prefix("_service("))?;
            let literal = rest.trim_start().strip_prefix('"')?;
            let path = &literal[..literal.find('"')?];
            Some(if at < nest {
                format!("/api/v1{path}")
            } else {
                path.to_owned()
            })
        })
        .collect()
}

#[test]
fn every_route_in_the_router_is_documented() {
    let doc = document();
    let documented: Vec<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(|p| shape(p))
        .collect();
    let routed = routed_paths();
    for known in ["/api/v1/devices", "/api/v1/lectures/{id}/watch", "/healthz"] {
        assert!(
            routed.iter().any(|r| r == known),
            "{known} not found in {routed:?}"
        );
    }
    let undocumented: Vec<&String> = routed
        .iter()
        .filter(|r| !documented.contains(&shape(r)))
        .collect();
    assert!(
        undocumented.is_empty(),
        "routed but not documented: {undocumented:#?}"
    );
}

async fn the_docs_page_loads_the_served_document(db: &TestDb) {
    let app = spawn_app(db).await;
    let response = app.http.get(app.url("/api/docs")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(content_type(&response).starts_with("text/html"));
    let html = response.text().await.unwrap();
    assert!(html.contains("/api/openapi.json"), "{html}");
}

/// Every series the Prometheus alert rules use is one the server exports: its name appears as a
/// metric name in the source (histograms without their `_bucket`/`_count`/`_sum` suffix).
#[test]
fn the_alert_rules_use_only_exported_series() {
    let root = env!("CARGO_MANIFEST_DIR");
    let rules = std::fs::read_to_string(format!("{root}/docker/prometheus/alerts.yml")).unwrap();
    let mut source = String::new();
    let mut dirs = vec![std::path::PathBuf::from(format!("{root}/src"))];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                source.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let mut checked = 0;
    for piece in rules.split("teachback_").skip(1) {
        let name: String = piece
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        assert!(
            source.contains(&format!("\"teachback_{base}\"")),
            "the alert rules use teachback_{name}, which the server does not export"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} series found in the rules");
}
