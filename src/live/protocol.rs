//! The live protocol's messages (version 1). `docs/protocol.md` is the reference for clients.
//!
//! Text frames are JSON objects tagged by `type`; binary frames carry audio: an 8-byte big-endian
//! sequence number (the first chunk is 1) followed by the audio bytes.

use serde::{Deserialize, Serialize};
use teachback_events::{AudioFormat, AudioSegmentStored, Event, GraderKind, SubScores};
use uuid::Uuid;

/// The protocol version this server speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest WebSocket frame (text or binary) a client may send; larger ones close with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Bytes before the audio in a binary frame.
pub const SEQ_BYTES: usize = 8;

/// What a client sends (text frames).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum ClientMessage {
    /// Start a lecture on a topic.
    #[serde(rename_all = "camelCase")]
    Start {
        topic_id: String,
        format: String,
        #[serde(default)]
        sample_rate: Option<u32>,
        #[serde(default)]
        channels: Option<u32>,
        #[serde(default)]
        language: Option<String>,
    },
    /// A text lecture: the explanation typed instead of spoken. It is graded like a spoken one.
    #[serde(rename_all = "camelCase")]
    Text {
        topic_id: String,
        text: String,
        #[serde(default)]
        language: Option<String>,
    },
    /// Continue an interrupted lecture on this connection.
    #[serde(rename_all = "camelCase")]
    Reconnect {
        lecture_id: Uuid,
    },
    // Empty struct variants (not unit ones) so that unknown fields are refused here too.
    Pause {},
    Resume {},
    Finish {},
    Cancel {},
    Ping {
        #[serde(default)]
        nonce: Option<serde_json::Value>,
    },
}

/// The names of the client messages, for the error that lists them.
pub const CLIENT_TYPES: &str = "start, text, reconnect, pause, resume, finish, cancel, ping";

