//! The learning projection, folded from event logs in memory.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use jiff::civil::{Date, date};
use jiff::tz::{TimeZone, offset};
use teachback_events::{
    Event, GradingLatency, LectureGraded, LecturePaused, TokenUsage, UsernameClaimed,
};
use teachback_projections::learning::{
    self, GradedLecture, LearningView, Needs, TREND_LEN, Touched, UserDoc, metric, streaks,
};
use uuid::Uuid;

const ME: Uuid = id(1);
const YOU: Uuid = id(2);
const L1: Uuid = id(101);
const L2: Uuid = id(102);
const L3: Uuid = id(103);

/// Korean time, UTC+9: 15:00Z is midnight, so a UTC evening is the next day here.
fn kst() -> TimeZone {
    TimeZone::fixed(offset(9))
}

fn fold(log: &Log) -> LearningView {
    LearningView::fold(log.events(), &kst()).expect("the log decodes")
}

/// A metric on one day (0 when never counted).
fn daily(view: &LearningView, day: Date, metric: &str) -> u64 {
    view.facts
        .daily
        .get(&(day, metric.to_owned()))
        .copied()
        .unwrap_or(0)
}

/// A metric over all days.
fn total(view: &LearningView, metric: &str) -> u64 {
    view.facts
        .daily
        .iter()
        .filter(|((_, m), _)| m == metric)
        .map(|(_, n)| n)
        .sum()
}

/// `ME` registered on 2024-03-01 (KST), with the topics `t.os` (cs/cs.os) and `t.net`
/// (cs/cs.net) published.
fn learner() -> Log {
    let mut log = Log::default();
    log.at("2024-03-01T00:00:00Z", published("t.os", "cs/cs.os"))
        .at("2024-03-01T00:00:00Z", published("t.net", "cs/cs.net"))
        .at("2024-03-01T01:00:00Z", registered(ME, "mina"));
    log
}

/// Starts, finishes (at `finished_at`) and grades (a minute later) a lecture of `user`.
fn taught(log: &mut Log, user: Uuid, lecture: Uuid, topic: &str, finished_at: &str, score: u8) {
    let graded_at = (ts(finished_at) + jiff::SignedDuration::from_secs(60)).to_string();
    log.at(finished_at, started(lecture, user, topic))
        .at(finished_at, finished(lecture, None))
        .at(&graded_at, graded(lecture, score));
}

#[test]
fn registering_creates_a_learner_whose_signup_day_is_the_day_in_the_projection_time_zone() {
    // given: 16:30 UTC on 10 March is 01:30 on 11 March in Korea
    let mut log = Log::default();
    log.at("2024-03-10T16:30:00Z", registered(ME, "mina"));

    // when
    let view = fold(&log);

    // then
    let user = &view.users[&ME];
    assert_eq!(user.name, "mina");
    assert_eq!(user.registered_at, ts("2024-03-10T16:30:00Z"));
    assert_eq!(user.signup_day, date(2024, 3, 11));
    assert_eq!((user.started, user.finished, user.rated), (0, 0, 0));
    assert_eq!(daily(&view, date(2024, 3, 11), metric::REGISTERED), 1);
    assert_eq!(total(&view, metric::REGISTERED), 1);
    assert!(view.facts.active.contains(&(ME, date(2024, 3, 11))));
}

#[test]
fn a_second_device_of_the_same_learner_neither_resets_nor_double_counts_them() {
    // given: a learner who started a lecture, then registered another device
    let mut log = learner();
    log.at("2024-03-02T01:00:00Z", started(L1, ME, "t.os"))
        .at("2024-03-05T01:00:00Z", registered(ME, "other-name"));

    // when
    let view = fold(&log);

    // then: still the first registration, one learner counted, the lecture kept
    let user = &view.users[&ME];
    assert_eq!(user.name, "mina");
    assert_eq!(user.registered_at, ts("2024-03-01T01:00:00Z"));
    assert_eq!(user.signup_day, date(2024, 3, 1));
    assert_eq!(user.started, 1);
    assert_eq!(total(&view, metric::REGISTERED), 1);
    assert_eq!(view.users.len(), 1);
    // the second device's day is an active day
    assert!(view.facts.active.contains(&(ME, date(2024, 3, 5))));
}

#[test]
fn a_rename_changes_the_learners_name_and_nothing_else() {
    // given
    let mut log = learner();
    log.at("2024-03-02T01:00:00Z", renamed(ME, "mina", "minji"))
        .at("2024-03-02T02:00:00Z", renamed(YOU, "ghost", "nobody"));

    // when
    let view = fold(&log);

    // then: the renamed learner keeps their registration; an unknown learner is not created
    let user = &view.users[&ME];
    assert_eq!(user.name, "minji");
    assert_eq!(user.registered_at, ts("2024-03-01T01:00:00Z"));
    assert!(!view.users.contains_key(&YOU));
}

