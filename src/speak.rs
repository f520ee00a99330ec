//! `teachback speak`: a live-protocol client that speaks a WAV file into a lecture in real time,
//! printing the live transcript and the streamed grade. For trying a server end to end.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::live::protocol::audio_frame;

#[derive(clap::Args, Debug)]
pub struct SpeakArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The topic to explain.
    #[arg(long, default_value = "cs.networking.tcp-vs-udp")]
    pub topic: String,
    /// The language spoken (ISO 639-1).
    #[arg(long, default_value = "en")]
    pub language: String,
    /// A 16-bit mono PCM WAV file (16 kHz is best).
    #[arg(long)]
    pub wav: std::path::PathBuf,
    /// Send the audio as fast as possible instead of in real time.
    #[arg(long)]
    pub fast: bool,
}

/// The PCM samples and rate of a 16-bit mono WAV file.
fn read_wav(bytes: &[u8]) -> anyhow::Result<(Vec<u8>, u32)> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        bail!("not a WAV file");
    }
    let (mut rate, mut format_ok, mut at) = (0, false, 12);
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into()?) as usize;
        let body = &bytes[at + 8..(at + 8 + len).min(bytes.len())];
        match id {
            b"fmt " if body.len() >= 16 => {
                let format = u16::from_le_bytes([body[0], body[1]]);
                let channels = u16::from_le_bytes([body[2], body[3]]);
                rate = u32::from_le_bytes(body[4..8].try_into()?);
                let bits = u16::from_le_bytes([body[14], body[15]]);
                format_ok = format == 1 && channels == 1 && bits == 16;
            }
            b"data" => {
                if !format_ok {
                    bail!(
                        "the WAV must be 16-bit mono PCM (sox in.wav -r 16000 -c 1 -b 16 out.wav)"
                    );
                }
                return Ok((body.to_vec(), rate));
            }
            _ => {}
        }
        at += 8 + len + (len & 1);
    }
    bail!("the WAV file has no data chunk")
}

pub async fn run(args: SpeakArgs) -> anyhow::Result<()> {
    let wav =
        std::fs::read(&args.wav).with_context(|| format!("reading {}", args.wav.display()))?;
    let (pcm, rate) = read_wav(&wav)?;
    let base = args.server.trim_end_matches('/');
    let credentials: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/devices"))
        .send()
        .await
        .context("registering a device")?
        .error_for_status()?
        .json()
        .await?;
    let token = credentials["accessToken"]
        .as_str()
        .context("no access token in the registration answer")?;
    let ws_url = format!("{}/api/v1/live", base.replacen("http", "ws", 1));
    let mut request = ws_url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .context("opening the live WebSocket")?;
    let (mut tx, mut rx) = socket.split();
    tx.send(Message::Text(
        json!({"type": "start", "topicId": args.topic, "format": "pcm_s16le",
               "sampleRate": rate, "language": args.language})
        .to_string()
        .into(),
    ))
    .await?;
    // 100 ms chunks, paced like a microphone.
    let chunk = (rate as usize / 10) * 2;
    let pieces: Vec<Vec<u8>> = pcm.chunks(chunk).map(<[u8]>::to_vec).collect();
    let seconds = pcm.len() as f64 / f64::from(rate) / 2.0;
    eprintln!("speaking {seconds:.1} s of audio on `{}`…", args.topic);
    let fast = args.fast;
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for (i, piece) in pieces.iter().enumerate() {
            if !fast {
                tick.tick().await;
            }
            tx.send(Message::Binary(audio_frame(i as u64 + 1, piece).into()))
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.send(Message::Text(json!({"type": "finish"}).to_string().into()))
            .await?;
        Ok::<_, anyhow::Error>(tx)
    });
    let finished_at = std::cell::Cell::new(None::<tokio::time::Instant>);
    let mut out = std::io::stdout();
    let mut sender = Some(sender);
    let mut keep = None;
    let mut streaming = false;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(600), rx.next())
        .await
        .context("no answer from the server for 10 minutes")?
    {
        let text = match message? {
            Message::Text(t) => t,
            Message::Close(frame) => bail!("the server closed the connection: {frame:?}"),
            _ => continue,
        };
        let v: Value = serde_json::from_str(&text)?;
        match v["type"].as_str().unwrap_or("") {
            "started" => eprintln!("lecture {}", v["lectureId"].as_str().unwrap_or("?")),
            "transcript" => println!(
                "[transcript {}] {}",
                v["index"],
                v["text"].as_str().unwrap_or("")
            ),
            "state" if v["state"] == "finished" => {
                finished_at.set(Some(tokio::time::Instant::now()));
                println!("[finished] {} ms of audio", v["durationMs"]);
            }
            "transcriptCompleted" if v["empty"] == true => {
                bail!("nothing was recognised in the audio")
            }
            "transcriptCompleted" => println!("[transcript complete] {} words", v["words"]),
            "grading" => {
                if streaming {
                    // The model failed mid-answer; what follows replaces it.
                    println!();
                }
                streaming = true;
                println!(
                    "[grading] by the {} grader{}",
                    v["grader"].as_str().unwrap_or("?"),
                    v["fallbackReason"]
                        .as_str()
                        .map(|r| format!(" (fallback: {r})"))
                        .unwrap_or_default()
                );
                print!("[feedback] ");
            }
            "feedbackDelta" => {
                print!("{}", v["text"].as_str().unwrap_or(""));
                out.flush()?;
            }
            "graded" => {
                println!();
                let after = finished_at.get().map(|t| t.elapsed().as_millis());
                println!(
                    "[graded] score {} / 100 (accuracy {}, completeness {}, clarity {}, structure {}){}",
                    v["score"],
                    v["subScores"]["accuracy"],
                    v["subScores"]["completeness"],
                    v["subScores"]["clarity"],
                    v["subScores"]["structure"],
                    after
                        .map(|ms| format!(", {ms} ms after finishing"))
                        .unwrap_or_default()
                );
                for (label, key) in [
                    ("good", "strengths"),
                    ("improve", "improvements"),
                    ("misconception", "misconceptions"),
                ] {
                    for item in v[key].as_array().into_iter().flatten() {
                        println!("  {label}: {}", item.as_str().unwrap_or(""));
                    }
                }
                break;
            }
            "gradingFailed" => bail!("processing failed: {} ({})", v["message"], v["code"]),
            "error" => eprintln!("[error] {}: {}", v["code"], v["message"]),
            _ => {}
        }
        if let Some(done) = sender.take_if(|s| s.is_finished()) {
            keep = Some(done.await??);
        }
    }
    drop(keep);
    Ok(())
}
