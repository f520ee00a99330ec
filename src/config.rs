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

    /// Log filter, in `tracing` env-filter syntax (e.g. `info,teachback=debug`).
    #[arg(long, env = "TEACHBACK_LOG", default_value = "info")]
    pub log: String,

    /// Log format: `text` or `json`.
    #[arg(long, env = "TEACHBACK_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
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