#[test]
fn starting_lectures_counts_them_and_the_distinct_learners_of_each_topic() {
    // given: ME starts two lectures on t.os, YOU one; the first start is delivered twice
    let mut log = learner();
    log.at("2024-03-02T01:00:00Z", registered(YOU, "jun"))
        .at("2024-03-02T02:00:00Z", started(L1, ME, "t.os"))
        .at("2024-03-02T02:00:00Z", started(L1, ME, "t.os"))
        .at("2024-03-02T03:00:00Z", started(L2, ME, "t.os"))
        .at("2024-03-02T04:00:00Z", started(L3, YOU, "t.os"));

    // when
    let view = fold(&log);

    // then: 3 lectures (the repeat is ignored), 2 learners
    let topic = &view.topics["t.os"];
    assert_eq!((topic.lectures, topic.learners), (3, 2));
    assert_eq!(topic.major_id.as_deref(), Some("cs"));
    assert_eq!(topic.subject_id.as_deref(), Some("cs.os"));
    assert_eq!(view.users[&ME].started, 2);
    assert_eq!(view.users[&YOU].started, 1);
    assert_eq!(view.users[&ME].topics, BTreeSet::from(["t.os".to_owned()]));
    assert_eq!(daily(&view, date(2024, 3, 2), metric::STARTED), 3);
    let lecture = &view.lectures[&L2];
    assert_eq!((lecture.user_id, lecture.topic_id.as_str()), (ME, "t.os"));
    assert_eq!(lecture.started_at, ts("2024-03-02T03:00:00Z"));
    assert_eq!((lecture.finished_at, lecture.score), (None, None));
}

#[test]
fn co_study_counts_each_pair_of_topics_once_per_learner_in_both_directions() {
    // given: ME studies a, b, a again, then c; YOU studies b, then a
    let mut log = learner();
    log.at("2024-03-02T01:00:00Z", registered(YOU, "jun"));
    for (n, (user, topic)) in [
        (ME, "a"),
        (ME, "b"),
        (ME, "a"),
        (ME, "c"),
        (YOU, "b"),
        (YOU, "a"),
    ]
    .into_iter()
    .enumerate()
    {
        log.at(
            "2024-03-03T01:00:00Z",
            started(id(200 + n as u128), user, topic),
        );
    }

    // when
    let view = fold(&log);

    // then: ME links a–b, c–a and c–b (the second a adds nothing); YOU links a–b again
    let pair = |x: &str, y: &str| (x.to_owned(), y.to_owned());
    let expected = BTreeMap::from([
        (pair("a", "b"), 2),
        (pair("b", "a"), 2),
        (pair("a", "c"), 1),
        (pair("c", "a"), 1),
        (pair("b", "c"), 1),
        (pair("c", "b"), 1),
    ]);
    assert_eq!(view.facts.costudy, expected);
    assert_eq!(view.topics["a"].learners, 2);
    assert_eq!(view.topics["a"].lectures, 3);
}

#[test]
fn finishing_a_lecture_sets_its_day_and_the_learners_speaking_time_and_finish_days() {
    // given: finished at 15:30 UTC on 10 March, which is 00:30 on 11 March in Korea
    let mut log = learner();
    log.at("2024-03-10T14:00:00Z", started(L1, ME, "t.os"))
        .at("2024-03-10T15:30:00Z", finished(L1, Some(90_500)));

    // when
    let view = fold(&log);

    // then
    let lecture = &view.lectures[&L1];
    assert_eq!(lecture.finished_at, Some(ts("2024-03-10T15:30:00Z")));
    assert_eq!(lecture.day, Some(date(2024, 3, 11)));
    let user = &view.users[&ME];
    assert_eq!((user.finished, user.speaking_ms), (1, 90_500));
    assert_eq!(user.finish_days, BTreeSet::from([date(2024, 3, 11)]));
    assert_eq!(daily(&view, date(2024, 3, 11), metric::FINISHED), 1);
    assert_eq!(daily(&view, date(2024, 3, 11), metric::SPEAKING_MS), 90_500);
}

