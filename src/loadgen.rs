//! `teachback loadgen`: a load generator for live lectures.
//!
//! Each simulated learner registers a device, opens `/api/v1/live`, starts a 16 kHz PCM lecture
//! and streams synthetic speech in real time (one chunk every `--chunk-ms`, on deadlines computed
//! from the lecture's start, so a late chunk does not shift the ones after it). It records when
//! each chunk was sent; on every `ack` it records, for every chunk the ack newly covers, the time
//! from sending to the ack. At the end it finishes the lecture and waits for `finished`.
//!
//! When every lecture has ended, the stored lectures are checked over HTTP: the segments must
//! cover sequences `1..=last` exactly once, their PCM must add up to what was sent, and (with
//! `--verify-audio`, the default) the downloaded PCM must hash to what was sent.
//!
//! With `--server-pid` the server's CPU time and resident memory are read from `/proc` at the
//! start and the end of the live phase (and its RSS every second, for the peak). The load
//! generator runs on the same machine as the server in the documented runs, so it reports its
//! own CPU use too. See `docs/benchmarks.md` ("Live lectures: load generator").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::live::protocol::{MAX_FRAME_BYTES, SEQ_BYTES, audio_frame};
use crate::live::segment::wav_pcm;

/// Sample rate of the synthetic speech (16-bit mono PCM).
const RATE: u64 = 16_000;
/// Bytes per millisecond of that PCM.
const BYTES_PER_MS: u64 = RATE * 2 / 1000;
/// How long to wait for `hello`, `started`, a send, or `finished` before giving up on a learner.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Error messages kept for the report.
const KEEP_ERRORS: usize = 10;
/// Lectures verified at once after the live phase.
const VERIFY_CONCURRENCY: usize = 16;

/// Options of `teachback loadgen`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Simulated learners, each recording one live lecture (all at once, after the ramp).
    #[arg(long, default_value_t = 100)]
    pub learners: usize,
    /// Seconds of audio per lecture.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Milliseconds of audio per chunk (one binary frame).
    #[arg(long, default_value_t = 100)]
    pub chunk_ms: u64,
    /// Spread the learners' starts evenly over this many seconds.
    #[arg(long, default_value_t = 10)]
    pub ramp_secs: u64,
    /// The server's process id: report its CPU time and RSS (read from /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Download every segment and compare the SHA-256 of the stored PCM with what was sent.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub verify_audio: bool,
    /// The topic every lecture is about.
    #[arg(long, default_value = "cs.networking.tcp-vs-udp")]
    pub topic: String,
    /// Print the report as JSON too (after the text report, on stdout).
    #[arg(long)]
    pub json: bool,
}

// ---------------------------------------------------------------------------------------------
// Pure parts: percentiles, and checking stored segments against what was sent.

/// The `p`-th percentile (0–100) of sorted samples, by nearest rank. `None` if there are none.
pub fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    // The epsilon keeps float error (0.999 × 1000 = 999.0000000000001) from bumping the rank.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A distribution summary, in milliseconds (samples are microseconds).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub samples: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// Summarises microsecond samples (sorts them).
    pub fn of_micros(samples: &mut [u32]) -> Summary {
        samples.sort_unstable();
        let ms = |p: f64| percentile(samples, p).map_or(0.0, |us| f64::from(us) / 1000.0);
        let total: u64 = samples.iter().map(|&us| u64::from(us)).sum();
        Summary {
            samples: samples.len(),
            p50: ms(50.0),
            p90: ms(90.0),
            p99: ms(99.0),
            p999: ms(99.9),
            max: ms(100.0),
            mean: if samples.is_empty() {
                0.0
            } else {
                total as f64 / samples.len() as f64 / 1000.0
            },
        }
    }
}

/// The steady-state window, in ms after the run began: from 1 s after the last learner's
/// scheduled start to when the first learner runs out of audio. `None` if that is empty.
pub fn steady_window(ramp_secs: u64, seconds: u64) -> Option<(u32, u32)> {
    let from = (ramp_secs + 1) * 1000;
    let to = seconds * 1000;
    (from < to).then(|| {
        (
            from.min(u64::from(u32::MAX)) as u32,
            to.min(u64::from(u32::MAX)) as u32,
        )
    })
}

/// A stored segment, as `GET /api/v1/lectures/{id}` lists it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StoredSegment {
    pub index: u32,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The WAV file's size, header included.
    pub bytes: u64,
    pub sha256: String,
}

/// Size of the WAV header the server writes before each segment's PCM.
pub const WAV_HEADER_BYTES: u64 = 44;

/// What was sent on one lecture: `chunks` frames of `chunk_bytes` PCM each, `acked` of them
/// acknowledged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sent {
    pub chunks: u64,
    pub chunk_bytes: u64,
    pub acked: u64,
}

/// How the stored segments compare with what was sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Coverage {
    /// Segments are in index order and cover `1..=chunks` with no gap and no overlap.
    pub contiguous: bool,
    /// Acknowledged sequences that no segment covers.
    pub lost_chunks: u64,
    /// Sequences covered by more than one segment (each extra cover counts), or beyond the last
    /// one sent.
    pub duplicated_chunks: u64,
    /// PCM bytes stored (segment sizes minus their WAV headers).
    pub stored_bytes: u64,
    /// Acknowledged PCM bytes that are not stored.
    pub lost_bytes: u64,
    /// PCM bytes stored beyond what was sent.
    pub duplicated_bytes: u64,
    /// The first thing wrong, for the report.
    pub problem: Option<String>,
}

