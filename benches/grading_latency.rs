//! Grading latency: what TeachBack adds between the learner's finish and the first feedback
//! token, and the score, next to the original app's flow in the same run.
//!
//! ```text
//! cargo bench --bench grading_latency -- [--lectures 20] [--concurrency 4] [--original 5]
//!     [--lecture-secs 180] [--speed 10] [--stt-first-byte-ms 200] [--stt-ms-per-audio-second 100]
//!     [--llm-first-byte-ms 400] [--llm-chunk-ms 10] [--llm-chunk-chars 4] [--poll-ms 3000]
//!     [--no-original] [--log <tracing filter>]
//! ```
//!
//! The lecture counts can also come from `TEACHBACK_BENCH_LECTURES`,
//! `TEACHBACK_BENCH_CONCURRENCY` and `TEACHBACK_BENCH_ORIGINAL_LECTURES`.
//!
//! Both flows run against the same in-process TeachBack (fresh temp data dir, SQLite) and the
//! same fake OpenAI-compatible providers (`teachback::provider::fake`, on a runtime of their own):
//! speech-to-text answers after `--stt-first-byte-ms` plus `--stt-ms-per-audio-second` per second
//! of audio, the model after `--llm-first-byte-ms`, then `--llm-chunk-chars` characters every
//! `--llm-chunk-ms`.
//!
//! - **TeachBack**: each lecture registers a device, opens `/api/v1/live`, starts a 16 kHz PCM
//!   lecture and streams synthetic speech with sentence pauses (so the server cuts 5–15 s
//!   segments) at `--speed` times real time. Once every chunk is acknowledged and every closed
//!   segment's `transcript` frame has arrived (the transcription kept up), it sends `finish` (t0)
//!   and times the first `feedbackDelta` (t1) and `graded` (t2). The providers' own share of
//!   that is the tail segment's transcription (from the model and the tail's `durationMs`) plus
//!   the model's time to its first feedback character (t1) or to the end of its stream (t2),
//!   measured by streaming directly from the fake every 2 s during the runs (the median). The
//!   rest is what TeachBack adds.
//! - **Original**: the learner records the whole lecture; at stop (t0) the app creates a `wav`
//!   lecture, uploads the whole recording to the signed URL and finishes it; the server
//!   transcribes it whole and grades it; the app polls `GET /api/v1/lectures/{id}` every
//!   `--poll-ms` until `score` is set (t1 = t2: no streaming). These lectures run concurrently.
//!
//! Besides the client's view (frame arrival times), it reads each lecture's events from the log
//! afterwards, to show where on the server the added time went and how long each frame took to
//! arrive after its event. Exits non-zero if a lecture failed; missed targets are only reported.

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use teachback::live::segment::{SegmentRules, Segmenter};
use teachback::provider::fake::{FakeOpenAi, FakeOptions};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const TOPIC: &str = "cs.networking.tcp-vs-udp";
const RATE: u32 = 16_000;
/// 100 ms of 16 kHz mono 16-bit PCM.
const CHUNK_BYTES: usize = 3_200;
const CHUNK_MS: u64 = 100;
/// Direct calls to the fake model that measure its own time before the run...
const LLM_PROBES: usize = 5;
/// ...and how often one is made during the TeachBack runs.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Longest wait for any one step (a frame, a catch-up, a grade).
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Parser, Clone, Debug)]
struct Args {
    /// Lectures through TeachBack's live flow.
    #[arg(long, env = "TEACHBACK_BENCH_LECTURES", default_value_t = 20)]
    lectures: usize,
    /// TeachBack lectures streaming at once (their starts are staggered).
    #[arg(long, env = "TEACHBACK_BENCH_CONCURRENCY", default_value_t = 4)]
    concurrency: usize,
    /// Lectures through the original flow (upload at the end, poll); they run concurrently.
    #[arg(long, env = "TEACHBACK_BENCH_ORIGINAL_LECTURES", default_value_t = 5)]
    original: usize,
    /// Length of every lecture, in seconds of audio.
    #[arg(long, default_value_t = 180)]
    lecture_secs: u64,
    /// Streaming speed relative to real time (the clock that matters starts at `finish`).
    #[arg(long, default_value_t = 10.0)]
    speed: f64,
    /// Speech-to-text: delay before the answer.
    #[arg(long, default_value_t = 200)]
    stt_first_byte_ms: u64,
    /// Speech-to-text: added delay per second of audio (100 = 10× faster than real time).
    #[arg(long, default_value_t = 100)]
    stt_ms_per_audio_second: u64,
    /// Grading model: delay before the first byte of the stream.
    #[arg(long, default_value_t = 400)]
    llm_first_byte_ms: u64,
    /// Grading model: delay between streamed chunks.
    #[arg(long, default_value_t = 10)]
    llm_chunk_ms: u64,
    /// Grading model: characters per streamed chunk.
    #[arg(long, default_value_t = 4)]
    llm_chunk_chars: usize,
    /// Original flow: how often the app polls for the grade.
    #[arg(long, default_value_t = 3000)]
    poll_ms: u64,
    /// Skip the original flow.
    #[arg(long)]
    no_original: bool,
    /// A `tracing` filter for the server's logs on stderr (e.g. `info,teachback=debug`); off by
    /// default.
    #[arg(long)]
    log: Option<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The providers' delay model, and what was measured of it directly.
#[derive(Debug, Clone, Copy)]
struct Provider {
    stt_first_byte: Duration,
    stt_per_audio_second: Duration,
    /// Streamed directly from the fake model: first feedback character, and the whole stream.
    llm_first_feedback: Duration,
    llm_stream: Duration,
}

impl Provider {
    /// The speech-to-text model's time for `ms` of audio (none without audio).
    fn stt(&self, ms: u64) -> Duration {
        if ms == 0 {
            return Duration::ZERO;
        }
        self.stt_first_byte + self.stt_per_audio_second.mul_f64(ms as f64 / 1000.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Synthetic speech

/// `secs` seconds of speech-like 16 kHz PCM: "words" (180–480 ms of a voiced, harmonic signal)
/// separated by short gaps (60–300 ms, under the server's 600 ms pause), grouped into sentences
/// of 4–12.5 s of speech with 700–1200 ms pauses between them, so the server cuts a segment per
/// sentence. Background noise is near-silent. The last sentence ends 300 ms before the end (the
/// learner presses stop), so the open tail at `finish` is that whole sentence. Deterministic in
/// `seed`.
fn lecture_speech(secs: u64, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7eac_4bac);
    let total = u64::from(RATE) * secs;
    let per_ms = u64::from(RATE) / 1000;
    let trailing = 300 * per_ms;
    let mut pcm: Vec<i16> = Vec::with_capacity(total as usize);
    // Plan sentences (speech lengths) and pauses, in samples, to fill the lecture exactly.
    let mut plan: Vec<(u64, u64)> = Vec::new();
    let mut used = 0;
    let body = total - trailing;
    loop {
        let len = rng.random_range(4_000..=12_500) * per_ms;
        let pause = rng.random_range(700..=1_200) * per_ms;
        let remaining = body - used;
        if remaining < len + pause + 4_000 * per_ms {
            // The last sentence takes what is left (split in two when that is too long).
            if remaining > 13_000 * per_ms {
                let first = remaining / 2 - 500 * per_ms;
                plan.push((first, 1_000 * per_ms));
                plan.push((remaining - first - 1_000 * per_ms, 0));
            } else {
                plan.push((remaining, 0));
            }
            break;
        }
        plan.push((len, pause));
        used += len + pause;
    }
    for (len, pause) in plan {
        sentence(&mut rng, &mut pcm, len);
        quiet(&mut rng, &mut pcm, pause);
    }
    quiet(&mut rng, &mut pcm, trailing);
    assert_eq!(pcm.len() as u64, total);
    pcm.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// `len` samples of words and short gaps, ending on a word.
fn sentence(rng: &mut StdRng, pcm: &mut Vec<i16>, len: u64) {
    let per_ms = u64::from(RATE) / 1000;
    let mut left = len;
    while left > 0 {
        let word = rng.random_range(180..=480) * per_ms;
        let gap = rng.random_range(60..=300) * per_ms;
        if word + gap + 180 * per_ms >= left {
            voiced(rng, pcm, left);
            break;
        }
        voiced(rng, pcm, word);
        quiet(rng, pcm, gap);
        left -= word + gap;
    }
}

/// A voiced sound: a fundamental of 100–240 Hz and two harmonics, with 15 ms ramps.
fn voiced(rng: &mut StdRng, pcm: &mut Vec<i16>, samples: u64) {
    let f0: f64 = rng.random_range(100.0..240.0);
    let amplitude: f64 = rng.random_range(2_500.0..7_000.0);
    let ramp = (15 * u64::from(RATE) / 1000).min(samples / 2).max(1) as f64;
    let tau = 2.0 * std::f64::consts::PI / f64::from(RATE);
    for i in 0..samples {
        let t = i as f64;
        let edge = t.min((samples - 1 - i) as f64);
        let envelope = (edge / ramp).min(1.0);
        let s = 0.6 * (tau * f0 * t).sin()
            + 0.3 * (tau * 2.0 * f0 * t).sin()
            + 0.1 * (tau * 3.0 * f0 * t).sin();
        let noise: f64 = rng.random_range(-20.0..20.0);
        pcm.push((amplitude * envelope * s + noise) as i16);
    }
}

/// Near-silence (background noise of about -65 dBFS).
fn quiet(rng: &mut StdRng, pcm: &mut Vec<i16>, samples: u64) {
    for _ in 0..samples {
        pcm.push(rng.random_range(-20..=20));
    }
}

/// How many segments the server's voice activity detector closes while the chunks stream (the
/// open tail not counted), with the server's own segmenter and rules.
fn closed_segments(chunks: &[&[u8]], rules: SegmentRules) -> (usize, Vec<u64>) {
    let mut segmenter = Segmenter::new(rules, RATE);
    let mut closed = Vec::new();
    let mut open = 0;
    for chunk in chunks {
        open += 1;
        if segmenter.push(chunk) {
            closed.push(open * CHUNK_MS);
            open = 0;
            segmenter.reset();
        }
    }
    (closed.len(), closed)
}

// ---------------------------------------------------------------------------------------------
// Measurements

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of `values` (sorted here).
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

struct Row {
    label: String,
    values: Vec<f64>,
}

fn row(label: impl Into<String>, values: impl IntoIterator<Item = f64>) -> Row {
    Row {
        label: label.into(),
        values: values.into_iter().collect(),
    }
}

fn print_table(title: &str, rows: &[Row]) {
    println!("\n{title}");
    let width = rows
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(0);
    println!(
        "  {:<width$}  {:>3}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}",
        "ms", "n", "min", "p50", "p95", "p99", "max"
    );
    for r in rows {
        let min = r.values.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "  {:<width$}  {:>3}  {:>9.1}  {:>9.1}  {:>9.1}  {:>9.1}  {:>9.1}",
            r.label,
            r.values.len(),
            min,
            percentile(&r.values, 50.0),
            percentile(&r.values, 95.0),
            percentile(&r.values, 99.0),
            percentile(&r.values, 100.0),
        );
    }
}

/// CPU time from `/proc` (Linux; zeros elsewhere), to tell whether something else on the
/// machine competed with the run: (all cores busy, all cores total, this process), in ticks.
fn cpu_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle + iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<u64> = after
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            // utime and stime are fields 14 and 15; the numbers after the name start at ppid
            // (field 4), the state letter being skipped.
            Some(f.get(10)? + f.get(11)?)
        })
        .unwrap_or(0);
    (total - idle, total, own)
}

