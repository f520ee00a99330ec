//! Usage per learner and per day, and the day's provider usage over everyone: what quotas and the
//! spending guard are checked against.
//!
//! - A lecture counts on the day it started (in the projection's time zone), for its learner.
//! - Audio counts as it is stored (every stored segment, whether the lecture is then finished,
//!   cancelled or abandoned: it is transcribed either way), on that day. A segment of a
//!   container format whose length is not known counts its bytes at
//!   [`CONTAINER_BYTES_PER_SEC`] (32 kbit/s, a voice codec's rate: a higher-rate recording
//!   counts more minutes than it lasts).
//! - Model tokens count when a grade is recorded, on that day, for the lecture's learner
//!   (re-grades included: they cost the same).
//!
//! The fold needs a lecture's learner for the last two; it emits [`UsageChange::Owner`] when a
//! lecture starts, and the read model keeps that mapping.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use teachback_events::{DecodeError, Event, EventKind, RecordedEvent};
use uuid::Uuid;

/// The projection's base name.
pub const BASE: &str = "usage";
/// Bumped whenever the fold changes: a new version rebuilds from the log.
pub const VERSION: u32 = 1;

/// The checkpoint name: base, version and time zone (days depend on it).
pub fn name(tz: &TimeZone) -> String {
    format!("{BASE}.v{VERSION}@{}", crate::zone_label(tz))
}

/// The byte rate at which container audio of unknown length is counted (32 kbit/s).
pub const CONTAINER_BYTES_PER_SEC: u64 = 4_000;

/// The audio a stored segment counts for, in milliseconds.
pub fn counted_ms(duration_ms: Option<u64>, bytes: u64) -> u64 {
    duration_ms.unwrap_or(bytes * 1_000 / CONTAINER_BYTES_PER_SEC)
}

/// Amounts used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub lectures: u64,
    pub audio_ms: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    pub fn add(&mut self, other: Usage) {
        self.lectures += other.lectures;
        self.audio_ms += other.audio_ms;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

/// Whose usage a change adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whose {
    Learner(Uuid),
    /// The learner who started this lecture (the read model knows).
    LectureOwner(Uuid),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageChange {
    /// A lecture's learner, for later changes about the lecture.
    Owner { lecture_id: Uuid, user_id: Uuid },
    /// Usage added to a learner's day and to the day's total.
    Add {
        whose: Whose,
        day: Date,
        usage: Usage,
    },
}

/// Whether the projection reads events of this type.
pub fn reads(event_type: &str) -> bool {
    matches!(
        EventKind::from_type_name(event_type),
        Some(EventKind::LectureStarted | EventKind::AudioSegmentStored | EventKind::LectureGraded)
    )
}

fn day_of(at: Timestamp, tz: &TimeZone) -> Date {
    at.to_zoned(tz.clone()).date()
}

/// The changes one event makes.
pub fn project(event: &RecordedEvent, tz: &TimeZone) -> Result<Vec<UsageChange>, DecodeError> {
    if !reads(&event.event_type) {
        return Ok(Vec::new());
    }
    let day = day_of(event.recorded_at, tz);
    Ok(match event.decode()? {
        Event::LectureStarted(e) => vec![
            UsageChange::Owner {
                lecture_id: e.lecture_id,
                user_id: e.user_id,
            },
            UsageChange::Add {
                whose: Whose::Learner(e.user_id),
                day,
                usage: Usage {
                    lectures: 1,
                    ..Usage::default()
                },
            },
        ],
        Event::AudioSegmentStored(e) => match counted_ms(e.duration_ms, e.bytes) {
            0 => Vec::new(),
            ms => vec![UsageChange::Add {
                whose: Whose::LectureOwner(e.lecture_id),
                day,
                usage: Usage {
                    audio_ms: ms,
                    ..Usage::default()
                },
            }],
        },
        Event::LectureGraded(e) => match e.usage {
            Some(u) if u.prompt_tokens + u.completion_tokens > 0 => vec![UsageChange::Add {
                whose: Whose::LectureOwner(e.lecture_id),
                day,
                usage: Usage {
                    prompt_tokens: u.prompt_tokens,
                    completion_tokens: u.completion_tokens,
                    ..Usage::default()
                },
            }],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    })
}

/// The whole projection in memory: the reference the SQL read model is compared against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageView {
    pub owners: BTreeMap<Uuid, Uuid>,
    pub learners: BTreeMap<(Uuid, Date), Usage>,
    pub days: BTreeMap<Date, Usage>,
}

impl UsageView {
    pub fn apply(&mut self, changes: Vec<UsageChange>) {
        for change in changes {
            match change {
                UsageChange::Owner {
                    lecture_id,
                    user_id,
                } => {
                    self.owners.insert(lecture_id, user_id);
                }
                UsageChange::Add { whose, day, usage } => {
                    let learner = match whose {
                        Whose::Learner(user) => Some(user),
                        Whose::LectureOwner(lecture) => self.owners.get(&lecture).copied(),
                    };
                    if let Some(learner) = learner {
                        self.learners.entry((learner, day)).or_default().add(usage);
                    }
                    self.days.entry(day).or_default().add(usage);
                }
            }
        }
    }

    /// Folds a whole log.
    pub fn of(events: &[RecordedEvent], tz: &TimeZone) -> Result<UsageView, DecodeError> {
        let mut view = UsageView::default();
        for event in events {
            view.apply(project(event, tz)?);
        }
        Ok(view)
    }
}
