//! Daily quotas per learner, and the spending guard over everyone.
//!
//! Both are checked against the `usage` projection (a fold of the log, so they survive restarts
//! and agree between instances) for the current day in the server's time zone, by a clock tests
//! can move.
//!
//! - **Quotas:** a learner who started their day's lectures, or spoke their day's audio
//!   minutes, or whose grades used their day's model tokens, cannot start another lecture until
//!   midnight (`429 quota_exceeded`, in their language, `Retry-After` until midnight). A live
//!   lecture started with fewer audio minutes left than the longest lecture is finished when
//!   they run out.
//! - **Spending guard:** the day's provider spend is priced from the model tokens and audio
//!   minutes the providers reported (at the configured prices). Once it reaches the configured
//!   share of the daily budget, new grades come from the built-in rubric grader (labelled, with
//!   the fallback reason `budget_guard`) instead of the paid model, and
//!   `teachback_budget_guard_active` is 1, for an alert.
//!
//! The projection follows the log within milliseconds; two starts in that window may both pass
//! a quota's last unit. Quotas bound cost, they are not exact to the unit.

use std::sync::Arc;
use std::time::Duration;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use teachback_projections::usage::Usage;
use uuid::Uuid;

use crate::analytics::Prices;
use crate::db::Db;
use crate::notify::clock::Clock;
use crate::projection::usage::{day_total, learner_day};

/// Daily limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QuotaSettings {
    pub lectures_per_day: Option<u64>,
    pub audio_minutes_per_day: Option<u64>,
    pub llm_tokens_per_day: Option<u64>,
    /// The day's provider budget, US dollars.
    pub daily_budget_usd: Option<f64>,
    /// The share of the budget (0–1) at which the guard turns the paid model off.
    pub guard_at: f64,
}

/// Which quota ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    Lectures,
    AudioMinutes,
    LlmTokens,
}

impl Quota {
    pub fn as_str(self) -> &'static str {
        match self {
            Quota::Lectures => "lectures",
            Quota::AudioMinutes => "audio_minutes",
            Quota::LlmTokens => "llm_tokens",
        }
    }
}

/// A start refused by a quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub quota: Quota,
    pub limit: u64,
    /// Until the learner's day ends (midnight in the server's time zone).
    pub retry_after: Duration,
}

impl QuotaExceeded {
    /// The message for the learner, in Korean or English.
    pub fn message(&self, korean: bool) -> String {
        let hours = self.retry_after.as_secs().div_ceil(3_600);
        match (self.quota, korean) {
            (Quota::Lectures, false) => format!(
                "You have started today's {} lectures, the most a day allows. You can start \
                 another after midnight (in about {hours} h).",
                self.limit
            ),
            (Quota::Lectures, true) => format!(
                "오늘 시작할 수 있는 강의 {}회를 모두 사용했어요. 자정이 지나면 다시 시작할 수 \
                 있어요(약 {hours}시간 후).",
                self.limit
            ),
            (Quota::AudioMinutes, false) => format!(
                "You have recorded today's {} minutes of lectures, the most a day allows. You \
                 can record again after midnight (in about {hours} h).",
                self.limit
            ),
            (Quota::AudioMinutes, true) => format!(
                "오늘 녹음할 수 있는 {}분을 모두 사용했어요. 자정이 지나면 다시 녹음할 수 \
                 있어요(약 {hours}시간 후).",
                self.limit
            ),
            (Quota::LlmTokens, false) => format!(
                "Today's grading allowance ({} model tokens) is used up. You can start another \
                 lecture after midnight (in about {hours} h).",
                self.limit
            ),
            (Quota::LlmTokens, true) => format!(
                "오늘의 채점 한도(모델 토큰 {}개)를 모두 사용했어요. 자정이 지나면 다시 시작할 수 \
                 있어요(약 {hours}시간 후).",
                self.limit
            ),
        }
    }

    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs().max(1)
    }
}

/// What a learner may still use today, when a start is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Audio left today (`None`: unlimited).
    pub audio_left: Option<Duration>,
}

/// The day's spend against the budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spend {
    pub day: Date,
    pub usage: Usage,
    pub usd: f64,
    pub budget_usd: Option<f64>,
    /// Whether new grades now come from the rubric grader.
    pub guard_active: bool,
}

/// Quotas and the spending guard of a server. Cheap to clone.
#[derive(Clone)]
pub struct Quotas {
    db: Db,
    settings: QuotaSettings,
    prices: Prices,
    tz: TimeZone,
    clock: Arc<dyn Clock>,
}

