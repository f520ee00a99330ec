//! Typed configuration, read from flags and `TEACHBACK_*` environment variables.
//!
//! Every setting has a flag and a variable; the README's table and `.env.example` list them.
//! Secrets are [`SecretString`]s: their `Debug` output is redacted, so logging the config is safe.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

fn secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.to_owned()))
}

#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "TEACHBACK_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Directory for the embedded database, the generated signing secret and (later) audio.
    #[arg(long, env = "TEACHBACK_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// `sqlite://…` or `postgres://…`. Default: a SQLite file `teachback.db` in the data dir.
    #[arg(long, env = "TEACHBACK_DATABASE_URL", value_parser = secret, hide_env_values = true)]
    pub database_url: Option<SecretString>,

    /// Where the event log lives: `sql` (the database of TEACHBACK_DATABASE_URL) or `kurrentdb`
    /// (TEACHBACK_KURRENTDB_URL; needs the `kurrentdb` cargo feature). Learners' keys, the read
    /// models and the projection checkpoints stay in the SQL database either way.
    #[arg(long, env = "TEACHBACK_EVENT_STORE", default_value = "sql")]
    pub event_store: EventStoreKind,

    /// KurrentDB connection string (`kurrentdb://host:2113?tls=false`, `esdb://…`,
    /// `kurrentdb+discover://…` for a cluster), used when TEACHBACK_EVENT_STORE is `kurrentdb`.
    #[arg(long, env = "TEACHBACK_KURRENTDB_URL", value_parser = secret, hide_env_values = true)]
    pub kurrentdb_url: Option<SecretString>,

    /// Most connections in the database pool.
    #[arg(long, env = "TEACHBACK_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// HS256 secret for access tokens. Default: generated once into `<data dir>/jwt-secret` (0600).
    #[arg(long, env = "TEACHBACK_JWT_SECRET", value_parser = secret, hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,

    /// Lifetime of an access token, in seconds.
    #[arg(long, env = "TEACHBACK_ACCESS_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub access_token_ttl_secs: u64,

    /// How long a request that just wrote may wait for the read models to show its write (ms).
    #[arg(
        long,
        env = "TEACHBACK_READ_YOUR_WRITES_TIMEOUT_MS",
        default_value_t = 2000
    )]
    pub read_your_writes_timeout_ms: u64,

    /// `/readyz` fails while a projection is more than this many events behind the log.
    #[arg(long, env = "TEACHBACK_READY_MAX_LAG", default_value_t = 1000)]
    pub ready_max_lag: u64,

    /// Largest accepted JSON request body, in bytes (larger ones get 413).
    #[arg(long, env = "TEACHBACK_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// How often idle subscriptions look for events written by other processes (ms).
    #[arg(long, env = "TEACHBACK_POLL_INTERVAL_MS", default_value_t = 500)]
    pub poll_interval_ms: u64,

    /// Where audio blobs go: a directory path (default `<data dir>/audio`), `file:///abs/path`,
    /// or `s3://bucket/prefix` (needs the `s3` feature; endpoint and credentials from `AWS_*`).
    #[arg(long, env = "TEACHBACK_BLOB_URL")]
    pub blob_url: Option<String>,

    /// Bearer token for the admin endpoints (`/api/v1/admin/…`). Unset: admin endpoints are off.
    #[arg(long, env = "TEACHBACK_ADMIN_TOKEN", value_parser = secret, hide_env_values = true)]
    pub admin_token: Option<SecretString>,

    /// The server's public base URL, used to build upload URLs. Default: `http://<addr>`.
    #[arg(long, env = "TEACHBACK_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// A pause in speech at least this long (ms) closes an audio segment.
    #[arg(long, env = "TEACHBACK_VAD_PAUSE_MS", default_value_t = 600)]
    pub vad_pause_ms: u64,

    /// Longest audio segment (ms); a segment is closed at this length even without a pause.
    #[arg(long, env = "TEACHBACK_SEGMENT_MAX_MS", default_value_t = 15_000)]
    pub segment_max_ms: u64,

    /// Longest lecture (seconds of audio); at this length the lecture is finished.
    #[arg(long, env = "TEACHBACK_LECTURE_MAX_SECS", default_value_t = 600)]
    pub lecture_max_secs: u64,

    /// How long an interrupted live lecture waits for its learner to reconnect (seconds).
    #[arg(long, env = "TEACHBACK_RESUME_GRACE_SECS", default_value_t = 120)]
    pub resume_grace_secs: u64,

    /// Most live lectures one learner may have at once.
    #[arg(
        long,
        env = "TEACHBACK_MAX_LIVE_LECTURES_PER_USER",
        default_value_t = 1
    )]
    pub max_live_lectures_per_user: usize,

    /// Days lecture audio is kept; older segments' blobs are deleted hourly, each deletion
    /// recorded as `AudioDeleted`. Unset: audio is kept until its learner is erased.
    #[arg(long, env = "TEACHBACK_AUDIO_RETENTION_DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    pub audio_retention_days: Option<u32>,

    /// Largest recording accepted whole (container formats and REST uploads), in bytes.
    #[arg(long, env = "TEACHBACK_MAX_RECORDING_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_recording_bytes: u64,

    /// Lifetime of a signed upload URL, in seconds.
    #[arg(long, env = "TEACHBACK_UPLOAD_URL_TTL_SECS", default_value_t = 900)]
    pub upload_url_ttl_secs: u64,

    /// Speech-to-text: base URL of an OpenAI-compatible API (e.g. `https://api.openai.com/v1`,
    /// `http://127.0.0.1:8000/v1`). Unset: audio lectures wait, "awaiting transcription".
    #[arg(long, env = "TEACHBACK_STT_URL")]
    pub stt_url: Option<String>,

    /// Speech-to-text model (`whisper-1`, `gpt-4o-mini-transcribe`, a local model's name, …).
    #[arg(long, env = "TEACHBACK_STT_MODEL", default_value = "whisper-1")]
    pub stt_model: String,

    /// Speech-to-text API key. Default: `OPENAI_API_KEY`.
    #[arg(long, env = "TEACHBACK_STT_API_KEY", value_parser = secret, hide_env_values = true)]
    pub stt_api_key: Option<SecretString>,

    /// The language sent to speech-to-text: `detect` (send none; the provider detects it),
    /// `lecture` (the language the lecture declared), or an ISO 639-1 code.
    #[arg(long, env = "TEACHBACK_STT_LANGUAGE", default_value = "detect")]
    pub stt_language: String,

    /// Ask for streamed transcripts (`transcript.text.delta`); servers that don't stream answer
    /// whole, which works too.
    #[arg(long, env = "TEACHBACK_STT_STREAM", default_value_t = true, action = clap::ArgAction::Set)]
    pub stt_stream: bool,

    /// Most transcriptions in flight at once, over all lectures.
    #[arg(long, env = "TEACHBACK_STT_CONCURRENCY", default_value_t = 8)]
    pub stt_concurrency: usize,

    /// Most transcriptions in flight at once for one lecture.
    #[arg(
        long,
        env = "TEACHBACK_STT_CONCURRENCY_PER_LECTURE",
        default_value_t = 2
    )]
    pub stt_concurrency_per_lecture: usize,

    /// Longest a transcription may take, per attempt (seconds).
    #[arg(long, env = "TEACHBACK_STT_TIMEOUT_SECS", default_value_t = 60)]
    pub stt_timeout_secs: u64,

    /// Grading model: base URL of an OpenAI-compatible API. Unset: the built-in rubric grader.
    #[arg(long, env = "TEACHBACK_LLM_URL")]
    pub llm_url: Option<String>,

    /// Grading model name (`gpt-4o-mini`, a local model's name, …).
    #[arg(long, env = "TEACHBACK_LLM_MODEL", default_value = "gpt-4o-mini")]
    pub llm_model: String,

    /// Grading model API key. Default: `OPENAI_API_KEY`.
    #[arg(long, env = "TEACHBACK_LLM_API_KEY", value_parser = secret, hide_env_values = true)]
    pub llm_api_key: Option<SecretString>,

    /// Time zone of calendar days: daily streaks, the ranking week and month, analytics days.
    /// An IANA name such as `Asia/Seoul`. Changing it rebuilds the learning projection.
    #[arg(long, env = "TEACHBACK_TIME_ZONE", default_value = "UTC")]
    pub time_zone: String,

    /// Price of the grading model's prompt tokens, US dollars per million (analytics' cost
    /// estimate; the default is gpt-4o-mini's).
    #[arg(long, env = "TEACHBACK_PRICE_PROMPT_PER_MTOK", default_value_t = 0.15)]
    pub price_prompt_per_mtok: f64,

    /// Price of the grading model's completion tokens, US dollars per million.
    #[arg(
        long,
        env = "TEACHBACK_PRICE_COMPLETION_PER_MTOK",
        default_value_t = 0.60
    )]
    pub price_completion_per_mtok: f64,

    /// Price of speech-to-text, US dollars per minute of audio (whisper-1's by default).
    #[arg(long, env = "TEACHBACK_PRICE_STT_PER_MINUTE", default_value_t = 0.006)]
    pub price_stt_per_minute: f64,

    /// Sampling temperature for grading (low: grades should not be a lottery).
    #[arg(long, env = "TEACHBACK_LLM_TEMPERATURE", default_value_t = 0.2)]
    pub llm_temperature: f32,

    /// Longest wait for the grading model's first streamed bytes (seconds).
    #[arg(long, env = "TEACHBACK_LLM_FIRST_BYTE_SECS", default_value_t = 20)]
    pub llm_first_byte_secs: u64,

    /// Longest a grading call may take, per attempt (seconds).
    #[arg(long, env = "TEACHBACK_LLM_TIMEOUT_SECS", default_value_t = 120)]
    pub llm_timeout_secs: u64,

    /// Retries of a failed provider call (before any of its output reached the learner).
    #[arg(long, env = "TEACHBACK_PROVIDER_RETRIES", default_value_t = 2)]
    pub provider_retries: u32,

    /// After five provider failures in a row, calls to it stop for this long (seconds) and the
    /// rubric grader stands in; then one trial call goes through.
    #[arg(long, env = "TEACHBACK_PROVIDER_BREAKER_SECS", default_value_t = 30)]
    pub provider_breaker_secs: u64,

    /// Log filter, in `tracing` env-filter syntax (e.g. `info,teachback=debug`).
    #[arg(long, env = "TEACHBACK_LOG", default_value = "info")]
    pub log: String,

    /// Log format: `text` or `json`.
    #[arg(long, env = "TEACHBACK_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Study nudges are delivered by POSTing them, signed, to this URL (a push gateway, an
    /// SMS bridge, …). Unset: nudges are neither scheduled nor sent (learners can still set
    /// their preferences).
    #[arg(long, env = "TEACHBACK_NOTIFY_WEBHOOK_URL")]
    pub notify_webhook_url: Option<String>,

    /// The shared secret nudges are signed with (HMAC-SHA256), at least 32 characters.
    #[arg(long, env = "TEACHBACK_NOTIFY_WEBHOOK_SECRET", value_parser = secret, hide_env_values = true)]
    pub notify_webhook_secret: Option<SecretString>,

    /// When the daily reminder fires (cron, in the learner's time zone; a learner's preferred
    /// hour replaces the hour).
    #[arg(
        long,
        env = "TEACHBACK_NOTIFY_DAILY_CRON",
        default_value = "0 19 * * *"
    )]
    pub notify_daily_cron: String,

    /// When the streak warning fires (cron, in the learner's time zone).
    #[arg(
        long,
        env = "TEACHBACK_NOTIFY_STREAK_CRON",
        default_value = "0 21 * * *"
    )]
    pub notify_streak_cron: String,

    /// When the weekly ranking digest fires (cron, in the learner's time zone).
    #[arg(
        long,
        env = "TEACHBACK_NOTIFY_WEEKLY_CRON",
        default_value = "0 8 * * 1"
    )]
    pub notify_weekly_cron: String,

    /// How often the nudge scheduler runs (seconds).
    #[arg(long, env = "TEACHBACK_NOTIFY_TICK_SECS", default_value_t = 60)]
    pub notify_tick_secs: u64,

    /// Delivery attempts before a nudge is parked.
    #[arg(long, env = "TEACHBACK_NOTIFY_MAX_ATTEMPTS", default_value_t = 8)]
    pub notify_max_attempts: u32,

    /// The first retry's delay (ms); each next one doubles, up to an hour.
    #[arg(long, env = "TEACHBACK_NOTIFY_RETRY_BASE_MS", default_value_t = 2000)]
    pub notify_retry_base_ms: u64,

    /// Longest a delivery may take (seconds).
    #[arg(long, env = "TEACHBACK_NOTIFY_TIMEOUT_SECS", default_value_t = 10)]
    pub notify_timeout_secs: u64,

    /// Deliveries in flight at once.
    #[arg(long, env = "TEACHBACK_NOTIFY_CONCURRENCY", default_value_t = 64)]
    pub notify_concurrency: usize,

    /// Rate limits, per client address (`ip`) and per learner: the defaults overridden item by
    /// item, like `devices.ip=20/h,lectures.learner=off`; `only:…` for just the items given;
    /// `off` for none. Actions: devices, refresh, lectures, text, uploads, sockets, and
    /// `messages.connection` (WebSocket messages; over the rate a connection is read slower).
    /// Periods: s, min, h, d (`600/10min`). See docs/security.md for the defaults.
    #[arg(long, env = "TEACHBACK_RATE_LIMITS", default_value = "")]
    pub rate_limits: String,

    /// The reverse proxies in front of the server, as addresses or CIDR networks
    /// (`10.0.0.0/8,192.0.2.7`). From them, `X-Forwarded-For` is believed: the right-most
    /// address in it that is not a trusted proxy is the client rate limits count. Empty: the TCP
    /// peer is the client, and the header is ignored.
    #[arg(long, env = "TEACHBACK_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,

    /// Lectures a learner may start a day (0: unlimited).
    #[arg(long, env = "TEACHBACK_QUOTA_LECTURES_PER_DAY", default_value_t = 50)]
    pub quota_lectures_per_day: u64,

    /// Minutes of lecture audio a learner may record a day (0: unlimited).
    #[arg(
        long,
        env = "TEACHBACK_QUOTA_AUDIO_MINUTES_PER_DAY",
        default_value_t = 120
    )]
    pub quota_audio_minutes_per_day: u64,

    /// Grading-model tokens (prompt and completion) a learner's grades may use a day
    /// (0: unlimited).
    #[arg(
        long,
        env = "TEACHBACK_QUOTA_LLM_TOKENS_PER_DAY",
        default_value_t = 200_000
    )]
    pub quota_llm_tokens_per_day: u64,

    /// The day's budget for provider spend, US dollars (priced with the TEACHBACK_PRICE_*
    /// settings). Unset: no spending guard.
    #[arg(long, env = "TEACHBACK_DAILY_BUDGET_USD")]
    pub daily_budget_usd: Option<f64>,

    /// The share of the daily budget, in percent, from which new grades come from the rubric
    /// grader instead of the paid model.
    #[arg(long, env = "TEACHBACK_BUDGET_GUARD_PERCENT", default_value_t = 90.0)]
    pub budget_guard_percent: f64,

    /// Report errors (error-level log events, with the warnings and information before them as
    /// breadcrumbs) and panics to Sentry at this DSN. Unset: nothing is reported.
    #[arg(long, env = "SENTRY_DSN", value_parser = secret, hide_env_values = true)]
    pub sentry_dsn: Option<SecretString>,

    /// The environment reported to Sentry (`production`, `staging`, …).
    #[arg(long, env = "SENTRY_ENVIRONMENT")]
    pub sentry_environment: Option<String>,
}