#[test]
fn finishing_a_lecture_again_changes_nothing() {
    // given: the same lecture finished twice, on different days
    let mut log = learner();
    log.at("2024-03-10T14:00:00Z", started(L1, ME, "t.os"))
        .at("2024-03-10T15:30:00Z", finished(L1, Some(90_500)))
        .at("2024-03-12T15:30:00Z", finished(L1, Some(10_000)));

    // when
    let view = fold(&log);

    // then: only the first finish counts
    let lecture = &view.lectures[&L1];
    assert_eq!(lecture.finished_at, Some(ts("2024-03-10T15:30:00Z")));
    assert_eq!(lecture.day, Some(date(2024, 3, 11)));
    let user = &view.users[&ME];
    assert_eq!((user.finished, user.speaking_ms), (1, 90_500));
    assert_eq!(user.finish_days.len(), 1);
    assert_eq!(total(&view, metric::FINISHED), 1);
    assert_eq!(total(&view, metric::SPEAKING_MS), 90_500);
}

#[test]
fn grading_sets_the_score_the_topic_totals_and_the_learners_grade_on_the_finish_day() {
    // given: finished at 23:59:50 on 10 March (KST), graded 30 s later, on 11 March; grading
    // took 5 s and its first token came 0.8 s in
    let mut log = learner();
    log.at("2024-03-10T14:00:00Z", started(L1, ME, "t.os"))
        .at("2024-03-10T14:59:50Z", finished(L1, Some(60_000)))
        .at(
            "2024-03-10T15:00:20Z",
            Event::LectureGraded(LectureGraded {
                latency: GradingLatency {
                    first_token_ms: Some(800),
                    total_ms: 5_000,
                    since_finish_ms: Some(30_000),
                },
                ..grade(L1, 72)
            }),
        );

    // when
    let view = fold(&log);

    // then: finish → first token = 30 000 − 5 000 + 800 = 25 800 ms
    let lecture = &view.lectures[&L1];
    assert_eq!(lecture.score, Some(72));
    assert_eq!(lecture.day, Some(date(2024, 3, 10)));
    assert_eq!(lecture.graded_day, Some(date(2024, 3, 11)));
    assert_eq!(lecture.score_ms, Some(30_000));
    assert_eq!(lecture.first_token_ms, Some(25_800));
    let topic = &view.topics["t.os"];
    assert_eq!((topic.graded, topic.score_sum), (1, 72));
    assert_eq!(topic.average_score(), Some(72.0));
    assert_eq!(
        view.users[&ME].graded,
        BTreeMap::from([(
            L1,
            GradedLecture {
                topic_id: "t.os".into(),
                subject: Some("cs/cs.os".into()),
                score: 72,
                day: date(2024, 3, 10),
                graded_at: ts("2024-03-10T15:00:20Z"),
            }
        )])
    );
    assert_eq!(daily(&view, date(2024, 3, 11), metric::GRADED), 1);
    assert_eq!(daily(&view, date(2024, 3, 11), metric::GRADES), 1);
}

#[test]
fn a_grade_without_a_first_token_has_a_score_latency_only() {
    // given: no feedback streamed before the grade
    let mut log = learner();
    log.at("2024-03-10T14:00:00Z", started(L1, ME, "t.os"))
        .at("2024-03-10T14:10:00Z", finished(L1, None))
        .at(
            "2024-03-10T14:10:09Z",
            Event::LectureGraded(LectureGraded {
                latency: GradingLatency {
                    first_token_ms: None,
                    total_ms: 4_000,
                    since_finish_ms: Some(9_000),
                },
                ..grade(L1, 50)
            }),
        );

    // when
    let view = fold(&log);

    // then
    let lecture = &view.lectures[&L1];
    assert_eq!(
        (lecture.score_ms, lecture.first_token_ms),
        (Some(9_000), None)
    );
    assert_eq!(view.topics["t.os"].average_score(), Some(50.0));
}

#[test]
fn a_lower_regrade_replaces_the_score_everywhere() {
    // given: two lectures on t.os scored 80 and 60, then the 80 re-graded to 50
    let mut log = learner();
    taught(&mut log, ME, L1, "t.os", "2024-03-10T01:00:00Z", 80);
    taught(&mut log, ME, L2, "t.os", "2024-03-11T01:00:00Z", 60);
    log.at("2024-03-12T01:00:00Z", regrade_requested(L1))
        .at("2024-03-12T01:01:00Z", graded(L1, 50));

    // when
    let view = fold(&log);

    // then: sum 50 + 60 = 110 over 2 graded lectures; best is now 60; 3 grades were given
    assert_eq!(view.lectures[&L1].score, Some(50));
    assert_eq!(view.lectures[&L1].graded_day, Some(date(2024, 3, 12)));
    let topic = &view.topics["t.os"];
    assert_eq!((topic.graded, topic.score_sum), (2, 110));
    assert_eq!(topic.average_score(), Some(55.0));
    let user = &view.users[&ME];
    assert_eq!(user.graded[&L1].score, 50);
    assert_eq!(user.graded[&L1].day, date(2024, 3, 10));
    assert_eq!(user.graded[&L1].graded_at, ts("2024-03-12T01:01:00Z"));
    let stats = user.stats(date(2024, 3, 12));
    assert_eq!((stats.lectures_graded, stats.best_score), (2, Some(60)));
    assert_eq!(stats.average_score, Some(55.0));
    assert_eq!(user.best_by_topic(None), BTreeMap::from([("t.os", 60)]));
    assert_eq!(total(&view, metric::GRADED), 2);
    assert_eq!(total(&view, metric::GRADES), 3);
}

