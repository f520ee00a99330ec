//! The learning projection: what every learner has done and how well, per learner, lecture and
//! topic, plus the daily counters analytics reads. User stats, the lecture facts rankings are
//! computed from, topic stats, co-study links and activity all come from here.
//!
//! # Shape
//! The state is a set of *documents* keyed by learner, lecture and topic ([`UserDoc`],
//! [`LectureDoc`], [`TopicDoc`]) and a set of *additive facts* (co-study counts, active days,
//! daily counters). [`LearningView::apply`] folds one event into the view and records which
//! documents it touched and which facts it added. The server's runner loads the documents a batch
//! needs (see [`Needs`]), applies the same fold, and writes back what was touched, in the same
//! transaction as its checkpoint; tests use the whole view in memory. Both use this one fold, so
//! a rebuild from the log and the live runner produce the same rows.
//!
//! Days are calendar days in the projection's time zone; changing the zone changes the
//! projection's name (see [`name`]) and so rebuilds it.

use std::collections::{BTreeMap, BTreeSet};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};
use teachback_events::{DecodeError, Event, EventKind, RecordedEvent};
use uuid::Uuid;

/// The projection's base name.
pub const BASE: &str = "learning";
/// Bumped whenever the fold or its documents change: a new version rebuilds from the log.
pub const VERSION: u32 = 1;
/// How many recent grades a learner's score trend keeps.
pub const TREND_LEN: usize = 20;

/// The projection's checkpoint name: base, version and time zone (days depend on it). A zone
/// with no IANA name is named by its fixed offset.
pub fn name(tz: &TimeZone) -> String {
    format!("{BASE}.v{VERSION}@{}", crate::zone_label(tz))
}

/// The calendar day of `at` in `tz`.
pub fn day_of(at: Timestamp, tz: &TimeZone) -> Date {
    at.to_zoned(tz.clone()).date()
}

/// A learner's document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDoc {
    pub user_id: Uuid,
    pub name: String,
    pub registered_at: Timestamp,
    pub signup_day: Date,
    pub started: u32,
    pub finished: u32,
    pub rated: u32,
    /// Audio (or, for text lectures, nothing) taught in finished lectures.
    pub speaking_ms: u64,
    /// Days on which the learner finished a lecture.
    pub finish_days: BTreeSet<Date>,
    /// Topics the learner has started a lecture on.
    pub topics: BTreeSet<String>,
    /// The current score of every graded lecture (a re-grade replaces it).
    pub graded: BTreeMap<Uuid, GradedLecture>,
}

/// A graded lecture as its learner's stats see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GradedLecture {
    pub topic_id: String,
    /// `major/subject` of the topic when graded.
    pub subject: Option<String>,
    pub score: u8,
    /// When the lecture was finished (what periods count by).
    pub day: Date,
    /// When the current grade was given.
    pub graded_at: Timestamp,
}

/// One lecture's facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LectureDoc {
    pub lecture_id: Uuid,
    pub user_id: Uuid,
    pub topic_id: String,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// The finish day; a lecture counts in the periods containing it.
    pub day: Option<Date>,
    pub score: Option<u8>,
    pub graded_day: Option<Date>,
    /// Finish (or re-grade request) → first feedback token, of the current grade.
    pub first_token_ms: Option<u64>,
    /// Finish (or re-grade request) → score, of the current grade.
    pub score_ms: Option<u64>,
    pub rating: Option<u8>,
    /// The provider of the grading attempt in progress.
    pub provider: Option<String>,
}

/// A topic's document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicDoc {
    pub topic_id: String,
    pub major_id: Option<String>,
    pub subject_id: Option<String>,
    /// Lectures started on the topic.
    pub lectures: u32,
    /// Distinct learners who started one.
    pub learners: u32,
    /// Lectures with a grade, and the sum of their current scores.
    pub graded: u32,
    pub score_sum: u64,
}

impl TopicDoc {
    /// The average of the graded lectures' current scores, to one decimal.
    pub fn average_score(&self) -> Option<f64> {
        (self.graded > 0).then(|| round1(self.score_sum as f64 / f64::from(self.graded)))
    }

    fn subject_key(&self) -> Option<String> {
        Some(format!(
            "{}/{}",
            self.major_id.as_deref()?,
            self.subject_id.as_deref()?
        ))
    }
}

/// The additive facts one batch adds: applied as increments (and set inserts) by the runner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// (topic, other topic) → learners who started both, counted once per learner.
    pub costudy: BTreeMap<(String, String), u64>,
    /// (learner, day) on which they did something.
    pub active: BTreeSet<(Uuid, Date)>,
    /// (day, metric) → amount. Metric names are listed in [`metric`].
    pub daily: BTreeMap<(Date, String), u64>,
}

