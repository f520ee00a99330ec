//! The SQL database: connecting by URL, migrating, and running one query text on either dialect.
//!
//! SQLite is the embedded default; a `postgres://` URL selects PostgreSQL. Queries that are the
//! same on both are written once with `$1`-style placeholders (sqlx's SQLite driver binds them by
//! number) and run through [`with_pool!`], which instantiates the code once per pool type.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

/// A connection pool to one of the supported databases.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool `$db` holds. The body is compiled once for
/// each database, so it may only use SQL and types both support.
#[macro_export]
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn of_url(url: &str) -> anyhow::Result<Dialect> {
        if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Dialect::Postgres)
        } else {
            anyhow::bail!("unsupported database URL scheme (use sqlite:… or postgres://…)")
        }
    }
}

/// Options for [`Db::connect`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub max_connections: u32,
    /// PostgreSQL only: the schema to use (created if missing). Tests isolate themselves this way.
    pub schema: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            schema: None,
        }
    }
}

impl Db {
    /// Connects to the database a URL names. Never logs the URL: it may hold a password.
    pub async fn connect(url: &str, options: &ConnectOptions) -> anyhow::Result<Db> {
        match Dialect::of_url(url)? {
            Dialect::Sqlite => {
                let connect = SqliteConnectOptions::from_str(url)
                    .context("invalid SQLite URL")?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // FULL: every commit is fsynced before it returns. Appends are acknowledged
                    // only once durable; group commit keeps this fast.
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
                    // Deleted rows are overwritten with zeros, not left in free pages: an erased
                    // learner's read-model rows leave no plaintext in the file.
                    .pragma("secure_delete", "on")
                    .statement_cache_capacity(512);
                let pool = SqlitePoolOptions::new()
                    // Each SQLite connection is a thread; a few suffice for WAL readers.
                    .max_connections(options.max_connections.min(8))
                    .connect_with(connect)
                    .await
                    .context("cannot open the SQLite database")?;
                Ok(Db::Sqlite(pool))
            }
            Dialect::Postgres => {
                // Appends are acknowledged only once durable: insist on it whatever the server's
                // or role's default is.
                let mut connect = PgConnectOptions::from_str(url)
                    .context("invalid PostgreSQL URL")?
                    .options([("synchronous_commit", "on")]);
                if let Some(schema) = &options.schema {
                    anyhow::ensure!(
                        schema
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "schema names are ASCII letters, digits and underscores"
                    );
                    let admin = PgPoolOptions::new()
                        .max_connections(1)
                        .connect_with(connect.clone())
                        .await
                        .context("cannot connect to PostgreSQL")?;
                    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                        .execute(&admin)
                        .await?;
                    admin.close().await;
                    connect = connect.options([("search_path", schema.as_str())]);
                }
                let pool = PgPoolOptions::new()
                    .max_connections(options.max_connections)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(connect)
                    .await
                    .context("cannot connect to PostgreSQL")?;
                Ok(Db::Postgres(pool))
            }
        }
    }

    /// Applies the dialect's migrations from `migrations/<dialect>/`, then hashes the events
    /// written before the hash chain existed (see `store/backfill.rs`).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Db::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await,
            Db::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await,
        }
        .context("database migration failed")?;
        crate::store::backfill::backfill(self)
            .await
            .context("hashing the events written before the hash chain")?;
        Ok(())
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// A trivial round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        with_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))
    }

    /// Checks that the event log's table exists (for read-only tools).
    pub async fn ping_log(&self) -> Result<(), sqlx::Error> {
        with_pool!(self, pool => sqlx::query("SELECT 1 FROM events LIMIT 1").execute(pool).await.map(|_| ()))
    }

    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }

    /// Whether [`Db::close`] was called (the server is stopping).
    pub fn is_closed(&self) -> bool {
        with_pool!(self, pool => pool.is_closed())
    }
}

/// A write transaction on either database. On SQLite it holds the write lock from the start
/// (`BEGIN IMMEDIATE`), so it never fails half-way on a lock upgrade.
pub enum DbTx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// Runs `$body` with `$conn` bound to the transaction's connection, once per dialect.
#[macro_export]
macro_rules! with_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::db::DbTx::Sqlite(t) => {
                let $conn = &mut **t;
                $body
            }
            $crate::db::DbTx::Postgres(t) => {
                let $conn = &mut **t;
                $body
            }
        }
    };
}

impl Db {
    pub async fn begin_write(&self) -> Result<DbTx, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(pool) => DbTx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(pool) => DbTx::Postgres(pool.begin().await?),
        })
    }
}

impl DbTx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            DbTx::Sqlite(t) => t.commit().await,
            DbTx::Postgres(t) => t.commit().await,
        }
    }
}