impl Quotas {
    pub fn new(
        db: Db,
        settings: QuotaSettings,
        prices: Prices,
        tz: TimeZone,
        clock: Arc<dyn Clock>,
    ) -> Quotas {
        Quotas {
            db,
            settings,
            prices,
            tz,
            clock,
        }
    }

    pub fn settings(&self) -> &QuotaSettings {
        &self.settings
    }

    /// Today, in the server's time zone, by the clock.
    pub fn today(&self) -> Date {
        self.clock.now().to_zoned(self.tz.clone()).date()
    }

    /// Time until the next midnight in the server's time zone.
    fn until_midnight(&self) -> Duration {
        let now = self.clock.now().to_zoned(self.tz.clone());
        let next = now
            .date()
            .tomorrow()
            .ok()
            .and_then(|d| d.to_zoned(self.tz.clone()).ok());
        match next {
            Some(next) => {
                let secs = next.timestamp().as_second() - now.timestamp().as_second();
                Duration::from_secs(secs.max(1) as u64)
            }
            None => Duration::from_secs(86_400),
        }
    }

    /// A learner's usage today.
    pub async fn learner_today(&self, user: Uuid) -> Result<Usage, sqlx::Error> {
        learner_day(&self.db, user, self.today()).await
    }

    /// Whether `user` may start a lecture now (`audio`: one that records audio), and how much
    /// audio they have left.
    pub async fn check_start(
        &self,
        user: Uuid,
        audio: bool,
    ) -> Result<Result<Allowance, QuotaExceeded>, sqlx::Error> {
        let s = &self.settings;
        if s.lectures_per_day.is_none()
            && s.audio_minutes_per_day.is_none()
            && s.llm_tokens_per_day.is_none()
        {
            return Ok(Ok(Allowance { audio_left: None }));
        }
        let used = self.learner_today(user).await?;
        let exceeded = |quota, limit| {
            metrics::counter!("teachback_quota_refusals_total", "quota" => Quota::as_str(quota))
                .increment(1);
            Ok(Err(QuotaExceeded {
                quota,
                limit,
                retry_after: self.until_midnight(),
            }))
        };
        if let Some(limit) = s.lectures_per_day
            && used.lectures >= limit
        {
            return exceeded(Quota::Lectures, limit);
        }
        if let Some(limit) = s.llm_tokens_per_day
            && used.tokens() >= limit
        {
            return exceeded(Quota::LlmTokens, limit);
        }
        let audio_left = s
            .audio_minutes_per_day
            .map(|m| Duration::from_millis((m * 60_000).saturating_sub(used.audio_ms)));
        if audio
            && let (Some(limit), Some(left)) = (s.audio_minutes_per_day, audio_left)
            && left < Duration::from_secs(1)
        {
            return exceeded(Quota::AudioMinutes, limit);
        }
        Ok(Ok(Allowance { audio_left }))
    }

    /// Today's provider spend, and whether the guard is on. Updates the budget gauges.
    pub async fn spend(&self) -> Result<Spend, sqlx::Error> {
        let day = self.today();
        let usage = day_total(&self.db, day).await?;
        let usd = self
            .prices
            .cost(usage.prompt_tokens, usage.completion_tokens, usage.audio_ms);
        let budget_usd = self.settings.daily_budget_usd;
        let guard_active = budget_usd.is_some_and(|b| usd >= b * self.settings.guard_at);
        metrics::gauge!("teachback_budget_spent_usd").set(usd);
        if let Some(budget) = budget_usd {
            metrics::gauge!("teachback_budget_usd").set(budget);
        }
        metrics::gauge!("teachback_budget_guard_active").set(if guard_active { 1.0 } else { 0.0 });
        Ok(Spend {
            day,
            usage,
            usd,
            budget_usd,
            guard_active,
        })
    }

    /// Whether a new grade must come from the rubric grader to save the budget. A failure to
    /// read the spend does not stop grading (it is logged).
    pub async fn guard_active(&self) -> bool {
        if self.settings.daily_budget_usd.is_none() {
            return false;
        }
        match self.spend().await {
            Ok(spend) => spend.guard_active,
            Err(e) => {
                tracing::warn!(error = %e, "reading today's spend failed; grading as usual");
                false
            }
        }
    }

    /// Keeps the budget gauges current (every 15 s), for alerts.
    pub fn spawn_gauges(&self) {
        if self.settings.daily_budget_usd.is_none() {
            return;
        }
        let quotas = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(15));
            loop {
                every.tick().await;
                let _ = quotas.spend().await;
            }
        });
    }
}