#[test]
fn a_rating_is_counted_once_even_if_the_learner_rates_again() {
    // given
    let mut log = learner();
    taught(&mut log, ME, L1, "t.os", "2024-03-10T01:00:00Z", 80);
    log.at("2024-03-10T02:00:00Z", rated(L1, ME, 4))
        .at("2024-03-11T02:00:00Z", rated(L1, ME, 2));

    // when
    let view = fold(&log);

    // then: the latest rating stands, counted once
    assert_eq!(view.lectures[&L1].rating, Some(2));
    assert_eq!(view.users[&ME].rated, 1);
    assert_eq!(total(&view, metric::RATED), 1);
    assert!(view.facts.active.contains(&(ME, date(2024, 3, 11))));
}

#[test]
fn provider_attempts_failures_and_token_usage_are_counted_per_day() {
    // given: attempt 1 with openai fails; attempt 2 with openai grades using 1200 + 300
    // tokens of gpt-x; another lecture is graded by a provider that names no model
    let mut log = learner();
    log.at("2024-03-10T01:00:00Z", started(L1, ME, "t.os"))
        .at("2024-03-10T01:05:00Z", finished(L1, None))
        .at(
            "2024-03-10T01:05:01Z",
            grading_started(L1, Some("openai"), None),
        )
        .at("2024-03-10T01:05:30Z", grading_failed(L1, "grading"))
        .at("2024-03-10T02:00:00Z", regrade_requested(L1))
        .at(
            "2024-03-10T02:00:01Z",
            grading_started(L1, Some("openai"), None),
        )
        .at(
            "2024-03-10T02:00:09Z",
            Event::LectureGraded(LectureGraded {
                provider: Some("openai".into()),
                model: Some("gpt-x".into()),
                usage: Some(TokenUsage {
                    prompt_tokens: 1_200,
                    completion_tokens: 300,
                }),
                ..grade(L1, 70)
            }),
        )
        .at("2024-03-10T03:00:00Z", started(L2, ME, "t.os"))
        .at("2024-03-10T03:05:00Z", finished(L2, None))
        .at(
            "2024-03-10T03:05:01Z",
            grading_started(L2, Some("local"), None),
        )
        .at(
            "2024-03-10T03:05:09Z",
            Event::LectureGraded(LectureGraded {
                provider: Some("local".into()),
                usage: Some(TokenUsage {
                    prompt_tokens: 10,
                    completion_tokens: 0,
                }),
                ..grade(L2, 40)
            }),
        );

    // when
    let view = fold(&log);

    // then: all on 10 March (KST); nothing fell back, and a zero count is not recorded
    let day = date(2024, 3, 10);
    let counted: BTreeMap<&str, u64> = view
        .facts
        .daily
        .iter()
        .filter(|((d, m), _)| *d == day && m.contains(':'))
        .map(|((_, m), n)| (m.as_str(), *n))
        .collect();
    assert_eq!(
        counted,
        BTreeMap::from([
            ("attempts:openai", 2),
            ("attempts:local", 1),
            ("failures:openai", 1),
            ("prompt_tokens:gpt-x", 1_200),
            ("completion_tokens:gpt-x", 300),
            ("prompt_tokens:local", 10),
        ])
    );
    assert_eq!(daily(&view, day, metric::GRADES), 2);
}

#[test]
fn a_rubric_fallback_counts_a_failure_and_a_fallback_against_the_provider_it_replaced() {
    // given: the worker's sequence when the model fails: GradingStarted(llm, openai), then
    // GradingStarted(rubric, no provider, fallback reason), then the rubric's grade
    let mut log = learner();
    log.at("2024-03-10T01:00:00Z", started(L1, ME, "t.os"))
        .at("2024-03-10T01:05:00Z", finished(L1, None))
        .at(
            "2024-03-10T01:05:01Z",
            grading_started(L1, Some("openai"), None),
        )
        .at(
            "2024-03-10T01:05:31Z",
            grading_started(L1, None, Some("provider_timeout")),
        )
        .at(
            "2024-03-10T01:05:32Z",
            Event::LectureGraded(LectureGraded {
                fallback_reason: Some("provider_timeout".into()),
                model: Some("rubric".into()),
                ..grade(L1, 55)
            }),
        );

    // when
    let view = fold(&log);

    // then
    let day = date(2024, 3, 10);
    assert_eq!(daily(&view, day, "attempts:openai"), 1);
    assert_eq!(daily(&view, day, "fallbacks:openai"), 1);
    assert_eq!(daily(&view, day, "failures:openai"), 1);
}

