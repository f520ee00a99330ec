//! Freezes the JSON of every event variant, and decodes stored payloads of older versions.
//!
//! A failing snapshot means a stored event's shape changed. Do not just regenerate: add a new
//! schema version with an upcaster instead. To write snapshots for a *new* kind or version, run
//! `UPDATE_SNAPSHOTS=1 cargo test -p teachback-events` and commit the new file.

use std::path::PathBuf;

use jiff::Timestamp;
use teachback_events::{
    AudioDeleted, AudioDeletionReason, AudioFormat, AudioSegmentStored, CatalogEntry, ClientInfo,
    DeviceRegistered, ErasureRequester, Event, EventKind, FeedbackStreamed, FinishReason,
    GraderKind, GradingFailed, GradingLatency, GradingStarted, LectureAbandoned, LectureCancelled,
    LectureFinished, LectureGraded, LectureMode, LecturePaused, LectureRated, LectureReleased,
    LectureResumed, LectureStarted, LectureTextSubmitted, Metadata, NotificationCancelled,
    NotificationFailed, NotificationOpened, NotificationParked, NotificationPreferencesSet,
    NotificationScheduled, NotificationSent, RecordedEvent, RegradeRequested, SubScores,
    TokenUsage, TopicPublished, TranscriptCompleted, TranscriptSegmentRecognized, TranscriptSource,
    UserErased, UserRenamed, UsernameClaimed, UsernameReleased,
};
use uuid::Uuid;

fn uuid(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | n)
}

