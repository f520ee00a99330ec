//! Study nudges: when a learner's daily reminder, streak warning or weekly digest is due, and
//! what it says. Pure: the server's scheduler passes in the clock, the learner's time zone and
//! settings, and records what [`due`] answers as a `NotificationScheduled` event keyed by
//! [`key`], so one nudge is never scheduled twice.
//!
//! A nudge fires on a five-field [`Cron`] expression evaluated in the learner's own time zone,
//! is held back past their [`QuietHours`], and is dropped when it could no longer be sent within
//! its kind's [`Kind::window`] (a server that was down overnight still sends the morning's
//! reminder, never last week's).
//!
//! # Daylight saving time
//! Firings are civil times. A civil time that does not exist (the spring-forward gap) fires at
//! the instant the gap ends, so a 02:30 reminder in New York is sent at 03:00 on the day clocks
//! go forward rather than lost. A civil time that occurs twice (fall-back) fires once, at the
//! earlier of the two instants.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp, Zoned};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The kinds of nudge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// "Today's topic": a nudge to teach something today.
    DailyReminder,
    /// "Your streak ends tonight".
    StreakWarning,
    /// Last week's place on the rankings.
    WeeklyDigest,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 3] = [Kind::DailyReminder, Kind::StreakWarning, Kind::WeeklyDigest];

    /// The kind's wire name (as serialized): `daily_reminder`, `streak_warning`, `weekly_digest`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::DailyReminder => "daily_reminder",
            Kind::StreakWarning => "streak_warning",
            Kind::WeeklyDigest => "weekly_digest",
        }
    }

    /// The kind with this wire name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// How late a firing may still be sent (a server that was down overnight still sends the
    /// morning's reminder, never last week's): daily reminder 12 h, streak warning 4 h, weekly
    /// digest 48 h.
    pub const fn window(self) -> SignedDuration {
        match self {
            Kind::DailyReminder => SignedDuration::from_hours(12),
            Kind::StreakWarning => SignedDuration::from_hours(4),
            Kind::WeeklyDigest => SignedDuration::from_hours(48),
        }
    }

    /// The default cron expression: daily reminder `0 19 * * *`, streak warning `0 21 * * *`,
    /// weekly digest `0 8 * * 1` (Monday morning).
    pub const fn default_cron(self) -> &'static str {
        match self {
            Kind::DailyReminder => "0 19 * * *",
            Kind::StreakWarning => "0 21 * * *",
            Kind::WeeklyDigest => "0 8 * * 1",
        }
    }

    /// Whether the learner's preferred hour replaces the expression's hour (daily reminder
    /// only; see [`Cron::at_hour`]).
    pub const fn follows_preferred_hour(self) -> bool {
        matches!(self, Kind::DailyReminder)
    }
}

/// One of a cron expression's five fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CronField {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl CronField {
    /// The fields in the order they are written.
    pub const ALL: [CronField; 5] = [
        CronField::Minute,
        CronField::Hour,
        CronField::DayOfMonth,
        CronField::Month,
        CronField::DayOfWeek,
    ];

    /// The field's name in messages: `minute`, `hour`, `day-of-month`, `month`, `day-of-week`.
    pub const fn name(self) -> &'static str {
        match self {
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        }
    }

    /// The smallest and largest value the field accepts (day-of-week 7 is Sunday again).
    const fn bounds(self) -> (u8, u8) {
        match self {
            CronField::Minute => (0, 59),
            CronField::Hour => (0, 23),
            CronField::DayOfMonth => (1, 31),
            CronField::Month => (1, 12),
            CronField::DayOfWeek => (0, 7),
        }
    }

    /// Names accepted for values, the first standing for the field's smallest value.
    const fn names(self) -> &'static [&'static str] {
        match self {
            CronField::Month => &[
                "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
            ],
            CronField::DayOfWeek => &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
            _ => &[],
        }
    }
}

