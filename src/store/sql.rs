//! The SQL backend: SQLite or PostgreSQL behind one [`Backend`]. Reads are the same SQL on both;
//! only the append transaction differs (see `sqlite.rs` and `postgres.rs`).

use async_trait::async_trait;
use jiff::Timestamp;
use teachback_events::RecordedEvent;

use super::plan::{self, Path};
use super::row::{self, COLUMNS, EventRow, prefix_len, to_db};
use super::{
    AppendError, AppendOutcome, Backend, Direction, PreparedAppend, StoreError, VersionCache,
};
use super::{postgres, sqlite};
use crate::db::Db;
use crate::with_pool;

pub struct SqlBackend {
    db: Db,
    vault: std::sync::Arc<crate::vault::Vault>,
}

impl SqlBackend {
    pub fn new(db: Db) -> Self {
        Self {
            vault: std::sync::Arc::new(crate::vault::Vault::new(db.clone())),
            db,
        }
    }
}

#[async_trait]
impl Backend for SqlBackend {
    async fn append_batch(
        &self,
        batch: &[PreparedAppend],
        now: Timestamp,
        cache: &mut VersionCache,
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError> {
        // The fast path first (cached versions, no id lookup); if it could not decide, the
        // authoritative path (a full lookup under the write lock), which always decides.
        let streams = plan::streams_of(batch);
        for path in Path::IN_ORDER {
            let decided = match &self.db {
                Db::Sqlite(pool) => {
                    sqlite::attempt(pool, batch, now, cache, &streams, path).await?
                }
                Db::Postgres(pool) => {
                    postgres::attempt(pool, batch, now, cache, &streams, path).await?
                }
            };
            if let Some(answers) = decided {
                return Ok(answers);
            }
            cache.forget(&streams);
        }
        Err(StoreError::Conflict(
            "a unique constraint failed under the write lock".into(),
        ))
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = match direction {
            Direction::Forwards => format!(
                "SELECT {COLUMNS} FROM events WHERE stream = $1 AND version >= $2 \
                 ORDER BY version LIMIT $3"
            ),
            Direction::Backwards => format!(
                "SELECT {COLUMNS} FROM events WHERE stream = $1 AND version <= $2 \
                 ORDER BY version DESC LIMIT $3"
            ),
        };
        let rows: Vec<EventRow> = with_pool!(&self.db, pool => {
            sqlx::query_as(&sql)
                .bind(stream)
                .bind(to_db(from))
                .bind(to_db(limit as u64))
                .fetch_all(pool)
                .await?
        });
        row::into_recorded(rows)
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
        prefix: Option<&str>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows: Vec<EventRow> = match prefix {
            None => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
                );
                with_pool!(&self.db, pool => {
                    sqlx::query_as(&sql)
                        .bind(to_db(after))
                        .bind(to_db(limit as u64))
                        .fetch_all(pool)
                        .await?
                })
            }
            Some(prefix) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM events WHERE position > $1 \
                     AND substr(stream, 1, $3) = $4 ORDER BY position LIMIT $2"
                );
                with_pool!(&self.db, pool => {
                    sqlx::query_as(&sql)
                        .bind(to_db(after))
                        .bind(to_db(limit as u64))
                        .bind(prefix_len(prefix))
                        .bind(prefix)
                        .fetch_all(pool)
                        .await?
                })
            }
        };
        row::into_recorded(rows)
    }

    async fn read_all_of_types(
        &self,
        after: u64,
        limit: usize,
        types: &[String],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if types.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<EventRow> = with_pool!(&self.db, pool => {
            let mut query = sqlx::QueryBuilder::new(format!(
                "SELECT {COLUMNS} FROM events WHERE position > "
            ));
            query.push_bind(to_db(after)).push(" AND event_type IN (");
            let mut list = query.separated(", ");
            for t in types {
                list.push_bind(t.as_str());
            }
            query.push(") ORDER BY position LIMIT ").push_bind(to_db(limit as u64));
            query.build_query_as().fetch_all(pool).await?
        });
        row::into_recorded(rows)
    }

    fn vault(&self) -> Option<std::sync::Arc<crate::vault::Vault>> {
        Some(self.vault.clone())
    }

    async fn head(&self) -> Result<u64, StoreError> {
        let head: i64 = with_pool!(&self.db, pool => {
            sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
                .fetch_one(pool)
                .await?
        });
        Ok(head as u64)
    }
}