/// "machine X% busy, this process Y%" between two [`cpu_ticks`] samples (100% = one core).
fn cpu_use(from: (u64, u64, u64), to: (u64, u64, u64)) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let total = (to.1 - from.1).max(1) as f64;
    let busy = (to.0 - from.0) as f64 / total * 100.0 * cores;
    let own = (to.2 - from.2) as f64 / total * 100.0 * cores;
    format!(
        "machine {busy:.0}% busy of {:.0}%, this process {own:.0}%",
        cores * 100.0
    )
}

// ---------------------------------------------------------------------------------------------
// The environment: fake providers on their own runtime, TeachBack in this one

struct Fakes {
    stt_url: String,
    llm_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Fakes {
    /// Starts the two fake servers (speech-to-text and the model have different first-byte
    /// delays) on a runtime with one thread of its own, so their timers do not wait on the
    /// server's work in this runtime's workers.
    fn start(stt: FakeOptions, llm: FakeOptions) -> Fakes {
        let (urls_tx, urls_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fake-providers".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("a runtime for the fakes");
                runtime.block_on(async move {
                    let stt = FakeOpenAi::start(stt).await.expect("the fake STT starts");
                    let llm = FakeOpenAi::start(llm).await.expect("the fake LLM starts");
                    urls_tx.send((stt.base_url(), llm.base_url())).unwrap();
                    let _ = stopped.await;
                    drop((stt, llm));
                });
            })
            .expect("a thread for the fakes");
        let (stt_url, llm_url) = urls_rx.recv().expect("the fakes' URLs");
        Fakes {
            stt_url,
            llm_url,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Fakes {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Env {
    args: Args,
    base: String,
    ws_url: String,
    http: reqwest::Client,
    rules: SegmentRules,
    store: teachback::store::EventStore,
}

async fn register(env: &Env) -> anyhow::Result<String> {
    let response = env
        .http
        .post(format!("{}/api/v1/devices", env.base))
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 201,
        "register: HTTP {}",
        response.status()
    );
    let body: Value = response.json().await?;
    Ok(body["accessToken"]
        .as_str()
        .context("no accessToken")?
        .to_owned())
}

/// The model's time to the first character of feedback prose, and to the end of its stream,
/// streamed straight from the fake (the same default reply the pipeline gets).
async fn time_llm_directly(
    http: &reqwest::Client,
    llm_url: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let body = json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Grade this explanation of TCP and UDP."}],
    });
    let started = Instant::now();
    let mut response = http
        .post(format!("{llm_url}/chat/completions"))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(response.status() == 200, "LLM: HTTP {}", response.status());
    let mut extractor = teachback::grade::llm::FeedbackText::new();
    let mut buffer = Vec::new();
    let mut first = None;
    while let Some(chunk) = response.chunk().await? {
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buffer.drain(..end + 2).collect();
            for line in String::from_utf8_lossy(&event).lines() {
                let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                    continue;
                };
                if data == "[DONE]" {
                    let first = first.context("no feedback prose in the stream")?;
                    return Ok((first, started.elapsed()));
                }
                let v: Value = serde_json::from_str(data)?;
                if let Some(piece) = v["choices"][0]["delta"]["content"].as_str()
                    && !extractor.push(piece).is_empty()
                    && first.is_none()
                {
                    first = Some(started.elapsed());
                }
            }
        }
    }
    bail!("the stream ended without [DONE]")
}