/// What is wrong with a part of a cron field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CronProblem {
    /// A list has an empty item (`1,,2`, a trailing comma) or a range lacks an end (`1-`).
    /// An empty value is reported as [`CronProblem::NotAValue`] (`1/` is a bad step).
    EmptyItem,
    /// Neither a number nor (month, day-of-week) a name.
    NotAValue,
    /// A number outside the field's range.
    OutOfRange { min: u8, max: u8 },
    /// A range whose start is after its end (`5-3`); ranges do not wrap.
    ReversedRange,
    /// A step of zero (`*/0`).
    ZeroStep,
    /// A step that is not a number (`*/x`).
    BadStep,
    /// A step after a single value (`5/10`): write `5-59/10` or `*/10`.
    StepWithoutRange,
}

/// Why a cron expression could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CronError {
    /// The expression is empty or blank.
    Empty,
    /// The expression does not have five fields.
    FieldCount { found: usize },
    /// A field is malformed; `text` is the offending part of it.
    Field {
        field: CronField,
        text: String,
        problem: CronProblem,
    },
}

const FIELDS: &str = "minute hour day-of-month month day-of-week";

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CronError::Empty => write!(f, "empty cron expression: expected five fields ({FIELDS})"),
            CronError::FieldCount { found } => write!(
                f,
                "cron expression has {found} field{}, expected five ({FIELDS})",
                if *found == 1 { "" } else { "s" }
            ),
            CronError::Field {
                field,
                text,
                problem,
            } => {
                write!(f, "cron {} field: `{text}` ", field.name())?;
                match problem {
                    CronProblem::EmptyItem => write!(f, "has an empty item"),
                    CronProblem::NotAValue => write!(f, "is not a number{}", name_hint(*field)),
                    CronProblem::OutOfRange { min, max } => {
                        write!(f, "is out of range {min}-{max}")
                    }
                    CronProblem::ReversedRange => {
                        write!(f, "is a range that ends before it starts")
                    }
                    CronProblem::ZeroStep => write!(f, "has a step of zero"),
                    CronProblem::BadStep => write!(f, "has a step that is not a number"),
                    CronProblem::StepWithoutRange => {
                        write!(f, "has a step after a single value; use `*/n` or `a-b/n`")
                    }
                }
            }
        }
    }
}

/// The names a field also accepts, for error messages.
fn name_hint(field: CronField) -> &'static str {
    match field {
        CronField::Month => " or month name (JAN-DEC)",
        CronField::DayOfWeek => " or day name (SUN-SAT)",
        _ => "",
    }
}

impl std::error::Error for CronError {}

/// A five-field cron expression: minute hour day-of-month month day-of-week.
///
/// Fields: `*`, numbers, ranges `a-b`, lists `a,b,c`, steps `*/n` and `a-b/n`; day-of-week 0-7
/// (0 and 7 are Sunday) or `MON`..`SUN`; month 1-12 or `JAN`..`DEC` (names case-insensitive).
///
/// The standard (Vixie) cron rule for days: when both day-of-month and day-of-week are
/// restricted, a day matches if either matches; when either starts with `*` (so `*/2` counts as
/// unrestricted too, as in Vixie cron), a day must match both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    /// Bit n: minute n.
    minutes: u64,
    /// Bit n: hour n.
    hours: u32,
    /// Bit n: day n of the month (bit 0 unused).
    days_of_month: u32,
    /// Bit n: month n (bit 0 unused).
    months: u16,
    /// Bit n: n days after Sunday.
    days_of_week: u8,
    /// Whether day-of-month and day-of-week start with `*` (see the type's docs).
    any_day_of_month: bool,
    any_day_of_week: bool,
    /// The fields as written, joined by single spaces.
    source: String,
}

impl FromStr for Cron {
    type Err = CronError;