impl Facts {
    fn count(&mut self, day: Date, metric: String, by: u64) {
        if by > 0 {
            *self.daily.entry((day, metric)).or_default() += by;
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: Facts) {
        for (k, v) in other.costudy {
            *self.costudy.entry(k).or_default() += v;
        }
        self.active.extend(other.active);
        for (k, v) in other.daily {
            *self.daily.entry(k).or_default() += v;
        }
    }
}

/// Daily metric names.
pub mod metric {
    pub const REGISTERED: &str = "registered";
    pub const STARTED: &str = "lectures_started";
    pub const FINISHED: &str = "lectures_finished";
    pub const GRADED: &str = "lectures_graded";
    pub const GRADES: &str = "grades";
    pub const RATED: &str = "lectures_rated";
    pub const SPEAKING_MS: &str = "speaking_ms";
    /// `attempts:<provider>`: grading attempts that called the provider; `attempts:stt`:
    /// segments sent to speech-to-text.
    pub const ATTEMPTS: &str = "attempts";
    /// `failures:<provider>`: attempts that failed, or fell back to the rubric because of it.
    pub const FAILURES: &str = "failures";
    /// `fallbacks:<provider>`: grades given by the rubric after the provider failed.
    pub const FALLBACKS: &str = "fallbacks";
    /// `prompt_tokens:<model>` and `completion_tokens:<model>`.
    pub const PROMPT_TOKENS: &str = "prompt_tokens";
    pub const COMPLETION_TOKENS: &str = "completion_tokens";
}

/// The provider label speech-to-text attempts and failures are counted under.
pub const STT: &str = "stt";

/// The documents and facts, in memory. In tests this is the whole projection; in the runner it
/// holds the documents one batch needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LearningView {
    pub users: BTreeMap<Uuid, UserDoc>,
    pub lectures: BTreeMap<Uuid, LectureDoc>,
    pub topics: BTreeMap<String, TopicDoc>,
    pub facts: Facts,
}

/// Which documents a fold touched, each with the position of the last event that changed it
/// (stored with the row, so readers can load what changed since a position): the runner writes
/// exactly these back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    pub users: BTreeMap<Uuid, u64>,
    pub lectures: BTreeMap<Uuid, u64>,
    pub topics: BTreeMap<String, u64>,
}

/// The documents a batch reads: lectures first, then the learners and topics they name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    pub users: BTreeSet<Uuid>,
    pub lectures: BTreeSet<Uuid>,
    pub topics: BTreeSet<String>,
}

impl Needs {
    /// Learners and topics of the loaded lectures (second step of loading).
    pub fn add_lecture_refs<'a>(&mut self, lectures: impl IntoIterator<Item = &'a LectureDoc>) {
        for lecture in lectures {
            self.users.insert(lecture.user_id);
            self.topics.insert(lecture.topic_id.clone());
        }
    }
}

/// Whether the projection reads events of this type at all (others are skipped undecoded).
pub fn is_relevant(kind: EventKind) -> bool {
    use EventKind as K;
    matches!(
        kind,
        K::DeviceRegistered
            | K::UserRenamed
            | K::TopicPublished
            | K::LectureStarted
            | K::LectureFinished
            | K::TranscriptSegmentRecognized
            | K::GradingStarted
            | K::GradingFailed
            | K::LectureGraded
            | K::RegradeRequested
            | K::LectureRated
    )
}

/// Whether the projection reads events of this type (by name).
pub fn reads(event_type: &str) -> bool {
    EventKind::from_type_name(event_type).is_some_and(is_relevant)
}

/// Decodes the events the projection reads, skipping the rest.
pub fn decode(events: &[RecordedEvent]) -> Result<Vec<(&RecordedEvent, Event)>, DecodeError> {
    let mut out = Vec::new();
    for event in events {
        if let Some(decoded) = crate::decode_kinds(event, is_relevant)? {
            out.push((event, decoded));
        }
    }
    Ok(out)
}