/// What the server sends (text frames).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage {
    /// First frame on every connection.
    #[serde(rename_all = "camelCase")]
    Hello {
        protocol: u32,
        max_frame_bytes: usize,
        resume_grace_secs: u64,
        max_lecture_secs: u64,
    },
    /// A lecture started: its id, and what it records.
    #[serde(rename_all = "camelCase")]
    Started {
        lecture_id: Uuid,
        topic_id: String,
        format: AudioFormat,
        sample_rate: Option<u32>,
        language: String,
        version: u64,
    },
    /// Answer to `reconnect`: the lecture continues; resend every chunk after `lastSeq`.
    #[serde(rename_all = "camelCase")]
    Reconnected {
        lecture_id: Uuid,
        last_seq: u64,
        state: &'static str,
        segments: u32,
    },
    /// Every chunk up to `seq` is durably stored.
    #[serde(rename_all = "camelCase")]
    Ack { lecture_id: Uuid, seq: u64 },
    /// A segment of audio was stored.
    #[serde(rename_all = "camelCase")]
    Segment {
        lecture_id: Uuid,
        index: u32,
        first_seq: u64,
        last_seq: u64,
        duration_ms: Option<u64>,
        bytes: u64,
        sha256: String,
        version: u64,
    },
    /// The lecture's state changed: `recording`, `paused`, `finished`, `cancelled`, `abandoned`.
    #[serde(rename_all = "camelCase")]
    State {
        lecture_id: Uuid,
        state: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
        version: u64,
    },
    /// Live text of a segment being transcribed (learner only; not in the log).
    #[serde(rename_all = "camelCase")]
    TranscriptDelta {
        lecture_id: Uuid,
        index: u32,
        text: String,
    },
    /// A segment's transcript.
    #[serde(rename_all = "camelCase")]
    Transcript {
        lecture_id: Uuid,
        index: u32,
        text: String,
        version: u64,
    },
    /// The whole transcript is in. `empty`: nothing was recognised; the lecture is not graded.
    #[serde(rename_all = "camelCase")]
    TranscriptCompleted {
        lecture_id: Uuid,
        text: String,
        words: u32,
        empty: bool,
        version: u64,
    },
    /// Grading began. `fallbackReason` is set when the rubric grader stands in for the LLM.
    #[serde(rename_all = "camelCase")]
    Grading {
        lecture_id: Uuid,
        attempt: u32,
        grader: GraderKind,
        fallback_reason: Option<String>,
        version: u64,
    },
    /// Feedback text as the grader writes it, token by token (learner only; not in the log).
    #[serde(rename_all = "camelCase")]
    FeedbackDelta {
        lecture_id: Uuid,
        attempt: u32,
        text: String,
    },
    /// Feedback text as recorded in the log, about every 100 ms (observers and replays).
    #[serde(rename_all = "camelCase")]
    Feedback {
        lecture_id: Uuid,
        attempt: u32,
        offset_ms: u64,
        text: String,
        version: u64,
    },
    /// The grade.
    #[serde(rename_all = "camelCase")]
    Graded {
        lecture_id: Uuid,
        attempt: u32,
        grader: GraderKind,
        fallback_reason: Option<String>,
        score: u8,
        sub_scores: SubScores,
        feedback: String,
        strengths: Vec<String>,
        improvements: Vec<String>,
        misconceptions: Vec<String>,
        version: u64,
    },
    /// Processing failed for now; it can be retried (re-grade).
    #[serde(rename_all = "camelCase")]
    GradingFailed {
        lecture_id: Uuid,
        attempt: u32,
        stage: String,
        code: String,
        message: String,
        retryable: bool,
        version: u64,
    },
    /// A re-grade was requested: a new attempt begins.
    #[serde(rename_all = "camelCase")]
    Regrading {
        lecture_id: Uuid,
        attempt: u32,
        version: u64,
    },
    /// For observers: everything that had happened has been sent; what follows is live.
    #[serde(rename_all = "camelCase")]
    CaughtUp { lecture_id: Uuid, version: u64 },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        nonce: Option<serde_json::Value>,
    },
    /// Something was refused. `fatal`: the server closes the connection after this frame.
    #[serde(rename_all = "camelCase")]
    Error {
        code: &'static str,
        message: String,
        fatal: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        lecture_id: Option<Uuid>,
        #[serde(skip_serializing_if = "Option::is_none")]
        expected_seq: Option<u64>,
        /// For `rate_limited` and `quota_exceeded`: when to try again.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u64>,
    },
}

impl ServerMessage {
    pub fn error(code: &'static str, message: impl Into<String>) -> ServerMessage {
        ServerMessage::Error {
            code,
            message: message.into(),
            fatal: false,
            lecture_id: None,
            expected_seq: None,
            retry_after_secs: None,
        }
    }

    pub fn fatal(code: &'static str, message: impl Into<String>) -> ServerMessage {
        ServerMessage::Error {
            code,
            message: message.into(),
            fatal: true,
            lecture_id: None,
            expected_seq: None,
            retry_after_secs: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages serialise")
    }

    /// The stream version an event-backed frame stands for (observers skip what they have seen).
    pub fn version(&self) -> Option<u64> {
        match self {
            ServerMessage::Started { version, .. }
            | ServerMessage::Segment { version, .. }
            | ServerMessage::State { version, .. }
            | ServerMessage::Transcript { version, .. }
            | ServerMessage::TranscriptCompleted { version, .. }
            | ServerMessage::Grading { version, .. }
            | ServerMessage::Feedback { version, .. }
            | ServerMessage::Graded { version, .. }
            | ServerMessage::GradingFailed { version, .. }
            | ServerMessage::Regrading { version, .. } => Some(*version),
            _ => None,
        }
    }

    /// Whether the frame is about processing (transcripts, grading): what the learner's own
    /// connection takes from the hub (recording frames reach it from the lecture directly).
    /// The coalesced `feedback` frames are left out: the learner gets `feedbackDelta` instead.
    pub fn is_processing(&self) -> bool {
        matches!(
            self,
            ServerMessage::TranscriptDelta { .. }
                | ServerMessage::Transcript { .. }
                | ServerMessage::TranscriptCompleted { .. }
                | ServerMessage::Grading { .. }
                | ServerMessage::FeedbackDelta { .. }
                | ServerMessage::Graded { .. }
                | ServerMessage::GradingFailed { .. }
                | ServerMessage::Regrading { .. }
        )
    }

    /// Whether nothing more follows for this lecture unless someone asks (a re-grade): it was
    /// cancelled or abandoned, its transcript is empty, it was graded, or processing failed.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            ServerMessage::State {
                state: "cancelled" | "abandoned",
                ..
            } | ServerMessage::TranscriptCompleted { empty: true, .. }
                | ServerMessage::Graded { .. }
                | ServerMessage::GradingFailed { .. }
        )
    }
}