    fn from_str(s: &str) -> Result<Cron, CronError> {
        let fields: Vec<&str> = s.split_whitespace().collect();
        match fields.len() {
            0 => return Err(CronError::Empty),
            5 => {}
            found => return Err(CronError::FieldCount { found }),
        }
        let mut bits = [0u64; 5];
        for ((field, text), bits) in CronField::ALL.into_iter().zip(&fields).zip(&mut bits) {
            *bits = parse_field(field, text)?;
        }
        let [minutes, hours, days_of_month, months, days_of_week] = bits;
        // Day-of-week 7 is Sunday, like 0.
        let days_of_week = (days_of_week | days_of_week >> 7) & 0x7f;
        Ok(Cron {
            minutes,
            hours: hours as u32,
            days_of_month: days_of_month as u32,
            months: months as u16,
            days_of_week: days_of_week as u8,
            any_day_of_month: fields[2].starts_with('*'),
            any_day_of_week: fields[4].starts_with('*'),
            source: fields.join(" "),
        })
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A field's values as a bitset (bit n: value n).
fn parse_field(field: CronField, text: &str) -> Result<u64, CronError> {
    let mut bits = 0;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(field_error(field, text, CronProblem::EmptyItem));
        }
        bits |= parse_item(field, item)?;
    }
    Ok(bits)
}

/// One list item: `*`, `a`, `a-b`, `*/n` or `a-b/n`.
fn parse_item(field: CronField, item: &str) -> Result<u64, CronError> {
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(parse_step(field, item, step)?)),
        None => (item, None),
    };
    let (min, max) = field.bounds();
    let (start, end) = match range.split_once('-') {
        _ if range == "*" => (min, max),
        Some((start, end)) if start.is_empty() || end.is_empty() => {
            return Err(field_error(field, item, CronProblem::EmptyItem));
        }
        Some((start, end)) => (parse_value(field, start)?, parse_value(field, end)?),
        None if step.is_some() => {
            return Err(field_error(field, item, CronProblem::StepWithoutRange));
        }
        None => {
            let value = parse_value(field, range)?;
            (value, value)
        }
    };
    if start > end {
        return Err(field_error(field, item, CronProblem::ReversedRange));
    }
    let step = usize::from(step.unwrap_or(1));
    Ok((start..=end).step_by(step).fold(0, |bits, v| bits | 1 << v))
}

/// The `n` of `/n`: a positive number.
fn parse_step(field: CronField, item: &str, step: &str) -> Result<u8, CronError> {
    if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
        return Err(field_error(field, item, CronProblem::BadStep));
    }
    match step.parse::<u64>() {
        Ok(0) => Err(field_error(field, item, CronProblem::ZeroStep)),
        // A step longer than the field fires once, at its start, just like one of 255.
        Ok(n) => Ok(n.min(255) as u8),
        Err(_) => Ok(255),
    }
}

/// A number or name within the field's range.
fn parse_value(field: CronField, text: &str) -> Result<u8, CronError> {
    let (min, max) = field.bounds();
    if let Some(i) = field
        .names()
        .iter()
        .position(|n| n.eq_ignore_ascii_case(text))
    {
        return Ok(min + i as u8);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(field_error(field, text, CronProblem::NotAValue));
    }
    match text.parse::<u64>() {
        Ok(v) if (u64::from(min)..=u64::from(max)).contains(&v) => Ok(v as u8),
        _ => Err(field_error(
            field,
            text,
            CronProblem::OutOfRange { min, max },
        )),
    }
}

fn field_error(field: CronField, text: &str, problem: CronProblem) -> CronError {
    CronError::Field {
        field,
        text: text.to_string(),
        problem,
    }
}

/// How far [`Cron::last_at_or_before`] looks back.
const SEARCH_DAYS: u32 = 400;

impl Cron {
    /// The same expression firing at `hour` (0-23) instead of its own hours (the minute and day
    /// fields are kept). An hour above 23 is taken as 23, so a bad stored preference still
    /// yields an evening reminder rather than a panic in the scheduler.
    pub fn at_hour(&self, hour: u8) -> Cron {
        let hour = hour.min(23);
        let mut fields: Vec<&str> = self.source.split(' ').collect();
        let text = hour.to_string();
        fields[1] = &text;
        Cron {
            hours: 1 << hour,
            source: fields.join(" "),
            ..self.clone()
        }
    }