/// The documents a batch of decoded events needs (first step: before lectures are loaded).
pub fn needs<'a>(events: impl IntoIterator<Item = &'a Event>) -> Needs {
    let mut needs = Needs::default();
    for event in events {
        match event {
            Event::DeviceRegistered(e) => {
                needs.users.insert(e.user_id);
            }
            Event::UserRenamed(e) => {
                needs.users.insert(e.user_id);
            }
            Event::TopicPublished(e) => {
                needs.topics.insert(e.topic_id.clone());
            }
            Event::LectureStarted(e) => {
                needs.lectures.insert(e.lecture_id);
                needs.users.insert(e.user_id);
                needs.topics.insert(e.topic_id.clone());
            }
            Event::LectureFinished(e) => {
                needs.lectures.insert(e.lecture_id);
            }
            Event::TranscriptSegmentRecognized(_) => {}
            Event::GradingStarted(e) => {
                needs.lectures.insert(e.lecture_id);
            }
            Event::GradingFailed(e) => {
                needs.lectures.insert(e.lecture_id);
            }
            Event::LectureGraded(e) => {
                needs.lectures.insert(e.lecture_id);
            }
            Event::RegradeRequested(e) => {
                needs.lectures.insert(e.lecture_id);
            }
            Event::LectureRated(e) => {
                needs.lectures.insert(e.lecture_id);
            }
            _ => {}
        }
    }
    needs
}

impl LearningView {
    /// Folds a whole log in (tests and references).
    pub fn fold(events: &[RecordedEvent], tz: &TimeZone) -> Result<LearningView, DecodeError> {
        let mut view = LearningView::default();
        let mut touched = Touched::default();
        for (event, decoded) in decode(events)? {
            view.apply(event, decoded, tz, &mut touched);
        }
        Ok(view)
    }

    /// Folds one decoded event in. Pure: the same view and event give the same result.
    pub fn apply(&mut self, event: &RecordedEvent, decoded: Event, tz: &TimeZone, t: &mut Touched) {
        let at = event.recorded_at;
        let pos = event.position;
        let day = day_of(at, tz);
        let facts = &mut self.facts;
        match decoded {
            Event::DeviceRegistered(e) => {
                // A second device of the same learner is not a new learner.
                if let std::collections::btree_map::Entry::Vacant(slot) =
                    self.users.entry(e.user_id)
                {
                    slot.insert(UserDoc {
                        user_id: e.user_id,
                        name: e.name,
                        registered_at: at,
                        signup_day: day,
                        started: 0,
                        finished: 0,
                        rated: 0,
                        speaking_ms: 0,
                        finish_days: BTreeSet::new(),
                        topics: BTreeSet::new(),
                        graded: BTreeMap::new(),
                    });
                    t.users.insert(e.user_id, pos);
                    facts.count(day, metric::REGISTERED.into(), 1);
                }
                facts.active.insert((e.user_id, day));
            }
            Event::UserRenamed(e) => {
                if let Some(user) = self.users.get_mut(&e.user_id) {
                    user.name = e.name;
                    t.users.insert(e.user_id, pos);
                }
                facts.active.insert((e.user_id, day));
            }
            Event::TopicPublished(e) => {
                let topic = self.topics.entry(e.topic_id.clone()).or_default();
                topic.topic_id = e.topic_id.clone();
                topic.major_id = Some(e.major.id);
                topic.subject_id = Some(e.subject.id);
                t.topics.insert(e.topic_id, pos);
            }
            Event::LectureStarted(e) => {
                if self.lectures.contains_key(&e.lecture_id) {
                    return;
                }
                self.lectures.insert(
                    e.lecture_id,
                    LectureDoc {
                        lecture_id: e.lecture_id,
                        user_id: e.user_id,
                        topic_id: e.topic_id.clone(),
                        started_at: at,
                        finished_at: None,
                        day: None,
                        score: None,
                        graded_day: None,
                        first_token_ms: None,
                        score_ms: None,
                        rating: None,
                        provider: None,
                    },
                );
                t.lectures.insert(e.lecture_id, pos);
                facts.count(day, metric::STARTED.into(), 1);
                facts.active.insert((e.user_id, day));
                let topic = self.topics.entry(e.topic_id.clone()).or_default();
                topic.topic_id = e.topic_id.clone();
                topic.lectures += 1;
                t.topics.insert(e.topic_id.clone(), pos);
                if let Some(user) = self.users.get_mut(&e.user_id) {
                    user.started += 1;
                    t.users.insert(e.user_id, pos);
                    if !user.topics.contains(&e.topic_id) {
                        topic.learners += 1;
                        for other in &user.topics {
                            *facts
                                .costudy
                                .entry((e.topic_id.clone(), other.clone()))
                                .or_default() += 1;
                            *facts
                                .costudy
                                .entry((other.clone(), e.topic_id.clone()))
                                .or_default() += 1;
                        }
                        user.topics.insert(e.topic_id);
                    }
                }
            }
            Event::LectureFinished(e) => {
                let Some(lecture) = self.lectures.get_mut(&e.lecture_id) else {
                    return;
                };
                if lecture.finished_at.is_some() {
                    return;
                }
                lecture.finished_at = Some(at);
                lecture.day = Some(day);
                t.lectures.insert(e.lecture_id, pos);
                let speaking = e.duration_ms.unwrap_or(0);
                facts.count(day, metric::FINISHED.into(), 1);
                facts.count(day, metric::SPEAKING_MS.into(), speaking);
                if let Some(user) = self.users.get_mut(&lecture.user_id) {
                    user.finished += 1;
                    user.speaking_ms += speaking;
                    user.finish_days.insert(day);
                    t.users.insert(lecture.user_id, pos);
                }
            }
            Event::TranscriptSegmentRecognized(_) => {
                facts.count(day, format!("{}:{STT}", metric::ATTEMPTS), 1);
            }
            Event::GradingStarted(e) => {
                let Some(lecture) = self.lectures.get_mut(&e.lecture_id) else {
                    return;
                };
                // The rubric standing in for a failed provider keeps that provider on record:
                // the grade counts as its failure and fallback.
                if e.fallback_reason.is_none() || e.provider.is_some() {
                    lecture.provider = e.provider.clone();
                }
                t.lectures.insert(e.lecture_id, pos);
                if let Some(provider) = e.provider {
                    facts.count(day, format!("{}:{provider}", metric::ATTEMPTS), 1);
                }
            }
            Event::GradingFailed(e) => {
                // Speech-to-text failures count against `stt`; grading ones against the
                // attempt's provider (the rubric never fails on a provider).
                let provider = if e.stage == "transcription" {
                    facts.count(day, format!("{}:{STT}", metric::ATTEMPTS), 1);
                    Some(STT.to_owned())
                } else {
                    self.lectures
                        .get(&e.lecture_id)
                        .and_then(|l| l.provider.clone())
                };
                if let Some(provider) = provider {
                    facts.count(day, format!("{}:{provider}", metric::FAILURES), 1);
                }
            }
            Event::RegradeRequested(e) => {
                if let Some(lecture) = self.lectures.get_mut(&e.lecture_id) {
                    lecture.provider = None;
                    t.lectures.insert(e.lecture_id, pos);
                }
            }
            Event::LectureGraded(e) => self.graded(e, at, pos, day, t),
            Event::LectureRated(e) => {
                let Some(lecture) = self.lectures.get_mut(&e.lecture_id) else {
                    return;
                };
                facts.active.insert((e.user_id, day));
                if lecture.rating.replace(e.rating).is_none() {
                    facts.count(day, metric::RATED.into(), 1);
                    if let Some(user) = self.users.get_mut(&lecture.user_id) {
                        user.rated += 1;
                        t.users.insert(lecture.user_id, pos);
                    }
                }
                t.lectures.insert(e.lecture_id, pos);
            }
            _ => {}
        }
    }

