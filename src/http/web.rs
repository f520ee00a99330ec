//! The web client: the static files under `web/`, embedded in the binary and served at `/`, so
//! running the server needs nothing else. `GET /api/v1/info` tells the page what this server can
//! do (whether recordings are transcribed now, which grader grades).

use axum::Json;
use axum::extract::State;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

use super::AppState;

/// One embedded file.
pub struct Asset {
    /// The path it is served at.
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// Every file of the web client. `/` serves `index.html`.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../web/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/app.js"),
    },
    Asset {
        path: "/recorder.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/recorder.js"),
    },
    Asset {
        path: "/pcm-worklet.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/pcm-worklet.js"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../web/favicon.svg"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/style.css"),
    },
];

/// The page may load only its own files and talk only to this server (HTTP, SSE, WebSocket).
/// The microphone is the one device it may ask for.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
                   style-src 'self'; script-src 'self'; worker-src 'self'; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Strong ETags, one per file: a reload after an upgrade fetches the new files, an unchanged
/// file answers `304`.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.body);
            HeaderValue::from_str(&format!("\"{}\"", &hex::encode(digest)[..32]))
                .expect("hex is a valid header value")
        })
        .collect()
});

/// A handler serving the asset at `index` of [`ASSETS`].
pub fn serve(index: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = ETAGS[index].clone();
    let mut common = [
        (ETAG, etag.clone()),
        // Revalidate every time: the files are small, and a stale app.js after an upgrade would
        // speak an old protocol.
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
    ]
    .into_iter()
    .collect::<HeaderMap>();
    if headers.get(IF_NONE_MATCH).is_some_and(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii() == etag.as_bytes() || t.trim_ascii() == b"*")
    }) {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    common.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    (common, asset.body).into_response()
}

/// The routes of the web client.
pub fn routes(router: axum::Router<AppState>) -> axum::Router<AppState> {
    ASSETS
        .iter()
        .enumerate()
        .fold(router, |router, (i, asset)| {
            router.route(
                asset.path,
                axum::routing::get(move |headers: HeaderMap| async move { serve(i, &headers) }),
            )
        })
}

/// `GET /api/v1/info`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    pub version: &'static str,
    /// Whether audio lectures are transcribed (and so graded) now; without it they wait.
    pub speech_to_text: bool,
    /// Whether a language model grades (otherwise the built-in rubric grader).
    pub llm_grader: bool,
    pub max_lecture_secs: u64,
    pub resume_grace_secs: u64,
}

pub async fn info(State(state): State<AppState>) -> Json<Info> {
    let live = state.live.settings();
    Json(Info {
        version: env!("CARGO_PKG_VERSION"),
        speech_to_text: state.pipeline.has_stt(),
        llm_grader: state.pipeline.grader() == "llm",
        max_lecture_secs: live.max_lecture.as_secs(),
        resume_grace_secs: live.grace.as_secs(),
    })
}