    /// The latest firing at or before `now`, as a civil time in `tz` (searching back at most
    /// 400 days; `None` if none). Walks days backwards, then takes the largest matching hour
    /// and minute within the day; see the module docs for daylight saving time.
    pub fn last_at_or_before(&self, now: Timestamp, tz: &TimeZone) -> Option<Zoned> {
        let mut day = now.to_zoned(tz.clone()).date();
        for _ in 0..=SEARCH_DAYS {
            if self.matches_day(day)
                && let Some(fired) = self.last_in_day(day, now, tz)
            {
                return Some(fired);
            }
            day = day.yesterday().ok()?;
        }
        None
    }

    /// Whether the expression fires on some time of `day`.
    fn matches_day(&self, day: Date) -> bool {
        if self.months & 1 << day.month() == 0 {
            return false;
        }
        let by_month = self.days_of_month & 1 << day.day() != 0;
        let by_week = self.days_of_week & 1 << day.weekday().to_sunday_zero_offset() != 0;
        if self.any_day_of_month || self.any_day_of_week {
            by_month && by_week
        } else {
            by_month || by_week
        }
    }

    /// The latest firing on `day` at or before `now`. Firings are in the same order as their
    /// civil times (gaps map to the gap's end, folds to the earlier instant), so an hour whose
    /// first minute is after `now` is skipped whole.
    fn last_in_day(&self, day: Date, now: Timestamp, tz: &TimeZone) -> Option<Zoned> {
        let first_minute = self.minutes.trailing_zeros() as i8;
        for hour in (0..24i8).rev().filter(|h| self.hours & 1 << h != 0) {
            let earliest = civil_instant(tz, day.at(hour, first_minute, 0, 0))?;
            if earliest.timestamp() > now {
                continue;
            }
            for minute in (0..60i8).rev().filter(|m| self.minutes & 1 << m != 0) {
                let fired = civil_instant(tz, day.at(hour, minute, 0, 0))?;
                if fired.timestamp() <= now {
                    return Some(fired);
                }
            }
        }
        None
    }
}

/// A civil time in `tz`: a time in a gap becomes the instant the gap ends, a time in a fold the
/// earlier instant. `None` only at the ends of jiff's supported range.
fn civil_instant(tz: &TimeZone, civil: DateTime) -> Option<Zoned> {
    let ambiguous = tz.to_ambiguous_zoned(civil);
    match ambiguous.offset() {
        AmbiguousOffset::Gap { .. } => {
            // `earlier` is before the transition that opened the gap, so the next transition
            // is the gap's end.
            let before = ambiguous.earlier().ok()?.timestamp();
            let end = tz.following(before).next()?.timestamp();
            Some(end.to_zoned(tz.clone()))
        }
        AmbiguousOffset::Unambiguous { .. } | AmbiguousOffset::Fold { .. } => {
            ambiguous.earlier().ok()
        }
    }
}

/// Quiet hours: local hours `[start, end)`, wrapping past midnight when `start > end` (22 → 7).
/// `start == end` means none. Hours above 23 are taken modulo 24.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuietHours {
    pub start: u8,
    pub end: u8,
}

impl QuietHours {
    /// Whether a local time falls in the quiet hours.
    pub fn contains(&self, local: Time) -> bool {
        let (start, end) = self.bounds();
        let hour = local.hour() as u8;
        match start.cmp(&end) {
            std::cmp::Ordering::Equal => false,
            std::cmp::Ordering::Less => (start..end).contains(&hour),
            std::cmp::Ordering::Greater => hour >= start || hour < end,
        }
    }

    /// The first instant at or after `at` that is outside the quiet hours (in `at`'s time
    /// zone): `at` itself, or the next `end:00`.
    pub fn defer(&self, at: &Zoned) -> Zoned {
        if !self.contains(at.time()) {
            return at.clone();
        }
        let (_, end) = self.bounds();
        let end = end as i8;
        // Inside quiet hours the end is later today, or (past the start of a wrapping range)
        // tomorrow.
        let day = if at.hour() < end {
            Some(at.date())
        } else {
            at.date().tomorrow().ok()
        };
        day.and_then(|day| civil_instant(at.time_zone(), day.at(end, 0, 0, 0)))
            .filter(|end| end >= at)
            .unwrap_or_else(|| at.clone())
    }