/// Compares a lecture's stored segments with what was sent.
pub fn check_coverage(segments: &[StoredSegment], sent: Sent) -> Coverage {
    let mut problem = None;
    let mut note = |p: String| {
        if problem.is_none() {
            problem = Some(p);
        }
    };
    // How often each sequence 1..=chunks is covered; covers beyond the last sent chunk are extra.
    let mut covers = vec![0u32; sent.chunks as usize + 1];
    let mut beyond = 0u64;
    let mut next = 1u64;
    let mut contiguous = true;
    for (i, s) in segments.iter().enumerate() {
        if s.index as usize != i {
            contiguous = false;
            note(format!("segment {i} has index {}", s.index));
        }
        if s.first_seq != next {
            contiguous = false;
            note(format!(
                "segment {} starts at seq {} instead of {next}",
                s.index, s.first_seq
            ));
        }
        if s.last_seq < s.first_seq {
            contiguous = false;
            note(format!(
                "segment {} ends at seq {} before it starts at {}",
                s.index, s.last_seq, s.first_seq
            ));
            continue;
        }
        for seq in s.first_seq.max(1)..=s.last_seq {
            match covers.get_mut(seq as usize) {
                Some(c) => *c += 1,
                None => beyond += 1,
            }
        }
        next = s.last_seq + 1;
    }
    if next != sent.chunks + 1 {
        contiguous = false;
        note(format!(
            "segments end at seq {} but {} chunks were sent",
            next - 1,
            sent.chunks
        ));
    }
    let lost_chunks = (1..=sent.acked.min(sent.chunks))
        .filter(|&seq| covers[seq as usize] == 0)
        .count() as u64;
    let duplicated_chunks = covers
        .iter()
        .map(|&c| u64::from(c.saturating_sub(1)))
        .sum::<u64>()
        + beyond;
    let stored_bytes: u64 = segments
        .iter()
        .map(|s| s.bytes.saturating_sub(WAV_HEADER_BYTES))
        .sum();
    let sent_bytes = sent.chunks * sent.chunk_bytes;
    let acked_bytes = sent.acked.min(sent.chunks) * sent.chunk_bytes;
    let lost_bytes = acked_bytes.saturating_sub(stored_bytes);
    let duplicated_bytes = stored_bytes.saturating_sub(sent_bytes);
    if lost_chunks > 0 || lost_bytes > 0 {
        note(format!(
            "{lost_chunks} acknowledged chunks / {lost_bytes} bytes are not stored"
        ));
    }
    if duplicated_chunks > 0 || duplicated_bytes > 0 {
        note(format!(
            "{duplicated_chunks} chunks / {duplicated_bytes} bytes are stored more than once"
        ));
    }
    Coverage {
        contiguous,
        lost_chunks,
        duplicated_chunks,
        stored_bytes,
        lost_bytes,
        duplicated_bytes,
        problem,
    }
}

/// One period of the synthetic speech's 220 Hz tone: 1.6 s at 16 kHz holds exactly 352 cycles,
/// so the whole signal repeats every 25,600 samples.
const PERIOD: usize = 25_600;
/// The first 900 ms of each period are voiced; the remaining 700 ms are near-silence.
const VOICED: usize = 14_400;

static TONE: LazyLock<Vec<f64>> = LazyLock::new(|| {
    (0..PERIOD)
        .map(|i| (2.0 * std::f64::consts::PI * 220.0 * i as f64 / RATE as f64).sin())
        .collect()
});

