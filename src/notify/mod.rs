//! Study nudges: a scheduler that decides which nudges are due and records each one as a
//! `NotificationScheduled` event (its id derived from learner, kind and period, so it can never
//! be scheduled twice), and an outbox worker that delivers the pending ones through a channel and
//! records `NotificationSent` only after the channel accepted, or `NotificationFailed` (retried
//! with backoff) and finally `NotificationParked`. The outbox is the `notifications` read model:
//! a restart, even mid-batch, resumes from the log, so nothing is skipped; a nudge may be
//! delivered more than once (at least once), and receivers deduplicate by its idempotency key.

pub mod channel;
pub mod clock;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};
use teachback_events::{
    Event, Metadata, NewEvent, NotificationCancelled, NotificationFailed, NotificationParked,
    NotificationScheduled, NotificationSent, TopicPublished, streams,
};
use teachback_projections::learning::day_of;
use teachback_projections::notify::{self, Cron, Kind, Numbers, QuietHours};
use teachback_projections::rankings::{BoardKey, Period, Scope};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::db::Db;
use crate::projection::ProjectionStatus;
use crate::projection::notifications::{self as outbox, OutboxRow, PrefsRow};
use crate::rankings::Rankings;
use crate::store::{AppendError, EventStore, ExpectedVersion};
use channel::{Channel, DeliveryError, Outgoing};
use clock::Clock;

/// How the nudges behave. From the configuration.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// When each kind fires, in the learner's time zone.
    pub crons: BTreeMap<Kind, Cron>,
    /// How often the scheduler looks for due nudges.
    pub tick: Duration,
    /// Delivery attempts before a nudge is parked.
    pub max_attempts: u32,
    /// The first retry's delay; each next one doubles, up to an hour.
    pub retry_base: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Base of the tracked deep links (`{public_url}/n/{id}`), without a trailing slash.
    pub public_url: String,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            crons: Kind::ALL
                .into_iter()
                .map(|k| (k, k.default_cron().parse().expect("default crons parse")))
                .collect(),
            tick: Duration::from_secs(60),
            max_attempts: 8,
            retry_base: Duration::from_secs(2),
            concurrency: 64,
            public_url: "http://127.0.0.1:8080".into(),
        }
    }
}

/// Nudges scheduled and delivered by one pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub scheduled: usize,
    pub sent: usize,
    pub failed: usize,
    pub parked: usize,
    pub cancelled: usize,
}

/// The scheduler and the outbox worker. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    store: EventStore,
    rankings: Rankings,
    /// The notifications read model (the outbox), waited on after each pass.
    outbox: ProjectionStatus,
    channels: HashMap<&'static str, Arc<dyn Channel>>,
    settings: NotifySettings,
    clock: Arc<dyn Clock>,
    /// The server's calendar (streaks and ranking weeks are counted in it).
    server_tz: TimeZone,
    wake: Notify,
}

impl Notifier {
    pub fn new(
        db: Db,
        store: EventStore,
        rankings: Rankings,
        outbox: ProjectionStatus,
        channels: Vec<Arc<dyn Channel>>,
        settings: NotifySettings,
        clock: Arc<dyn Clock>,
    ) -> Notifier {
        let server_tz = rankings.time_zone().clone();
        Notifier {
            inner: Arc::new(Inner {
                db,
                store,
                rankings,
                outbox,
                channels: channels.into_iter().map(|c| (c.name(), c)).collect(),
                settings,
                clock,
                server_tz,
                wake: Notify::new(),
            }),
        }
    }

