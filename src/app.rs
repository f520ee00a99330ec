//! Wiring: open the database, start the event store and projections, serve HTTP until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::analytics::Prices;
use crate::auth::{self, Keys};
use crate::blob::{self, BlobStore};
use crate::catalog;
use crate::config::{Config, EventStoreKind};
use crate::db::{ConnectOptions, Db};
use crate::erasure::EraseError;
use crate::http::{self, AppState};
use crate::live::hub::Hub;
use crate::live::segment::SegmentRules;
use crate::live::wal::{AudioWal, Recovered};
use crate::live::{Live, LiveSettings};
use crate::notify::channel::Webhook;
use crate::notify::clock::SystemClock;
use crate::notify::{Notifier, NotifySettings};
use crate::pipeline::{Pipeline, PipelineSettings, Providers, SttLanguage};
use crate::projection::learning::LearningProjector;
use crate::projection::lectures::{LecturesProjector, unfinished_lectures};
use crate::projection::notifications::NotificationsProjector;
use crate::projection::usage::UsageProjector;
use crate::projection::{
    self, ProjectionStatus, Projector, topics::TopicsProjector, users::UsersProjector,
};
use crate::provider::llm::{ChatModel, LlmConfig, OpenAiChat};
use crate::provider::stt::{OpenAiStt, SpeechToText, SttConfig};
use crate::provider::{Breaker, RetryPolicy, Timeouts};
use crate::rankings::Rankings;
use crate::store::{Backend, EventStore, SqlBackend, StoreError};
use teachback_projections::notify::{Cron, Kind};

/// The event store's backend the configuration selects (`TEACHBACK_EVENT_STORE`), for the
/// server and the CLI alike. Either way learners' keys live in `db`.
pub fn event_backend(config: &Config, db: &Db) -> anyhow::Result<Arc<dyn Backend>> {
    match config.event_store {
        EventStoreKind::Sql => Ok(Arc::new(SqlBackend::new(db.clone()))),
        EventStoreKind::KurrentDb => kurrent_backend(config, db),
    }
}

#[cfg(feature = "kurrentdb")]
fn kurrent_backend(config: &Config, db: &Db) -> anyhow::Result<Arc<dyn Backend>> {
    use secrecy::ExposeSecret;
    let url = config.kurrentdb_url.as_ref().context(
        "TEACHBACK_EVENT_STORE=kurrentdb needs TEACHBACK_KURRENTDB_URL \
         (for example kurrentdb://127.0.0.1:2113?tls=false)",
    )?;
    let backend = crate::store::KurrentBackend::connect(url.expose_secret(), db.clone())
        .context("TEACHBACK_KURRENTDB_URL")?;
    Ok(Arc::new(backend))
}

#[cfg(not(feature = "kurrentdb"))]
fn kurrent_backend(_: &Config, _: &Db) -> anyhow::Result<Arc<dyn Backend>> {
    anyhow::bail!(
        "TEACHBACK_EVENT_STORE=kurrentdb, but this binary was built without the `kurrentdb` \
         cargo feature; build it with `cargo build --release --features kurrentdb`"
    )
}

/// A built application, ready to serve.
pub struct App {
    pub state: AppState,
    max_body_bytes: usize,
}

/// Every projection, in the order the server starts them: users, topics, lectures, learning.
pub fn projectors(tz: &jiff::tz::TimeZone) -> Vec<Arc<dyn Projector>> {
    vec![
        Arc::new(UsersProjector::default()),
        Arc::new(TopicsProjector::default()),
        Arc::new(LecturesProjector::default()),
        Arc::new(LearningProjector::new(tz.clone())),
        Arc::new(NotificationsProjector::default()),
        Arc::new(UsageProjector::new(tz.clone())),
    ]
}

impl App {
    /// Opens storage (creating the data dir and the SQLite file if needed), migrates, and starts
    /// the event store's writer and the projections.
    pub async fn build(config: &Config) -> anyhow::Result<App> {
        create_data_dir(&config.data_dir)?;
        let db = Db::connect(
            &config.database_url(),
            &ConnectOptions {
                max_connections: config.db_max_connections,
                schema: None,
            },
        )
        .await?;
        Self::from_db(config, db).await
    }