    fn graded(
        &mut self,
        e: teachback_events::LectureGraded,
        at: Timestamp,
        pos: u64,
        day: Date,
        t: &mut Touched,
    ) {
        let facts = &mut self.facts;
        let Some(lecture) = self.lectures.get_mut(&e.lecture_id) else {
            return;
        };
        facts.count(day, metric::GRADES.into(), 1);
        if let Some(model) = e.model.as_deref().or(e.provider.as_deref()) {
            let usage = e.usage.unwrap_or_default();
            facts.count(
                day,
                format!("{}:{model}", metric::PROMPT_TOKENS),
                usage.prompt_tokens,
            );
            facts.count(
                day,
                format!("{}:{model}", metric::COMPLETION_TOKENS),
                usage.completion_tokens,
            );
        }
        // The rubric stood in for a configured provider that failed.
        if e.fallback_reason.is_some()
            && let Some(provider) = lecture.provider.clone().or(e.provider.clone())
        {
            facts.count(day, format!("{}:{provider}", metric::FALLBACKS), 1);
            facts.count(day, format!("{}:{provider}", metric::FAILURES), 1);
        }
        let previous = lecture.score.replace(e.score);
        if previous.is_none() {
            facts.count(day, metric::GRADED.into(), 1);
        }
        lecture.graded_day = Some(day);
        let since = e.latency.since_finish_ms;
        lecture.score_ms = since;
        lecture.first_token_ms = match (since, e.latency.first_token_ms) {
            (Some(since), Some(first)) => Some(
                since
                    .saturating_sub(e.latency.total_ms)
                    .saturating_add(first),
            ),
            _ => None,
        };
        t.lectures.insert(e.lecture_id, pos);
        let finish_day = lecture.day.unwrap_or(day);
        let topic = self.topics.entry(lecture.topic_id.clone()).or_default();
        topic.topic_id = lecture.topic_id.clone();
        topic.score_sum = topic.score_sum + u64::from(e.score) - previous.map_or(0, u64::from);
        topic.graded += u32::from(previous.is_none());
        t.topics.insert(lecture.topic_id.clone(), pos);
        if let Some(user) = self.users.get_mut(&lecture.user_id) {
            user.graded.insert(
                e.lecture_id,
                GradedLecture {
                    topic_id: lecture.topic_id.clone(),
                    subject: topic.subject_key(),
                    score: e.score,
                    day: finish_day,
                    graded_at: at,
                },
            );
            t.users.insert(lecture.user_id, pos);
        }
    }
}

