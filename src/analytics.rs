//! Analytics for the team, read from the learning projection: active learners, retention by
//! signup cohort, the funnel, grading latency, provider error rates, token usage and cost.

use std::collections::{BTreeMap, HashSet};

use jiff::ToSpan;
use jiff::civil::Date;
use serde::Serialize;
use teachback_projections::learning::metric;
use uuid::Uuid;

use crate::db::Db;
use crate::with_pool;

/// What analytics prices usage at.
#[derive(Debug, Clone, Copy)]
pub struct Prices {
    pub prompt_per_mtok: f64,
    pub completion_per_mtok: f64,
    pub stt_per_minute: f64,
}

impl Prices {
    /// What this usage costs, in US dollars.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64, audio_ms: u64) -> f64 {
        prompt_tokens as f64 / 1e6 * self.prompt_per_mtok
            + completion_tokens as f64 / 1e6 * self.completion_per_mtok
            + audio_ms as f64 / 60_000.0 * self.stt_per_minute
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub from: Date,
    pub to: Date,
    pub active: Active,
    pub retention: Vec<Cohort>,
    pub funnel: Funnel,
    pub latency: Latency,
    pub providers: Vec<ProviderRate>,
    pub usage: Usage,
    pub nudges: Nudges,
}

/// Study nudges: what happened to those scheduled in the range, and whether nudged learners
/// come back more than the others.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Nudges {
    pub kinds: Vec<NudgeCounts>,
    /// Learners who signed up in the range and were sent at least one nudge, against those who
    /// were not.
    pub retention_nudged: Retained,
    pub retention_not_nudged: Retained,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NudgeCounts {
    pub kind: String,
    pub scheduled: u64,
    pub sent: u64,
    pub pending: u64,
    pub parked: u64,
    pub cancelled: u64,
    /// Delivery attempts that failed (a nudge retried three times before it was sent counts 3).
    pub failed_attempts: u64,
    /// Sent nudges whose link was followed.
    pub opened: u64,
    pub open_rate: Option<f64>,
}