/// One speech-to-text call straight to the fake with `secs` of audio.
async fn time_stt_directly(
    http: &reqwest::Client,
    stt_url: &str,
    secs: u64,
) -> anyhow::Result<Duration> {
    let wav = teachback::live::segment::wav(&lecture_speech(secs, 99), RATE);
    let boundary = "benchboundary7f3a";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&wav);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let started = Instant::now();
    let response = http
        .post(format!("{stt_url}/audio/transcriptions"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(response.status() == 200, "STT: HTTP {}", response.status());
    response.bytes().await?;
    Ok(started.elapsed())
}

// ---------------------------------------------------------------------------------------------
// TeachBack's flow

/// One TeachBack lecture's timings, each from `finish` (t0).
#[derive(Debug, Clone)]
struct Live {
    segments: usize,
    tail_ms: u64,
    /// From the last chunk sent until every chunk was acknowledged and every closed segment
    /// transcribed.
    catch_up: Duration,
    tail_stored: Option<Duration>,
    finished: Duration,
    tail_transcript: Option<Duration>,
    completed: Duration,
    grading: Duration,
    first: Duration,
    score: Duration,
    feedback_deltas: usize,
    /// The same steps as the lecture's events record them.
    server: Timeline,
}

/// A lecture's processing as its events record it, in ms from the learner's `finish` (t0).
/// `recordedAt` is taken when an append is planned, before its commit; the clock is the same
/// machine's, so frame arrival − event time is the append's commit plus the frame's delivery.
#[derive(Debug, Clone, Default)]
struct Timeline {
    tail_stored: Option<f64>,
    finished: Option<f64>,
    transcript: Option<f64>,
    /// The tail's transcription call as the server's client timed it (`latencyMs`).
    stt_call: Option<f64>,
    completed: Option<f64>,
    grading: Option<f64>,
    graded: Option<f64>,
    /// `LectureGraded.latency`: from the start of grading to the first feedback text, and to
    /// the grade.
    first_token_after_grading: Option<f64>,
    total_after_grading: Option<f64>,
}

async fn timeline(
    store: &teachback::store::EventStore,
    lecture: uuid::Uuid,
    tail: Option<u64>,
    t0: jiff::Timestamp,
) -> anyhow::Result<Timeline> {
    let events = store
        .read_stream_all(&teachback_events::streams::lecture(lecture))
        .await?;
    let at = |e: &teachback_events::RecordedEvent| {
        e.recorded_at.duration_since(t0).as_secs_f64() * 1000.0
    };
    let is_tail = |p: &Value| tail.is_some_and(|i| p["index"] == i);
    let mut t = Timeline::default();
    for e in &events {
        let p = &e.payload;
        match e.event_type.as_str() {
            "AudioSegmentStored" if is_tail(p) => t.tail_stored = Some(at(e)),
            "LectureFinished" => t.finished = Some(at(e)),
            "TranscriptSegmentRecognized" if is_tail(p) => {
                t.transcript = Some(at(e));
                t.stt_call = p["latencyMs"].as_f64();
            }
            "TranscriptCompleted" => t.completed = Some(at(e)),
            "GradingStarted" => t.grading = Some(at(e)),
            "LectureGraded" => {
                t.graded = Some(at(e));
                t.first_token_after_grading = p["latency"]["firstTokenMs"].as_f64();
                t.total_after_grading = p["latency"]["totalMs"].as_f64();
            }
            _ => {}
        }
    }
    Ok(t)
}

impl Live {
    fn provider_first(&self, p: &Provider) -> Duration {
        p.stt(self.tail_ms) + p.llm_first_feedback
    }

    fn provider_score(&self, p: &Provider) -> Duration {
        p.stt(self.tail_ms) + p.llm_stream
    }
}

type Frame = (Instant, Value);

async fn read_frames<S>(mut stream: S, tx: mpsc::UnboundedSender<Frame>)
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(message) = stream.next().await {
        let at = Instant::now();
        match message {
            Ok(Message::Text(text)) => {
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    break;
                };
                if tx.send((at, v)).is_err() {
                    break;
                }
            }
            Ok(Message::Close(frame)) => {
                let _ = tx.send((at, json!({"type": "closed", "frame": format!("{frame:?}")})));
                break;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send((at, json!({"type": "closed", "error": e.to_string()})));
                break;
            }
        }
    }
}