/// A learner's stats as the user page shows them, derived from their document.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserStats {
    pub lectures_started: u32,
    pub lectures_finished: u32,
    pub lectures_graded: u32,
    pub average_score: Option<f64>,
    pub best_score: Option<u8>,
    pub speaking_seconds: u64,
    pub current_streak_days: u32,
    pub longest_streak_days: u32,
    /// The last [`TREND_LEN`] grades, oldest first.
    pub trend: Vec<TrendPoint>,
    pub subjects: Vec<SubjectStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrendPoint {
    pub lecture_id: Uuid,
    pub topic_id: String,
    pub score: u8,
    pub graded_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubjectStats {
    pub major_id: String,
    pub subject_id: String,
    pub graded: u32,
    pub average_score: f64,
    pub best_score: u8,
}

impl UserDoc {
    /// The stats as of `today` (the current streak depends on it).
    pub fn stats(&self, today: Date) -> UserStats {
        let scores: Vec<u8> = self.graded.values().map(|g| g.score).collect();
        let mut trend: Vec<TrendPoint> = self
            .graded
            .iter()
            .map(|(id, g)| TrendPoint {
                lecture_id: *id,
                topic_id: g.topic_id.clone(),
                score: g.score,
                graded_at: g.graded_at,
            })
            .collect();
        trend.sort_by_key(|p| (p.graded_at, p.lecture_id));
        let trend = trend.split_off(trend.len().saturating_sub(TREND_LEN));
        let mut subjects: BTreeMap<&str, (u32, u64, u8)> = BTreeMap::new();
        for g in self.graded.values() {
            if let Some(subject) = &g.subject {
                let s = subjects.entry(subject).or_default();
                s.0 += 1;
                s.1 += u64::from(g.score);
                s.2 = s.2.max(g.score);
            }
        }
        let (current, longest) = streaks(&self.finish_days, today);
        UserStats {
            lectures_started: self.started,
            lectures_finished: self.finished,
            lectures_graded: scores.len() as u32,
            average_score: average(scores.iter().map(|s| u64::from(*s)), scores.len()),
            best_score: scores.iter().copied().max(),
            speaking_seconds: self.speaking_ms / 1000,
            current_streak_days: current,
            longest_streak_days: longest,
            trend,
            subjects: subjects
                .into_iter()
                .map(|(key, (n, sum, best))| {
                    let (major, subject) = key.split_once('/').unwrap_or(("", key));
                    SubjectStats {
                        major_id: major.to_owned(),
                        subject_id: subject.to_owned(),
                        graded: n,
                        average_score: round1(sum as f64 / f64::from(n)),
                        best_score: best,
                    }
                })
                .collect(),
        }
    }

    /// The learner's best current score on each topic among lectures finished in `days`
    /// (inclusive; `None`: all time).
    pub fn best_by_topic(&self, days: Option<(Date, Date)>) -> BTreeMap<&str, u8> {
        crate::rankings::best_per_topic(
            self.graded
                .values()
                .map(|g| (g.topic_id.as_str(), g.day, g.score)),
            days,
        )
    }
}

fn average(values: impl Iterator<Item = u64>, n: usize) -> Option<f64> {
    (n > 0).then(|| round1(values.sum::<u64>() as f64 / n as f64))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The current and longest runs of consecutive days. The current run counts if its last day is
/// today or yesterday (today's lecture may still come).
pub fn streaks(days: &BTreeSet<Date>, today: Date) -> (u32, u32) {
    let mut longest = 0;
    let mut run = 0;
    let mut previous: Option<Date> = None;
    for &day in days {
        run = match previous {
            Some(p) if p.checked_add(1.day()).ok() == Some(day) => run + 1,
            _ => 1,
        };
        longest = longest.max(run);
        previous = Some(day);
    }
    let yesterday = today.checked_sub(1.day()).unwrap_or(today);
    let current = match previous {
        Some(last) if last == today || last == yesterday => run,
        _ => 0,
    };
    (current, longest)
}
