//! The S3 blob store against a real S3-compatible server (moto's, in CI).
//!
//! Runs when `TEACHBACK_TEST_S3_ENDPOINT` is set (for example `http://127.0.0.1:9000`); each run
//! makes a bucket of its own. The server must accept unsigned bucket creation and reads, as moto's
//! does by default; the store itself signs with the dummy credentials `test`/`test`.

use std::io::Write;
use std::sync::Once;

use bytes::Bytes;
use teachback::blob::s3::S3BlobStore;
use teachback::blob::{BlobError, BlobStore};

/// The endpoint, or `None` after saying (once) on stderr that the S3 tests are skipped.
fn endpoint() -> Option<String> {
    match std::env::var("TEACHBACK_TEST_S3_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(endpoint.trim_end_matches('/').to_owned()),
        _ => {
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                // Written straight to stderr so the test harness does not swallow it.
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping: set TEACHBACK_TEST_S3_ENDPOINT"
                );
            });
            None
        }
    }
}

#[tokio::test]
async fn s3_store_round_trips_replaces_and_keeps_keys_under_its_prefix() {
    let Some(endpoint) = endpoint() else { return };
    let http = reqwest::Client::new();
    let bucket = format!("teachback-test-{}", uuid::Uuid::now_v7().simple());
    let created = http
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("the S3 test server answers");
    assert!(created.status().is_success(), "create bucket: {created:?}");

    let prefix = "audio/v1";
    let store = S3BlobStore::new(&bucket, prefix, &endpoint, true, "test", "test").unwrap();
    assert_eq!(store.describe(), format!("s3://{bucket}/{prefix}"));
    let key = "lectures/0191/segment-000001.wav";

    match store.get(key).await {
        Err(BlobError::NotFound(k)) => assert_eq!(k, key),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(!store.exists(key).await.unwrap());

    // Every byte value, so nothing on the way treats the blob as text.
    let one: Bytes = (0..=255u8).cycle().take(70_000).collect::<Vec<u8>>().into();
    store.put(key, one.clone()).await.unwrap();
    assert_eq!(store.get(key).await.unwrap(), one);
    assert!(store.exists(key).await.unwrap());

    store.put(key, Bytes::from_static(b"two")).await.unwrap();
    assert_eq!(&store.get(key).await.unwrap()[..], b"two");

    // An empty blob is a blob.
    store.put("empty", Bytes::new()).await.unwrap();
    assert!(store.get("empty").await.unwrap().is_empty());
    assert!(store.exists("empty").await.unwrap());

    for bad in ["../x", "/abs", "a//b", "a b"] {
        assert!(
            matches!(
                store.put(bad, Bytes::from_static(b"x")).await,
                Err(BlobError::InvalidKey(_))
            ),
            "{bad:?}"
        );
        assert!(matches!(
            store.get(bad).await,
            Err(BlobError::InvalidKey(_))
        ));
        assert!(matches!(
            store.exists(bad).await,
            Err(BlobError::InvalidKey(_))
        ));
    }

    // The object sits under the prefix, and only there: a store on the bucket's root sees it at
    // `{prefix}/{key}` and not at `{key}`. (moto refuses unsigned reads of objects, so the check
    // goes through a signed client rather than a plain HTTP GET.)
    let root = S3BlobStore::new(&bucket, "", &endpoint, true, "test", "test").unwrap();
    assert_eq!(
        &root.get(&format!("{prefix}/{key}")).await.unwrap()[..],
        b"two"
    );
    assert!(root.exists(&format!("{prefix}/empty")).await.unwrap());
    assert!(!root.exists(key).await.unwrap());
    assert!(!root.exists("empty").await.unwrap());

    // A second store on the same bucket with another prefix does not see the first one's keys.
    let other = S3BlobStore::new(&bucket, "other", &endpoint, true, "test", "test").unwrap();
    assert!(!other.exists(key).await.unwrap());
}

#[tokio::test]
async fn a_missing_bucket_is_a_backend_error_without_credentials() {
    let Some(endpoint) = endpoint() else { return };
    let bucket = format!("teachback-missing-{}", uuid::Uuid::now_v7().simple());
    let store = S3BlobStore::new(
        &bucket,
        "p",
        &endpoint,
        true,
        "AKIDTEACHBACKTEST",
        "teachback-secret-key",
    )
    .unwrap();
    let put = store.put("a", Bytes::from_static(b"x")).await;
    let get = store.get("a").await.map(|_| ());
    for result in [put, get] {
        match result {
            Err(BlobError::Backend(message)) => {
                assert!(message.contains(&bucket), "{message}");
                assert!(!message.contains("AKIDTEACHBACKTEST"), "{message}");
                assert!(!message.contains("teachback-secret-key"), "{message}");
            }
            other => panic!("expected a backend error, got {other:?}"),
        }
    }
}

/// A whole live lecture with its segments in S3: the live path uses the same interface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_lecture_stores_its_segments_in_s3() {
    use crate::live_support::{TOPIC, Ws, chunks, learner, sha256, speech, stored_pcm};

    let Some(endpoint) = endpoint() else { return };
    let bucket = format!("teachback-live-{}", uuid::Uuid::now_v7().simple());
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("the S3 test server answers");
    assert!(created.status().is_success());
    let store = S3BlobStore::new(&bucket, "audio", &endpoint, true, "test", "test").unwrap();
    let store: std::sync::Arc<dyn BlobStore> = std::sync::Arc::new(store);
    let db = crate::support::TestDb::sqlite().await;
    let app = crate::support::spawn_app_on(&db, |_| {}, Some(store.clone())).await;
    let token = learner(&app).await;
    let mut ws = Ws::connect(&app, &token).await;
    let lecture = ws.start_pcm(TOPIC).await;
    let audio = speech(4_000, 11);
    let pieces = chunks(&audio);
    ws.send_chunks(1, &pieces).await;
    ws.wait_ack(pieces.len() as u64).await;
    ws.send_json(serde_json::json!({"type": "finish"})).await;
    let (state, _) = ws.until("state").await;
    assert_eq!(state["state"], "finished");
    let (view, pcm) = stored_pcm(&app, &token, &lecture).await;
    assert_eq!(sha256(&pcm), sha256(&audio));
    // The blobs really are in the bucket, under the store's prefix.
    let events = app
        .state
        .store
        .read_stream_all(&format!("lecture-{lecture}"))
        .await
        .unwrap();
    let keys: Vec<String> = events
        .iter()
        .filter(|e| e.event_type == "AudioSegmentStored")
        .map(|e| e.payload["blobKey"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), view["segments"].as_array().unwrap().len());
    let root = S3BlobStore::new(&bucket, "", &endpoint, true, "test", "test").unwrap();
    for key in keys {
        assert!(root.exists(&format!("audio/{key}")).await.unwrap(), "{key}");
    }
    drop(ws);
    drop(app);
    db.cleanup().await;
}