fn segment_message(s: &AudioSegmentStored, version: u64) -> ServerMessage {
    ServerMessage::Segment {
        lecture_id: s.lecture_id,
        index: s.index,
        first_seq: s.first_seq,
        last_seq: s.last_seq,
        duration_ms: s.duration_ms,
        bytes: s.bytes,
        sha256: s.sha256.clone(),
        version,
    }
}

/// The frame a lecture event becomes, for its learner and its observers alike. Live frames and
/// frames replayed from the log come from this one function, so they are identical.
pub fn event_message(event: &Event, version: u64) -> Option<ServerMessage> {
    let state = |lecture_id, state, reason, duration_ms| ServerMessage::State {
        lecture_id,
        state,
        reason,
        duration_ms,
        version,
    };
    Some(match event {
        Event::LectureStarted(e) => ServerMessage::Started {
            lecture_id: e.lecture_id,
            topic_id: e.topic_id.clone(),
            format: e.format,
            sample_rate: e.sample_rate,
            language: e.language.clone(),
            version,
        },
        Event::AudioSegmentStored(e) => segment_message(e, version),
        Event::LecturePaused(e) => state(e.lecture_id, "paused", None, Some(e.at_ms)),
        Event::LectureResumed(e) => state(e.lecture_id, "recording", None, Some(e.at_ms)),
        Event::LectureFinished(e) => state(
            e.lecture_id,
            "finished",
            Some(match e.reason {
                teachback_events::FinishReason::Learner => "learner",
                teachback_events::FinishReason::MaxDuration => "max_duration",
            }),
            e.duration_ms,
        ),
        Event::LectureCancelled(e) => state(e.lecture_id, "cancelled", None, None),
        Event::LectureAbandoned(e) => state(e.lecture_id, "abandoned", None, e.duration_ms),
        Event::TranscriptSegmentRecognized(e) => ServerMessage::Transcript {
            lecture_id: e.lecture_id,
            index: e.index,
            text: e.text.clone(),
            version,
        },
        Event::TranscriptCompleted(e) => ServerMessage::TranscriptCompleted {
            lecture_id: e.lecture_id,
            text: e.text.clone(),
            words: e.words,
            empty: e.empty,
            version,
        },
        Event::GradingStarted(e) => ServerMessage::Grading {
            lecture_id: e.lecture_id,
            attempt: e.attempt,
            grader: e.grader,
            fallback_reason: e.fallback_reason.clone(),
            version,
        },
        Event::FeedbackStreamed(e) => ServerMessage::Feedback {
            lecture_id: e.lecture_id,
            attempt: e.attempt,
            offset_ms: e.offset_ms,
            text: e.text.clone(),
            version,
        },
        Event::LectureGraded(e) => ServerMessage::Graded {
            lecture_id: e.lecture_id,
            attempt: e.attempt,
            grader: e.grader,
            fallback_reason: e.fallback_reason.clone(),
            score: e.score,
            sub_scores: e.sub_scores,
            feedback: e.feedback.clone(),
            strengths: e.strengths.clone(),
            improvements: e.improvements.clone(),
            misconceptions: e.misconceptions.clone(),
            version,
        },
        Event::GradingFailed(e) => ServerMessage::GradingFailed {
            lecture_id: e.lecture_id,
            attempt: e.attempt,
            stage: e.stage.clone(),
            code: e.code.clone(),
            message: e.message.clone(),
            retryable: e.retryable,
            version,
        },
        Event::RegradeRequested(e) => ServerMessage::Regrading {
            lecture_id: e.lecture_id,
            attempt: e.attempt,
            version,
        },
        _ => return None,
    })
}