#[test]
fn rubric_grading_without_a_provider_counts_no_provider_metrics() {
    // given: no model configured: the rubric grades directly
    let mut log = learner();
    log.at("2024-03-10T01:00:00Z", started(L1, ME, "t.os"))
        .at("2024-03-10T01:05:00Z", finished(L1, None))
        .at("2024-03-10T01:05:01Z", grading_started(L1, None, None))
        .at("2024-03-10T01:05:02Z", graded(L1, 55));

    // when
    let view = fold(&log);

    // then
    assert!(view.facts.daily.keys().all(|(_, m)| !m.contains(':')));
    assert_eq!(view.lectures[&L1].score, Some(55));
}

#[test]
fn speech_to_text_segments_and_failures_are_counted_under_stt() {
    // given: two segments recognised, then transcription of the rest failed (at 15:10 UTC,
    // 00:10 on 11 March in Korea)
    let mut log = learner();
    log.at("2024-03-10T14:00:00Z", started(L1, ME, "t.os"))
        .at("2024-03-10T14:01:00Z", recognized(L1, 0))
        .at("2024-03-10T14:02:00Z", recognized(L1, 1))
        .at("2024-03-10T15:10:00Z", grading_failed(L1, "transcription"));

    // when
    let view = fold(&log);

    // then: the failed segment was also an attempt
    assert_eq!(daily(&view, date(2024, 3, 10), "attempts:stt"), 2);
    assert_eq!(daily(&view, date(2024, 3, 11), "attempts:stt"), 1);
    assert_eq!(daily(&view, date(2024, 3, 11), "failures:stt"), 1);
    assert_eq!(total(&view, "failures:stt"), 1);
}

#[test]
fn events_the_projection_does_not_read_change_nothing() {
    // given: a log, and the same log with irrelevant, unknown and dangling events added
    let mut plain = learner();
    plain.at("2024-03-10T01:00:00Z", started(L1, ME, "t.os"));
    let mut noisy = learner();
    noisy
        .at("2024-03-10T01:00:00Z", started(L1, ME, "t.os"))
        .at(
            "2024-03-10T01:01:00Z",
            Event::UsernameClaimed(UsernameClaimed {
                user_id: ME,
                name: "mina".into(),
            }),
        )
        .at(
            "2024-03-10T01:02:00Z",
            Event::LecturePaused(LecturePaused {
                lecture_id: L1,
                at_ms: 500,
            }),
        )
        .raw(
            "2024-03-10T01:03:00Z",
            "lecture-x",
            "LectureTeleported",
            serde_json::json!({"lectureId": L1}),
        )
        // irrelevant types are not decoded, so a corrupt one is no error
        .raw(
            "2024-03-10T01:04:00Z",
            "username-x",
            "UsernameReleased",
            serde_json::json!({}),
        )
        // about a lecture never started
        .at("2024-03-10T01:05:00Z", finished(L2, Some(1_000)))
        .at("2024-03-10T01:06:00Z", graded(L2, 90))
        .at("2024-03-10T01:07:00Z", rated(L2, ME, 5));

    // when
    let (plain, noisy) = (fold(&plain), fold(&noisy));

    // then
    assert_eq!(noisy, plain);
    use teachback_events::EventKind;
    assert!(!learning::is_relevant(EventKind::UsernameClaimed));
    assert!(!learning::is_relevant(EventKind::FeedbackStreamed));
    assert!(learning::is_relevant(EventKind::LectureGraded));
}

#[test]
fn a_relevant_event_with_a_corrupt_payload_is_an_error() {
    // given
    let mut log = learner();
    log.raw(
        "2024-03-10T01:00:00Z",
        "lecture-x",
        "LectureFinished",
        serde_json::json!({"lectureId": "not a uuid"}),
    );

    // when
    let folded = LearningView::fold(log.events(), &kst());

    // then
    assert!(folded.is_err());
}

