//! A WebSocket client for the live protocol, and synthetic speech, for the live lecture tests.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::TestApp;

pub const RATE: u32 = 16_000;
/// 100 ms of 16 kHz mono 16-bit PCM.
pub const CHUNK_BYTES: usize = 3_200;

/// `ms` of synthetic speech: 220 Hz bursts of 900 ms separated by 700 ms of near-silence, so
/// that the server's voice activity detector cuts segments at the pauses. Deterministic; `salt`
/// varies the amplitude so different lectures carry different bytes.
pub fn speech(ms: u64, salt: u32) -> Vec<u8> {
    let n = u64::from(RATE) * ms / 1000;
    let amplitude = 6000.0 + f64::from(salt % 1000);
    (0..n)
        .flat_map(|i| {
            let t_ms = i * 1000 / u64::from(RATE);
            let voiced = t_ms % 1600 < 900;
            let t = i as f64 / f64::from(RATE);
            let a = if voiced { amplitude } else { 15.0 };
            let s = (a * (2.0 * std::f64::consts::PI * 220.0 * t).sin()) as i16;
            s.to_le_bytes()
        })
        .collect()
}

pub fn chunks(audio: &[u8]) -> Vec<Vec<u8>> {
    audio.chunks(CHUNK_BYTES).map(<[u8]>::to_vec).collect()
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn frame(seq: u64, audio: &[u8]) -> Vec<u8> {
    teachback::live::protocol::audio_frame(seq, audio)
}

pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub hello: Value,
    /// The highest acknowledged sequence seen so far.
    pub acked: u64,
}

const WAIT: Duration = Duration::from_secs(20);

impl Ws {
    /// Connects to `/api/v1/live` with the token in the Authorization header.
    pub async fn connect(app: &TestApp, token: &str) -> Ws {
        Ws::connect_to(&app.addr.to_string(), token).await
    }

    /// Connects to `/api/v1/live` on `host:port`.
    pub async fn connect_to(host: &str, token: &str) -> Ws {
        let mut request = format!("ws://{host}/api/v1/live")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        Ws::open(request).await
    }

    pub async fn open(request: impl IntoClientRequest + Unpin) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let mut ws = Ws {
            stream,
            hello: Value::Null,
            acked: 0,
        };
        ws.hello = ws.next_json().await;
        assert_eq!(ws.hello["type"], "hello", "{}", ws.hello);
        ws
    }

    pub async fn send_json(&mut self, v: Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_audio(&mut self, seq: u64, audio: &[u8]) {
        self.stream
            .send(Message::Binary(frame(seq, audio).into()))
            .await
            .unwrap();
    }

    /// Sends `pieces` as consecutive chunks, the first with sequence `first`.
    pub async fn send_chunks(&mut self, first: u64, pieces: &[Vec<u8>]) {
        for (i, piece) in pieces.iter().enumerate() {
            self.send_audio(first + i as u64, piece).await;
        }
    }

    /// The next text frame, parsed. Panics on close or after a timeout.
    pub async fn next_json(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let message = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("a frame in time")
                .expect("the connection is open")
                .expect("a valid frame");
            match message {
                Message::Text(text) => {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    if v["type"] == "ack" {
                        self.acked = self.acked.max(v["seq"].as_u64().unwrap());
                    }
                    return v;
                }
                Message::Close(frame) => panic!("closed: {frame:?}"),
                _ => {}
            }
        }
    }

    /// Reads until a frame of `kind`, returning it and every frame before it.
    pub async fn until(&mut self, kind: &str) -> (Value, Vec<Value>) {
        let mut seen = Vec::new();
        loop {
            let v = self.next_json().await;
            if v["type"] == kind {
                return (v, seen);
            }
            seen.push(v);
        }
    }

    /// Reads until an error frame; panics if a state frame of another kind comes first.
    pub async fn error(&mut self) -> Value {
        let (e, _) = self.until("error").await;
        e
    }

    /// Reads until every chunk up to `seq` is acknowledged. Returns the frames seen meanwhile.
    pub async fn wait_ack(&mut self, seq: u64) -> Vec<Value> {
        let mut seen = Vec::new();
        while self.acked < seq {
            let v = self.next_json().await;
            assert_ne!(
                v["type"], "error",
                "unexpected error while waiting for acks: {v}"
            );
            seen.push(v);
        }
        seen
    }

    /// Starts a 16 kHz PCM lecture; returns the lecture id.
    pub async fn start_pcm(&mut self, topic: &str) -> String {
        self.send_json(json!({"type": "start", "topicId": topic, "format": "pcm_s16le", "sampleRate": RATE, "language": "ko"}))
            .await;
        let (started, _) = self.until("started").await;
        started["lectureId"].as_str().unwrap().to_owned()
    }

    /// Waits for the server to close; returns the close code.
    pub async fn closed(&mut self) -> u16 {
        loop {
            match tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("closed in time")
            {
                Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
                Some(Ok(Message::Close(None))) | None => return 1005,
                Some(Err(e)) => panic!("error instead of a close: {e}"),
                Some(Ok(_)) => {}
            }
        }
    }
}

/// A topic from the starter catalogue.
pub const TOPIC: &str = "cs.networking.tcp-vs-udp";

/// Registers a learner; returns its access token.
pub async fn learner(app: &TestApp) -> String {
    app.register().await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A lecture as `GET /api/v1/lectures/{id}` on the server at `base` shows it.
pub async fn view_at(http: &reqwest::Client, base: &str, token: &str, lecture: &str) -> Value {
    http.get(format!("{base}/api/v1/lectures/{lecture}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The stored bytes of one segment, downloaded over HTTP.
pub async fn segment_at(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    lecture: &str,
    index: u64,
) -> bytes::Bytes {
    http.get(format!("{base}/api/v1/lectures/{lecture}/segments/{index}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
}

/// The lecture's view and the PCM its stored segments hold, in order, downloaded from the
/// server at `base`; every blob is checked against its event's hash.
pub async fn stored_pcm_at(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    lecture: &str,
) -> (Value, Vec<u8>) {
    let view = view_at(http, base, token, lecture).await;
    let mut pcm = Vec::new();
    for (i, segment) in view["segments"].as_array().unwrap().iter().enumerate() {
        assert_eq!(segment["index"], i as u64, "segments are in order");
        let bytes = segment_at(http, base, token, lecture, i as u64).await;
        assert_eq!(sha256(&bytes), segment["sha256"], "blob matches its event");
        let body = teachback::live::segment::wav_pcm(&bytes).expect("a WAV segment");
        pcm.extend_from_slice(body);
    }
    (view, pcm)
}

/// [`stored_pcm_at`] on a test app.
pub async fn stored_pcm(app: &TestApp, token: &str, lecture: &str) -> (Value, Vec<u8>) {
    stored_pcm_at(&app.http, &app.url(""), token, lecture).await
}

/// Checks that segments cover sequences 1..=last contiguously.
pub fn assert_contiguous(view: &Value, last: u64) {
    let mut next = 1;
    for s in view["segments"].as_array().unwrap() {
        assert_eq!(s["firstSeq"], next, "{view}");
        next = s["lastSeq"].as_u64().unwrap() + 1;
    }
    assert_eq!(next, last + 1, "segments end at the last chunk: {view}");
}