/// Splits a binary frame into its sequence number and audio.
pub fn split_audio(frame: &[u8]) -> Option<(u64, &[u8])> {
    if frame.len() < SEQ_BYTES {
        return None;
    }
    let (seq, audio) = frame.split_at(SEQ_BYTES);
    Some((u64::from_be_bytes(seq.try_into().expect("8 bytes")), audio))
}

/// A binary audio frame (what clients send; tests and the load generator use it).
pub fn audio_frame(seq: u64, audio: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(SEQ_BYTES + audio.len());
    frame.extend_from_slice(&seq.to_be_bytes());
    frame.extend_from_slice(audio);
    frame
}

/// Checks a language code: two lowercase ASCII letters.
pub fn valid_language(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_lowercase())
}

/// Sample rates accepted for PCM.
pub const SAMPLE_RATES: &[u32] = &[8_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000];

/// Parses and checks a declared audio format. Errors are `(code, message)`.
pub fn check_format(
    format: &str,
    sample_rate: Option<u32>,
    channels: Option<u32>,
) -> Result<(AudioFormat, Option<u32>), (&'static str, String)> {
    let Some(parsed) = AudioFormat::parse(format) else {
        let names: Vec<_> = AudioFormat::ALL.iter().map(|f| f.as_str()).collect();
        return Err((
            "unsupported_format",
            format!(
                "audio format `{format}` is not supported; use one of: {}",
                names.join(", ")
            ),
        ));
    };
    if parsed.is_pcm() {
        if channels.is_some_and(|c| c != 1) {
            return Err((
                "unsupported_format",
                "pcm_s16le audio must be mono (channels: 1)".into(),
            ));
        }
        let rate = sample_rate.unwrap_or(16_000);
        if !SAMPLE_RATES.contains(&rate) {
            return Err((
                "unsupported_format",
                format!(
                    "sample rate {rate} is not supported; use one of {SAMPLE_RATES:?} (16000 is best)"
                ),
            ));
        }
        Ok((parsed, Some(rate)))
    } else {
        if sample_rate.is_some() || channels.is_some() {
            return Err((
                "unsupported_format",
                format!(
                    "`{format}` recordings carry their own sample rate and channels; do not declare them"
                ),
            ));
        }
        Ok((parsed, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_and_unknown_fields_are_refused() {
        let m: ClientMessage = serde_json::from_str(
            r#"{"type":"start","topicId":"t","format":"pcm_s16le","sampleRate":16000}"#,
        )
        .unwrap();
        assert!(matches!(
            m,
            ClientMessage::Start {
                sample_rate: Some(16000),
                ..
            }
        ));
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"finish","x":1}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"dance"}"#).is_err());
    }

    #[test]
    fn audio_frames_round_trip() {
        let frame = audio_frame(258, b"abc");
        assert_eq!(&frame[..8], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(split_audio(&frame), Some((258, &b"abc"[..])));
        assert_eq!(split_audio(&[1, 2, 3]), None);
    }

    #[test]
    fn formats_are_checked() {
        assert_eq!(
            check_format("pcm_s16le", None, None).unwrap(),
            (AudioFormat::PcmS16le, Some(16_000))
        );
        assert_eq!(
            check_format("webm", None, None).unwrap(),
            (AudioFormat::Webm, None)
        );
        assert_eq!(
            check_format("flac", None, None).unwrap_err().0,
            "unsupported_format"
        );
        assert!(check_format("pcm_s16le", Some(16_000), Some(2)).is_err());
        assert!(check_format("pcm_s16le", Some(12_345), None).is_err());
        assert!(check_format("webm", Some(16_000), None).is_err());
    }
}