    fn bounds(&self) -> (u8, u8) {
        (self.start % 24, self.end % 24)
    }
}

/// A nudge that is due: which period it belongs to and when it fired / may be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub kind: Kind,
    /// The cron firing (learner's local time).
    pub fired_at: Zoned,
    /// When it may be sent: the firing, moved past quiet hours.
    pub send_at: Timestamp,
    /// `2026-12-01` (the firing's local date) for daily kinds, ISO week `2026-W49` for the
    /// weekly digest.
    pub period: String,
}

/// Is a nudge of `kind` due at `now`? Takes the last firing of `cron` (already adjusted for the
/// preferred hour by the caller via [`Cron::at_hour`] when [`Kind::follows_preferred_hour`]) at
/// or before `now` in `tz`; `None` when there is none, when `now - fired_at > kind.window()`,
/// or when the quiet-hour-deferred `send_at` is still in the future (or the deferral pushes it
/// past the window).
pub fn due(
    kind: Kind,
    cron: &Cron,
    tz: &TimeZone,
    quiet: Option<QuietHours>,
    now: Timestamp,
) -> Option<Slot> {
    let fired_at = cron.last_at_or_before(now, tz)?;
    let deadline = fired_at.timestamp().checked_add(kind.window()).ok()?;
    let send_at = match quiet {
        Some(quiet) => quiet.defer(&fired_at).timestamp(),
        None => fired_at.timestamp(),
    };
    if now > deadline || send_at > now || send_at > deadline {
        return None;
    }
    Some(Slot {
        kind,
        period: period(kind, fired_at.date()),
        fired_at,
        send_at,
    })
}

/// The period a firing on `day` belongs to: the date, or for the weekly digest its ISO week.
pub fn period(kind: Kind, day: Date) -> String {
    match kind {
        Kind::DailyReminder | Kind::StreakWarning => day.to_string(),
        Kind::WeeklyDigest => {
            let week = day.iso_week_date();
            format!("{:04}-W{:02}", week.year(), week.week())
        }
    }
}

/// The idempotency key of a nudge: `{user_id}:{kind}:{period}`.
pub fn key(user: Uuid, kind: Kind, period: &str) -> String {
    format!("{user}:{}:{period}", kind.as_str())
}

/// A deterministic UUID (version 8) for a key: the 128-bit FNV-1a hash of the key, with the
/// version and variant bits set. Stable across runs, builds and platforms. (uuid's `v5` feature
/// is not enabled in the workspace, and SHA-256 would be a new dependency.)
pub fn notification_id(key: &str) -> Uuid {
    const OFFSET_BASIS: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    let hash = key
        .bytes()
        .fold(OFFSET_BASIS, |h, b| (h ^ u128::from(b)).wrapping_mul(PRIME));
    uuid::Builder::from_custom_bytes(hash.to_be_bytes()).into_uuid()
}

/// The learner's numbers a nudge is built from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Numbers {
    pub name: String,
    pub streak_days: u32,
    /// Weekly digest: last week's rank and the week before's (`None`: unranked).
    pub rank: Option<u64>,
    pub previous_rank: Option<u64>,
    pub points: u64,
    pub ranked_learners: u64,
    /// A recommended topic's title in the message language, and its id for the deep link.
    pub topic: Option<(String, String)>,
}

/// A rendered nudge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub title: String,
    pub body: String,
    /// A path inside the web client, e.g. `#/topic/cs.networking.dns`, `#/rankings`.
    pub link: String,
}

/// The longest title and body [`render`] produces, in characters (push-notification length).
pub const TITLE_MAX: usize = 40;
/// See [`TITLE_MAX`].
pub const BODY_MAX: usize = 140;

/// How many characters of a learner's name or a topic's title go into a body.
const NAME_MAX: usize = 20;
const TOPIC_MAX: usize = 60;