fn loc(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One sample per kind; the exhaustive match makes a new kind fail to compile until it has one.
fn sample(kind: EventKind) -> Event {
    match kind {
        EventKind::DeviceRegistered => Event::DeviceRegistered(DeviceRegistered {
            user_id: uuid(1),
            device_id: uuid(2),
            name: "사용자k3f9qa".into(),
            device_token_hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
                .into(),
        }),
        EventKind::UserRenamed => Event::UserRenamed(UserRenamed {
            user_id: uuid(1),
            name: "Ada".into(),
            previous_name: "사용자k3f9qa".into(),
        }),
        EventKind::UsernameClaimed => Event::UsernameClaimed(UsernameClaimed {
            user_id: uuid(1),
            name: "Ada".into(),
        }),
        EventKind::UsernameReleased => {
            Event::UsernameReleased(UsernameReleased { user_id: uuid(1) })
        }
        EventKind::TopicPublished => Event::TopicPublished(TopicPublished {
            topic_id: "cs.networking.tcp-vs-udp".into(),
            major: CatalogEntry {
                id: "cs".into(),
                name: loc(&[("en", "Computer Science"), ("ko", "컴퓨터공학")]),
            },
            subject: CatalogEntry {
                id: "cs.networking".into(),
                name: loc(&[("en", "Networking"), ("ko", "네트워크")]),
            },
            title: loc(&[("en", "TCP vs UDP"), ("ko", "TCP와 UDP")]),
            description: loc(&[
                ("en", "How the two transport protocols differ."),
                ("ko", "두 전송 계층 프로토콜의 차이."),
            ]),
            key_concepts: [
                (
                    "en".to_string(),
                    vec!["connection".to_string(), "reliability".to_string()],
                ),
                (
                    "ko".to_string(),
                    vec!["연결".to_string(), "신뢰성".to_string()],
                ),
            ]
            .into_iter()
            .collect(),
        }),
        EventKind::LectureStarted => Event::LectureStarted(LectureStarted {
            lecture_id: uuid(3),
            user_id: uuid(1),
            topic_id: "cs.networking.tcp-vs-udp".into(),
            format: AudioFormat::PcmS16le,
            sample_rate: Some(16_000),
            language: "ko".into(),
            mode: LectureMode::Live,
        }),
        EventKind::AudioSegmentStored => Event::AudioSegmentStored(AudioSegmentStored {
            lecture_id: uuid(3),
            index: 0,
            blob_key: "lectures/01900000-0000-7000-8000-000000000003/segment-000000.wav".into(),
            bytes: 96_044,
            duration_ms: Some(3_000),
            sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
            first_seq: 1,
            last_seq: 30,
        }),
        EventKind::LecturePaused => Event::LecturePaused(LecturePaused {
            lecture_id: uuid(3),
            at_ms: 3_000,
        }),
        EventKind::LectureResumed => Event::LectureResumed(LectureResumed {
            lecture_id: uuid(3),
            at_ms: 3_000,
        }),
        EventKind::LectureFinished => Event::LectureFinished(LectureFinished {
            lecture_id: uuid(3),
            duration_ms: Some(61_200),
            segments: 7,
            reason: FinishReason::Learner,
        }),
        EventKind::LectureCancelled => Event::LectureCancelled(LectureCancelled {
            lecture_id: uuid(3),
            segments: 1,
        }),
        EventKind::LectureAbandoned => Event::LectureAbandoned(LectureAbandoned {
            lecture_id: uuid(3),
            segments: 2,
            duration_ms: Some(20_100),
        }),
        EventKind::LectureTextSubmitted => Event::LectureTextSubmitted(LectureTextSubmitted {
            lecture_id: uuid(3),
            text: "TCP는 연결을 먼저 설정하고, UDP는 바로 보냅니다.".into(),
        }),
        EventKind::TranscriptSegmentRecognized => {
            Event::TranscriptSegmentRecognized(TranscriptSegmentRecognized {
                lecture_id: uuid(3),
                index: 0,
                text: "TCP is connection oriented.".into(),
                provider: "127.0.0.1:8000".into(),
                model: "whisper-1".into(),
                latency_ms: 640,
            })
        }
        EventKind::TranscriptCompleted => Event::TranscriptCompleted(TranscriptCompleted {
            lecture_id: uuid(3),
            text: "TCP is connection oriented. UDP is not.".into(),
            source: TranscriptSource::Speech,
            segments: 2,
            words: 7,
            empty: false,
        }),
        EventKind::GradingStarted => Event::GradingStarted(GradingStarted {
            lecture_id: uuid(3),
            attempt: 1,
            grader: GraderKind::Llm,
            provider: Some("api.openai.com".into()),
            model: Some("gpt-4o-mini".into()),
            fallback_reason: None,
        }),
        EventKind::FeedbackStreamed => Event::FeedbackStreamed(FeedbackStreamed {
            lecture_id: uuid(3),
            attempt: 1,
            offset_ms: 412,
            text: "You explained connection setup clearly".into(),
        }),
        EventKind::LectureGraded => Event::LectureGraded(LectureGraded {
            lecture_id: uuid(3),
            attempt: 1,
            grader: GraderKind::Rubric,
            fallback_reason: Some("provider_timeout".into()),
            provider: None,
            model: None,
            score: 72,
            sub_scores: SubScores {
                accuracy: 70,
                completeness: 75,
                clarity: 80,
                structure: 60,
            },
            feedback: "A clear explanation of connection setup.".into(),
            strengths: vec!["connection setup".into()],
            improvements: vec!["flow control".into()],
            misconceptions: vec![],
            usage: Some(TokenUsage {
                prompt_tokens: 812,
                completion_tokens: 240,
            }),
            output_mode: Some("json_schema".into()),
            latency: GradingLatency {
                first_token_ms: Some(380),
                total_ms: 2_950,
                since_finish_ms: Some(3_400),
            },
        }),
        EventKind::GradingFailed => Event::GradingFailed(GradingFailed {
            lecture_id: uuid(3),
            attempt: 1,
            stage: "transcription".into(),
            code: "provider_timeout".into(),
            message: "the speech-to-text service did not answer in time".into(),
            retryable: true,
        }),
        EventKind::RegradeRequested => Event::RegradeRequested(RegradeRequested {
            lecture_id: uuid(3),
            attempt: 2,
            requested_by: "cli".into(),
            reason: Some("new model".into()),
        }),
        EventKind::LectureRated => Event::LectureRated(LectureRated {
            lecture_id: uuid(3),
            user_id: uuid(1),
            attempt: 1,
            rating: 4,
        }),
        EventKind::NotificationPreferencesSet => {
            Event::NotificationPreferencesSet(NotificationPreferencesSet {
                user_id: uuid(1),
                kinds: vec!["daily_reminder".into(), "weekly_digest".into()],
                channel: "webhook".into(),
                time_zone: "Asia/Seoul".into(),
                hour: Some(19),
                quiet_start: Some(22),
                quiet_end: Some(8),
                language: "ko".into(),
            })
        }
        EventKind::NotificationScheduled => Event::NotificationScheduled(NotificationScheduled {
            notification_id: uuid(7),
            user_id: uuid(1),
            kind: "weekly_digest".into(),
            period: "2026-W49".into(),
            key: "0190…:weekly_digest:2026-W49".into(),
            channel: "webhook".into(),
            send_at: "2026-11-30T23:00:00Z".parse().unwrap(),
            language: "en".into(),
            title: "You moved up 12 places this week".into(),
            body: "Rank 8 of 120 with 245 points.".into(),
            link: "#/rankings".into(),
        }),
        EventKind::NotificationSent => Event::NotificationSent(NotificationSent {
            notification_id: uuid(7),
            attempt: 2,
            channel: "webhook".into(),
            status: 202,
        }),
        EventKind::NotificationFailed => Event::NotificationFailed(NotificationFailed {
            notification_id: uuid(7),
            attempt: 1,
            code: "http_5xx".into(),
            message: "the receiver answered 503".into(),
            retry_at: "2026-11-30T23:00:02Z".parse().unwrap(),
        }),
        EventKind::NotificationParked => Event::NotificationParked(NotificationParked {
            notification_id: uuid(7),
            attempts: 8,
            code: "timeout".into(),
            message: "no answer within 10 s".into(),
        }),
        EventKind::NotificationCancelled => Event::NotificationCancelled(NotificationCancelled {
            notification_id: uuid(7),
            reason: "opted_out".into(),
        }),
        EventKind::NotificationOpened => Event::NotificationOpened(NotificationOpened {
            notification_id: uuid(7),
            user_id: uuid(1),
        }),
        EventKind::UserErased => Event::UserErased(UserErased {
            user_id: uuid(1),
            requested_by: ErasureRequester::Learner,
            lectures: 3,
            blobs_deleted: 12,
        }),
        EventKind::AudioDeleted => Event::AudioDeleted(AudioDeleted {
            lecture_id: uuid(3),
            segments: vec![0, 1, 2],
            reason: AudioDeletionReason::Retention,
            retention_days: Some(30),
        }),
        EventKind::LectureReleased => Event::LectureReleased(LectureReleased {
            lecture_id: uuid(3),
            last_seq: 412,
        }),
    }
}

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
}

