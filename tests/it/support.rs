//! Test helpers: fresh databases and stores for each backend.

use std::io::Write;
use std::sync::{Arc, Once};
use std::time::Duration;

use teachback::db::{ConnectOptions, Db};
use teachback::store::{EventStore, SqlBackend};

/// A fresh, migrated database of one dialect, removed when the test is done.
pub struct TestDb {
    pub db: Db,
    pub url: String,
    pub options: ConnectOptions,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("teachback.db").display());
        let options = ConnectOptions::default();
        let db = Db::connect(&url, &options).await.unwrap();
        db.migrate().await.unwrap();
        TestDb {
            db,
            url,
            options,
            _dir: Some(dir),
        }
    }

    /// `None` (after saying so once) when `TEACHBACK_TEST_POSTGRES_URL` is unset.
    pub async fn postgres() -> Option<TestDb> {
        let Ok(url) = std::env::var("TEACHBACK_TEST_POSTGRES_URL") else {
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                // Written straight to stderr so the test harness does not swallow it.
                let _ = writeln!(
                    std::io::stderr(),
                    "PostgreSQL suite skipped: TEACHBACK_TEST_POSTGRES_URL is not set"
                );
            });
            return None;
        };
        let options = ConnectOptions {
            max_connections: 8,
            schema: Some(format!("t_{}", uuid::Uuid::now_v7().simple())),
        };
        let db = Db::connect(&url, &options).await.unwrap();
        db.migrate().await.unwrap();
        Some(TestDb {
            db,
            url,
            options,
            _dir: None,
        })
    }

    /// A second, independent connection pool to the same database (another "process").
    pub async fn reconnect(&self) -> Db {
        Db::connect(&self.url, &self.options).await.unwrap()
    }

    pub async fn store(&self) -> EventStore {
        store_on(self.db.clone()).await
    }

    /// Drops a PostgreSQL test schema. Call at the end of a passing test.
    pub async fn cleanup(self) {
        if let (Db::Postgres(pool), Some(schema)) = (&self.db, &self.options.schema) {
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(pool)
                .await
                .unwrap();
        }
        self.db.close().await;
    }
}

pub async fn store_on(db: Db) -> EventStore {
    EventStore::start(Arc::new(SqlBackend::new(db)), Duration::from_millis(50))
        .await
        .unwrap()
}

/// Defines each listed `async fn(&TestDb)` as a test on SQLite and one on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::support::TestDb::sqlite().await;
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $crate::support::TestDb::postgres().await else { return };
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
    };
}