    /// The channels learners may choose.
    pub fn channels(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.inner.channels.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// Runs the scheduler and the outbox in the background: a pass every tick, and sooner when
    /// a retry falls due or [`Notifier::wake`] is called.
    /// With several instances on one PostgreSQL database, one of them (the holder of the
    /// `notifier` lease) does this, so a nudge is not sent twice.
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let mut lease =
                    crate::lease::Lease::acquire(&this.inner.db, "notifier", || async {}).await;
                tokio::select! {
                    () = this.work() => return,
                    () = lease.lost() => {}
                }
            }
        })
    }

    /// The scheduler and outbox loop.
    async fn work(&self) {
        let this = self;
        {
            let tick = this.inner.settings.tick;
            let mut next_schedule = tokio::time::Instant::now();
            loop {
                let woken = this.inner.wake.notified();
                let mut pass = Pass::default();
                // Scheduling reads every learner's preferences: once per tick, not on every
                // retry. Its failure does not hold delivery up, nor the other way round.
                if tokio::time::Instant::now() >= next_schedule {
                    next_schedule = tokio::time::Instant::now() + tick;
                    match this.schedule_due().await {
                        Ok(n) => pass.scheduled = n,
                        Err(e) => {
                            tracing::warn!(error = format!("{e:#}"), "scheduling nudges failed")
                        }
                    }
                }
                match this.deliver(Some(tick)).await {
                    Ok(delivered) => {
                        pass = Pass {
                            scheduled: pass.scheduled,
                            ..delivered
                        };
                    }
                    Err(e) => tracing::warn!(error = format!("{e:#}"), "delivering nudges failed"),
                }
                if pass != Pass::default() {
                    tracing::info!(?pass, "nudges");
                }
                let until_schedule =
                    next_schedule.saturating_duration_since(tokio::time::Instant::now());
                let pause = this.next_pause().await.min(until_schedule);
                tokio::select! {
                    () = woken => {}
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }

    /// Makes the background loop run a pass now.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// One scheduling pass, then delivery of everything due.
    pub async fn run_once(&self) -> anyhow::Result<Pass> {
        let scheduled = self.schedule_due().await?;
        let mut pass = self.deliver_due().await?;
        pass.scheduled = scheduled;
        Ok(pass)
    }

    /// Delivers every pending nudge whose time has come, in batches, until none is left.
    pub async fn deliver_due(&self) -> anyhow::Result<Pass> {
        self.deliver(None).await
    }

    /// How long until the next tick or the next pending nudge, whichever is first.
    async fn next_pause(&self) -> Duration {
        let tick = self.inner.settings.tick;
        let Ok(Some(next)) = outbox::next_due(&self.inner.db).await else {
            return tick;
        };
        let now = self.inner.clock.now().as_microsecond();
        let wait = Duration::from_micros(u64::try_from(next - now).unwrap_or(0));
        wait.clamp(Duration::from_millis(50), tick)
    }

    /// Schedules every nudge due now that is not scheduled yet. Returns how many it scheduled.
    pub async fn schedule_due(&self) -> anyhow::Result<usize> {
        let inner = &self.inner;
        let now = inner.clock.now();
        // Older nudges cannot be due again: no kind's window is longer.
        let longest = Kind::ALL
            .iter()
            .map(|k| k.window())
            .max()
            .unwrap_or_default();
        let since = now.checked_sub(longest + SignedDuration::from_hours(2))?;
        let known: HashSet<String> = outbox::keys_since(&inner.db, since.as_microsecond())
            .await?
            .into_iter()
            .collect();
        let mut context = Context::new(inner, now).await?;
        let mut new = Vec::new();
        for prefs in outbox::opted_in(&inner.db).await? {
            let Ok(tz) = TimeZone::get(&prefs.time_zone) else {
                continue;
            };
            let quiet = prefs
                .quiet_start
                .zip(prefs.quiet_end)
                .map(|(start, end)| QuietHours { start, end });
            for kind in prefs.kinds.iter().filter_map(|k| Kind::parse(k)) {
                let Some(cron) = inner.settings.crons.get(&kind) else {
                    continue;
                };
                let cron = match prefs.hour {
                    Some(h) if kind.follows_preferred_hour() => cron.at_hour(h),
                    _ => cron.clone(),
                };
                let Some(slot) = notify::due(kind, &cron, &tz, quiet, now) else {
                    continue;
                };
                // Due, but now is quiet (the server was down when it fell due): it waits until
                // the quiet hours end, if that is still within its window.
                if quiet.is_some_and(|q| q.contains(now.to_zoned(tz.clone()).time())) {
                    continue;
                }
                let key = notify::key(prefs.user_id, kind, &slot.period);
                if known.contains(&key) {
                    continue;
                }
                let numbers = match context.numbers(kind, &prefs, slot.fired_at.date()).await {
                    Ok(numbers) => numbers,
                    Err(e) => {
                        // One learner's unreadable data must not stop everyone's nudges.
                        tracing::warn!(user = %prefs.user_id, error = format!("{e:#}"), "skipping a nudge");
                        continue;
                    }
                };
                if let Some(numbers) = numbers {
                    let message = notify::render(kind, &prefs.language, &numbers);
                    new.push(NotificationScheduled {
                        notification_id: notify::notification_id(&key),
                        user_id: prefs.user_id,
                        kind: kind.as_str().into(),
                        period: slot.period,
                        key,
                        channel: prefs.channel.clone(),
                        send_at: slot.send_at,
                        language: prefs.language.clone(),
                        title: message.title,
                        body: message.body,
                        link: message.link,
                    });
                }
            }
        }
        let appended = futures::stream::iter(new)
            .map(|event| self.append_scheduled(event))
            .buffer_unordered(256)
            .collect::<Vec<_>>()
            .await;
        let mut count = 0;
        let mut head = 0;
        for result in appended {
            if let Some(position) = result? {
                count += 1;
                head = head.max(position);
            }
        }
        self.settle(head).await;
        Ok(count)
    }

    /// Records one scheduled nudge; `None` if it already was.
    async fn append_scheduled(&self, event: NotificationScheduled) -> anyhow::Result<Option<u64>> {
        let id = event.notification_id;
        let new = NewEvent::with_id(
            id,
            &Event::NotificationScheduled(event),
            Metadata::default(),
        );
        match self
            .inner
            .store
            .append_to_stream(
                streams::notification(id),
                ExpectedVersion::NoStream,
                vec![new],
            )
            .await
        {
            Ok(appended) if appended.version == 0 => Ok(Some(appended.position)),
            Ok(_) | Err(AppendError::WrongExpectedVersion { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Delivers pending nudges whose time has come, in batches, until none is left or
    /// `budget` is spent (the background loop gives each pass one tick).
    async fn deliver(&self, budget: Option<Duration>) -> anyhow::Result<Pass> {
        let inner = &self.inner;
        let started = tokio::time::Instant::now();
        let spent = || budget.is_some_and(|b| started.elapsed() >= b);
        let mut pass = Pass::default();
        // Nudges whose outcome another worker recorded first: not tried again in this pass.
        let mut raced: HashSet<Uuid> = HashSet::new();
        loop {
            if spent() {
                return Ok(pass);
            }
            // The outbox must show every outcome already in the log (after a restart, or one
            // recorded by another worker), or this pass would send those nudges again.
            let head = *inner.store.committed().borrow();
            self.settle(head).await;
            let now = inner.clock.now();
            let batch: Vec<OutboxRow> = outbox::due(&inner.db, now.as_microsecond(), 2_000)
                .await?
                .into_iter()
                .filter(|row| !raced.contains(&row.id))
                .collect();
            if batch.is_empty() {
                return Ok(pass);
            }
            // A few rounds of deliveries at a time, each checking opt-outs just before, so a
            // learner who opts out before delivery gets nothing.
            let concurrency = inner.settings.concurrency.max(1);
            for chunk in batch.chunks(concurrency * 4) {
                let users: Vec<Uuid> = chunk.iter().map(|row| row.user_id).collect();
                let wanted = outbox::kinds_of(&inner.db, &users).await?;
                let results = futures::stream::iter(chunk.iter().cloned())
                    .map(|row| {
                        let still = wanted
                            .get(&row.user_id)
                            .is_some_and(|k| k.contains(&row.kind));
                        self.deliver_one(row, still)
                    })
                    .buffer_unordered(concurrency)
                    .collect::<Vec<_>>()
                    .await;
                for result in results {
                    let (id, outcome) = result?;
                    match outcome {
                        Outcome::Sent => pass.sent += 1,
                        Outcome::Failed => pass.failed += 1,
                        Outcome::Parked => pass.parked += 1,
                        Outcome::Cancelled => pass.cancelled += 1,
                        Outcome::Raced => {
                            raced.insert(id);
                        }
                    }
                }
                if spent() {
                    break;
                }
            }
        }
    }

    /// Sends one nudge and records the outcome (after the channel answered).
    async fn deliver_one(
        &self,
        row: OutboxRow,
        still_wanted: bool,
    ) -> anyhow::Result<(Uuid, Outcome)> {
        let inner = &self.inner;
        let attempt = row.attempts + 1;
        let (outcome, event) = if !still_wanted {
            (
                Outcome::Cancelled,
                Event::NotificationCancelled(NotificationCancelled {
                    notification_id: row.id,
                    reason: "opted_out".into(),
                }),
            )
        } else {
            let result = match inner.channels.get(row.channel.as_str()) {
                Some(channel) => channel.send(&self.outgoing(&row, attempt)).await,
                None => Err(DeliveryError {
                    code: "unknown_channel".into(),
                    message: format!("no channel `{}` is configured", row.channel),
                    retryable: false,
                }),
            };
            match result {
                Ok(status) => (
                    Outcome::Sent,
                    Event::NotificationSent(NotificationSent {
                        notification_id: row.id,
                        attempt,
                        channel: row.channel.clone(),
                        status,
                    }),
                ),
                Err(e) if !e.retryable || attempt >= inner.settings.max_attempts => {
                    tracing::warn!(notification = %row.id, code = e.code, attempt, "a nudge could not be delivered; parked");
                    (
                        Outcome::Parked,
                        Event::NotificationParked(NotificationParked {
                            notification_id: row.id,
                            attempts: attempt,
                            code: e.code,
                            message: e.message,
                        }),
                    )
                }
                Err(e) => (
                    Outcome::Failed,
                    Event::NotificationFailed(NotificationFailed {
                        notification_id: row.id,
                        attempt,
                        code: e.code,
                        message: e.message,
                        retry_at: inner.clock.now().checked_add(self.backoff(attempt))?,
                    }),
                ),
            }
        };
        let new = NewEvent::from_event(&event, Metadata::default());
        match inner
            .store
            .append_to_stream(
                streams::notification(row.id),
                ExpectedVersion::Exact(row.version),
                vec![new],
            )
            .await
        {
            Ok(_) => Ok((row.id, outcome)),
            // Another worker recorded this nudge's outcome first.
            Err(AppendError::WrongExpectedVersion { .. }) => Ok((row.id, Outcome::Raced)),
            Err(e) => Err(e.into()),
        }
    }

    /// The delay before attempt `attempt + 1`: the base, doubled per attempt, at most an hour.
    fn backoff(&self, attempt: u32) -> SignedDuration {
        let base = self.inner.settings.retry_base;
        let delay = base
            .checked_mul(1 << attempt.saturating_sub(1).min(20))
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(3600));
        SignedDuration::try_from(delay).unwrap_or(SignedDuration::from_hours(1))
    }

    fn outgoing(&self, row: &OutboxRow, attempt: u32) -> Outgoing {
        Outgoing {
            id: row.id,
            key: row.key.clone(),
            user_id: row.user_id,
            kind: row.kind.clone(),
            attempt,
            language: row.message.language.clone(),
            title: row.message.title.clone(),
            body: row.message.body.clone(),
            link: format!("{}/n/{}", self.inner.settings.public_url, row.id),
        }
    }

    /// Waits (bounded) until the outbox read model shows what was just appended.
    async fn settle(&self, position: u64) {
        if position > 0 {
            self.inner
                .outbox
                .wait_for(position, Duration::from_secs(30))
                .await;
        }
    }
}

enum Outcome {
    Sent,
    Failed,
    Parked,
    Cancelled,
    /// Another worker got there first.
    Raced,
}

/// What a scheduling pass reads once: the catalogue, and the ranking weeks.
struct Context<'a> {
    inner: &'a Inner,
    now: Timestamp,
    topics: Vec<TopicPublished>,
}

/// The ranking board of the calendar week `weeks` before the one holding `day`.
fn week_before(day: jiff::civil::Date, weeks: i64) -> anyhow::Result<BoardKey> {
    let monday = day.checked_sub(i64::from(day.weekday().to_monday_zero_offset()).days())?;
    let start = monday.checked_sub((7 * weeks).days())?;
    Ok(BoardKey {
        period: Period::Week,
        scope: Scope::Overall,
        days: Some((start, start.checked_add(6.days())?)),
    })
}

impl<'a> Context<'a> {
    async fn new(inner: &'a Inner, now: Timestamp) -> anyhow::Result<Context<'a>> {
        Ok(Context {
            inner,
            now,
            topics: crate::projection::topics::all_topics(&inner.db).await?,
        })
    }

    /// The numbers a nudge is built from, or `None` when it is not worth sending (the learner
    /// already taught today; no streak to keep).
    async fn numbers(
        &mut self,
        kind: Kind,
        prefs: &PrefsRow,
        fired_on: jiff::civil::Date,
    ) -> anyhow::Result<Option<Numbers>> {
        let user = prefs.user_id;
        if kind == Kind::WeeklyDigest {
            let standing = |key: &BoardKey| {
                self.inner
                    .rankings
                    .page(key.clone(), None, 0, Some(user))
                    .me
            };
            // The week before the one the digest fired in (the learner's Monday, which may
            // still be Sunday in the server's calendar), and the week before that.
            let last = standing(&week_before(fired_on, 1)?);
            let before = standing(&week_before(fired_on, 2)?);
            return Ok(Some(Numbers {
                rank: last.as_ref().and_then(|s| s.rank).map(u64::from),
                previous_rank: before.as_ref().and_then(|s| s.rank).map(u64::from),
                points: last.as_ref().map_or(0, |s| u64::from(s.points)),
                ranked_learners: last.as_ref().map_or(0, |s| u64::from(s.total)),
                ..Numbers::default()
            }));
        }
        let doc = crate::projection::learning::user_doc(&self.inner.db, user).await?;
        let today = day_of(self.now, &self.inner.server_tz);
        let taught_today = doc.as_ref().is_some_and(|d| d.finish_days.contains(&today));
        if taught_today {
            return Ok(None);
        }
        let stats = doc.as_ref().map(|d| d.stats(today)).unwrap_or_default();
        if kind == Kind::StreakWarning && stats.current_streak_days == 0 {
            return Ok(None);
        }
        Ok(Some(Numbers {
            name: doc.as_ref().map(|d| d.name.clone()).unwrap_or_default(),
            streak_days: stats.current_streak_days,
            topic: self.recommend(doc.as_ref(), &prefs.language),
            ..Numbers::default()
        }))
    }

    /// A topic worth teaching next: the weakest one scoring under 70, else the first one in the
    /// catalogue not taught yet. Its title in `language`, and its id.
    fn recommend(
        &self,
        doc: Option<&teachback_projections::learning::UserDoc>,
        language: &str,
    ) -> Option<(String, String)> {
        let best = doc.map(|d| d.best_by_topic(None)).unwrap_or_default();
        let weakest = best
            .iter()
            .filter(|(_, score)| **score < 70)
            .min_by_key(|(topic, score)| (**score, **topic))
            .map(|(topic, _)| (*topic).to_owned());
        let topic_id = weakest.or_else(|| {
            self.topics
                .iter()
                .find(|t| doc.is_none_or(|d| !d.topics.contains(&t.topic_id)))
                .map(|t| t.topic_id.clone())
        })?;
        let topic = self.topics.iter().find(|t| t.topic_id == topic_id)?;
        let title = topic
            .title
            .get(language)
            .or_else(|| topic.title.values().next())?
            .clone();
        Some((title, topic_id))
    }
}