async fn next_frame(rx: &mut mpsc::UnboundedReceiver<Frame>, what: &str) -> anyhow::Result<Frame> {
    let frame = tokio::time::timeout(STEP_TIMEOUT, rx.recv())
        .await
        .with_context(|| format!("waiting for {what}: timed out"))?
        .with_context(|| format!("waiting for {what}: the connection ended"))?;
    match frame.1["type"].as_str() {
        Some("closed") => bail!("waiting for {what}: closed: {}", frame.1),
        Some("error") if frame.1["fatal"] == true => bail!("waiting for {what}: {}", frame.1),
        Some("gradingFailed") => bail!("grading failed: {}", frame.1),
        _ => Ok(frame),
    }
}

/// What the client knows of its lecture while streaming.
#[derive(Default)]
struct Seen {
    acked: u64,
    segments: BTreeMap<u64, u64>,
    transcripts: HashSet<u64>,
}

impl Seen {
    fn take(&mut self, v: &Value) -> anyhow::Result<()> {
        match v["type"].as_str() {
            Some("ack") => self.acked = self.acked.max(v["seq"].as_u64().unwrap_or(0)),
            Some("segment") => {
                self.segments.insert(
                    v["index"].as_u64().context("segment index")?,
                    v["durationMs"].as_u64().unwrap_or(0),
                );
            }
            Some("transcript") => {
                self.transcripts
                    .insert(v["index"].as_u64().context("transcript index")?);
            }
            Some("error") => bail!("error frame while streaming: {v}"),
            _ => {}
        }
        Ok(())
    }
}