/// Retention of a group of learners over all its signup cohorts (only cohorts whose day N has
/// come count towards dN).
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Retained {
    pub learners: u64,
    pub d1: Option<f64>,
    pub d7: Option<f64>,
    pub d30: Option<f64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Active {
    /// Learners active on `to`, in the 7 days and in the 30 days ending on `to`.
    pub dau: u64,
    pub wau: u64,
    pub mau: u64,
    pub daily: Vec<DayCount>,
}

#[derive(Debug, Serialize)]
pub struct DayCount {
    pub day: Date,
    pub users: u64,
}

/// Learners who registered on `cohort`, and the share active again N days later (`None` until
/// that day has come).
#[derive(Debug, Serialize)]
pub struct Cohort {
    pub cohort: Date,
    pub size: u64,
    pub d1: Option<f64>,
    pub d7: Option<f64>,
    pub d30: Option<f64>,
}

/// Learners registered in the range who went on to each step.
#[derive(Debug, Serialize)]
pub struct Funnel {
    pub registered: u64,
    pub started: u64,
    pub finished: u64,
    pub graded: u64,
    pub rated: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    /// Finish → first feedback token.
    pub first_token_ms: Percentiles,
    /// Finish → score.
    pub score_ms: Percentiles,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: Option<u64>,
    pub p90: Option<u64>,
    pub p99: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRate {
    pub provider: String,
    pub attempts: u64,
    pub failures: u64,
    pub error_rate: Option<f64>,
    pub fallbacks: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub lectures: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub stt_seconds: u64,
    pub estimated_cost_usd: f64,
    pub cost_per_lecture_usd: Option<f64>,
}

/// The report for graded, registered and active days in `from..=to`, as of `today`.
pub async fn report(
    db: &Db,
    from: Date,
    to: Date,
    today: Date,
    prices: Prices,
) -> anyhow::Result<Report> {
    let day = |d: Date| d.to_string();
    let back = |n: i64| to.checked_sub(n.days()).unwrap_or(to);
    let counts: Vec<(String, i64)> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT day, COUNT(*) FROM learning_activity WHERE day >= $1 AND day <= $2 \
             GROUP BY day ORDER BY day",
        )
        .bind(day(from))
        .bind(day(to))
        .fetch_all(pool)
        .await?
    });
    let distinct = |since: Date| {
        let (since, to) = (day(since), day(to));
        async move {
            let n: i64 = with_pool!(db, pool => {
                sqlx::query_scalar(
                    "SELECT COUNT(DISTINCT user_id) FROM learning_activity \
                     WHERE day >= $1 AND day <= $2",
                )
                .bind(since)
                .bind(to)
                .fetch_one(pool)
                .await?
            });
            anyhow::Ok(n as u64)
        }
    };
    let active = Active {
        dau: distinct(to).await?,
        wau: distinct(back(6)).await?,
        mau: distinct(back(29)).await?,
        daily: counts
            .into_iter()
            .filter_map(|(d, n)| {
                Some(DayCount {
                    day: d.parse().ok()?,
                    users: n as u64,
                })
            })
            .collect(),
    };

    // Retention: who of each cohort was active exactly 1, 7 and 30 days after signing up.
    let cohort_rows: Vec<(Uuid, String)> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT user_id, signup_day FROM learning_users WHERE signup_day >= $1 AND signup_day <= $2",
        )
        .bind(day(from))
        .bind(day(to))
        .fetch_all(pool)
        .await?
    });
    let until = to.checked_add(30.days()).unwrap_or(to);
    let activity: Vec<(Uuid, String)> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT a.user_id, a.day FROM learning_activity a JOIN learning_users u \
             ON u.user_id = a.user_id WHERE u.signup_day >= $1 AND u.signup_day <= $2 \
             AND a.day > u.signup_day AND a.day <= $3",
        )
        .bind(day(from))
        .bind(day(to))
        .bind(day(until))
        .fetch_all(pool)
        .await?
    });
    let active_on: HashSet<(Uuid, Date)> = activity
        .into_iter()
        .filter_map(|(user, day)| Some((user, day.parse().ok()?)))
        .collect();
    let mut cohorts: BTreeMap<Date, Vec<Uuid>> = BTreeMap::new();
    for (user, signup) in cohort_rows {
        if let Ok(d) = signup.parse::<Date>() {
            cohorts.entry(d).or_default().push(user);
        }
    }
    let retention = retention(&cohorts, &active_on, today);
    let nudges = nudges(db, from, to, today, &cohorts, &active_on).await?;

    let funnel: (i64, Option<i64>, Option<i64>, Option<i64>, Option<i64>) = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT COUNT(*), \
             CAST(SUM(CASE WHEN started > 0 THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN finished > 0 THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN graded > 0 THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN rated > 0 THEN 1 ELSE 0 END) AS BIGINT) \
             FROM learning_users WHERE signup_day >= $1 AND signup_day <= $2",
        )
        .bind(day(from))
        .bind(day(to))
        .fetch_one(pool)
        .await?
    });
    let n = |v: Option<i64>| v.unwrap_or(0) as u64;
    let funnel = Funnel {
        registered: funnel.0 as u64,
        started: n(funnel.1),
        finished: n(funnel.2),
        graded: n(funnel.3),
        rated: n(funnel.4),
    };

    let latencies: Vec<(Option<i64>, Option<i64>)> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT first_token_ms, score_ms FROM learning_lectures \
             WHERE graded_day >= $1 AND graded_day <= $2",
        )
        .bind(day(from))
        .bind(day(to))
        .fetch_all(pool)
        .await?
    });
    let latency = Latency {
        first_token_ms: percentiles(latencies.iter().filter_map(|l| l.0).collect()),
        score_ms: percentiles(latencies.iter().filter_map(|l| l.1).collect()),
    };

    let metrics: Vec<(String, i64)> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT metric, CAST(SUM(value) AS BIGINT) FROM learning_daily \
             WHERE day >= $1 AND day <= $2 GROUP BY metric",
        )
        .bind(day(from))
        .bind(day(to))
        .fetch_all(pool)
        .await?
    });
    let (providers, usage) = usage(&metrics, prices);
    Ok(Report {
        from,
        to,
        active,
        retention,
        funnel,
        latency,
        providers,
        usage,
        nudges,
    })
}