#[test]
fn needs_names_the_documents_each_event_reads() {
    // given
    let events = [
        registered(id(1), "a"),
        renamed(id(2), "b", "c"),
        published("t.x", "cs/cs.os"),
        started(id(11), id(3), "t.y"),
        finished(id(12), None),
        grading_started(id(13), Some("openai"), None),
        grading_failed(id(14), "grading"),
        graded(id(15), 70),
        regrade_requested(id(16)),
        rated(id(17), id(4), 3),
        recognized(id(18), 0),
        Event::UsernameClaimed(UsernameClaimed {
            user_id: id(5),
            name: "x".into(),
        }),
    ];

    // when
    let needs = learning::needs(&events);

    // then: a rating names its learner, but the lecture's learner is loaded from the lecture
    let uuids = |ns: &[u128]| ns.iter().map(|&n| id(n)).collect::<BTreeSet<_>>();
    assert_eq!(needs.users, uuids(&[1, 2, 3]));
    assert_eq!(needs.lectures, uuids(&[11, 12, 13, 14, 15, 16, 17]));
    assert_eq!(
        needs.topics,
        BTreeSet::from(["t.x".to_owned(), "t.y".to_owned()])
    );
}

#[test]
fn the_loaded_lectures_add_their_learners_and_topics_to_the_needs() {
    // given: a lecture of YOU on t.net
    let mut log = learner();
    log.at("2024-03-10T01:00:00Z", started(L1, YOU, "t.net"));
    let view = fold(&log);
    let mut needs = Needs {
        users: BTreeSet::from([ME]),
        ..Needs::default()
    };

    // when
    needs.add_lecture_refs(view.lectures.values());

    // then
    assert_eq!(needs.users, BTreeSet::from([ME, YOU]));
    assert_eq!(needs.topics, BTreeSet::from(["t.net".to_owned()]));
}

/// Folds the log the way the runner does: per batch, load only the documents `needs` names
/// from a store, apply, write back the touched documents and add the facts.
fn run_in_batches(events: &[teachback_events::RecordedEvent], size: usize) -> LearningView {
    let mut store = LearningView::default();
    for batch in events.chunks(size) {
        let decoded = learning::decode(batch).expect("decodes");
        let mut needs = learning::needs(decoded.iter().map(|(_, e)| e));
        let mut view = LearningView::default();
        for id in &needs.lectures {
            if let Some(doc) = store.lectures.get(id) {
                view.lectures.insert(*id, doc.clone());
            }
        }
        needs.add_lecture_refs(view.lectures.values());
        for id in &needs.users {
            if let Some(doc) = store.users.get(id) {
                view.users.insert(*id, doc.clone());
            }
        }
        for id in &needs.topics {
            if let Some(doc) = store.topics.get(id) {
                view.topics.insert(id.clone(), doc.clone());
            }
        }
        let mut touched = Touched::default();
        for (event, decoded) in decoded {
            view.apply(event, decoded, &kst(), &mut touched);
        }
        for id in touched.users.keys() {
            store.users.insert(*id, view.users[id].clone());
        }
        for id in touched.lectures.keys() {
            store.lectures.insert(*id, view.lectures[id].clone());
        }
        for id in touched.topics.keys() {
            store.topics.insert(id.clone(), view.topics[id].clone());
        }
        store.facts.merge(view.facts);
    }
    store
}

#[test]
fn the_runners_batches_of_loaded_documents_give_the_same_view_as_folding_the_whole_log() {
    // given: two learners, co-study, failures, re-grades, ratings, renames, a second device
    let mut log = learner();
    log.at("2024-03-02T01:00:00Z", registered(YOU, "jun"));
    taught(&mut log, ME, L1, "t.os", "2024-03-03T01:00:00Z", 70);
    log.at("2024-03-04T01:00:00Z", started(L2, ME, "t.net"))
        .at("2024-03-04T01:01:00Z", started(L3, YOU, "t.net"))
        .at("2024-03-04T01:02:00Z", recognized(L2, 0))
        .at("2024-03-04T01:03:00Z", finished(L2, Some(61_000)))
        .at(
            "2024-03-04T01:04:00Z",
            grading_started(L2, Some("openai"), None),
        )
        .at("2024-03-04T01:05:00Z", grading_failed(L2, "grading"))
        .at("2024-03-04T01:06:00Z", rated(L1, ME, 5))
        .at("2024-03-04T16:00:00Z", regrade_requested(L2))
        .at(
            "2024-03-04T16:01:00Z",
            grading_started(L2, Some("openai"), None),
        )
        .at("2024-03-04T16:02:00Z", graded(L2, 90))
        .at("2024-03-05T01:00:00Z", renamed(ME, "mina", "minji"))
        .at("2024-03-05T01:00:00Z", registered(ME, "again"))
        .at("2024-03-05T02:00:00Z", started(id(104), YOU, "t.os"))
        .at("2024-03-05T02:01:00Z", graded(L1, 40))
        .at("2024-03-05T02:02:00Z", rated(L1, ME, 1))
        .at("2024-03-05T03:00:00Z", finished(L3, Some(5_000)))
        .at("2024-03-05T03:01:00Z", grading_failed(L3, "transcription"));
    let whole = fold(&log);

    for size in 1..=5 {
        // when
        let batched = run_in_batches(log.events(), size);

        // then
        assert_eq!(batched, whole, "batches of {size}");
    }
}