async fn live_lecture(env: &Env, i: usize) -> anyhow::Result<Live> {
    let token = register(env).await?;
    let mut request = env.ws_url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
        .await
        .context("connect")?;
    let (mut sink, stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_frames(stream, tx));
    let result = async {
        let (_, hello) = next_frame(&mut rx, "hello").await?;
        anyhow::ensure!(hello["type"] == "hello", "first frame: {hello}");
        let start = json!({"type": "start", "topicId": TOPIC, "format": "pcm_s16le", "sampleRate": RATE, "language": "en"});
        sink.send(Message::Text(start.to_string().into())).await?;
        let lecture_id = loop {
            let (_, v) = next_frame(&mut rx, "started").await?;
            match v["type"].as_str() {
                Some("started") => {
                    break v["lectureId"].as_str().context("lectureId")?.to_owned();
                }
                Some("error") => bail!("start refused: {v}"),
                _ => {}
            }
        };

        let pcm = lecture_speech(env.args.lecture_secs, i as u64);
        let chunks: Vec<&[u8]> = pcm.chunks(CHUNK_BYTES).collect();
        let (closed, _) = closed_segments(&chunks, env.rules);
        let mut seen = Seen::default();
        let interval = Duration::from_secs_f64(CHUNK_MS as f64 / 1000.0 / env.args.speed);
        let streaming = Instant::now();
        for (k, chunk) in chunks.iter().enumerate() {
            tokio::time::sleep_until(streaming + interval * k as u32).await;
            let frame = teachback::live::protocol::audio_frame(k as u64 + 1, chunk);
            sink.send(Message::Binary(frame.into())).await?;
            while let Ok((_, v)) = rx.try_recv() {
                seen.take(&v)?;
            }
        }
        // Wait until the server has every chunk and the transcription has caught up with every
        // closed segment: the learner now presses stop with only the tail untranscribed.
        let last = chunks.len() as u64;
        let sent_all = Instant::now();
        while !(seen.acked >= last
            && seen.segments.len() >= closed
            && seen.segments.keys().all(|s| seen.transcripts.contains(s)))
        {
            let (_, v) = next_frame(&mut rx, "acks and transcripts before finish")
                .await
                .with_context(|| {
                    format!(
                        "acked {}/{last}, segments {}/{closed}, transcripts {}",
                        seen.acked,
                        seen.segments.len(),
                        seen.transcripts.len()
                    )
                })?;
            seen.take(&v)?;
        }
        let catch_up = sent_all.elapsed();
        let before = seen.segments.len();

        // The learner presses finish.
        let t0 = Instant::now();
        let t0_wall = jiff::Timestamp::now();
        sink.send(Message::Text(json!({"type": "finish"}).to_string().into()))
            .await?;
        let mut tail: Option<(u64, u64, Duration)> = None;
        let mut finished = None;
        let mut tail_transcript = None;
        let mut completed = None;
        let mut grading = None;
        let mut first = None;
        let mut deltas = 0;
        let score = loop {
            let (at, v) = next_frame(&mut rx, "the grade").await?;
            let since = at - t0;
            match v["type"].as_str() {
                Some("segment") => {
                    let index = v["index"].as_u64().context("segment index")?;
                    tail = Some((index, v["durationMs"].as_u64().unwrap_or(0), since));
                }
                Some("state") if v["state"] == "finished" => finished = Some(since),
                Some("state") => bail!("unexpected state: {v}"),
                Some("transcript") if tail.is_some_and(|(index, _, _)| v["index"] == index) => {
                    tail_transcript = Some(since);
                }
                Some("transcriptCompleted") => {
                    anyhow::ensure!(v["empty"] == false, "empty transcript: {v}");
                    completed = Some(since);
                }
                Some("grading") => {
                    anyhow::ensure!(
                        v["grader"] == "llm" && v["fallbackReason"].is_null(),
                        "not graded by the model: {v}"
                    );
                    grading = Some(since);
                }
                Some("feedbackDelta") => {
                    deltas += 1;
                    first.get_or_insert(since);
                }
                Some("graded") => {
                    anyhow::ensure!(v["grader"] == "llm", "not graded by the model: {v}");
                    break since;
                }
                Some("error") => bail!("error frame after finish: {v}"),
                _ => {}
            }
        };
        let _ = sink.send(Message::Close(None)).await;
        // The server's side of the same steps, from the log (not timed).
        let server = timeline(
            &env.store,
            lecture_id.parse()?,
            tail.map(|(index, _, _)| index),
            t0_wall,
        )
        .await?;
        Ok(Live {
            server,
            segments: before + usize::from(tail.is_some()),
            tail_ms: tail.map_or(0, |(_, ms, _)| ms),
            catch_up,
            tail_stored: tail.map(|(_, _, at)| at),
            finished: finished.context("no `state: finished`")?,
            tail_transcript,
            completed: completed.context("no `transcriptCompleted`")?,
            grading: grading.context("no `grading`")?,
            first: first.context("no `feedbackDelta`")?,
            score,
            feedback_deltas: deltas,
        })
    }
    .await;
    reader.abort();
    result
}

// ---------------------------------------------------------------------------------------------
// The original flow

#[derive(Debug, Clone)]
struct Original {
    upload: Duration,
    score: Duration,
    polls: u32,
}

async fn original_lecture(env: &Env, i: usize) -> anyhow::Result<Original> {
    let token = register(env).await?;
    let wav = teachback::live::segment::wav(
        &lecture_speech(env.args.lecture_secs, 10_000 + i as u64),
        RATE,
    );
    // The learner presses stop: the app uploads the whole recording.
    let t0 = Instant::now();
    let response = env
        .http
        .post(format!("{}/api/v1/lectures", env.base))
        .bearer_auth(&token)
        .json(&json!({"topicId": TOPIC, "format": "wav", "language": "en"}))
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 201,
        "create: HTTP {}",
        response.status()
    );
    let created: Value = response.json().await?;
    let lecture = created["lectureId"]
        .as_str()
        .context("lectureId")?
        .to_owned();
    let upload_url = created["uploadUrl"].as_str().context("uploadUrl")?;
    let content_type = created["contentType"].as_str().context("contentType")?;
    let response = env
        .http
        .put(upload_url)
        .header("content-type", content_type)
        .body(wav)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 200,
        "upload: HTTP {}",
        response.status()
    );
    let response = env
        .http
        .post(format!("{}/api/v1/lectures/{lecture}/finish", env.base))
        .bearer_auth(&token)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 200,
        "finish: HTTP {}",
        response.status()
    );
    let upload = t0.elapsed();
    // Then it polls.
    let mut poll = tokio::time::interval(Duration::from_millis(env.args.poll_ms));
    let mut polls = 0;
    loop {
        poll.tick().await;
        polls += 1;
        let view: Value = env
            .http
            .get(format!("{}/api/v1/lectures/{lecture}", env.base))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        if !view["score"].is_null() {
            anyhow::ensure!(
                view["grade"]["grader"] == "llm",
                "not graded by the model: {}",
                view["grade"]
            );
            return Ok(Original {
                upload,
                score: t0.elapsed(),
                polls,
            });
        }
        if !view["failure"].is_null() {
            bail!("processing failed: {}", view["failure"]);
        }
        if t0.elapsed() > STEP_TIMEOUT * 2 {
            bail!("no grade after {:?}: {view}", t0.elapsed());
        }
    }
}

// ---------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(filter) = &args.log {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let stt_options = FakeOptions {
        first_byte_delay: Duration::from_millis(args.stt_first_byte_ms),
        stt_delay_per_audio_second: Duration::from_millis(args.stt_ms_per_audio_second),
        ..FakeOptions::default()
    };
    let llm_options = FakeOptions {
        first_byte_delay: Duration::from_millis(args.llm_first_byte_ms),
        chunk_delay: Duration::from_millis(args.llm_chunk_ms),
        chunk_chars: args.llm_chunk_chars,
        ..FakeOptions::default()
    };
    let fakes = Fakes::start(stt_options, llm_options);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let code = runtime.block_on(run(args, &fakes));
    drop(runtime);
    drop(fakes);
    code
}