/// Korean (`ko`, `ko-KR`) or English (anything else) texts from the learner's own numbers,
/// natural and short: titles at most [`TITLE_MAX`] characters, bodies at most [`BODY_MAX`] (long
/// names and titles are cut with "…"). Links: daily reminder and streak warning → the topic, or
/// `#/` without one; weekly digest → `#/rankings`.
pub fn render(kind: Kind, language: &str, numbers: &Numbers) -> Message {
    let korean = is_korean(language);
    let (title, body) = match (kind, korean) {
        (Kind::DailyReminder, false) => daily_en(numbers),
        (Kind::DailyReminder, true) => daily_ko(numbers),
        (Kind::StreakWarning, false) => streak_en(numbers),
        (Kind::StreakWarning, true) => streak_ko(numbers),
        (Kind::WeeklyDigest, false) => weekly_en(numbers),
        (Kind::WeeklyDigest, true) => weekly_ko(numbers),
    };
    let link = match (kind, &numbers.topic) {
        (Kind::WeeklyDigest, _) => "#/rankings".to_string(),
        (_, Some((_, id))) => format!("#/topic/{}", encode_component(id)),
        (_, None) => "#/".to_string(),
    };
    Message {
        title: clip(&title, TITLE_MAX),
        body: clip(&body, BODY_MAX),
        link,
    }
}

fn is_korean(language: &str) -> bool {
    let primary = language.split(['-', '_']).next().unwrap_or("");
    primary.eq_ignore_ascii_case("ko")
}

fn daily_en(n: &Numbers) -> (String, String) {
    let title = match topic_title(n) {
        Some(topic) => format!("Today's topic: {topic}"),
        None => "Time to teach something today".to_string(),
    };
    let what = match n.topic {
        Some(_) => "Explain it out loud in 3 minutes",
        None => "Pick a topic and explain it out loud in 3 minutes",
    };
    let why = match n.streak_days {
        0 => " and get feedback.".to_string(),
        days => format!(" to keep your {days}-day streak going."),
    };
    (title, address_en(n, &format!("{what}{why}")))
}

fn daily_ko(n: &Numbers) -> (String, String) {
    let title = match topic_title(n) {
        Some(topic) => format!("오늘의 주제: {topic}"),
        None => "오늘도 하나 가르쳐 볼까요?".to_string(),
    };
    let what = match n.topic {
        Some(_) => "3분 동안 소리 내어 설명하고",
        None => "주제 하나를 골라 3분 동안 소리 내어 설명하고",
    };
    let why = match n.streak_days {
        0 => " 피드백을 받아 보세요.".to_string(),
        days => format!(" {days}일 연속 기록을 이어 가세요."),
    };
    (title, address_ko(n, &format!("{what}{why}")))
}

fn streak_en(n: &Numbers) -> (String, String) {
    let what = match topic_title(n) {
        Some(topic) => topic,
        None => "one topic".to_string(),
    };
    match n.streak_days {
        0 => (
            "Start a streak tonight".to_string(),
            format!("Teach {what} before midnight to start one."),
        ),
        days => (
            format!("Your {days}-day streak ends tonight"),
            format!("Teach {what} before midnight to keep it."),
        ),
    }
}

fn streak_ko(n: &Numbers) -> (String, String) {
    let what = match topic_title(n) {
        Some(topic) => format!("{topic}{}", object_particle(&topic)),
        None => "주제 하나를".to_string(),
    };
    match n.streak_days {
        0 => (
            "오늘 밤 연속 기록을 시작해 보세요".to_string(),
            format!("자정 전에 {what} 설명하면 연속 기록이 시작돼요."),
        ),
        days => (
            format!("{days}일 연속 기록이 오늘 밤 끊겨요"),
            format!("자정 전에 {what} 설명하고 기록을 이어 가세요."),
        ),
    }
}

/// How a learner's rank moved from the week before to last week.
enum Move {
    Up(u64, u64),
    Down(u64, u64),
    Held(u64),
    New(u64),
    Unranked,
}

fn movement(n: &Numbers) -> Move {
    match (n.rank, n.previous_rank) {
        (None, _) => Move::Unranked,
        (Some(rank), None) => Move::New(rank),
        (Some(rank), Some(before)) if rank < before => Move::Up(rank, before - rank),
        (Some(rank), Some(before)) if rank > before => Move::Down(rank, rank - before),
        (Some(rank), Some(_)) => Move::Held(rank),
    }
}

