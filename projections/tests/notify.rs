//! Study nudges: cron parsing and evaluation in the learner's time zone, quiet hours, when a
//! nudge is due and for which period, its idempotency key, and its texts.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};
use teachback_projections::notify::{
    BODY_MAX, Cron, CronError, CronField, CronProblem, Kind, Message, Numbers, QuietHours, Slot,
    TITLE_MAX, due, key, notification_id, period, render,
};
use uuid::Uuid;

fn cron(text: &str) -> Cron {
    text.parse()
        .unwrap_or_else(|e| panic!("`{text}` should parse: {e}"))
}

fn at(instant: &str) -> Timestamp {
    instant.parse().expect("an RFC 3339 instant")
}

fn tz(name: &str) -> TimeZone {
    TimeZone::get(name).expect("a time zone in the system database")
}

fn utc() -> TimeZone {
    TimeZone::UTC
}

/// A zoned time as "2026-03-08T03:00:00-04:00" (offset, no zone name).
fn show(zoned: &Zoned) -> String {
    zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// The last `n` firings at or before `now`, latest first, as local "YYYY-MM-DD HH:MM".
fn firings(cron: &Cron, now: &str, tz: &TimeZone, n: usize) -> Vec<String> {
    let mut now = at(now);
    let mut out = Vec::new();
    while out.len() < n {
        let Some(fired) = cron.last_at_or_before(now, tz) else {
            break;
        };
        out.push(fired.strftime("%Y-%m-%d %H:%M").to_string());
        now = fired.timestamp() - SignedDuration::from_secs(1);
    }
    out
}

/// The days of the last `n` firings at or before `now` in UTC.
fn days(cron: &Cron, now: &str, n: usize) -> Vec<String> {
    firings(cron, now, &utc(), n)
        .into_iter()
        .map(|f| f[..10].to_string())
        .collect()
}

fn parse_error(text: &str) -> CronError {
    match text.parse::<Cron>() {
        Ok(cron) => panic!("`{text}` should not parse, got {cron:?}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// Kinds
// ---------------------------------------------------------------------------------------------

#[test]
fn kinds_have_wire_names_windows_and_default_expressions() {
    // Given every kind
    for kind in Kind::ALL {
        // When its wire name is parsed back and serialized
        // Then both agree, and its default expression parses
        assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        assert_eq!(
            serde_json::to_value(kind).unwrap(),
            serde_json::json!(kind.as_str())
        );
        cron(kind.default_cron());
    }
    assert_eq!(Kind::parse("monthly"), None);
    assert_eq!(Kind::DailyReminder.as_str(), "daily_reminder");
    assert_eq!(Kind::StreakWarning.as_str(), "streak_warning");
    assert_eq!(Kind::WeeklyDigest.as_str(), "weekly_digest");
    assert_eq!(Kind::DailyReminder.window(), SignedDuration::from_hours(12));
    assert_eq!(Kind::StreakWarning.window(), SignedDuration::from_hours(4));
    assert_eq!(Kind::WeeklyDigest.window(), SignedDuration::from_hours(48));
    assert_eq!(Kind::DailyReminder.default_cron(), "0 19 * * *");
    assert_eq!(Kind::StreakWarning.default_cron(), "0 21 * * *");
    assert_eq!(Kind::WeeklyDigest.default_cron(), "0 8 * * 1");
    assert!(Kind::DailyReminder.follows_preferred_hour());
    assert!(!Kind::StreakWarning.follows_preferred_hour());
    assert!(!Kind::WeeklyDigest.follows_preferred_hour());
}

// ---------------------------------------------------------------------------------------------
// Cron syntax
// ---------------------------------------------------------------------------------------------

#[test]
fn a_star_expression_fires_every_minute() {
    // Given "* * * * *"
    let every = cron("* * * * *");
    // When asked for the last firings at 12:34:56
    let last = firings(&every, "2026-12-01T12:34:56Z", &utc(), 3);
    // Then they are the whole minutes before it
    assert_eq!(
        last,
        ["2026-12-01 12:34", "2026-12-01 12:33", "2026-12-01 12:32"]
    );
}

#[test]
fn numbers_ranges_lists_and_range_steps_combine() {
    // Given a minute field with a number, a range and a stepped range
    let cron = cron("5,10-12,40-50/5 9 * * *");
    // When walking back from 10:00
    let last = firings(&cron, "2026-12-01T10:00:00Z", &utc(), 8);
    // Then every listed minute of 09:xx fires, then the day before
    assert_eq!(
        last,
        [
            "2026-12-01 09:50",
            "2026-12-01 09:45",
            "2026-12-01 09:40",
            "2026-12-01 09:12",
            "2026-12-01 09:11",
            "2026-12-01 09:10",
            "2026-12-01 09:05",
            "2026-11-30 09:50",
        ]
    );
}

#[test]
fn star_steps_start_at_the_fields_smallest_value() {
    // Given every 20 minutes of every 6th hour
    let cron = cron("*/20 */6 * * *");
    // When walking back from 13:00
    let last = firings(&cron, "2026-12-01T13:00:00Z", &utc(), 5);
    // Then the hours are 12, 6 and 0 and the minutes 40, 20 and 0
    assert_eq!(
        last,
        [
            "2026-12-01 12:40",
            "2026-12-01 12:20",
            "2026-12-01 12:00",
            "2026-12-01 06:40",
            "2026-12-01 06:20",
        ]
    );
}

#[test]
fn month_and_day_names_are_case_insensitive_and_equal_their_numbers() {
    // Given the same schedule written with names and with numbers
    let named = cron("0 9 * jan-Mar mon,FRI");
    let numbered = cron("0 9 * 1-3 1,5");
    // When walking back from the end of April
    // Then both fire on the same days: Mondays and Fridays of January to March
    let expected = days(&numbered, "2026-04-30T00:00:00Z", 4);
    assert_eq!(days(&named, "2026-04-30T00:00:00Z", 4), expected);
    assert_eq!(
        expected,
        ["2026-03-30", "2026-03-27", "2026-03-23", "2026-03-20"]
    );
}

#[test]
fn day_of_week_seven_and_zero_are_both_sunday() {
    // Given Sunday written as 0, 7 and SUN, and a range ending in 7
    let now = "2026-12-03T00:00:00Z";
    let sunday = ["2026-11-29", "2026-11-22"];
    // When walking back from Thursday 3 December 2026
    // Then all three fire on Sundays, and 5-7 on Friday to Sunday
    for text in ["0 9 * * 0", "0 9 * * 7", "0 9 * * sun"] {
        assert_eq!(days(&cron(text), now, 2), sunday, "{text}");
    }
    assert_eq!(
        days(&cron("0 9 * * 5-7"), now, 4),
        ["2026-11-29", "2026-11-28", "2026-11-27", "2026-11-22"]
    );
}

#[test]
fn an_expression_displays_as_its_fields_joined_by_single_spaces() {
    // Given an expression with irregular spacing
    let cron = cron("  0   19 *\t*  MON-fri ");
    // When displayed
    // Then it is the text it was parsed from, normalised
    assert_eq!(cron.to_string(), "0 19 * * MON-fri");
    assert_eq!(cron.to_string().parse::<Cron>().unwrap(), cron);
}

#[test]
fn an_empty_expression_is_an_error() {
    // Given an empty and a blank expression
    for text in ["", "   \t "] {
        // When parsed
        let error = parse_error(text);
        // Then it is empty, and says five fields are expected
        assert_eq!(error, CronError::Empty);
        assert!(error.to_string().contains("empty"), "{error}");
        assert!(error.to_string().contains("five fields"), "{error}");
    }
}

#[test]
fn an_expression_without_five_fields_is_an_error() {
    // Given expressions with four and six fields
    for (text, found) in [("* * * *", 4), ("0 0 * * * 2026", 6), ("5", 1)] {
        // When parsed
        let error = parse_error(text);
        // Then the error counts the fields and names the expected ones
        assert_eq!(error, CronError::FieldCount { found });
        let message = error.to_string();
        assert!(message.contains(&format!("has {found} field")), "{message}");
        assert!(
            message.contains("minute hour day-of-month month day-of-week"),
            "{message}"
        );
    }
}

#[test]
fn every_malformed_field_names_the_field_and_the_bad_text() {
    use CronField::*;
    use CronProblem::*;
    // Given malformed fields: (expression, field, offending text, problem, words in the message)
    let cases = [
        (
            "60 * * * *",
            Minute,
            "60",
            OutOfRange { min: 0, max: 59 },
            "out of range 0-59",
        ),
        (
            "* 24 * * *",
            Hour,
            "24",
            OutOfRange { min: 0, max: 23 },
            "out of range 0-23",
        ),
        (
            "* * 0 * *",
            DayOfMonth,
            "0",
            OutOfRange { min: 1, max: 31 },
            "out of range 1-31",
        ),
        (
            "* * 32 * *",
            DayOfMonth,
            "32",
            OutOfRange { min: 1, max: 31 },
            "out of range",
        ),
        (
            "* * * 13 *",
            Month,
            "13",
            OutOfRange { min: 1, max: 12 },
            "out of range 1-12",
        ),
        (
            "* * * * 8",
            DayOfWeek,
            "8",
            OutOfRange { min: 0, max: 7 },
            "out of range 0-7",
        ),
        (
            "99999999999999999999999 * * * *",
            Minute,
            "99999999999999999999999",
            OutOfRange { min: 0, max: 59 },
            "out of range",
        ),
        (
            "* 1-30 * * *",
            Hour,
            "30",
            OutOfRange { min: 0, max: 23 },
            "out of range",
        ),
        ("*/0 * * * *", Minute, "*/0", ZeroStep, "step of zero"),
        ("* 1-5/0 * * *", Hour, "1-5/0", ZeroStep, "step of zero"),
        ("*/x * * * *", Minute, "*/x", BadStep, "not a number"),
        ("*/ * * * *", Minute, "*/", BadStep, "not a number"),
        (
            "5/10 * * * *",
            Minute,
            "5/10",
            StepWithoutRange,
            "`*/n` or `a-b/n`",
        ),
        ("* * * * FUN", DayOfWeek, "FUN", NotAValue, "day name"),
        ("* * * JANUARY *", Month, "JANUARY", NotAValue, "month name"),
        ("MON * * * *", Minute, "MON", NotAValue, "not a number"),
        ("* * ? * *", DayOfMonth, "?", NotAValue, "not a number"),
        ("1,,2 * * * *", Minute, "1,,2", EmptyItem, "empty item"),
        ("* 1, * * *", Hour, "1,", EmptyItem, "empty item"),
        ("1- * * * *", Minute, "1-", EmptyItem, "empty item"),
        ("-5 * * * *", Minute, "-5", EmptyItem, "empty item"),
        (
            "* 5-3 * * *",
            Hour,
            "5-3",
            ReversedRange,
            "ends before it starts",
        ),
        (
            "* * * * FRI-MON",
            DayOfWeek,
            "FRI-MON",
            ReversedRange,
            "ends before",
        ),
    ];
    for (text, field, bad, problem, words) in cases {
        // When parsed
        let error = parse_error(text);
        // Then the error says which field, which text and what is wrong
        assert_eq!(
            error,
            CronError::Field {
                field,
                text: bad.to_string(),
                problem
            },
            "{text}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&format!("cron {} field", field.name())),
            "{text}: {message}"
        );
        assert!(message.contains(&format!("`{bad}`")), "{text}: {message}");
        assert!(message.contains(words), "{text}: {message}");
    }
}

#[test]
fn a_cron_error_is_a_standard_error() {
    // Given a parse error
    let error: Box<dyn std::error::Error> = Box::new(parse_error("* * * *"));
    // When used as a trait object
    // Then it displays its message
    assert!(
        error
            .to_string()
            .starts_with("cron expression has 4 fields")
    );
}

// ---------------------------------------------------------------------------------------------
// Days: the day-of-month / day-of-week rule
// ---------------------------------------------------------------------------------------------

#[test]
fn a_day_matches_when_either_restricted_day_field_matches() {
    // Given "the 1st of the month or any Monday"
    let cron = cron("0 9 1 * 1");
    // When walking back from Thursday 3 December 2026
    // Then both the 1sts (Tue 1 Dec, Sun 1 Nov) and every Monday fire
    assert_eq!(
        days(&cron, "2026-12-03T00:00:00Z", 7),
        [
            "2026-12-01",
            "2026-11-30",
            "2026-11-23",
            "2026-11-16",
            "2026-11-09",
            "2026-11-02",
            "2026-11-01",
        ]
    );
}

#[test]
fn a_day_field_starting_with_a_star_makes_both_fields_required() {
    // Given odd days of the month (`*/2`) and Mondays: Vixie cron treats `*/2` as unrestricted
    let cron = cron("0 9 */2 * 1");
    // When walking back
    // Then only Mondays on odd days fire
    assert_eq!(
        days(&cron, "2026-12-03T00:00:00Z", 4),
        ["2026-11-23", "2026-11-09", "2026-10-19", "2026-10-05"]
    );
}

#[test]
fn an_unrestricted_day_of_week_leaves_the_day_of_month_alone() {
    // Given the 1st of every month
    let cron = cron("0 9 1 * *");
    // When walking back
    // Then only the 1sts fire
    assert_eq!(
        days(&cron, "2026-12-03T00:00:00Z", 3),
        ["2026-12-01", "2026-11-01", "2026-10-01"]
    );
}

// ---------------------------------------------------------------------------------------------
// at_hour
// ---------------------------------------------------------------------------------------------

#[test]
fn at_hour_moves_the_firing_to_the_preferred_hour_and_keeps_the_rest() {
    // Given a weekday reminder at 19:15
    let cron = cron("15 19,20 * * 1-5");
    // When moved to 7 o'clock
    let early = cron.at_hour(7);
    // Then it fires at 07:15 on weekdays only, and says so
    assert_eq!(early.to_string(), "15 7 * * 1-5");
    assert_eq!(
        firings(&early, "2026-12-07T12:00:00Z", &utc(), 3),
        ["2026-12-07 07:15", "2026-12-04 07:15", "2026-12-03 07:15"]
    );
    assert_eq!(early, "15 7 * * 1-5".parse().unwrap());
}

#[test]
fn at_hour_takes_an_hour_above_23_as_23() {
    // Given a daily reminder
    // When moved to a nonsensical hour
    let late = cron("0 19 * * *").at_hour(30);
    // Then it fires at 23:00
    assert_eq!(late.to_string(), "0 23 * * *");
}

// ---------------------------------------------------------------------------------------------
// last_at_or_before
// ---------------------------------------------------------------------------------------------

#[test]
fn a_firing_at_exactly_now_counts() {
    // Given a 19:00 reminder
    let cron = cron("0 19 * * *");
    // When asked at 19:00:00 exactly
    let fired = cron.last_at_or_before(at("2026-12-01T19:00:00Z"), &utc());
    // Then it is this firing
    assert_eq!(show(&fired.unwrap()), "2026-12-01T19:00:00+00:00");
}

#[test]
fn one_second_before_a_firing_the_previous_one_is_the_last() {
    // Given a 19:00 reminder
    let cron = cron("0 19 * * *");
    // When asked at 18:59:59
    let fired = cron.last_at_or_before(at("2026-12-01T18:59:59Z"), &utc());
    // Then it is yesterday's
    assert_eq!(show(&fired.unwrap()), "2026-11-30T19:00:00+00:00");
}

#[test]
fn the_last_firing_may_be_in_the_previous_month_or_year() {
    // Given a 19:00 reminder
    let cron = cron("0 19 * * *");
    // When asked on the morning of the 1st of a month, and of a year
    let month = cron.last_at_or_before(at("2026-12-01T10:00:00Z"), &utc());
    let year = cron.last_at_or_before(at("2027-01-01T05:00:00Z"), &utc());
    // Then the last firings are on the last day of the month and of the year before
    assert_eq!(show(&month.unwrap()), "2026-11-30T19:00:00+00:00");
    assert_eq!(show(&year.unwrap()), "2026-12-31T19:00:00+00:00");
}

#[test]
fn a_29_february_firing_is_found_in_a_leap_year_within_400_days() {
    // Given a firing on 29 February only
    let cron = cron("0 12 29 2 *");
    // When asked in March of a leap year
    let leap = cron.last_at_or_before(at("2028-03-01T00:00:00Z"), &utc());
    // Then it is that 29 February
    assert_eq!(show(&leap.unwrap()), "2028-02-29T12:00:00+00:00");
    // When asked more than 400 days after the last 29 February
    // Then there is none
    assert_eq!(
        cron.last_at_or_before(at("2026-06-01T00:00:00Z"), &utc()),
        None
    );
}

#[test]
fn an_expression_for_a_day_that_never_comes_has_no_firing() {
    // Given 30 February
    let cron = cron("0 0 30 2 *");
    // When asked
    // Then there is no firing (after a bounded search)
    assert_eq!(
        cron.last_at_or_before(at("2026-12-01T00:00:00Z"), &utc()),
        None
    );
}

#[test]
fn the_same_instant_is_a_different_local_firing_in_each_time_zone() {
    // Given a 19:00 reminder and 11:00 UTC on 1 December 2026 (20:00 in Seoul, 06:00 in New York)
    let cron = cron("0 19 * * *");
    let now = at("2026-12-01T11:00:00Z");
    // When evaluated in each learner's time zone
    let seoul = cron.last_at_or_before(now, &tz("Asia/Seoul")).unwrap();
    let utc = cron.last_at_or_before(now, &utc()).unwrap();
    let new_york = cron
        .last_at_or_before(now, &tz("America/New_York"))
        .unwrap();
    // Then each fired at 19:00 local: today in Seoul, yesterday in UTC and New York
    assert_eq!(show(&seoul), "2026-12-01T19:00:00+09:00");
    assert_eq!(show(&utc), "2026-11-30T19:00:00+00:00");
    assert_eq!(show(&new_york), "2026-11-30T19:00:00-05:00");
    assert_eq!(seoul.timestamp(), at("2026-12-01T10:00:00Z"));
    assert_eq!(new_york.timestamp(), at("2026-12-01T00:00:00Z"));
}

#[test]
fn a_firing_in_the_spring_forward_gap_fires_when_the_gap_ends() {
    // Given 02:30 in New York, where 8 March 2026 skips from 02:00 EST to 03:00 EDT
    let cron = cron("30 2 * * *");
    let new_york = tz("America/New_York");
    // When asked just before and after the clocks go forward (07:00 UTC)
    let before = cron.last_at_or_before(at("2026-03-08T06:59:59Z"), &new_york);
    let after = cron.last_at_or_before(at("2026-03-08T12:00:00Z"), &new_york);
    let next_day = cron.last_at_or_before(at("2026-03-09T12:00:00Z"), &new_york);
    // Then the day before fired at 02:30 EST, the day itself at 03:00 EDT (the end of the gap),
    // and the day after at 02:30 EDT
    assert_eq!(show(&before.unwrap()), "2026-03-07T02:30:00-05:00");
    let gap = after.unwrap();
    assert_eq!(show(&gap), "2026-03-08T03:00:00-04:00");
    assert_eq!(gap.timestamp(), at("2026-03-08T07:00:00Z"));
    assert_eq!(show(&next_day.unwrap()), "2026-03-09T02:30:00-04:00");
    // And the nudge belongs to that day
    let slot = due(
        Kind::DailyReminder,
        &cron,
        &new_york,
        None,
        at("2026-03-08T07:00:00Z"),
    );
    assert_eq!(slot.unwrap().period, "2026-03-08");
}

#[test]
fn every_minute_in_the_gap_fires_at_its_end_in_order() {
    // Given every quarter hour from 01:00 to 03:59 in New York on the spring-forward day
    let cron = cron("*/15 1-3 8 3 *");
    // When walking back from 04:00 EDT
    let last = firings(&cron, "2026-03-08T08:00:00Z", &tz("America/New_York"), 8);
    // Then 02:xx does not exist and those firings collapse onto 03:00, between 01:45 and 03:15
    assert_eq!(
        last,
        [
            "2026-03-08 03:45",
            "2026-03-08 03:30",
            "2026-03-08 03:15",
            "2026-03-08 03:00",
            "2026-03-08 01:45",
            "2026-03-08 01:30",
            "2026-03-08 01:15",
            "2026-03-08 01:00",
        ]
    );
}

#[test]
fn a_firing_in_the_fall_back_fold_fires_once_at_the_earlier_instant() {
    // Given 01:30 in New York, which occurs twice on 1 November 2026 (EDT, then EST)
    let one_thirty = cron("30 1 * * *");
    let new_york = tz("America/New_York");
    // When asked during the second 01:xx hour, and after it
    let second_pass = one_thirty.last_at_or_before(at("2026-11-01T06:45:00Z"), &new_york);
    let later = one_thirty.last_at_or_before(at("2026-11-01T12:00:00Z"), &new_york);
    // Then the firing is the first 01:30 (EDT) both times: it never fires again at 01:30 EST
    let first = at("2026-11-01T05:30:00Z");
    assert_eq!(
        show(second_pass.as_ref().unwrap()),
        "2026-11-01T01:30:00-04:00"
    );
    assert_eq!(second_pass.unwrap().timestamp(), first);
    assert_eq!(later.unwrap().timestamp(), first);
    // And 02:30, after the fold, is unambiguous
    let after_fold = cron("30 2 * * *").last_at_or_before(at("2026-11-01T12:00:00Z"), &new_york);
    assert_eq!(show(&after_fold.unwrap()), "2026-11-01T02:30:00-05:00");
}

// ---------------------------------------------------------------------------------------------
// Quiet hours
// ---------------------------------------------------------------------------------------------

#[test]
fn quiet_hours_wrap_past_midnight() {
    use jiff::civil::time;
    // Given quiet hours from 22 to 7
    let quiet = QuietHours { start: 22, end: 7 };
    // When asked about times around both edges
    // Then 22:00 to 06:59 is quiet, 07:00 to 21:59 is not
    for quiet_time in [
        time(22, 0, 0, 0),
        time(23, 59, 0, 0),
        time(0, 0, 0, 0),
        time(6, 59, 59, 0),
    ] {
        assert!(quiet.contains(quiet_time), "{quiet_time}");
    }
    for loud in [time(7, 0, 0, 0), time(12, 0, 0, 0), time(21, 59, 59, 0)] {
        assert!(!quiet.contains(loud), "{loud}");
    }
}

#[test]
fn quiet_hours_within_a_day_and_empty_quiet_hours() {
    use jiff::civil::time;
    // Given quiet hours 13 to 15, and start == end
    let lunch = QuietHours { start: 13, end: 15 };
    let none = QuietHours { start: 9, end: 9 };
    // When asked
    // Then only 13:00-14:59 is quiet, and with start == end nothing is
    assert!(!lunch.contains(time(12, 59, 0, 0)));
    assert!(lunch.contains(time(13, 0, 0, 0)));
    assert!(lunch.contains(time(14, 59, 0, 0)));
    assert!(!lunch.contains(time(15, 0, 0, 0)));
    for hour in 0..24 {
        assert!(!none.contains(time(hour, 0, 0, 0)));
    }
}

#[test]
fn quiet_hours_serialize_in_camel_case() {
    // Given quiet hours
    let quiet = QuietHours { start: 22, end: 7 };
    // When serialized and read back
    let json = serde_json::to_value(quiet).unwrap();
    // Then the fields are start and end
    assert_eq!(json, serde_json::json!({ "start": 22, "end": 7 }));
    assert_eq!(serde_json::from_value::<QuietHours>(json).unwrap(), quiet);
}

#[test]
fn deferral_moves_a_quiet_time_to_the_end_of_the_quiet_hours() {
    // Given quiet hours 22 to 7 in Seoul
    let quiet = QuietHours { start: 22, end: 7 };
    let zoned = |s: &str| s.parse::<Zoned>().unwrap();
    // When deferring times before and after midnight, and a time outside
    let evening = quiet.defer(&zoned("2026-12-01T23:30:00+09:00[Asia/Seoul]"));
    let night = quiet.defer(&zoned("2026-12-02T03:00:00+09:00[Asia/Seoul]"));
    let day = quiet.defer(&zoned("2026-12-02T12:34:56+09:00[Asia/Seoul]"));
    // Then quiet times move to 07:00 the next morning; the other stays
    assert_eq!(show(&evening), "2026-12-02T07:00:00+09:00");
    assert_eq!(show(&night), "2026-12-02T07:00:00+09:00");
    assert_eq!(show(&day), "2026-12-02T12:34:56+09:00");
}

#[test]
fn a_streak_warning_in_quiet_hours_is_dropped_when_the_morning_is_past_its_window() {
    // Given a 21:00 streak warning (window 4 h) and quiet hours 20 to 8
    let cron = cron("0 21 * * *");
    let quiet = Some(QuietHours { start: 20, end: 8 });
    // When the scheduler asks at 21:00 and at 08:00 the next morning
    let evening = due(
        Kind::StreakWarning,
        &cron,
        &utc(),
        quiet,
        at("2026-12-01T21:00:00Z"),
    );
    let morning = due(
        Kind::StreakWarning,
        &cron,
        &utc(),
        quiet,
        at("2026-12-02T08:00:00Z"),
    );
    // Then it is never due: held back at night, too late in the morning
    assert_eq!(evening, None);
    assert_eq!(morning, None);
}

#[test]
fn a_daily_reminder_in_quiet_hours_is_sent_when_they_end_within_its_window() {
    // Given a 21:00 daily reminder (window 12 h) and quiet hours 20 to 8 in Seoul
    let cron = cron("0 21 * * *");
    let quiet = Some(QuietHours { start: 20, end: 8 });
    let seoul = tz("Asia/Seoul");
    let ask = |now: &str| due(Kind::DailyReminder, &cron, &seoul, quiet, at(now));
    // When the scheduler asks at the firing, at 07:59:59 and at 08:00 the next morning
    // Then it is held back until 08:00, then due for the day it fired
    assert_eq!(ask("2026-12-01T21:00:00+09:00"), None);
    assert_eq!(ask("2026-12-02T07:59:59+09:00"), None);
    let slot = ask("2026-12-02T08:00:00+09:00").expect("due at the end of the quiet hours");
    assert_eq!(slot.kind, Kind::DailyReminder);
    assert_eq!(show(&slot.fired_at), "2026-12-01T21:00:00+09:00");
    assert_eq!(slot.send_at, at("2026-12-02T08:00:00+09:00"));
    assert_eq!(slot.period, "2026-12-01");
    // And it stays due until the window closes at 09:00
    assert!(ask("2026-12-02T09:00:00+09:00").is_some());
    assert_eq!(ask("2026-12-02T09:00:01+09:00"), None);
}

// ---------------------------------------------------------------------------------------------
// due: windows and periods
// ---------------------------------------------------------------------------------------------

#[test]
fn a_nudge_is_due_from_its_firing_until_its_window_closes() {
    // Given every kind on its default expression, in UTC, without quiet hours
    // (Monday 30 November 2026 for the weekly digest)
    for kind in Kind::ALL {
        let cron = cron(kind.default_cron());
        let fired = cron
            .last_at_or_before(at("2026-11-30T23:59:59Z"), &utc())
            .unwrap()
            .timestamp();
        let ask = |now: Timestamp| due(kind, &cron, &utc(), None, now);
        // When asked at the firing, at the end of the window and one second later
        let at_firing = ask(fired).expect("due when it fires");
        let at_end = ask(fired + kind.window());
        let too_late = ask(fired + kind.window() + SignedDuration::from_secs(1));
        // Then it is due (sent at the firing) until the window ends, then no longer
        assert_eq!(at_firing.send_at, fired, "{kind:?}");
        assert_eq!(at_firing.fired_at.timestamp(), fired, "{kind:?}");
        assert_eq!(at_end, Some(at_firing), "{kind:?}");
        assert_eq!(too_late, None, "{kind:?}");
    }
}

#[test]
fn a_down_server_sends_this_mornings_reminder_but_not_last_weeks() {
    // Given a 07:00 daily reminder and a Monday 08:00 digest
    let daily = cron("0 7 * * *");
    let weekly = cron(Kind::WeeklyDigest.default_cron());
    // When a server that was down since last week asks at 10:00 on Thursday 3 December 2026
    let now = at("2026-12-03T10:00:00Z");
    // Then this morning's reminder is due, and Monday's digest is over (more than 48 hours)
    let slot = due(Kind::DailyReminder, &daily, &utc(), None, now).unwrap();
    assert_eq!(slot.period, "2026-12-03");
    assert_eq!(due(Kind::WeeklyDigest, &weekly, &utc(), None, now), None);
}

#[test]
fn the_weekly_digest_belongs_to_the_iso_week_of_its_firing() {
    // Given the Monday 08:00 digest
    let weekly = cron(Kind::WeeklyDigest.default_cron());
    let ask = |now: &str| due(Kind::WeeklyDigest, &weekly, &utc(), None, at(now)).unwrap();
    // When it fires on Monday 28 December 2026 and on Monday 4 January 2027
    // Then the periods are 2026-W53 (2026 has 53 ISO weeks) and 2027-W01
    assert_eq!(ask("2026-12-28T09:00:00Z").period, "2026-W53");
    assert_eq!(ask("2027-01-04T09:00:00Z").period, "2027-W01");
    assert_eq!(ask("2026-12-01T09:00:00Z").period, "2026-W49");
}

#[test]
fn periods_are_local_dates_and_iso_weeks() {
    use jiff::civil::date;
    // Given days around year ends
    // When turned into periods
    // Then daily kinds use the date and the digest the ISO week year and number
    assert_eq!(period(Kind::DailyReminder, date(2026, 12, 1)), "2026-12-01");
    assert_eq!(period(Kind::StreakWarning, date(2027, 1, 1)), "2027-01-01");
    assert_eq!(period(Kind::WeeklyDigest, date(2026, 12, 28)), "2026-W53");
    assert_eq!(period(Kind::WeeklyDigest, date(2027, 1, 1)), "2026-W53");
    assert_eq!(period(Kind::WeeklyDigest, date(2024, 12, 30)), "2025-W01");
    assert_eq!(period(Kind::WeeklyDigest, date(2021, 1, 3)), "2020-W53");
    assert_eq!(period(Kind::WeeklyDigest, date(2026, 3, 2)), "2026-W10");
}

#[test]
fn the_period_is_the_learners_local_date_not_utcs() {
    // Given a 07:00 reminder for a learner in Seoul
    let cron = cron("0 7 * * *");
    // When it fires at 07:00 KST on 2 December (22:00 UTC on 1 December)
    let slot = due(
        Kind::DailyReminder,
        &cron,
        &tz("Asia/Seoul"),
        None,
        at("2026-12-01T22:00:00Z"),
    )
    .unwrap();
    // Then the period is the Seoul date
    assert_eq!(slot.period, "2026-12-02");
}

#[test]
fn nothing_is_due_without_a_firing() {
    // Given an expression that never fires
    let never = cron("0 0 30 2 *");
    // When asked
    // Then nothing is due
    assert_eq!(
        due(
            Kind::DailyReminder,
            &never,
            &utc(),
            None,
            at("2026-12-01T00:00:00Z")
        ),
        None::<Slot>
    );
}

// ---------------------------------------------------------------------------------------------
// Keys and ids
// ---------------------------------------------------------------------------------------------

#[test]
fn a_key_names_the_learner_the_kind_and_the_period() {
    // Given a learner
    let user = Uuid::from_u128(1);
    // When keying a nudge
    // Then the key is learner:kind:period
    assert_eq!(
        key(user, Kind::DailyReminder, "2026-12-01"),
        "00000000-0000-0000-0000-000000000001:daily_reminder:2026-12-01"
    );
    assert_eq!(
        key(user, Kind::WeeklyDigest, "2026-W49"),
        "00000000-0000-0000-0000-000000000001:weekly_digest:2026-W49"
    );
}

#[test]
fn a_notification_id_is_a_stable_version_8_uuid_of_its_key() {
    // Given a key
    let key = key(Uuid::from_u128(1), Kind::DailyReminder, "2026-12-01");
    // When its id is computed (twice)
    let id = notification_id(&key);
    // Then it is the same every time, on every platform (the value was computed once and
    // checked against an independent FNV-1a implementation), and a version 8 RFC 4122 UUID
    assert_eq!(id, notification_id(&key));
    assert_eq!(id.to_string(), "f0d4a2f4-e726-89e6-8fcd-ad416bc63968");
    assert_eq!(id.get_version_num(), 8);
    assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
}

#[test]
fn different_keys_have_different_ids() {
    // Given keys that differ in learner, kind or period
    let user = Uuid::from_u128(1);
    let keys = [
        key(user, Kind::DailyReminder, "2026-12-01"),
        key(user, Kind::DailyReminder, "2026-12-02"),
        key(user, Kind::StreakWarning, "2026-12-01"),
        key(Uuid::from_u128(2), Kind::DailyReminder, "2026-12-01"),
    ];
    // When their ids are computed
    let ids: std::collections::HashSet<Uuid> = keys.iter().map(|k| notification_id(k)).collect();
    // Then they are all different
    assert_eq!(ids.len(), keys.len());
}

// ---------------------------------------------------------------------------------------------
// Texts
// ---------------------------------------------------------------------------------------------

fn numbers() -> Numbers {
    Numbers {
        name: String::new(),
        streak_days: 5,
        rank: Some(8),
        previous_rank: Some(20),
        points: 245,
        ranked_learners: 120,
        topic: Some(("How DNS works".into(), "cs.networking.dns".into())),
    }
}

/// Renders, checks the length limits, and returns the message.
fn rendered(kind: Kind, language: &str, numbers: &Numbers) -> Message {
    let message = render(kind, language, numbers);
    assert!(
        message.title.chars().count() <= TITLE_MAX,
        "title too long: {message:?}"
    );
    assert!(
        message.body.chars().count() <= BODY_MAX,
        "body too long: {message:?}"
    );
    assert!(!message.title.is_empty() && !message.body.is_empty());
    message
}

fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "`{text}` should contain `{part}`");
    }
}

#[test]
fn the_daily_reminder_names_todays_topic_and_links_to_it() {
    // Given a learner with a recommended topic and no streak
    let n = Numbers {
        streak_days: 0,
        ..numbers()
    };
    // When rendered in English and Korean
    let en = rendered(Kind::DailyReminder, "en", &n);
    let ko = rendered(Kind::DailyReminder, "ko", &n);
    // Then the title names the topic, the body asks for 3 minutes, the link opens the topic
    assert_eq!(en.title, "Today's topic: How DNS works");
    assert_eq!(
        en.body,
        "Explain it out loud in 3 minutes and get feedback."
    );
    assert_eq!(en.link, "#/topic/cs.networking.dns");
    assert_eq!(ko.title, "오늘의 주제: How DNS works");
    assert_contains(&ko.body, &["3분", "피드백"]);
    assert_eq!(ko.link, "#/topic/cs.networking.dns");
}

#[test]
fn the_daily_reminder_mentions_the_streak_and_the_name() {
    // Given a learner named Ana on a 5-day streak
    let n = Numbers {
        name: "Ana".into(),
        ..numbers()
    };
    // When rendered
    let en = rendered(Kind::DailyReminder, "en", &n);
    let ko = rendered(Kind::DailyReminder, "ko", &n);
    // Then the body addresses her and counts the streak
    assert_eq!(
        en.body,
        "Ana, explain it out loud in 3 minutes to keep your 5-day streak going."
    );
    assert_contains(&ko.body, &["Ana님, ", "5일 연속"]);
}

#[test]
fn the_daily_reminder_without_a_topic_links_to_the_start_page() {
    // Given no recommended topic
    let n = Numbers {
        topic: None,
        streak_days: 0,
        ..numbers()
    };
    // When rendered
    let en = rendered(Kind::DailyReminder, "en", &n);
    let ko = rendered(Kind::DailyReminder, "ko-KR", &n);
    // Then it asks to pick a topic and links to "#/"
    assert_contains(&en.body, &["Pick a topic", "3 minutes"]);
    assert_contains(&ko.body, &["주제 하나를 골라", "3분"]);
    assert_eq!(en.link, "#/");
    assert_eq!(ko.link, "#/");
}

#[test]
fn the_streak_warning_counts_the_days_at_stake() {
    // Given a 5-day streak and a recommended topic
    let n = numbers();
    // When rendered
    let en = rendered(Kind::StreakWarning, "en", &n);
    let ko = rendered(Kind::StreakWarning, "ko", &n);
    // Then the title says it ends tonight and the body names the topic
    assert_eq!(en.title, "Your 5-day streak ends tonight");
    assert_eq!(en.body, "Teach How DNS works before midnight to keep it.");
    assert_eq!(en.link, "#/topic/cs.networking.dns");
    assert_eq!(ko.title, "5일 연속 기록이 오늘 밤 끊겨요");
    assert_contains(&ko.body, &["자정 전에", "How DNS works을(를)"]);
    assert_eq!(ko.link, "#/topic/cs.networking.dns");
}

#[test]
fn the_streak_warning_without_a_topic_asks_for_any_topic() {
    // Given a 12-day streak and no topic
    let n = Numbers {
        streak_days: 12,
        topic: None,
        ..numbers()
    };
    // When rendered
    let en = rendered(Kind::StreakWarning, "en", &n);
    let ko = rendered(Kind::StreakWarning, "ko", &n);
    // Then the body asks for one topic and links to "#/"
    assert_eq!(en.title, "Your 12-day streak ends tonight");
    assert_eq!(en.body, "Teach one topic before midnight to keep it.");
    assert_eq!(en.link, "#/");
    assert_contains(&ko.title, &["12일"]);
    assert_contains(&ko.body, &["주제 하나를"]);
    assert_eq!(ko.link, "#/");
}

#[test]
fn the_streak_warning_without_a_streak_invites_to_start_one() {
    // Given no streak
    let n = Numbers {
        streak_days: 0,
        topic: None,
        ..numbers()
    };
    // When rendered
    let en = rendered(Kind::StreakWarning, "en", &n);
    let ko = rendered(Kind::StreakWarning, "ko", &n);
    // Then it invites to start one
    assert_eq!(en.title, "Start a streak tonight");
    assert_contains(&en.body, &["before midnight", "start"]);
    assert_contains(&ko.title, &["시작"]);
    assert_contains(&ko.body, &["자정 전에", "시작"]);
}

#[test]
fn a_korean_topic_takes_the_right_object_particle() {
    // Given Korean topic titles ending with and without a final consonant
    let with = |title: &str| Numbers {
        topic: Some((title.into(), "t".into())),
        ..numbers()
    };
    // When a streak warning is rendered
    let ends_in_ri = rendered(Kind::StreakWarning, "ko", &with("DNS의 동작 원리"));
    let ends_in_je = rendered(Kind::StreakWarning, "ko", &with("운영체제"));
    let ends_in_hyeon = rendered(Kind::StreakWarning, "ko", &with("해시 테이블 구현"));
    // Then a syllable without a final consonant (리, 제) takes 를, one with (현) takes 을
    assert_contains(&ends_in_ri.body, &["DNS의 동작 원리를"]);
    assert_contains(&ends_in_je.body, &["운영체제를"]);
    assert_contains(&ends_in_hyeon.body, &["해시 테이블 구현을"]);
}

#[test]
fn the_weekly_digest_tells_how_far_the_learner_moved_up() {
    // Given rank 8 of 120 with 245 points, up from 20
    let n = numbers();
    // When rendered
    let en = rendered(Kind::WeeklyDigest, "en", &n);
    let ko = rendered(Kind::WeeklyDigest, "ko", &n);
    // Then it says 12 places up, and the rank, total and points; it links to the rankings
    assert_eq!(en.title, "You moved up 12 places last week");
    assert_eq!(en.body, "Rank 8 of 120 with 245 points.");
    assert_eq!(en.link, "#/rankings");
    assert_contains(&ko.title, &["12계단", "올랐어요"]);
    assert_contains(&ko.body, &["120명 중 8위", "245점"]);
    assert_eq!(ko.link, "#/rankings");
}

#[test]
fn the_weekly_digest_tells_how_far_the_learner_moved_down() {
    // Given rank 9, down from 8, with one point
    let n = Numbers {
        rank: Some(9),
        previous_rank: Some(8),
        points: 1,
        ..numbers()
    };
    // When rendered
    let en = rendered(Kind::WeeklyDigest, "en", &n);
    let ko = rendered(Kind::WeeklyDigest, "ko", &n);
    // Then it says one place down and encourages climbing back
    assert_eq!(en.title, "You moved down 1 place last week");
    assert_contains(&en.body, &["Rank 9 of 120 with 1 point.", "climb back"]);
    assert_contains(&ko.title, &["1계단", "내려갔어요"]);
    assert_contains(&ko.body, &["120명 중 9위", "1점", "다시"]);
}

#[test]
fn the_weekly_digest_for_a_learner_who_held_their_rank() {
    // Given rank 8 both weeks
    let n = Numbers {
        previous_rank: Some(8),
        ..numbers()
    };
    // When rendered
    let en = rendered(Kind::WeeklyDigest, "en", &n);
    let ko = rendered(Kind::WeeklyDigest, "ko", &n);
    // Then it says the rank was held
    assert_eq!(en.title, "You held rank 8 last week");
    assert_eq!(en.body, "Rank 8 of 120 with 245 points.");
    assert_contains(&ko.title, &["8위", "지켰어요"]);
    assert_contains(&ko.body, &["120명 중 8위", "245점"]);
}

#[test]
fn the_weekly_digest_for_a_newly_ranked_learner() {
    // Given rank 8 after being unranked
    let n = Numbers {
        previous_rank: None,
        ..numbers()
    };
    // When rendered
    let en = rendered(Kind::WeeklyDigest, "en", &n);
    let ko = rendered(Kind::WeeklyDigest, "ko", &n);
    // Then it welcomes them to the rankings
    assert_eq!(en.title, "You made the rankings last week");
    assert_eq!(en.body, "Rank 8 of 120 with 245 points.");
    assert_contains(&ko.title, &["처음으로"]);
    assert_contains(&ko.body, &["120명 중 8위", "245점"]);
}

#[test]
fn the_weekly_digest_for_an_unranked_learner_invites_them_to_join() {
    // Given no rank last week, among 120 ranked learners and among none
    let n = Numbers {
        rank: None,
        previous_rank: Some(3),
        points: 0,
        ..numbers()
    };
    let empty_board = Numbers {
        ranked_learners: 0,
        ..n.clone()
    };
    // When rendered
    let en = rendered(Kind::WeeklyDigest, "en", &n);
    let ko = rendered(Kind::WeeklyDigest, "ko", &n);
    let en_empty = rendered(Kind::WeeklyDigest, "en", &empty_board);
    let ko_empty = rendered(Kind::WeeklyDigest, "ko", &empty_board);
    // Then it says so and invites them to teach a topic; it links to the rankings
    assert_eq!(en.title, "You weren't ranked last week");
    assert_contains(&en.body, &["Teach one topic", "120 ranked learners"]);
    assert_contains(&ko.title, &["순위에 없었어요"]);
    assert_contains(&ko.body, &["120명"]);
    assert_contains(&en_empty.body, &["get on the board"]);
    assert!(!ko_empty.body.contains("0명"), "{ko_empty:?}");
    assert_eq!(en.link, "#/rankings");
}

#[test]
fn long_names_and_titles_are_cut_to_notification_length() {
    // Given a very long name and topic title, and huge numbers
    let n = Numbers {
        name: "Maximiliana Wilhelmina Josephina von Habsburg-Lothringen".into(),
        streak_days: u32::MAX,
        rank: Some(u64::MAX - 1),
        previous_rank: Some(1),
        points: u64::MAX,
        ranked_learners: u64::MAX,
        topic: Some((
            "A very long topic title about distributed consensus, Paxos, Raft and their many \
             practical variants in production systems"
                .repeat(2),
            "cs.distributed.consensus".into(),
        )),
    };
    // When every kind is rendered in both languages
    // Then every title and body fits (checked by `rendered`), cut with an ellipsis
    for kind in Kind::ALL {
        for language in ["en", "ko"] {
            rendered(kind, language, &n);
        }
    }
    let daily = rendered(Kind::DailyReminder, "en", &n);
    assert!(daily.title.starts_with("Today's topic: A very long"));
    assert!(daily.title.ends_with('…'));
}

#[test]
fn any_language_other_than_korean_is_english_and_topic_ids_are_encoded_in_links() {
    // Given a topic id with characters a link must escape
    let n = Numbers {
        topic: Some(("Sets".into(), "math/sets & maps".into())),
        ..numbers()
    };
    // When rendered in French, Korean in capitals and an empty language
    let fr = rendered(Kind::DailyReminder, "fr", &n);
    let ko = rendered(Kind::DailyReminder, "KO", &n);
    let none = rendered(Kind::DailyReminder, "", &n);
    // Then French and none are English, and the id is escaped as the web client does
    assert_eq!(fr.title, "Today's topic: Sets");
    assert_eq!(none, fr);
    assert_eq!(ko.title, "오늘의 주제: Sets");
    assert_eq!(fr.link, "#/topic/math%2Fsets%20%26%20maps");
}

#[test]
fn a_message_serializes_its_title_body_and_link() {
    // Given a rendered digest
    let message = render(Kind::WeeklyDigest, "en", &numbers());
    // When serialized
    let json = serde_json::to_value(&message).unwrap();
    // Then it has the three fields and reads back
    assert_eq!(json["link"], "#/rankings");
    assert_eq!(serde_json::from_value::<Message>(json).unwrap(), message);
}