async fn run(args: Args, fakes: &Fakes) -> ExitCode {
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("an HTTP client");

    // The providers' own times, straight from the fakes.
    let grade_chars =
        teachback::provider::fake::grade_to_string(&teachback::provider::fake::sample_grade())
            .chars()
            .count();
    let mut llm_first = Vec::new();
    let mut llm_stream = Vec::new();
    let calls = futures::future::join_all(
        (0..LLM_PROBES).map(|_| time_llm_directly(&http, &fakes.llm_url)),
    )
    .await;
    for call in calls {
        match call {
            Ok((first, stream)) => {
                llm_first.push(ms(first));
                llm_stream.push(ms(stream));
            }
            Err(e) => {
                eprintln!("calling the fake model directly failed: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    let stt_probe_secs = 10;
    let stt_probe = match time_stt_directly(&http, &fakes.stt_url, stt_probe_secs).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("calling the fake speech-to-text directly failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut provider = Provider {
        stt_first_byte: Duration::from_millis(args.stt_first_byte_ms),
        stt_per_audio_second: Duration::from_millis(args.stt_ms_per_audio_second),
        llm_first_feedback: Duration::from_secs_f64(percentile(&llm_first, 50.0) / 1000.0),
        llm_stream: Duration::from_secs_f64(percentile(&llm_stream, 50.0) / 1000.0),
    };
    let chunk_count = grade_chars.div_ceil(args.llm_chunk_chars.max(1));
    println!("grading latency: TeachBack's live flow vs the original upload-and-poll flow");
    println!(
        "lectures: {} s of 16 kHz PCM each; TeachBack: {} lectures, {} at once, streamed at {}x real time; original: {} at once, polling every {} ms",
        args.lecture_secs,
        args.lectures,
        args.concurrency,
        args.speed,
        if args.no_original { 0 } else { args.original },
        args.poll_ms
    );
    println!(
        "provider model: STT {} ms + {} ms per audio second (direct call with {stt_probe_secs} s of audio: {:.1} ms, model {:.1} ms); \
         LLM {} ms to first byte, then {} chars every {} ms ({grade_chars} chars of grade JSON = {chunk_count} chunks; model ≈ {} ms to end)",
        args.stt_first_byte_ms,
        args.stt_ms_per_audio_second,
        ms(stt_probe),
        ms(provider.stt(stt_probe_secs * 1000)),
        args.llm_first_byte_ms,
        args.llm_chunk_chars,
        args.llm_chunk_ms,
        args.llm_first_byte_ms + (chunk_count as u64 + 3) * args.llm_chunk_ms,
    );
    println!(
        "LLM measured directly before the run ({LLM_PROBES} concurrent streamed calls, median [min–max]): first feedback character {:.1} ms [{:.1}–{:.1}], whole stream {:.1} ms [{:.1}–{:.1}]",
        ms(provider.llm_first_feedback),
        percentile(&llm_first, 0.0),
        percentile(&llm_first, 100.0),
        ms(provider.llm_stream),
        percentile(&llm_stream, 0.0),
        percentile(&llm_stream, 100.0),
    );

    // TeachBack, in process, on a fresh data dir with SQLite.
    let data = tempfile::tempdir().expect("a temp dir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    let mut config = teachback::config::Config::defaults();
    // A benchmark drives the server from one address: no rate limits or quotas in the way.
    config.rate_limits = "off".into();
    config.quota_lectures_per_day = 0;
    config.quota_audio_minutes_per_day = 0;
    config.quota_llm_tokens_per_day = 0;
    config.addr = addr;
    config.data_dir = data.path().to_path_buf();
    config.database_url = None;
    config.blob_url = None;
    config.public_url = None;
    config.stt_url = Some(fakes.stt_url.clone());
    config.stt_model = "whisper-1".into();
    config.stt_api_key = Some("sk-bench".to_owned().into());
    config.llm_url = Some(fakes.llm_url.clone());
    config.llm_model = "gpt-4o-mini".into();
    config.llm_api_key = Some("sk-bench".to_owned().into());
    let rules = SegmentRules {
        pause: Duration::from_millis(config.vad_pause_ms),
        max_len: Duration::from_millis(config.segment_max_ms),
        ..SegmentRules::default()
    };
    let app = match teachback::app::App::build(&config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("starting TeachBack failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let store = app.state.store.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(listener, async move {
        let _ = stopped.await;
    }));
    let env = Arc::new(Env {
        args: args.clone(),
        base: format!("http://{addr}"),
        ws_url: format!("ws://{addr}/api/v1/live"),
        http,
        rules,
        store,
    });

    let mut failures = Vec::new();

    // The model's own time is measured again throughout the run, by a direct call every
    // `PROBE_EVERY`: the median of those is what is subtracted.
    let probes = Arc::new(std::sync::Mutex::new(Vec::<(f64, f64)>::new()));
    let (stop_probing, mut probing_stopped) = tokio::sync::watch::channel(false);
    let prober = {
        let probes = probes.clone();
        let http = env.http.clone();
        let llm_url = fakes.llm_url.clone();
        tokio::spawn(async move {
            while !*probing_stopped.borrow() {
                if let Ok((first, stream)) = time_llm_directly(&http, &llm_url).await {
                    probes.lock().unwrap().push((ms(first), ms(stream)));
                }
                tokio::select! {
                    _ = tokio::time::sleep(PROBE_EVERY) => {}
                    _ = probing_stopped.changed() => {}
                }
            }
        })
    };

    // TeachBack's flow: `concurrency` workers take lectures in turn, starting staggered.
    let started = Instant::now();
    let cpu_before = cpu_ticks();
    let next = Arc::new(AtomicUsize::new(0));
    let workers = args.concurrency.clamp(1, args.lectures.max(1));
    let lecture_wall = args.lecture_secs as f64 / args.speed + 5.0;
    let stagger = Duration::from_secs_f64(lecture_wall / workers as f64);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let env = env.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(stagger * w as u32).await;
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= env.args.lectures {
                    return out;
                }
                out.push((i, live_lecture(&env, i).await));
            }
        }));
    }
    let mut live = Vec::new();
    for task in tasks {
        for (i, result) in task.await.expect("a worker") {
            match result {
                Ok(sample) => live.push(sample),
                Err(e) => failures.push(format!("TeachBack lecture {i}: {e:#}")),
            }
        }
    }
    let live_wall = started.elapsed();
    let live_cpu = cpu_use(cpu_before, cpu_ticks());
    let _ = stop_probing.send(true);
    let _ = prober.await;
    let probes = std::mem::take(&mut *probes.lock().unwrap());
    if !probes.is_empty() {
        let first: Vec<f64> = probes.iter().map(|p| p.0).collect();
        let stream: Vec<f64> = probes.iter().map(|p| p.1).collect();
        provider.llm_first_feedback = Duration::from_secs_f64(percentile(&first, 50.0) / 1000.0);
        provider.llm_stream = Duration::from_secs_f64(percentile(&stream, 50.0) / 1000.0);
        println!(
            "\nLLM measured directly during the TeachBack runs ({} streamed calls, one every {} s; median [min–max], subtracted below): first feedback character {:.1} ms [{:.1}–{:.1}], whole stream {:.1} ms [{:.1}–{:.1}]",
            probes.len(),
            PROBE_EVERY.as_secs(),
            ms(provider.llm_first_feedback),
            percentile(&first, 0.0),
            percentile(&first, 100.0),
            ms(provider.llm_stream),
            percentile(&stream, 0.0),
            percentile(&stream, 100.0),
        );
    }

    // The original flow: all at once.
    let started = Instant::now();
    let cpu_before = cpu_ticks();
    let mut original = Vec::new();
    if !args.no_original {
        let tasks: Vec<_> = (0..args.original)
            .map(|i| {
                let env = env.clone();
                tokio::spawn(async move { (i, original_lecture(&env, i).await) })
            })
            .collect();
        for task in tasks {
            let (i, result) = task.await.expect("a task");
            match result {
                Ok(sample) => original.push(sample),
                Err(e) => failures.push(format!("original-flow lecture {i}: {e:#}")),
            }
        }
    }
    let original_wall = started.elapsed();
    let original_cpu = cpu_use(cpu_before, cpu_ticks());

    let _ = stop.send(());
    let _ = server.await;

    report(
        &args,
        &provider,
        &live,
        &original,
        (live_wall, &live_cpu),
        (original_wall, &original_cpu),
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("\nFAILED ({}):", failures.len());
        for f in &failures {
            println!("  {f}");
        }
        ExitCode::FAILURE
    }
}