    /// Like [`App::build`], on an already connected database (tests use their own schemas).
    pub async fn from_db(config: &Config, db: Db) -> anyhow::Result<App> {
        let blobs = blob::open(&config.blob_url())?;
        Self::from_parts(config, db, blobs).await
    }

    /// Like [`App::from_db`], with an already opened blob store (tests bring their own).
    pub async fn from_parts(
        config: &Config,
        db: Db,
        blobs: Arc<dyn BlobStore>,
    ) -> anyhow::Result<App> {
        Self::from_parts_with_clock(config, db, blobs, Arc::new(SystemClock)).await
    }

    /// Like [`App::from_parts`], with the clock quotas and nudges read "today" from (tests move
    /// it).
    pub async fn from_parts_with_clock(
        config: &Config,
        db: Db,
        blobs: Arc<dyn BlobStore>,
        clock: Arc<dyn crate::notify::clock::Clock>,
    ) -> anyhow::Result<App> {
        let rate_rules = config.rate_rules()?;
        let quota_settings = config.quota_settings()?;
        create_data_dir(&config.data_dir)?;
        crate::metrics::recorder();
        db.migrate().await?;
        let store = EventStore::start(event_backend(config, &db)?, config.poll_interval())
            .await
            .context("starting the event store")?;
        // Lecture audio is sealed with its learner's key, like their personal fields in the log.
        let blobs = match store.vault() {
            Some(vault) => crate::vault::SealedBlobs::wrap(blobs, vault.clone()),
            None => blobs,
        };
        let tz = config.tz()?;
        let projectors = projectors(&tz);
        let mut statuses = Vec::with_capacity(projectors.len());
        for projector in &projectors {
            statuses.push(projection::spawn(db.clone(), store.clone(), projector.clone()).await?);
        }
        let [users, topics, lectures, learning, notifications, usage]: [ProjectionStatus; 6] =
            statuses
                .try_into()
                .map_err(|_| anyhow::anyhow!("six projections"))?;
        let rankings = Rankings::start(db.clone(), tz.clone(), learning.clone()).await?;
        let prices = Prices {
            prompt_per_mtok: config.price_prompt_per_mtok,
            completion_per_mtok: config.price_completion_per_mtok,
            stt_per_minute: config.price_stt_per_minute,
        };
        let quotas =
            crate::usage::Quotas::new(db.clone(), quota_settings, prices, tz, clock.clone());
        quotas.spawn_gauges();
        let limits = crate::limits::RateLimiter::new(rate_rules, &db);
        limits.spawn_sweeper();
        tracing::info!(rate_limits = %limits.rules().describe(), shared = limits.shared(), "rate limits");
        let published = catalog::publish(&store, catalog::starter())
            .await
            .context("publishing the starter catalogue")?;
        topics
            .wait_for(published, config.read_your_writes_timeout())
            .await;
        let secret = auth::load_or_create_secret(config.jwt_secret.as_ref(), &config.data_dir)?;
        let keys = Keys::new(&secret, config.access_token_ttl());
        let (wal, recovered) = AudioWal::open(&config.data_dir.join("wal"))?;
        let hub = Hub::new();
        let pipeline = Pipeline::new(
            db.clone(),
            store.clone(),
            blobs.clone(),
            hub.clone(),
            providers(config)?,
            pipeline_settings(config)?,
        );
        pipeline.guard_spending(quotas.clone());
        // Several instances share lectures through PostgreSQL: each holds the ones it runs.
        let holder = match &db {
            Db::Postgres(pool) => Some(Arc::new(crate::live::holder::Holder::new(pool.clone()))),
            Db::Sqlite(_) => None,
        };
        let live = Live::new(
            store.clone(),
            blobs.clone(),
            wal,
            live_settings(config),
            hub,
            pipeline.notifier(),
            holder,
        );
        let recovered = recover_lectures(&db, &store, &lectures, &live, recovered).await?;
        if live.holder().is_some() {
            spawn_orphan_sweeper(db.clone(), live.clone());
        }
        tracing::info!(blobs = %blobs.describe(), recovered, "live lectures ready");
        let resumed = pipeline.recover().await?;
        pipeline.spawn_sweeper(Duration::from_secs(60));
        if let Some(days) = config.audio_retention_days {
            spawn_retention(store.clone(), blobs.clone(), days, clock.clone());
            tracing::info!(days, "audio retention on");
        }
        tracing::info!(
            stt = pipeline.has_stt(),
            grader = pipeline.grader(),
            resumed,
            "pipeline ready"
        );
        let notifier = notifier(config, &db, &store, &rankings, &notifications, clock)?;
        if let Some(notifier) = &notifier {
            notifier.spawn();
            tracing::info!(channels = ?notifier.channels(), "study nudges on");
        }
        tracing::info!(database = ?db.dialect(), head = *store.committed().borrow(), "storage ready");
        Ok(App {
            state: AppState {
                db,
                store,
                keys,
                users,
                topics,
                read_your_writes_timeout: config.read_your_writes_timeout(),
                ready_max_lag: config.ready_max_lag,
                admin_token_hash: config.admin_token.as_ref().map(|t| {
                    use secrecy::ExposeSecret;
                    use sha2::Digest;
                    sha2::Sha256::digest(t.expose_secret().as_bytes()).into()
                }),
                blobs,
                live,
                pipeline,
                lectures,
                learning,
                notifications,
                notifier,
                projectors: Arc::new(projectors),
                rankings,
                prices,
                usage,
                limits,
                trusted_proxies: Arc::new(config.trusted_proxies()?),
                quotas,
                public_url: config.public_url().into(),
                upload_url_ttl: Duration::from_secs(config.upload_url_ttl_secs),
                max_recording_bytes: config.max_recording_bytes,
            },
            max_body_bytes: config.max_body_bytes,
        })
    }