#[test]
fn touched_documents_carry_the_position_of_the_last_event_that_changed_them() {
    // given: positions 1–3 set up t.os, t.net and ME; the lecture is started (4), finished (5),
    // graded (6), rated (7), rated again (8), and its grading fails (9)
    let mut log = learner();
    log.at("2024-03-10T01:00:00Z", started(L1, ME, "t.os"))
        .at("2024-03-10T01:01:00Z", finished(L1, None))
        .at("2024-03-10T01:02:00Z", graded(L1, 70))
        .at("2024-03-10T01:03:00Z", rated(L1, ME, 4))
        .at("2024-03-10T01:04:00Z", rated(L1, ME, 2))
        .at("2024-03-10T01:05:00Z", grading_failed(L1, "grading"));
    let mut view = LearningView::default();
    let mut touched = Touched::default();

    // when
    for (event, decoded) in learning::decode(log.events()).expect("decodes") {
        view.apply(event, decoded, &kst(), &mut touched);
    }

    // then: the second rating changes the lecture only (ME was counted as a rater at 7); the
    // failure changes no document
    assert_eq!(touched.lectures, BTreeMap::from([(L1, 8)]));
    assert_eq!(touched.users, BTreeMap::from([(ME, 7)]));
    assert_eq!(
        touched.topics,
        BTreeMap::from([("t.net".to_owned(), 2), ("t.os".to_owned(), 6)])
    );
}

#[test]
fn stats_give_averages_the_best_score_speaking_time_and_per_subject_scores() {
    // given: t.os 70 and 85 (cs/cs.os), t.net 90 (cs/cs.net), and 40 on an unpublished topic
    let mut log = learner();
    taught(&mut log, ME, L1, "t.os", "2024-03-10T01:00:00Z", 70);
    taught(&mut log, ME, L2, "t.os", "2024-03-11T01:00:00Z", 85);
    taught(&mut log, ME, L3, "t.net", "2024-03-12T01:00:00Z", 90);
    log.at("2024-03-12T02:00:00Z", started(id(104), ME, "t.new"))
        .at("2024-03-12T02:30:00Z", finished(id(104), Some(61_999)))
        .at("2024-03-12T02:31:00Z", graded(id(104), 40));
    let view = fold(&log);

    // when
    let stats = view.users[&ME].stats(date(2024, 3, 12));

    // then: (70 + 85 + 90 + 40) / 4 = 71.25 → 71.3; cs.os (70 + 85) / 2 = 77.5; 61.999 s → 61
    assert_eq!(stats.lectures_started, 4);
    assert_eq!(stats.lectures_finished, 4);
    assert_eq!(stats.lectures_graded, 4);
    assert_eq!(stats.average_score, Some(71.3));
    assert_eq!(stats.best_score, Some(90));
    assert_eq!(stats.speaking_seconds, 61);
    let subjects: Vec<_> = stats
        .subjects
        .iter()
        .map(|s| {
            (
                s.major_id.as_str(),
                s.subject_id.as_str(),
                s.graded,
                s.average_score,
                s.best_score,
            )
        })
        .collect();
    assert_eq!(
        subjects,
        [("cs", "cs.net", 1, 90.0, 90), ("cs", "cs.os", 2, 77.5, 85)]
    );
    // finished on 10, 11 and 12 March: a 3-day streak, current on the 12th
    assert_eq!(
        (stats.current_streak_days, stats.longest_streak_days),
        (3, 3)
    );
}

#[test]
fn stats_of_a_learner_with_no_grades_have_no_scores() {
    // given
    let view = fold(&learner());

    // when
    let stats = view.users[&ME].stats(date(2024, 3, 12));

    // then
    assert_eq!((stats.average_score, stats.best_score), (None, None));
    assert!(stats.trend.is_empty() && stats.subjects.is_empty());
    assert_eq!(
        (stats.current_streak_days, stats.longest_streak_days),
        (0, 0)
    );
}