/// Compares `actual` with the committed file, or writes it when asked to.
fn assert_snapshot(file: PathBuf, actual: &str) {
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() && !file.exists() {
        std::fs::write(&file, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&file).unwrap_or_else(|_| {
        panic!(
            "missing snapshot {} (see this file's header)",
            file.display()
        )
    });
    assert_eq!(
        expected.trim_end(),
        actual.trim_end(),
        "snapshot {} changed: add a schema version and an upcaster instead",
        file.display()
    );
}

#[test]
fn every_event_variant_serialises_exactly_as_its_snapshot() {
    for &kind in EventKind::ALL {
        let event = sample(kind);
        let doc = serde_json::json!({
            "type": kind.type_name(),
            "schemaVersion": kind.schema_version(),
            "payload": event.to_payload(),
        });
        let text = serde_json::to_string_pretty(&doc).unwrap();
        assert_snapshot(
            dir("snapshots").join(format!(
                "{}.v{}.json",
                kind.type_name(),
                kind.schema_version()
            )),
            &text,
        );
        // And the snapshot decodes back to the same event.
        let decoded = Event::decode(
            kind.type_name(),
            kind.schema_version(),
            doc["payload"].clone(),
        )
        .unwrap();
        assert_eq!(decoded, event);
    }
}

#[test]
fn the_recorded_envelope_serialises_exactly_as_its_snapshot() {
    let recorded = RecordedEvent {
        position: 42,
        id: uuid(9),
        stream: "user-01900000-0000-7000-8000-000000000001".into(),
        stream_version: 0,
        event_type: "UsernameReleased".into(),
        schema_version: 1,
        recorded_at: "2026-11-22T03:04:05.123456Z".parse::<Timestamp>().unwrap(),
        metadata: Metadata {
            correlation_id: Some(uuid(10)),
            causation_id: Some(uuid(11)),
            acting_user: Some(uuid(1)),
            client: Some(ClientInfo {
                platform: Some("android".into()),
                app_version: Some("1.4.0".into()),
                device_model: Some("Pixel 8".into()),
                user_agent: None,
            }),
        },
        payload: sample(EventKind::UsernameReleased).to_payload(),
    };
    let text = serde_json::to_string_pretty(&recorded).unwrap();
    assert_snapshot(dir("snapshots").join("RecordedEvent.json"), &text);
    let back: RecordedEvent = serde_json::from_str(&text).unwrap();
    assert_eq!(back, recorded);
}

#[test]
fn a_stored_v1_topic_is_upcast_to_the_current_shape_with_no_key_concepts() {
    let stored: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir("stored").join("TopicPublished.v1.json")).unwrap(),
    )
    .unwrap();
    let event = Event::decode("TopicPublished", 1, stored).unwrap();
    let Event::TopicPublished(topic) = event else {
        panic!("decoded to the wrong kind: {event:?}");
    };
    assert_eq!(topic.topic_id, "cs.os.process-vs-thread");
    assert_eq!(topic.title["ko"], "프로세스와 스레드");
    assert!(topic.key_concepts.is_empty());
}

#[test]
fn unknown_types_and_mismatched_payloads_are_decode_errors() {
    assert!(Event::decode("LectureTeleported", 1, serde_json::json!({})).is_err());
    let err = Event::decode(
        "UserRenamed",
        1,
        serde_json::json!({"userId": "not-a-uuid"}),
    )
    .unwrap_err();
    assert!(err.to_string().contains("UserRenamed"), "{err}");
}