/// `samples` samples of synthetic speech starting at sample `from`: 220 Hz bursts of 900 ms
/// with 700 ms pauses (amplitude 15), so the server's voice activity detector cuts segments.
/// `salt` varies the voiced amplitude, so lectures carry different bytes. The same signal as the
/// live tests' `speech()`.
pub fn speech(from: u64, samples: u64, salt: u32) -> Vec<u8> {
    let amplitude = 6000.0 + f64::from(salt % 1000);
    let mut out = Vec::with_capacity(samples as usize * 2);
    for i in from..from + samples {
        let phase = (i % PERIOD as u64) as usize;
        let a = if phase < VOICED { amplitude } else { 15.0 };
        out.extend_from_slice(&((a * TONE[phase]) as i16).to_le_bytes());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// /proc sampling.

/// A process's CPU time and memory at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    /// Peak RSS over the process's life (`VmHWM`).
    pub hwm_kib: u64,
}

/// Parses utime + stime out of `/proc/<pid>/stat` (fields 14 and 15; the command name in
/// parentheses may contain spaces, so fields are counted after the last `)`).
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   123 kB` line of `/proc/<pid>/status`, in KiB.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

fn sample_proc(pid: &str) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok(ProcSample {
        cpu_ticks: parse_stat_cpu(&stat).context("parsing /proc/<pid>/stat")?,
        // A process that has exited (a zombie) has no VmRSS line.
        rss_kib: parse_status_kib(&status, "VmRSS").context("no VmRSS: has the process exited?")?,
        hwm_kib: parse_status_kib(&status, "VmHWM").unwrap_or(0),
    })
}

/// A sample of the server once the load is over; a server that is gone (it crashed under the
/// load, say) must not hide the report.
fn sample_after_run(pid: &str) -> Option<ProcSample> {
    sample_proc(pid)
        .inspect_err(|e| eprintln!("cannot sample the server (process {pid}): {e:#}"))
        .ok()
}

/// Clock ticks per second for /proc CPU times (`getconf CLK_TCK`; 100 on every common Linux).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------------------------------------
// The run.

#[derive(Default)]
struct Counters {
    registered: AtomicU64,
    started: AtomicU64,
    active: AtomicU64,
    max_active: AtomicU64,
    finished: AtomicU64,
    failed: AtomicU64,
    chunks_sent: AtomicU64,
    chunks_acked: AtomicU64,
}

struct Ctx {
    args: LoadgenArgs,
    base: String,
    ws_url: String,
    http: reqwest::Client,
    counters: Counters,
    errors: Mutex<Vec<String>>,
    /// When the live phase began: learner `i` starts at `t0 + ramp * i / learners`.
    t0: Instant,
}

impl Ctx {
    fn chunk_bytes(&self) -> u64 {
        self.args.chunk_ms * BYTES_PER_MS
    }

    fn chunks(&self) -> u64 {
        (self.args.seconds * 1000).div_ceil(self.args.chunk_ms)
    }

    fn error(&self, message: String) {
        let mut errors = self.errors.lock().expect("errors lock");
        if errors.len() < KEEP_ERRORS {
            errors.push(message);
        }
    }
}

/// What one learner's live lecture gave.
#[derive(Default)]
struct Outcome {
    token: String,
    lecture_id: String,
    started: bool,
    finished: bool,
    error: Option<String>,
    /// Chunks sent (`1..=sent`).
    sent: u64,
    acked: u64,
    sent_sha256: String,
    /// Per acknowledged chunk: when it was sent (ms after the run began) and its ack latency
    /// (microseconds).
    acks: Vec<(u32, u32)>,
    /// How far behind its deadline each chunk was sent, microseconds.
    lag_us: Vec<u32>,
    /// Connecting and starting the lecture, microseconds.
    start_us: Option<u32>,
    segment_frames: u64,
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

async fn register(ctx: &Ctx) -> anyhow::Result<String> {
    let response = ctx
        .http
        .post(format!("{}/api/v1/devices", ctx.base))
        .send()
        .await?;
    let status = response.status();
    if status != reqwest::StatusCode::CREATED {
        let body = response.text().await.unwrap_or_default();
        bail!("POST /api/v1/devices: {status}: {}", clip(&body));
    }
    let body: Value = response.json().await?;
    body["accessToken"]
        .as_str()
        .map(str::to_owned)
        .context("no accessToken in the registration answer")
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

/// One learner: register, connect, start, stream in real time, finish.
async fn learner(ctx: Arc<Ctx>, i: usize) -> Outcome {
    let mut out = Outcome::default();
    let ramp = Duration::from_secs(ctx.args.ramp_secs);
    let at = ctx.t0 + ramp.mul_f64(i as f64 / ctx.args.learners.max(1) as f64);
    tokio::time::sleep_until(at).await;
    if let Err(e) = lecture(&ctx, i, &mut out).await {
        out.error.get_or_insert_with(|| format!("{e:#}"));
    }
    let c = &ctx.counters;
    if out.started {
        c.active.fetch_sub(1, Ordering::Relaxed);
    }
    if out.finished && out.error.is_none() {
        c.finished.fetch_add(1, Ordering::Relaxed);
    } else {
        c.failed.fetch_add(1, Ordering::Relaxed);
        let e = out.error.get_or_insert_with(|| "did not finish".into());
        ctx.error(format!("learner {i}: {e}"));
    }
    out
}

async fn lecture(ctx: &Ctx, i: usize, out: &mut Outcome) -> anyhow::Result<()> {
    let c = &ctx.counters;
    out.token = register(ctx).await.context("register")?;
    c.registered.fetch_add(1, Ordering::Relaxed);

    let connecting = Instant::now();
    let mut request = ctx.ws_url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {}", out.token).parse()?);
    let (ws, _) = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, None, true),
    )
    .await
    .context("connect: timed out")?
    .context("connect")?;
    let (mut sink, mut stream) = ws.split();

    expect(&mut stream, "hello").await?;
    let start = json!({
        "type": "start",
        "topicId": ctx.args.topic,
        "format": "pcm_s16le",
        "sampleRate": RATE,
    });
    sink.send(Message::Text(start.to_string().into()))
        .await
        .context("sending start")?;
    let started = expect(&mut stream, "started").await?;
    out.lecture_id = started["lectureId"]
        .as_str()
        .context("no lectureId in `started`")?
        .to_owned();
    out.started = true;
    out.start_us = Some(micros(connecting.elapsed()));
    c.started.fetch_add(1, Ordering::Relaxed);
    let now_active = c.active.fetch_add(1, Ordering::Relaxed) + 1;
    c.max_active.fetch_max(now_active, Ordering::Relaxed);

    let chunks = ctx.chunks();
    let chunk_ms = ctx.args.chunk_ms;
    let samples_per_chunk = RATE * chunk_ms / 1000;
    let salt = i as u32;
    let mut sent_at: Vec<Instant> = Vec::with_capacity(chunks as usize + 1);
    // Index 0 stands for sequence 0, which is never sent.
    sent_at.push(Instant::now());
    out.acks.reserve(chunks as usize);
    out.lag_us.reserve(chunks as usize);
    let mut hasher = Sha256::new();
    let t_start = Instant::now();
    let mut next_seq = 1u64;
    let mut finish_sent = false;
    let mut finish_deadline = None;

    loop {
        let deadline = t_start + Duration::from_millis(chunk_ms * (next_seq - 1));
        let sending = next_seq <= chunks;
        if !sending && !finish_sent {
            let finish = json!({"type": "finish"}).to_string();
            sink.send(Message::Text(finish.into()))
                .await
                .context("sending finish")?;
            finish_sent = true;
            finish_deadline = Some(Instant::now() + STEP_TIMEOUT);
        }
        tokio::select! {
            biased;
            message = stream.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => bail!("closed while streaming: {frame:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => bail!("reading: {e}"),
                    None => bail!("connection ended while streaming"),
                };
                let v: Value = serde_json::from_str(&text)?;
                match v["type"].as_str() {
                    Some("ack") => {
                        let seq = v["seq"].as_u64().context("ack without seq")?;
                        if seq >= next_seq {
                            bail!("ack for seq {seq}, but only {} chunks were sent", next_seq - 1);
                        }
                        if seq > out.acked {
                            let now = Instant::now();
                            for s in out.acked + 1..=seq {
                                let sent = sent_at[s as usize];
                                let since_t0 = (sent - ctx.t0).as_millis().min(u128::from(u32::MAX));
                                out.acks.push((since_t0 as u32, micros(now - sent)));
                            }
                            c.chunks_acked.fetch_add(seq - out.acked, Ordering::Relaxed);
                            out.acked = seq;
                        }
                    }
                    Some("segment") => out.segment_frames += 1,
                    Some("state") => match v["state"].as_str() {
                        Some("finished") if finish_sent => {
                            out.finished = true;
                            break;
                        }
                        Some("recording") => {}
                        _ => bail!("unexpected state: {}", clip(&text)),
                    },
                    Some("error") => {
                        if v["fatal"] == true {
                            bail!("fatal error: {}", clip(&text));
                        }
                        out.error.get_or_insert_with(|| format!("error frame: {}", clip(&text)));
                    }
                    _ => {}
                }
            }
            () = tokio::time::sleep_until(deadline), if sending => {
                let from = (next_seq - 1) * samples_per_chunk;
                let audio = speech(from, samples_per_chunk, salt);
                hasher.update(&audio);
                let now = Instant::now();
                out.lag_us.push(micros(now.saturating_duration_since(deadline)));
                sent_at.push(now);
                tokio::time::timeout(
                    STEP_TIMEOUT,
                    sink.send(Message::Binary(audio_frame(next_seq, &audio).into())),
                )
                .await
                .context("sending audio: timed out")?
                .context("sending audio")?;
                out.sent = next_seq;
                c.chunks_sent.fetch_add(1, Ordering::Relaxed);
                next_seq += 1;
            }
            () = tokio::time::sleep_until(finish_deadline.unwrap_or_else(Instant::now)), if finish_deadline.is_some() => {
                bail!("no `finished` within {}s of `finish`", STEP_TIMEOUT.as_secs());
            }
        }
    }
    out.sent_sha256 = hex::encode(hasher.finalize());
    let _ = sink.send(Message::Close(None)).await;
    Ok(())
}

/// Reads text frames until one of `kind`; an error frame or a close fails.
async fn expect<S>(stream: &mut S, kind: &str) -> anyhow::Result<Value>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(STEP_TIMEOUT, stream.next())
            .await
            .with_context(|| format!("waiting for `{kind}`: timed out"))?;
        match message {
            Some(Ok(Message::Text(text))) => {
                let v: Value = serde_json::from_str(&text)?;
                if v["type"] == kind {
                    return Ok(v);
                }
                if v["type"] == "error" {
                    bail!("waiting for `{kind}`: {}", clip(&text));
                }
            }
            Some(Ok(Message::Close(frame))) => bail!("waiting for `{kind}`: closed: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("waiting for `{kind}`: {e}"),
            None => bail!("waiting for `{kind}`: connection ended"),
        }
    }
}

/// What checking one stored lecture found.
#[derive(Default)]
struct Checked {
    coverage: Coverage,
    segments: usize,
    /// `Some(matched)` when the audio was downloaded and hashed.
    audio_matches: Option<bool>,
    downloaded_bytes: u64,
    error: Option<String>,
}

#[derive(Deserialize)]
struct LectureView {
    status: String,
    segments: Vec<StoredSegment>,
}

async fn verify(ctx: &Ctx, out: &Outcome) -> Checked {
    let mut checked = Checked::default();
    if let Err(e) = verify_into(ctx, out, &mut checked).await {
        checked.error = Some(format!("verify lecture {}: {e:#}", out.lecture_id));
    }
    checked
}

async fn verify_into(ctx: &Ctx, out: &Outcome, checked: &mut Checked) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/lectures/{}", ctx.base, out.lecture_id);
    let response = ctx.http.get(&url).bearer_auth(&out.token).send().await?;
    if !response.status().is_success() {
        bail!("GET {url}: {}", response.status());
    }
    let view: LectureView = response.json().await.context("reading the lecture view")?;
    checked.segments = view.segments.len();
    checked.coverage = check_coverage(
        &view.segments,
        Sent {
            chunks: out.sent,
            chunk_bytes: ctx.chunk_bytes(),
            acked: out.acked,
        },
    );
    if out.finished && view.status != "finished" {
        bail!("status is `{}`, not `finished`", view.status);
    }
    if !ctx.args.verify_audio {
        return Ok(());
    }
    let mut pcm = Sha256::new();
    for s in &view.segments {
        let url = format!(
            "{}/api/v1/lectures/{}/segments/{}",
            ctx.base, out.lecture_id, s.index
        );
        let response = ctx.http.get(&url).bearer_auth(&out.token).send().await?;
        if !response.status().is_success() {
            bail!("GET {url}: {}", response.status());
        }
        let wav = response.bytes().await?;
        checked.downloaded_bytes += wav.len() as u64;
        if hex::encode(Sha256::digest(&wav)) != s.sha256 {
            bail!("segment {} does not match the sha256 of its event", s.index);
        }
        pcm.update(wav_pcm(&wav).with_context(|| format!("segment {} is not a WAV", s.index))?);
    }
    checked.audio_matches = Some(hex::encode(pcm.finalize()) == out.sent_sha256);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The report.

/// The server's resource use over the live phase.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerUse {
    pub pid: u32,
    pub cpu_secs: f64,
    /// CPU time over wall time; 100% is one core busy.
    pub cpu_percent: f64,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    /// Highest RSS seen (sampled every second) during the live phase.
    pub rss_peak_kib: u64,
    /// The kernel's lifetime peak RSS (`VmHWM`) at the end of the live phase.
    pub vm_hwm_kib: u64,
    /// RSS after the verification downloads.
    pub rss_after_verify_kib: u64,
    /// Server CPU milliseconds per second of lecture audio received.
    pub cpu_ms_per_lecture_sec: f64,
    /// (peak RSS − RSS at start) / most lectures live at once.
    pub rss_kib_per_lecture: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub url: String,
    pub learners: usize,
    pub seconds: u64,
    pub chunk_ms: u64,
    pub ramp_secs: u64,
    pub registered: u64,
    pub started: u64,
    pub finished: u64,
    pub failed: u64,
    pub errors: Vec<String>,
    /// Most lectures streaming at once.
    pub max_concurrent: u64,
    pub chunks_sent: u64,
    pub chunks_acked: u64,
    /// Seconds of audio sent, over all lectures.
    pub audio_secs: f64,
    /// From sending a chunk to the ack that covers it.
    pub ack_ms: Summary,
    /// The same, for chunks sent while every lecture was streaming: from 1 s after the ramp
    /// ended until the first lectures ran out of audio (`None` if the ramp leaves no such time).
    pub ack_ms_steady: Option<Summary>,
    /// `segment` frames received (each announces a stored segment).
    pub segment_frames: u64,
    /// How late (behind its real-time deadline) the load generator sent each chunk.
    pub send_lag_ms: Summary,
    /// Connecting plus `start` → `started`.
    pub start_ms: Summary,
    pub lectures_verified: u64,
    pub segments: u64,
    pub not_contiguous: u64,
    pub lost_chunks: u64,
    pub lost_bytes: u64,
    pub duplicated_chunks: u64,
    pub duplicated_bytes: u64,
    pub audio_checked: u64,
    pub audio_mismatches: u64,
    pub downloaded_bytes: u64,
    pub verify_errors: u64,
    /// The live phase: first registration to the last `finished`.
    pub wall_secs: f64,
    pub verify_secs: f64,
    /// The load generator's own CPU over the live phase (it shares the machine).
    pub loadgen_cpu_percent: Option<f64>,
    pub server: Option<ServerUse>,
}

impl Report {
    /// Zero failures, nothing lost, nothing duplicated, every audio check passed.
    pub fn clean(&self) -> bool {
        self.failed == 0
            && self.lost_chunks == 0
            && self.lost_bytes == 0
            && self.duplicated_chunks == 0
            && self.duplicated_bytes == 0
            && self.not_contiguous == 0
            && self.audio_mismatches == 0
            && self.verify_errors == 0
    }

    fn print(&self) {
        let s = |s: &Summary| {
            format!(
                "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}  (n={})",
                s.p50, s.p90, s.p99, s.p999, s.max, s.mean, s.samples
            )
        };
        println!("teachback loadgen → {}", self.url);
        println!(
            "  learners {} × {} s audio, {} ms chunks, ramp {} s",
            self.learners, self.seconds, self.chunk_ms, self.ramp_secs
        );
        println!(
            "  lectures: registered {}, started {}, finished {}, failed {}; most at once {}",
            self.registered, self.started, self.finished, self.failed, self.max_concurrent
        );
        for e in &self.errors {
            println!("    error: {e}");
        }
        println!(
            "  chunks: sent {}, acked {} ({:.0} s of audio)",
            self.chunks_sent, self.chunks_acked, self.audio_secs
        );
        println!("  ack latency ms:  {}", s(&self.ack_ms));
        if let Some(steady) = &self.ack_ms_steady {
            println!("    steady state:  {}", s(steady));
        }
        println!("  send lag ms:     {}", s(&self.send_lag_ms));
        println!("  start ms:        {}", s(&self.start_ms));
        println!(
            "  storage: {} lectures checked, {} segments ({} announced live); not contiguous {}, lost {} chunks / {} bytes, duplicated {} chunks / {} bytes",
            self.lectures_verified,
            self.segments,
            self.segment_frames,
            self.not_contiguous,
            self.lost_chunks,
            self.lost_bytes,
            self.duplicated_chunks,
            self.duplicated_bytes
        );
        println!(
            "  audio: {} lectures hashed ({:.1} MiB downloaded), {} mismatches, {} verify errors",
            self.audio_checked,
            self.downloaded_bytes as f64 / 1048576.0,
            self.audio_mismatches,
            self.verify_errors
        );
        println!(
            "  wall: live phase {:.1} s, verification {:.1} s",
            self.wall_secs, self.verify_secs
        );
        if let Some(cpu) = self.loadgen_cpu_percent {
            println!("  loadgen CPU: {cpu:.0}% (100% = one core)");
        }
        if let Some(v) = &self.server {
            println!(
                "  server {}: CPU {:.1} s = {:.0}% (100% = one core); {:.2} CPU ms per lecture-second",
                v.pid, v.cpu_secs, v.cpu_percent, v.cpu_ms_per_lecture_sec
            );
            println!(
                "  server RSS KiB: start {}, end {}, peak {} (VmHWM {}), after verify {}; {:.0} KiB per concurrent lecture",
                v.rss_start_kib,
                v.rss_end_kib,
                v.rss_peak_kib,
                v.vm_hwm_kib,
                v.rss_after_verify_kib,
                v.rss_kib_per_lecture
            );
        }
        println!(
            "  verdict: {}",
            if self.clean() {
                "every lecture finished; nothing lost, nothing duplicated"
            } else {
                "PROBLEMS (see above)"
            }
        );
    }
}

/// Runs the load generator and prints its report. Fails if any lecture failed or any audio was
/// lost or duplicated.
pub async fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    if args.learners == 0 || args.seconds == 0 {
        bail!("--learners and --seconds must be at least 1");
    }
    let frame = SEQ_BYTES as u64 + args.chunk_ms * BYTES_PER_MS;
    if args.chunk_ms == 0 || frame > MAX_FRAME_BYTES as u64 {
        bail!(
            "--chunk-ms must be between 1 and {}",
            (MAX_FRAME_BYTES - SEQ_BYTES) as u64 / BYTES_PER_MS
        );
    }
    let base = args.url.trim_end_matches('/').to_owned();
    let ws_url = match base.split_once("://") {
        Some(("http", rest)) => format!("ws://{rest}/api/v1/live"),
        Some(("https", rest)) => format!("wss://{rest}/api/v1/live"),
        _ => bail!("--url must start with http:// or https://"),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let ticks = clock_ticks();
    let pid = args.server_pid.map(|p| p.to_string());
    let server_start = pid.as_deref().map(sample_proc).transpose()?;
    let self_start = sample_proc("self").ok();

    let ctx = Arc::new(Ctx {
        args: args.clone(),
        base,
        ws_url,
        http,
        counters: Counters::default(),
        errors: Mutex::new(Vec::new()),
        t0: Instant::now(),
    });

    // Progress every 5 s, and the server's RSS every second (for the peak).
    let peak_rss = Arc::new(AtomicU64::new(server_start.map_or(0, |s| s.rss_kib)));
    let watcher = {
        let ctx = ctx.clone();
        let pid = pid.clone();
        let peak_rss = peak_rss.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            loop {
                tick.tick().await;
                if let Some(s) = pid.as_deref().and_then(|p| sample_proc(p).ok()) {
                    peak_rss.fetch_max(s.rss_kib, Ordering::Relaxed);
                }
                n += 1;
                if n % 5 == 0 {
                    let c = &ctx.counters;
                    let rss = match pid {
                        Some(_) => format!(
                            ", server peak RSS {} MiB",
                            peak_rss.load(Ordering::Relaxed) / 1024
                        ),
                        None => String::new(),
                    };
                    eprintln!(
                        "[{:>4}s] registered {}, streaming {}, finished {}, failed {}; chunks sent {}, acked {}{rss}",
                        ctx.t0.elapsed().as_secs(),
                        c.registered.load(Ordering::Relaxed),
                        c.active.load(Ordering::Relaxed),
                        c.finished.load(Ordering::Relaxed),
                        c.failed.load(Ordering::Relaxed),
                        c.chunks_sent.load(Ordering::Relaxed),
                        c.chunks_acked.load(Ordering::Relaxed),
                    );
                }
            }
        })
    };

    let tasks: Vec<_> = (0..args.learners)
        .map(|i| tokio::spawn(learner(ctx.clone(), i)))
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.context("a learner task panicked")?);
    }
    let wall = ctx.t0.elapsed();
    let server_end = pid.as_deref().and_then(sample_after_run);
    let self_end = sample_proc("self").ok();
    watcher.abort();

    eprintln!(
        "live phase done in {:.1}s; verifying {} lectures{}",
        wall.as_secs_f64(),
        outcomes.iter().filter(|o| o.started).count(),
        if args.verify_audio {
            " (downloading their audio)"
        } else {
            ""
        }
    );
    let verifying = Instant::now();
    let checks: Vec<Checked> = futures::stream::iter(outcomes.iter().filter(|o| o.started))
        .map(|o| verify(&ctx, o))
        .buffer_unordered(VERIFY_CONCURRENCY)
        .collect()
        .await;
    let verify_secs = verifying.elapsed().as_secs_f64();
    let server_after = pid.as_deref().and_then(sample_after_run);

    let mut report = Report {
        url: args.url.clone(),
        learners: args.learners,
        seconds: args.seconds,
        chunk_ms: args.chunk_ms,
        ramp_secs: args.ramp_secs,
        registered: ctx.counters.registered.load(Ordering::Relaxed),
        started: ctx.counters.started.load(Ordering::Relaxed),
        finished: ctx.counters.finished.load(Ordering::Relaxed),
        failed: ctx.counters.failed.load(Ordering::Relaxed),
        errors: ctx.errors.lock().expect("errors lock").clone(),
        max_concurrent: ctx.counters.max_active.load(Ordering::Relaxed),
        chunks_sent: outcomes.iter().map(|o| o.sent).sum(),
        chunks_acked: outcomes.iter().map(|o| o.acked).sum(),
        audio_secs: 0.0,
        ack_ms: Summary::default(),
        ack_ms_steady: None,
        segment_frames: 0,
        send_lag_ms: Summary::default(),
        start_ms: Summary::default(),
        lectures_verified: 0,
        segments: 0,
        not_contiguous: 0,
        lost_chunks: 0,
        lost_bytes: 0,
        duplicated_chunks: 0,
        duplicated_bytes: 0,
        audio_checked: 0,
        audio_mismatches: 0,
        downloaded_bytes: 0,
        verify_errors: 0,
        wall_secs: wall.as_secs_f64(),
        verify_secs,
        loadgen_cpu_percent: None,
        server: None,
    };
    report.audio_secs = report.chunks_sent as f64 * args.chunk_ms as f64 / 1000.0;
    let mut acks: Vec<u32> = outcomes
        .iter()
        .flat_map(|o| o.acks.iter().map(|&(_, us)| us))
        .collect();
    report.ack_ms = Summary::of_micros(&mut acks);
    drop(acks);
    let steady = steady_window(args.ramp_secs, args.seconds);
    report.ack_ms_steady = steady.map(|(from, to)| {
        let mut acks: Vec<u32> = outcomes
            .iter()
            .flat_map(|o| o.acks.iter())
            .filter(|&&(at, _)| (from..to).contains(&at))
            .map(|&(_, us)| us)
            .collect();
        Summary::of_micros(&mut acks)
    });
    report.segment_frames = outcomes.iter().map(|o| o.segment_frames).sum();
    let mut lags: Vec<u32> = outcomes
        .iter()
        .flat_map(|o| o.lag_us.iter().copied())
        .collect();
    report.send_lag_ms = Summary::of_micros(&mut lags);
    let mut starts: Vec<u32> = outcomes.iter().filter_map(|o| o.start_us).collect();
    report.start_ms = Summary::of_micros(&mut starts);
    for c in &checks {
        if let Some(e) = &c.error {
            report.verify_errors += 1;
            if report.errors.len() < KEEP_ERRORS {
                report.errors.push(e.clone());
            }
            continue;
        }
        report.lectures_verified += 1;
        report.segments += c.segments as u64;
        if !c.coverage.contiguous {
            report.not_contiguous += 1;
        }
        if let Some(p) = &c.coverage.problem
            && report.errors.len() < KEEP_ERRORS
        {
            report.errors.push(p.clone());
        }
        report.lost_chunks += c.coverage.lost_chunks;
        report.lost_bytes += c.coverage.lost_bytes;
        report.duplicated_chunks += c.coverage.duplicated_chunks;
        report.duplicated_bytes += c.coverage.duplicated_bytes;
        report.downloaded_bytes += c.downloaded_bytes;
        if let Some(matches) = c.audio_matches {
            report.audio_checked += 1;
            if !matches {
                report.audio_mismatches += 1;
            }
        }
    }
    let secs = wall.as_secs_f64();
    if let (Some(a), Some(b)) = (self_start, self_end) {
        report.loadgen_cpu_percent =
            Some((b.cpu_ticks - a.cpu_ticks) as f64 / ticks / secs * 100.0);
    }
    if let (Some(pid), Some(a), Some(b), Some(after)) =
        (args.server_pid, server_start, server_end, server_after)
    {
        let cpu_secs = b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / ticks;
        let peak = peak_rss.load(Ordering::Relaxed).max(b.rss_kib);
        report.server = Some(ServerUse {
            pid,
            cpu_secs,
            cpu_percent: cpu_secs / secs * 100.0,
            rss_start_kib: a.rss_kib,
            rss_end_kib: b.rss_kib,
            rss_peak_kib: peak,
            vm_hwm_kib: b.hwm_kib,
            rss_after_verify_kib: after.rss_kib,
            cpu_ms_per_lecture_sec: if report.audio_secs > 0.0 {
                cpu_secs * 1000.0 / report.audio_secs
            } else {
                0.0
            },
            rss_kib_per_lecture: peak.saturating_sub(a.rss_kib) as f64
                / report.max_concurrent.max(1) as f64,
        });
    }

    report.print();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if !report.clean() {
        bail!("the load test found problems (see the report)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(index: u32, first_seq: u64, last_seq: u64, chunk_bytes: u64) -> StoredSegment {
        StoredSegment {
            index,
            first_seq,
            last_seq,
            bytes: WAV_HEADER_BYTES + (last_seq - first_seq + 1) * chunk_bytes,
            sha256: String::new(),
        }
    }

    const SENT: Sent = Sent {
        chunks: 10,
        chunk_bytes: 3200,
        acked: 10,
    };

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 0.0), Some(7));
        assert_eq!(percentile(&[7], 99.9), Some(7));
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&v, 50.0), Some(500));
        assert_eq!(percentile(&v, 90.0), Some(900));
        assert_eq!(percentile(&v, 99.0), Some(990));
        assert_eq!(percentile(&v, 99.9), Some(999));
        assert_eq!(percentile(&v, 100.0), Some(1000));
        let v: Vec<u32> = (1..=10).collect();
        assert_eq!(percentile(&v, 99.0), Some(10));
        assert_eq!(percentile(&v, 50.0), Some(5));

        let mut us = vec![3000, 1000, 2000, 4000];
        let s = Summary::of_micros(&mut us);
        assert_eq!(us, [1000, 2000, 3000, 4000], "sorted in place");
        assert_eq!((s.samples, s.p50, s.max, s.mean), (4, 2.0, 4.0, 2.5));
    }

    #[test]
    fn contiguous_segments_that_hold_what_was_sent_are_clean() {
        let segments = [seg(0, 1, 4, 3200), seg(1, 5, 9, 3200), seg(2, 10, 10, 3200)];
        let c = check_coverage(&segments, SENT);
        assert_eq!(
            c,
            Coverage {
                contiguous: true,
                stored_bytes: 32_000,
                ..Coverage::default()
            }
        );
        // Chunks sent but never acknowledged may be missing without counting as lost.
        let c = check_coverage(&segments[..2], Sent { acked: 9, ..SENT });
        assert_eq!((c.lost_chunks, c.lost_bytes), (0, 0));
        assert!(!c.contiguous, "still short of the last chunk sent");
    }

    #[test]
    fn gaps_are_lost_and_overlaps_are_duplicated() {
        // Seqs 5 and 6 missing.
        let c = check_coverage(&[seg(0, 1, 4, 3200), seg(1, 7, 10, 3200)], SENT);
        assert!(!c.contiguous);
        assert_eq!((c.lost_chunks, c.lost_bytes), (2, 6400));
        assert_eq!((c.duplicated_chunks, c.duplicated_bytes), (0, 0));
        assert!(c.problem.unwrap().contains("starts at seq 7 instead of 5"));

        // Seqs 4 and 5 stored twice.
        let c = check_coverage(&[seg(0, 1, 5, 3200), seg(1, 4, 10, 3200)], SENT);
        assert!(!c.contiguous);
        assert_eq!((c.lost_chunks, c.lost_bytes), (0, 0));
        assert_eq!((c.duplicated_chunks, c.duplicated_bytes), (2, 6400));

        // A segment beyond the last chunk sent.
        let c = check_coverage(&[seg(0, 1, 10, 3200), seg(1, 11, 11, 3200)], SENT);
        assert!(!c.contiguous);
        assert_eq!((c.duplicated_chunks, c.duplicated_bytes), (1, 3200));

        // Right seqs, but short of bytes: lost bytes even though every seq is covered.
        let mut short = seg(0, 1, 10, 3200);
        short.bytes -= 100;
        let c = check_coverage(&[short], SENT);
        assert!(c.contiguous);
        assert_eq!((c.lost_chunks, c.lost_bytes), (0, 100));

        // Nothing stored at all.
        let c = check_coverage(&[], SENT);
        assert_eq!((c.lost_chunks, c.lost_bytes), (10, 32_000));
    }

    #[test]
    fn synthetic_speech_has_bursts_and_pauses() {
        let one = speech(0, 25_600, 0);
        assert_eq!(one.len(), 51_200);
        let sample = |i: usize| i16::from_le_bytes([one[2 * i], one[2 * i + 1]]);
        let peak = |r: std::ops::Range<usize>| r.map(|i| sample(i).unsigned_abs()).max().unwrap();
        assert!(peak(0..14_400) > 5_000, "voiced for 900 ms");
        assert!(peak(14_400..25_600) <= 15, "near-silent for 700 ms");
        // Chunked generation is the same signal, and it repeats every 1.6 s.
        let mut chunked = speech(0, 1_600, 0);
        chunked.extend(speech(1_600, 24_000, 0));
        assert_eq!(chunked, one);
        assert_eq!(speech(25_600, 100, 0), speech(0, 100, 0));
        assert_ne!(speech(0, 100, 1), speech(0, 100, 2), "salted");
    }

    #[test]
    fn the_steady_window_starts_after_the_ramp() {
        assert_eq!(steady_window(10, 30), Some((11_000, 30_000)));
        assert_eq!(steady_window(0, 5), Some((1_000, 5_000)));
        assert_eq!(steady_window(10, 11), None);
    }

    #[test]
    fn proc_files_parse() {
        let stat = "1234 (teach back) S 1 1234 1234 0 -1 4194560 2000 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(parse_stat_cpu(stat), Some(325));
        let status = "Name:\tteachback\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(102_400));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(204_800));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }
}