    /// Serves on `listener` until `shutdown` resolves, then lets in-flight requests finish,
    /// waits for every queued append to commit, and closes the database.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = http::router(self.state.clone(), self.max_body_bytes);
        tracing::info!(addr = %listener.local_addr()?, "serving");
        let live = self.state.live.clone();
        let shutdown = async move {
            shutdown.await;
            // Upgraded connections are not part of the HTTP server's graceful shutdown: close
            // them here, with a code that tells clients to reconnect and resume.
            live.begin_shutdown();
        };
        // Small frames (acks, state, feedback tokens) must not wait for Nagle's algorithm and the
        // peer's delayed ACK: that adds about 40 ms to a frame that follows another.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        let router = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("HTTP server")?;
        // Shared lectures: their connections were just closed, so each actor stores what it
        // received and lets its lecture go, for another instance to take over. Wait (bounded)
        // for that before the database goes; what does not make it stays in the audio WAL.
        if self.state.live.holder().is_some() {
            let deadline = tokio::time::Instant::now() + HANDOVER_WAIT;
            while !self.state.live.is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !self.state.live.is_empty() {
                tracing::warn!(
                    lectures = self.state.live.len(),
                    "lectures not let go before shutdown; their audio stays in the WAL"
                );
            }
        }
        self.state.store.flush().await;
        self.state.db.close().await;
        tracing::info!("shut down cleanly");
        Ok(())
    }
}

/// The longest a stopping server waits for its live lectures to be let go (several instances).
const HANDOVER_WAIT: Duration = Duration::from_secs(10);