#[test]
fn the_trend_keeps_the_latest_grades_oldest_first() {
    // given: TREND_LEN + 2 lectures graded a minute apart, scores 50, 51, …; lecture ids fall
    // as time goes on so that id order is not time order; then the oldest is re-graded to 10
    let n = TREND_LEN as u128 + 2;
    let mut log = learner();
    for i in 0..n {
        let at = format!("2024-03-10T01:{:02}:00Z", 2 * i);
        taught(&mut log, ME, id(1_000 - i), "t.os", &at, 50 + i as u8);
    }
    let view = fold(&log);
    log.at("2024-03-11T00:00:00Z", graded(id(1_000), 10));
    let regraded = fold(&log);

    // when
    let trend = view.users[&ME].stats(date(2024, 3, 10)).trend;
    let trend_after = regraded.users[&ME].stats(date(2024, 3, 11)).trend;

    // then: the last 20 of 22 are scores 52..=71; after the re-grade 53..=71, then 10
    let scores = |t: &[learning::TrendPoint]| t.iter().map(|p| p.score).collect::<Vec<_>>();
    assert_eq!(trend.len(), TREND_LEN);
    assert_eq!(scores(&trend), (52..=71).collect::<Vec<u8>>());
    assert_eq!(trend[0].lecture_id, id(998));
    assert_eq!(trend[0].graded_at, ts("2024-03-10T01:05:00Z"));
    let mut expected: Vec<u8> = (53..=71).collect();
    expected.push(10);
    assert_eq!(scores(&trend_after), expected);
    assert_eq!(trend_after[TREND_LEN - 1].lecture_id, id(1_000));
}

fn days(ds: &[(i16, i8, i8)]) -> BTreeSet<Date> {
    ds.iter().map(|&(y, m, d)| date(y, m, d)).collect()
}

#[test]
fn the_current_streak_counts_while_its_last_day_is_today_or_yesterday() {
    // given: runs of 3 (1–3 March) and 2 (5–6 March)
    let finished = days(&[
        (2024, 3, 1),
        (2024, 3, 2),
        (2024, 3, 3),
        (2024, 3, 5),
        (2024, 3, 6),
    ]);

    // when / then: current is the last run while it lasts; the longest stays 3
    assert_eq!(streaks(&finished, date(2024, 3, 6)), (2, 3));
    assert_eq!(streaks(&finished, date(2024, 3, 7)), (2, 3));
    assert_eq!(streaks(&finished, date(2024, 3, 8)), (0, 3));
}

#[test]
fn the_longest_streak_runs_across_month_ends_and_ignores_gaps() {
    // given: 28 Feb – 1 Mar 2024 is 3 days (a leap year); then one day after a gap
    let finished = days(&[(2024, 2, 28), (2024, 2, 29), (2024, 3, 1), (2024, 3, 10)]);

    // when
    let (current, longest) = streaks(&finished, date(2024, 3, 10));

    // then
    assert_eq!((current, longest), (1, 3));
    assert_eq!(streaks(&BTreeSet::new(), date(2024, 3, 10)), (0, 0));
}

#[test]
fn best_by_topic_keeps_each_topics_best_score_among_lectures_finished_in_the_days() {
    // given: t.os 70 (1 March) and 85 (10 March), t.net 60 (5 March), by finish day in Korea
    let mut log = learner();
    taught(&mut log, ME, L1, "t.os", "2024-03-01T01:00:00Z", 70);
    taught(&mut log, ME, L2, "t.os", "2024-03-10T01:00:00Z", 85);
    taught(&mut log, ME, L3, "t.net", "2024-03-05T01:00:00Z", 60);
    let view = fold(&log);
    let user: &UserDoc = &view.users[&ME];

    // when / then: the days are inclusive at both ends
    assert_eq!(
        user.best_by_topic(None),
        BTreeMap::from([("t.os", 85), ("t.net", 60)])
    );
    assert_eq!(
        user.best_by_topic(Some((date(2024, 3, 1), date(2024, 3, 5)))),
        BTreeMap::from([("t.os", 70), ("t.net", 60)])
    );
    assert_eq!(
        user.best_by_topic(Some((date(2024, 3, 6), date(2024, 3, 9)))),
        BTreeMap::new()
    );
}

#[test]
fn the_projection_name_changes_with_the_iana_time_zone() {
    // given
    let seoul = TimeZone::get("Asia/Seoul").expect("the time zone database has Asia/Seoul");

    // when
    let (utc, seoul) = (learning::name(&TimeZone::UTC), learning::name(&seoul));

    // then
    assert_eq!(utc, format!("learning.v{}@UTC", learning::VERSION));
    assert_eq!(seoul, format!("learning.v{}@Asia/Seoul", learning::VERSION));
}

#[test]
fn the_projection_name_changes_with_a_fixed_offset_time_zone() {
    // given
    let (utc, plus_nine) = (TimeZone::UTC, kst());

    // when
    let (utc, plus_nine) = (learning::name(&utc), learning::name(&plus_nine));

    // then: days differ between the two zones, so the names must too
    assert_ne!(utc, plus_nine);
}