fn weekly_en(n: &Numbers) -> (String, String) {
    let standing = |rank: u64| {
        format!(
            "Rank {rank} of {} with {}.",
            n.ranked_learners.max(rank),
            plural(n.points, "point", "points")
        )
    };
    match movement(n) {
        Move::Up(rank, by) => (
            format!("You moved up {} last week", plural(by, "place", "places")),
            standing(rank),
        ),
        Move::Down(rank, by) => (
            format!("You moved down {} last week", plural(by, "place", "places")),
            format!("{} Teach a topic to climb back.", standing(rank)),
        ),
        Move::Held(rank) => (format!("You held rank {rank} last week"), standing(rank)),
        Move::New(rank) => (
            "You made the rankings last week".to_string(),
            standing(rank),
        ),
        Move::Unranked => (
            "You weren't ranked last week".to_string(),
            match n.ranked_learners {
                0 => "Teach one topic this week to get on the board.".to_string(),
                total => format!(
                    "Teach one topic this week to join the {} on the board.",
                    plural(total, "ranked learner", "ranked learners")
                ),
            },
        ),
    }
}

fn weekly_ko(n: &Numbers) -> (String, String) {
    let standing = |rank: u64| {
        format!(
            "{}명 중 {rank}위, {}점이에요.",
            n.ranked_learners.max(rank),
            n.points
        )
    };
    match movement(n) {
        Move::Up(rank, by) => (format!("지난주 순위가 {by}계단 올랐어요"), standing(rank)),
        Move::Down(rank, by) => (
            format!("지난주 순위가 {by}계단 내려갔어요"),
            format!(
                "{} 주제 하나를 설명하고 다시 올라가 보세요.",
                standing(rank)
            ),
        ),
        Move::Held(rank) => (format!("지난주에도 {rank}위를 지켰어요"), standing(rank)),
        Move::New(rank) => (
            "지난주 처음으로 순위에 올랐어요".to_string(),
            standing(rank),
        ),
        Move::Unranked => (
            "지난주에는 순위에 없었어요".to_string(),
            match n.ranked_learners {
                0 => "이번 주 주제 하나를 설명하고 순위에 올라 보세요.".to_string(),
                total => {
                    format!("이번 주 주제 하나를 설명하고 {total}명과 함께 순위에 올라 보세요.")
                }
            },
        ),
    }
}

/// The recommended topic's title, cut to fit a body.
fn topic_title(n: &Numbers) -> Option<String> {
    n.topic
        .as_ref()
        .map(|(title, _)| clip(title.trim(), TOPIC_MAX))
}

/// "Ana, explain it…" with a name, the sentence as is without one.
fn address_en(n: &Numbers, sentence: &str) -> String {
    let name = n.name.trim();
    if name.is_empty() {
        return sentence.to_string();
    }
    let mut chars = sentence.chars();
    let first = chars
        .next()
        .map(|c| c.to_lowercase().to_string())
        .unwrap_or_default();
    format!("{}, {first}{}", clip(name, NAME_MAX), chars.as_str())
}

/// "민지님, 3분 동안…" with a name, the sentence as is without one.
fn address_ko(n: &Numbers, sentence: &str) -> String {
    let name = n.name.trim();
    if name.is_empty() {
        return sentence.to_string();
    }
    format!("{}님, {sentence}", clip(name, NAME_MAX))
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// 을 after a Hangul syllable with a final consonant, 를 after one without, 을(를) otherwise
/// (a title ending in Latin letters or digits).
fn object_particle(word: &str) -> &'static str {
    let Some(last) = word.chars().next_back() else {
        return "을(를)";
    };
    match u32::from(last) {
        c @ 0xAC00..=0xD7A3 if (c - 0xAC00) % 28 == 0 => "를",
        0xAC00..=0xD7A3 => "을",
        _ => "을(를)",
    }
}

/// `text` cut to at most `max` characters, ending in "…" when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{}…", kept.trim_end())
}

/// A topic id as the web client writes it in a link (`encodeURIComponent`).
fn encode_component(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