/// The speech-to-text and grading clients the configuration names.
pub fn providers(config: &Config) -> anyhow::Result<Providers> {
    use secrecy::ExposeSecret;
    let retry = RetryPolicy {
        max_retries: config.provider_retries,
        ..RetryPolicy::default()
    };
    let breaker = || Breaker::new(5, Duration::from_secs(config.provider_breaker_secs));
    let stt = match &config.stt_url {
        Some(url) => {
            let client = OpenAiStt::new(SttConfig {
                url: url.clone(),
                model: config.stt_model.clone(),
                api_key: config.stt_api_key().map(|k| k.expose_secret().to_owned()),
                stream: config.stt_stream,
                // Servers that do not stream answer only when the whole segment is done: the
                // first byte may come as late as the end.
                timeouts: Timeouts {
                    first_byte: Duration::from_secs(config.stt_timeout_secs),
                    total: Duration::from_secs(config.stt_timeout_secs),
                    ..Timeouts::stt_default()
                },
                retry,
            })
            .map_err(|e| anyhow::anyhow!("TEACHBACK_STT_URL: {e}"))?
            .with_breaker(breaker());
            Some(Arc::new(client) as Arc<dyn SpeechToText>)
        }
        None => None,
    };
    let llm = match &config.llm_url {
        Some(url) => {
            let client = OpenAiChat::new(LlmConfig {
                url: url.clone(),
                model: config.llm_model.clone(),
                api_key: config.llm_api_key().map(|k| k.expose_secret().to_owned()),
                timeouts: Timeouts {
                    first_byte: Duration::from_secs(config.llm_first_byte_secs),
                    total: Duration::from_secs(config.llm_timeout_secs),
                    ..Timeouts::llm_default()
                },
                retry,
            })
            .map_err(|e| anyhow::anyhow!("TEACHBACK_LLM_URL: {e}"))?
            .with_breaker(breaker());
            Some(Arc::new(client) as Arc<dyn ChatModel>)
        }
        None => None,
    };
    Ok(Providers { stt, llm })
}

/// The nudge scheduler and outbox, when a delivery channel is configured.
pub fn notifier(
    config: &Config,
    db: &Db,
    store: &EventStore,
    rankings: &Rankings,
    outbox: &ProjectionStatus,
    clock: Arc<dyn crate::notify::clock::Clock>,
) -> anyhow::Result<Option<Notifier>> {
    let Some(url) = &config.notify_webhook_url else {
        return Ok(None);
    };
    let secret = config.notify_webhook_secret.clone().ok_or_else(|| {
        anyhow::anyhow!("TEACHBACK_NOTIFY_WEBHOOK_URL needs TEACHBACK_NOTIFY_WEBHOOK_SECRET")
    })?;
    let webhook = Webhook::new(
        url.clone(),
        secret,
        Duration::from_secs(config.notify_timeout_secs.max(1)),
    )?;
    let cron = |name: &str, text: &str| -> anyhow::Result<Cron> {
        text.parse().map_err(|e| anyhow::anyhow!("{name}: {e}"))
    };
    let settings = NotifySettings {
        crons: [
            (
                Kind::DailyReminder,
                cron("TEACHBACK_NOTIFY_DAILY_CRON", &config.notify_daily_cron)?,
            ),
            (
                Kind::StreakWarning,
                cron("TEACHBACK_NOTIFY_STREAK_CRON", &config.notify_streak_cron)?,
            ),
            (
                Kind::WeeklyDigest,
                cron("TEACHBACK_NOTIFY_WEEKLY_CRON", &config.notify_weekly_cron)?,
            ),
        ]
        .into_iter()
        .collect(),
        tick: Duration::from_secs(config.notify_tick_secs.max(1)),
        max_attempts: config.notify_max_attempts.max(1),
        retry_base: Duration::from_millis(config.notify_retry_base_ms.max(1)),
        concurrency: config.notify_concurrency.max(1),
        public_url: config.public_url(),
    };
    Ok(Some(Notifier::new(
        db.clone(),
        store.clone(),
        rankings.clone(),
        outbox.clone(),
        vec![Arc::new(webhook)],
        settings,
        clock,
    )))
}