/// The REST fallback with S3: the upload URL is pre-signed for the bucket, the client puts the
/// recording there directly, and finishing the lecture takes it in (checked, sealed, stored as
/// its segment) and deletes the raw upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_goes_straight_to_s3_by_a_signed_url_and_is_taken_in_at_finish() {
    use crate::live_support::{TOPIC, learner, segment_at, speech};
    use serde_json::{Value, json};

    let Some(endpoint) = endpoint() else { return };
    let http = reqwest::Client::new();
    let bucket = format!("teachback-upload-{}", uuid::Uuid::now_v7().simple());
    let created = http
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("the S3 test server answers");
    assert!(created.status().is_success());
    let store = S3BlobStore::new(&bucket, "audio", &endpoint, true, "test", "test").unwrap();
    let store: std::sync::Arc<dyn BlobStore> = std::sync::Arc::new(store);
    let db = crate::support::TestDb::sqlite().await;
    let app = crate::support::spawn_app_on(
        &db,
        |c| c.max_recording_bytes = 200_000,
        Some(store.clone()),
    )
    .await;
    let token = learner(&app).await;
    let root = S3BlobStore::new(&bucket, "", &endpoint, true, "test", "test").unwrap();

    let start = |format: &'static str| {
        let app = &app;
        let token = token.clone();
        async move {
            app.post_json(
                "/api/v1/lectures",
                &token,
                Some(json!({"topicId": TOPIC, "format": format, "language": "ko"})),
            )
            .await
        }
    };
    let finish = |lecture: String| {
        let http = http.clone();
        let url = app.url(&format!("/api/v1/lectures/{lecture}/finish"));
        let token = token.clone();
        async move {
            let r = http.post(url).bearer_auth(token).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };

    // A WAV recording, put straight into the bucket.
    let ticket = start("wav").await;
    assert_eq!(ticket["direct"], true, "{ticket}");
    let upload_url = ticket["uploadUrl"].as_str().unwrap();
    assert!(
        upload_url.starts_with(&endpoint),
        "a URL of the bucket: {upload_url}"
    );
    assert!(
        upload_url.contains("X-Amz-Signature="),
        "pre-signed: {upload_url}"
    );
    let lecture = ticket["lectureId"].as_str().unwrap().to_owned();
    let wav = teachback::live::segment::wav(&speech(2_000, 3), 16_000);
    let put = http
        .put(upload_url)
        .header("content-type", "audio/wav")
        .body(wav.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "PUT to S3: {}", put.status());
    let raw = format!("audio/uploads/{lecture}/recording");
    assert!(root.exists(&raw).await.unwrap());
    let (status, finished) = finish(lecture.clone()).await;
    assert_eq!(status, 200, "{finished}");
    assert_eq!(finished["status"], "finished");
    assert_eq!(finished["segments"].as_array().unwrap().len(), 1);
    let stored = segment_at(&http, &app.url(""), &token, &lecture, 0).await;
    assert_eq!(&stored[..], &wav[..], "the recording, as uploaded");
    assert!(
        !root.exists(&raw).await.unwrap(),
        "the raw upload is deleted"
    );
    // In the bucket the segment is sealed, not the plain recording.
    let events = app
        .state
        .store
        .read_stream_all(&format!("lecture-{lecture}"))
        .await
        .unwrap();
    let key = events
        .iter()
        .find(|e| e.event_type == "AudioSegmentStored")
        .map(|e| e.payload["blobKey"].as_str().unwrap().to_owned())
        .expect("the segment is recorded");
    let sealed = root.get(&format!("audio/{key}")).await.unwrap();
    assert!(sealed.starts_with(teachback::vault::BLOB_MAGIC));
    assert!(!sealed.windows(16).any(|w| w == &wav[1_000..1_016]));

    // Bytes of another container than the lecture declared are refused at finish; nothing is
    // recorded.
    let ticket = start("wav").await;
    let lecture = ticket["lectureId"].as_str().unwrap().to_owned();
    let mut ogg = b"OggS\0\x02".to_vec();
    ogg.resize(4_000, 0);
    http.put(ticket["uploadUrl"].as_str().unwrap())
        .body(ogg)
        .send()
        .await
        .unwrap();
    let (status, refused) = finish(lecture.clone()).await;
    assert_eq!(status, 415, "{refused}");
    assert_eq!(refused["error"]["code"], "recording_format_mismatch");
    let view = app
        .get_json(&format!("/api/v1/lectures/{lecture}"), Some(&token))
        .await;
    assert_eq!(view["status"], "recording");
    assert!(view["segments"].as_array().unwrap().is_empty());

    // Larger than allowed (the pre-signed URL cannot limit it): refused at finish.
    let ticket = start("wav").await;
    let lecture = ticket["lectureId"].as_str().unwrap().to_owned();
    let big = teachback::live::segment::wav(&speech(8_000, 4), 16_000);
    assert!(big.len() > 200_000);
    http.put(ticket["uploadUrl"].as_str().unwrap())
        .body(big)
        .send()
        .await
        .unwrap();
    let (status, refused) = finish(lecture).await;
    assert_eq!(status, 413, "{refused}");
    assert_eq!(refused["error"]["code"], "payload_too_large");

    // Nothing uploaded: the usual `no_audio`.
    let ticket = start("wav").await;
    let (status, refused) = finish(ticket["lectureId"].as_str().unwrap().to_owned()).await;
    assert_eq!(status, 409);
    assert_eq!(refused["error"]["code"], "no_audio");
    drop(app);
    db.cleanup().await;
}