fn report(
    args: &Args,
    p: &Provider,
    live: &[Live],
    original: &[Original],
    (live_wall, live_cpu): (Duration, &str),
    (original_wall, original_cpu): (Duration, &str),
) {
    let of = |f: &dyn Fn(&Live) -> f64| live.iter().map(f).collect::<Vec<_>>();
    let segments = of(&|l| l.segments as f64);
    let tails = of(&|l| l.tail_ms as f64 / 1000.0);
    println!(
        "\nTeachBack: {} lectures in {:.0} s ({live_cpu}); {:.1} segments per lecture (incl. the tail); tail {:.1}–{:.1} s (p50 {:.1} s); catch-up after the last chunk p50 {:.0} ms; {:.0} feedbackDelta frames per lecture",
        live.len(),
        live_wall.as_secs_f64(),
        segments.iter().sum::<f64>() / segments.len().max(1) as f64,
        tails.iter().copied().fold(f64::INFINITY, f64::min),
        tails.iter().copied().fold(0.0, f64::max),
        percentile(&tails, 50.0),
        percentile(&of(&|l| ms(l.catch_up)), 50.0),
        live.iter().map(|l| l.feedback_deltas as f64).sum::<f64>() / live.len().max(1) as f64,
    );
    let added_first = of(&|l| ms(l.first) - ms(l.provider_first(p)));
    let added_score = of(&|l| ms(l.score) - ms(l.provider_score(p)));
    print_table(
        "TeachBack (live): from `finish` (t0)",
        &[
            row("t1 − t0: first feedback token", of(&|l| ms(l.first))),
            row("t2 − t0: score (`graded`)", of(&|l| ms(l.score))),
            row(
                "provider time to first token",
                of(&|l| ms(l.provider_first(p))),
            ),
            row("provider time to score", of(&|l| ms(l.provider_score(p)))),
            row("added → first token", added_first.clone()),
            row("added → score", added_score.clone()),
        ],
    );
    // Where the added time goes, from the frames' arrival times.
    let stage = |l: &Live| {
        let stored = l.tail_stored.unwrap_or(Duration::ZERO);
        let transcribed = l.tail_transcript.unwrap_or(stored);
        (stored, transcribed)
    };
    print_table(
        "TeachBack: where the added time goes (frame arrival times; provider time subtracted)",
        &[
            row("finish → tail `segment` (stored)", of(&|l| ms(stage(l).0))),
            row("finish → `state: finished`", of(&|l| ms(l.finished))),
            row(
                "tail `segment` → its `transcript`, − STT",
                of(&|l| ms(stage(l).1) - ms(stage(l).0) - ms(p.stt(l.tail_ms))),
            ),
            row(
                "→ `transcriptCompleted`",
                of(&|l| ms(l.completed) - ms(stage(l).1.max(l.finished))),
            ),
            row("→ `grading`", of(&|l| ms(l.grading) - ms(l.completed))),
            row(
                "→ first `feedbackDelta`, − LLM first",
                of(&|l| ms(l.first) - ms(l.grading) - ms(p.llm_first_feedback)),
            ),
            row(
                "→ `graded`, − LLM rest",
                of(&|l| ms(l.score) - ms(l.first) - (ms(p.llm_stream) - ms(p.llm_first_feedback))),
            ),
        ],
    );
    // The same from the server's side: the lecture's events, and how long each frame took to
    // arrive after its event.
    let n = |v: Option<f64>| v.unwrap_or(f64::NAN);
    print_table(
        "TeachBack: the server's side (events' recordedAt; provider time subtracted)",
        &[
            row(
                "finish → tail AudioSegmentStored",
                of(&|l| n(l.server.tail_stored)),
            ),
            row("finish → LectureFinished", of(&|l| n(l.server.finished))),
            row(
                "tail stored → its TranscriptSegmentRecognized, − STT",
                of(&|l| n(l.server.transcript) - n(l.server.tail_stored) - ms(p.stt(l.tail_ms))),
            ),
            row(
                "  of which the STT call beyond the model",
                of(&|l| n(l.server.stt_call) - ms(p.stt(l.tail_ms))),
            ),
            row(
                "→ TranscriptCompleted",
                of(&|l| n(l.server.completed) - n(l.server.transcript).max(n(l.server.finished))),
            ),
            row(
                "→ GradingStarted",
                of(&|l| n(l.server.grading) - n(l.server.completed)),
            ),
            row(
                "grading → first token (server), − LLM first",
                of(&|l| n(l.server.first_token_after_grading) - ms(p.llm_first_feedback)),
            ),
            row(
                "GradingStarted → LectureGraded, − LLM stream",
                of(&|l| n(l.server.graded) - n(l.server.grading) - ms(p.llm_stream)),
            ),
            row(
                "frame after event: `state: finished`",
                of(&|l| ms(l.finished) - n(l.server.finished)),
            ),
            row(
                "frame after event: tail `transcript`",
                of(&|l| l.tail_transcript.map_or(f64::NAN, ms) - n(l.server.transcript)),
            ),
            row(
                "frame after event: `transcriptCompleted`",
                of(&|l| ms(l.completed) - n(l.server.completed)),
            ),
            row(
                "frame after event: `graded`",
                of(&|l| ms(l.score) - n(l.server.graded)),
            ),
        ],
    );
    // The lectures over the target, stage by stage.
    let over: Vec<(usize, &Live)> = live
        .iter()
        .enumerate()
        .filter(|(i, _)| added_first[*i] > 50.0 || added_score[*i] > 50.0)
        .collect();
    if !over.is_empty() {
        println!("\nLectures with more than 50 ms added (ms):");
        for (i, l) in over {
            let (stored, transcribed) = stage(l);
            println!(
                "  #{i}: added first {:.1}, score {:.1}; tail stored {:.1}, finished {:.1}, transcript − STT {:.1}, completed {:.1}, grading {:.1}, first delta − LLM {:.1}, graded − LLM rest {:.1}; server: graded − grading − LLM stream {:.1}, `graded` frame after its event {:.1}",
                added_first[i],
                added_score[i],
                ms(stored),
                ms(l.finished),
                ms(transcribed) - ms(stored) - ms(p.stt(l.tail_ms)),
                ms(l.completed) - ms(transcribed.max(l.finished)),
                ms(l.grading) - ms(l.completed),
                ms(l.first) - ms(l.grading) - ms(p.llm_first_feedback),
                ms(l.score) - ms(l.first) - (ms(p.llm_stream) - ms(p.llm_first_feedback)),
                n(l.server.graded) - n(l.server.grading) - ms(p.llm_stream),
                ms(l.score) - n(l.server.graded),
            );
        }
    }
    let orig_score: Vec<f64> = original.iter().map(|o| ms(o.score)).collect();
    let orig_provider = ms(p.stt(args.lecture_secs * 1000) + p.llm_stream);
    if !original.is_empty() {
        println!(
            "\nOriginal flow: {} lectures at once in {:.0} s ({original_cpu}); {:.1} polls per lecture",
            original.len(),
            original_wall.as_secs_f64(),
            original.iter().map(|o| f64::from(o.polls)).sum::<f64>() / original.len() as f64
        );
        print_table(
            "Original (upload whole, transcribe whole, poll): from stop (t0)",
            &[
                row(
                    "create + upload + finish",
                    original.iter().map(|o| ms(o.upload)),
                ),
                row("t1 = t2 − t0: score seen by a poll", orig_score.clone()),
                row(
                    "provider time to score",
                    original.iter().map(|_| orig_provider),
                ),
                row(
                    "beyond provider (incl. polling)",
                    orig_score.iter().map(|s| s - orig_provider),
                ),
            ],
        );
    }

    // Targets.
    println!("\nTargets");
    if !live.is_empty() {
        for (what, values) in [("first token", &added_first), ("score", &added_score)] {
            let p99 = percentile(values, 99.0);
            println!(
                "  added latency → {what}, p99: {p99:.1} ms (target ≤ 50 ms): {}",
                if p99 <= 50.0 { "met" } else { "NOT MET" }
            );
        }
    }
    if !live.is_empty() && !original.is_empty() {
        let live_first = of(&|l| ms(l.first));
        let ratio50 = percentile(&orig_score, 50.0) / percentile(&live_first, 50.0);
        let ratio_worst = percentile(&orig_score, 0.0) / percentile(&live_first, 100.0);
        println!(
            "  time to first feedback, original / TeachBack: {ratio50:.1}x at p50, {ratio_worst:.1}x fastest original vs slowest TeachBack (target ≥ 5x): {}",
            if ratio50 >= 5.0 { "met" } else { "NOT MET" }
        );
    }
}