/// Which event store holds the log.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStoreKind {
    /// The SQL database (SQLite or PostgreSQL, by TEACHBACK_DATABASE_URL).
    Sql,
    /// KurrentDB (TEACHBACK_KURRENTDB_URL).
    #[value(name = "kurrentdb")]
    KurrentDb,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The configured time zone.
    pub fn tz(&self) -> anyhow::Result<jiff::tz::TimeZone> {
        jiff::tz::TimeZone::get(&self.time_zone).map_err(|e| {
            anyhow::anyhow!(
                "TEACHBACK_TIME_ZONE `{}` is not a known time zone (use an IANA name such as \
                 `UTC` or `Asia/Seoul`): {e}",
                self.time_zone
            )
        })
    }

    /// The database URL: the configured one, or the embedded SQLite file in the data dir.
    pub fn database_url(&self) -> String {
        use secrecy::ExposeSecret;
        match &self.database_url {
            Some(url) => url.expose_secret().to_owned(),
            None => format!("sqlite://{}", self.data_dir.join("teachback.db").display()),
        }
    }

    pub fn access_token_ttl(&self) -> Duration {
        Duration::from_secs(self.access_token_ttl_secs)
    }

    pub fn read_your_writes_timeout(&self) -> Duration {
        Duration::from_millis(self.read_your_writes_timeout_ms)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// The blob store URL: the configured one, or the `audio` folder in the data dir.
    pub fn blob_url(&self) -> String {
        match &self.blob_url {
            Some(url) => url.clone(),
            None => self.data_dir.join("audio").display().to_string(),
        }
    }

    /// The public base URL, without a trailing slash.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.addr),
        }
    }

    /// The rate limits, parsed.
    pub fn rate_rules(&self) -> anyhow::Result<crate::limits::Rules> {
        self.rate_limits
            .parse()
            .map_err(|e| anyhow::anyhow!("TEACHBACK_RATE_LIMITS: {e}"))
    }

    /// The trusted reverse proxies, parsed.
    pub fn trusted_proxies(&self) -> anyhow::Result<crate::limits::TrustedProxies> {
        self.trusted_proxies
            .parse()
            .map_err(|e| anyhow::anyhow!("TEACHBACK_TRUSTED_PROXIES: {e}"))
    }

    /// The daily quotas and the spending guard.
    pub fn quota_settings(&self) -> anyhow::Result<crate::usage::QuotaSettings> {
        let some = |n: u64| (n > 0).then_some(n);
        if let Some(budget) = self.daily_budget_usd
            && !(budget.is_finite() && budget >= 0.0)
        {
            anyhow::bail!("TEACHBACK_DAILY_BUDGET_USD must be a non-negative amount, not {budget}");
        }
        if !(self.budget_guard_percent > 0.0 && self.budget_guard_percent <= 100.0) {
            anyhow::bail!(
                "TEACHBACK_BUDGET_GUARD_PERCENT must be above 0 and at most 100, not {}",
                self.budget_guard_percent
            );
        }
        Ok(crate::usage::QuotaSettings {
            lectures_per_day: some(self.quota_lectures_per_day),
            audio_minutes_per_day: some(self.quota_audio_minutes_per_day),
            llm_tokens_per_day: some(self.quota_llm_tokens_per_day),
            daily_budget_usd: self.daily_budget_usd,
            guard_at: self.budget_guard_percent / 100.0,
        })
    }

    /// The speech-to-text key: `TEACHBACK_STT_API_KEY`, else `OPENAI_API_KEY`.
    pub fn stt_api_key(&self) -> Option<SecretString> {
        self.stt_api_key.clone().or_else(openai_key)
    }

    /// The grading model's key: `TEACHBACK_LLM_API_KEY`, else `OPENAI_API_KEY`.
    pub fn llm_api_key(&self) -> Option<SecretString> {
        self.llm_api_key.clone().or_else(openai_key)
    }

    /// The configuration with no flags: defaults, overridden by any `TEACHBACK_*` variables set.
    pub fn defaults() -> Config {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            config: Config,
        }
        Only::parse_from(["teachback"]).config
    }
}

fn openai_key() -> Option<SecretString> {
    std::env::var("OPENAI_API_KEY")
        .ok()
        .filter(|k| !k.is_empty())
        .map(SecretString::from)
}