async fn nudges(
    db: &Db,
    from: Date,
    to: Date,
    today: Date,
    cohorts: &BTreeMap<Date, Vec<Uuid>>,
    active_on: &HashSet<(Uuid, Date)>,
) -> anyhow::Result<Nudges> {
    use crate::projection::notifications as read_model;
    use teachback_projections::notifications::Status;
    let micros = |d: Date| -> anyhow::Result<i64> {
        Ok(d.to_zoned(jiff::tz::TimeZone::UTC)?
            .timestamp()
            .as_microsecond())
    };
    let end = micros(to.checked_add(1.days())?)?;
    let mut kinds: BTreeMap<String, NudgeCounts> = BTreeMap::new();
    for (kind, status, n, opened, attempts) in read_model::counts(db, micros(from)?, end).await? {
        let counts = kinds.entry(kind.clone()).or_insert_with(|| NudgeCounts {
            kind,
            ..NudgeCounts::default()
        });
        counts.scheduled += n;
        counts.opened += opened;
        // Every attempt failed except the one that delivered a sent nudge.
        counts.failed_attempts += attempts;
        match status {
            Status::Sent => {
                counts.sent += n;
                counts.failed_attempts -= n;
            }
            Status::Pending => counts.pending += n,
            Status::Parked => counts.parked += n,
            Status::Cancelled => counts.cancelled += n,
        }
    }
    for counts in kinds.values_mut() {
        counts.open_rate =
            (counts.sent > 0).then(|| round4(counts.opened as f64 / counts.sent as f64));
    }
    let nudged: HashSet<Uuid> = read_model::first_sent(db)
        .await?
        .into_iter()
        .map(|(user, _)| user)
        .collect();
    let (yes, no) = split_cohorts(cohorts, &nudged);
    Ok(Nudges {
        kinds: kinds.into_values().collect(),
        retention_nudged: retained(&yes, active_on, today),
        retention_not_nudged: retained(&no, active_on, today),
    })
}

/// The cohorts split into learners in `group` and the rest.
fn split_cohorts(
    cohorts: &BTreeMap<Date, Vec<Uuid>>,
    group: &HashSet<Uuid>,
) -> (BTreeMap<Date, Vec<Uuid>>, BTreeMap<Date, Vec<Uuid>>) {
    let mut inside = BTreeMap::new();
    let mut outside = BTreeMap::new();
    for (day, users) in cohorts {
        let (a, b): (Vec<Uuid>, Vec<Uuid>) = users.iter().partition(|u| group.contains(u));
        if !a.is_empty() {
            inside.insert(*day, a);
        }
        if !b.is_empty() {
            outside.insert(*day, b);
        }
    }
    (inside, outside)
}

/// Retention over all of a group's cohorts together.
fn retained(
    cohorts: &BTreeMap<Date, Vec<Uuid>>,
    active_on: &HashSet<(Uuid, Date)>,
    today: Date,
) -> Retained {
    let share = |n: i64| {
        let (mut back, mut size) = (0usize, 0usize);
        for (cohort, users) in cohorts {
            let Ok(target) = cohort.checked_add(n.days()) else {
                continue;
            };
            if target <= today {
                size += users.len();
                back += users
                    .iter()
                    .filter(|u| active_on.contains(&(**u, target)))
                    .count();
            }
        }
        (size > 0).then(|| round4(back as f64 / size as f64))
    };
    Retained {
        learners: cohorts.values().map(|u| u.len() as u64).sum(),
        d1: share(1),
        d7: share(7),
        d30: share(30),
    }
}

