//! The usage projection, folded from event logs in memory.

#[allow(dead_code)] // each test binary uses some of the builders
mod common;

use common::*;
use jiff::civil::date;
use jiff::tz::TimeZone;
use teachback_events::{AudioSegmentStored, Event, TokenUsage};
use teachback_projections::usage::{Usage, UsageView};
use uuid::Uuid;

fn stored(lecture: Uuid, index: u32, bytes: u64, duration_ms: Option<u64>) -> Event {
    Event::AudioSegmentStored(AudioSegmentStored {
        lecture_id: lecture,
        index,
        blob_key: format!("lectures/{lecture}/{index}"),
        bytes,
        duration_ms,
        sha256: String::new(),
        first_seq: 0,
        last_seq: 0,
    })
}

fn graded_with(lecture: Uuid, prompt: u64, completion: u64) -> Event {
    let mut grade = grade(lecture, 70);
    grade.usage = Some(TokenUsage {
        prompt_tokens: prompt,
        completion_tokens: completion,
    });
    Event::LectureGraded(grade)
}

#[test]
fn lectures_audio_and_tokens_count_for_the_learner_on_the_day_they_happen() {
    let seoul = TimeZone::get("Asia/Seoul").unwrap();
    let (ana, bo) = (Uuid::now_v7(), Uuid::now_v7());
    let (live, upload, text) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let mut log = Log::default();
    // given a live lecture started late on Dec 1 in Seoul whose audio is stored after midnight
    log.at("2026-12-01T14:50:00Z", started(live, ana, "t"))
        .at(
            "2026-12-01T14:55:00Z",
            stored(live, 0, 480_044, Some(15_000)),
        )
        .at(
            "2026-12-01T15:05:00Z",
            stored(live, 1, 320_044, Some(10_000)),
        )
        .at("2026-12-01T15:06:00Z", finished(live, Some(25_000)))
        .at("2026-12-01T15:07:00Z", graded_with(live, 1_000, 200))
        // and an upload of unknown length (40,000 bytes at 4,000 a second: 10 s) by another learner
        .at("2026-12-01T15:10:00Z", started(upload, bo, "t"))
        .at("2026-12-01T15:11:00Z", stored(upload, 0, 40_000, None))
        // and a text lecture graded by the rubric, which reports no tokens
        .at("2026-12-01T15:12:00Z", started(text, ana, "t"))
        .at("2026-12-01T15:13:00Z", graded(text, 60));
    // when the log is folded
    let view = UsageView::of(log.events(), &seoul).unwrap();
    // then each learner's day holds what happened on it, by Seoul's calendar
    let (dec1, dec2) = (date(2026, 12, 1), date(2026, 12, 2));
    assert_eq!(
        view.learners[&(ana, dec1)],
        Usage {
            lectures: 1,
            audio_ms: 15_000,
            ..Usage::default()
        }
    );
    assert_eq!(
        view.learners[&(ana, dec2)],
        Usage {
            lectures: 1,
            audio_ms: 10_000,
            prompt_tokens: 1_000,
            completion_tokens: 200,
        }
    );
    assert_eq!(view.learners[&(bo, dec2)].audio_ms, 10_000);
    // and the finish does not count the audio a second time
    assert_eq!(view.days[&dec2].audio_ms, 20_000);
    assert_eq!(view.days[&dec2].lectures, 2);
    assert_eq!(view.days[&dec2].tokens(), 1_200);
}

#[test]
fn events_it_does_not_read_change_nothing() {
    let utc = TimeZone::UTC;
    let lecture = Uuid::now_v7();
    let mut log = Log::default();
    log.at("2026-12-01T10:00:00Z", registered(Uuid::now_v7(), "Ana"))
        .at("2026-12-01T10:01:00Z", recognized(lecture, 0))
        .at("2026-12-01T10:02:00Z", finished(lecture, Some(5_000)));
    let view = UsageView::of(log.events(), &utc).unwrap();
    assert!(view.learners.is_empty());
    assert!(view.owners.is_empty());
    assert_eq!(view.days.values().map(|u| u.audio_ms).sum::<u64>(), 0);
}