pub fn pipeline_settings(config: &Config) -> anyhow::Result<PipelineSettings> {
    Ok(PipelineSettings {
        stt_language: SttLanguage::parse(&config.stt_language).map_err(anyhow::Error::msg)?,
        per_lecture: config.stt_concurrency_per_lecture.max(1),
        total: config.stt_concurrency.max(1),
        temperature: config.llm_temperature,
        ..PipelineSettings::default()
    })
}

fn live_settings(config: &Config) -> LiveSettings {
    LiveSettings {
        rules: SegmentRules {
            pause: Duration::from_millis(config.vad_pause_ms),
            max_len: Duration::from_millis(config.segment_max_ms),
            ..SegmentRules::default()
        },
        max_lecture: Duration::from_secs(config.lecture_max_secs),
        grace: Duration::from_secs(config.resume_grace_secs),
        max_per_user: config.max_live_lectures_per_user,
        max_recording_bytes: config.max_recording_bytes,
    }
}

/// Brings back the live lectures an earlier run left unfinished (a crash or a restart).
async fn recover_lectures(
    db: &Db,
    store: &EventStore,
    lectures: &ProjectionStatus,
    live: &Live,
    recovered: Recovered,
) -> anyhow::Result<usize> {
    let head = store.head().await?;
    anyhow::ensure!(
        lectures.wait_for(head, Duration::from_secs(60)).await,
        "the lectures projection did not catch up with the log within a minute"
    );
    let mut unfinished = Vec::new();
    for id in unfinished_lectures(db).await? {
        // Shared lectures: only those this instance's WAL still has audio of are its own to
        // bring back (and only if nobody took them over meanwhile); the others are held by
        // their instances, or resumed anywhere, or abandoned by the sweeper.
        if let Some(holder) = live.holder() {
            if !recovered.contains_key(&id) {
                continue;
            }
            if !holder.try_hold(id).await? {
                tracing::warn!(lecture = %id, "a lecture this instance ran was taken over while it was down");
                continue;
            }
        }
        let events = store
            .read_stream_all(&teachback_events::streams::lecture(id))
            .await?;
        if let Some(lecture) = teachback_projections::lectures::Lecture::fold(&events)?
            && !lecture.status.is_terminal()
        {
            unfinished.push(lecture);
        }
    }
    Ok(live.recover(unfinished, recovered))
}

/// Creates the data dir if it is missing. A new one is private to the server's user (0700): it
/// holds the database and the signing secret. An existing one is left as the operator set it.
pub fn create_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating the data dir {}", dir.display()))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

/// Deletes audio older than the retention every hour (and once shortly after start).
fn spawn_retention(
    store: EventStore,
    blobs: Arc<dyn BlobStore>,
    days: u32,
    clock: Arc<dyn crate::notify::clock::Clock>,
) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let cutoff = crate::erasure::cutoff(clock.now(), days);
            match crate::erasure::expire_audio(&store, &blobs, cutoff, days, &|_, _| {}).await {
                Ok(done) if done.lectures > 0 => {
                    tracing::info!(
                        lectures = done.lectures,
                        blobs = done.blobs_deleted,
                        days,
                        "audio past retention deleted"
                    );
                }
                Ok(_) => {}
                Err(EraseError::Store(StoreError::Closed)) => return,
                Err(e) => tracing::warn!(error = %e, "audio retention run failed"),
            }
        }
    });
}

/// Shared lectures: one instance at a time abandons lectures nobody resumed in time.
fn spawn_orphan_sweeper(db: Db, live: Live) {
    tokio::spawn(async move {
        let every = live
            .settings()
            .grace
            .min(Duration::from_secs(15))
            .max(Duration::from_secs(1));
        loop {
            tokio::time::sleep(every).await;
            if db.is_closed() {
                return;
            }
            let Ok(Some(_lease)) = crate::lease::Lease::try_acquire(&db, "live-sweeper").await
            else {
                continue;
            };
            match unfinished_lectures(&db).await {
                Ok(ids) => {
                    let n = live.sweep_orphans(ids).await;
                    if n > 0 {
                        tracing::info!(abandoned = n, "lectures nobody came back to");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "listing unfinished lectures failed"),
            }
        }
    });
}