/// The share of each signup cohort active again exactly 1, 7 and 30 days after signing up;
/// `None` until that day has come.
fn retention(
    cohorts: &BTreeMap<Date, Vec<Uuid>>,
    active_on: &HashSet<(Uuid, Date)>,
    today: Date,
) -> Vec<Cohort> {
    cohorts
        .iter()
        .map(|(&cohort, users)| {
            let share = |n: i64| {
                let target = cohort.checked_add(n.days()).ok()?;
                if target > today {
                    return None;
                }
                let back = users
                    .iter()
                    .filter(|u| active_on.contains(&(**u, target)))
                    .count();
                Some(round4(back as f64 / users.len() as f64))
            };
            Cohort {
                cohort,
                size: users.len() as u64,
                d1: share(1),
                d7: share(7),
                d30: share(30),
            }
        })
        .collect()
}

/// Provider error rates and usage from the daily counters.
fn usage(metrics: &[(String, i64)], prices: Prices) -> (Vec<ProviderRate>, Usage) {
    let mut providers: BTreeMap<&str, ProviderRate> = BTreeMap::new();
    let total = |name: &str| -> u64 {
        metrics
            .iter()
            .filter(|(m, _)| m == name || m.strip_prefix(name).is_some_and(|r| r.starts_with(':')))
            .map(|(_, v)| *v as u64)
            .sum()
    };
    let lectures = total(metric::GRADED);
    let prompt_tokens = total(metric::PROMPT_TOKENS);
    let completion_tokens = total(metric::COMPLETION_TOKENS);
    let stt_seconds = total(metric::SPEAKING_MS) / 1000;
    for (name, value) in metrics {
        let Some((kind, provider)) = name.split_once(':') else {
            continue;
        };
        let entry = providers.entry(provider).or_insert_with(|| ProviderRate {
            provider: provider.to_owned(),
            attempts: 0,
            failures: 0,
            error_rate: None,
            fallbacks: 0,
        });
        let value = *value as u64;
        match kind {
            metric::ATTEMPTS => entry.attempts += value,
            metric::FAILURES => entry.failures += value,
            metric::FALLBACKS => entry.fallbacks += value,
            _ => {}
        }
    }
    let providers = providers
        .into_values()
        .filter(|p| p.attempts > 0 || p.failures > 0)
        .map(|mut p| {
            p.error_rate = (p.attempts > 0).then(|| round4(p.failures as f64 / p.attempts as f64));
            p
        })
        .collect();
    let cost = prices.cost(prompt_tokens, completion_tokens, stt_seconds * 1_000);
    let usage = Usage {
        lectures,
        prompt_tokens,
        completion_tokens,
        stt_seconds,
        estimated_cost_usd: round4(cost),
        cost_per_lecture_usd: (lectures > 0).then(|| round4(cost / lectures as f64)),
    };
    (providers, usage)
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// Nearest-rank percentiles.
fn percentiles(mut values: Vec<i64>) -> Percentiles {
    values.sort_unstable();
    let at = |p: f64| {
        let n = values.len();
        (n > 0).then(|| {
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            values[rank - 1].max(0) as u64
        })
    };
    Percentiles {
        count: values.len() as u64,
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nudged_and_other_learners_are_retained_over_their_cohorts_together() {
        let day = |s: &str| s.parse::<Date>().unwrap();
        let user = |n: u128| Uuid::from_u128(n);
        // given two cohorts; learners 1 and 3 were nudged
        let cohorts = BTreeMap::from([
            (day("2026-03-01"), vec![user(1), user(2)]),
            (day("2026-03-20"), vec![user(3), user(4)]),
        ]);
        let nudged = HashSet::from([user(1), user(3)]);
        // 1 and 3 came back the next day, 4 a week later (not yet counted on the 25th)
        let active = HashSet::from([
            (user(1), day("2026-03-02")),
            (user(3), day("2026-03-21")),
            (user(4), day("2026-03-27")),
        ]);
        // when it is March 25th
        let (yes, no) = split_cohorts(&cohorts, &nudged);
        let today = day("2026-03-25");
        // then the nudged came back at D1 2/2; the others 0/2, and D7 counts only March 1st
        assert_eq!(
            retained(&yes, &active, today),
            Retained {
                learners: 2,
                d1: Some(1.0),
                d7: Some(0.0),
                d30: None
            }
        );
        assert_eq!(
            retained(&no, &active, today),
            Retained {
                learners: 2,
                d1: Some(0.0),
                d7: Some(0.0),
                d30: None
            }
        );
    }

    #[test]
    fn retention_counts_learners_back_exactly_n_days_later_once_that_day_has_come() {
        let day = |s: &str| s.parse::<Date>().unwrap();
        let user = |n: u128| Uuid::from_u128(n);
        // given four learners who signed up on March 1st and one on March 20th
        let cohorts = BTreeMap::from([
            (day("2026-03-01"), vec![user(1), user(2), user(3), user(4)]),
            (day("2026-03-20"), vec![user(5)]),
        ]);
        // 1 came back the next day and a week later; 2 only a week later; 3 on day 6 and day 8
        // (neither counts); 4 never; 5 the next day
        let active = HashSet::from([
            (user(1), day("2026-03-02")),
            (user(1), day("2026-03-08")),
            (user(2), day("2026-03-08")),
            (user(3), day("2026-03-07")),
            (user(3), day("2026-03-09")),
            (user(5), day("2026-03-21")),
        ]);
        // when it is March 25th
        let report = retention(&cohorts, &active, day("2026-03-25"));
        // then March 1st: D1 1/4, D7 2/4, D30 not yet; March 20th: D1 1/1, D7 not yet
        assert_eq!(report.len(), 2);
        assert_eq!(
            (report[0].size, report[0].d1, report[0].d7, report[0].d30),
            (4, Some(0.25), Some(0.5), None)
        );
        assert_eq!(
            (report[1].size, report[1].d1, report[1].d7),
            (1, Some(1.0), None)
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let p = percentiles((1..=100).rev().collect());
        assert_eq!(
            (p.count, p.p50, p.p90, p.p99),
            (100, Some(50), Some(90), Some(99))
        );
        let empty = percentiles(Vec::new());
        assert_eq!((empty.count, empty.p50), (0, None));
    }

    #[test]
    fn usage_prices_tokens_and_audio_and_rates_providers() {
        let metrics = vec![
            ("lectures_graded".to_owned(), 4),
            ("prompt_tokens:gpt-4o-mini".to_owned(), 2_000_000),
            ("completion_tokens:gpt-4o-mini".to_owned(), 1_000_000),
            ("speaking_ms".to_owned(), 600_000),
            ("attempts:api.openai.com".to_owned(), 10),
            ("failures:api.openai.com".to_owned(), 1),
            ("fallbacks:api.openai.com".to_owned(), 1),
        ];
        let prices = Prices {
            prompt_per_mtok: 0.15,
            completion_per_mtok: 0.60,
            stt_per_minute: 0.006,
        };
        let (providers, usage) = usage(&metrics, prices);
        // 2 × 0.15 + 1 × 0.60 + 10 min × 0.006 = 0.96 dollars over 4 lectures.
        assert_eq!(usage.estimated_cost_usd, 0.96);
        assert_eq!(usage.cost_per_lecture_usd, Some(0.24));
        assert_eq!(usage.stt_seconds, 600);
        assert_eq!(providers.len(), 1);
        assert_eq!(providers[0].error_rate, Some(0.1));
        assert_eq!(providers[0].fallbacks, 1);
    }
}
