//! Test helpers: fresh databases and stores for each backend.

use std::io::Write;
use std::sync::{Arc, Once};
use std::time::Duration;

use teachback::db::{ConnectOptions, Db};
use teachback::store::{EventStore, SqlBackend};

/// A fresh, migrated database of one dialect, removed when the test is done; with KurrentDB,
/// the SQL database keeps the learners' keys and the log lives in a namespace of its own on the
/// KurrentDB server.
pub struct TestDb {
    pub db: Db,
    pub url: String,
    pub options: ConnectOptions,
    #[cfg(feature = "kurrentdb")]
    kurrent: Option<KurrentLog>,
    _dir: Option<tempfile::TempDir>,
}

/// Where a KurrentDB test's log is: the server, and the stream prefix this test owns.
#[cfg(feature = "kurrentdb")]
struct KurrentLog {
    url: String,
    namespace: String,
}

/// Says once on stderr (straight, so the test harness does not swallow it) why a suite is
/// skipped.
fn say_once(once: &'static Once, line: &str) {
    once.call_once(|| {
        let _ = writeln!(std::io::stderr(), "{line}");
    });
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
            #[cfg(feature = "kurrentdb")]
            kurrent: None,
            _dir: Some(dir),
        }
    }

    /// A SQLite database for the keys and a KurrentDB namespace for the log; `None` (after
    /// saying so once) when `TEACHBACK_TEST_KURRENTDB_URL` is unset or the `kurrentdb` feature
    /// is off.
    pub async fn kurrentdb() -> Option<TestDb> {
        static SAID: Once = Once::new();
        #[cfg(not(feature = "kurrentdb"))]
        {
            say_once(
                &SAID,
                "KurrentDB suite skipped: built without the kurrentdb feature",
            );
            None
        }
        #[cfg(feature = "kurrentdb")]
        {
            let Ok(url) = std::env::var("TEACHBACK_TEST_KURRENTDB_URL") else {
                say_once(
                    &SAID,
                    "KurrentDB suite skipped: TEACHBACK_TEST_KURRENTDB_URL is not set",
                );
                return None;
            };
            let mut db = TestDb::sqlite().await;
            db.kurrent = Some(KurrentLog {
                url,
                namespace: format!("t{}-", uuid::Uuid::now_v7().simple()),
            });
            Some(db)
        }
    }

    /// `None` (after saying so once) when `TEACHBACK_TEST_POSTGRES_URL` is unset.
    pub async fn postgres() -> Option<TestDb> {
        let Ok(url) = std::env::var("TEACHBACK_TEST_POSTGRES_URL") else {
            static SAID: Once = Once::new();
            say_once(
                &SAID,
                "PostgreSQL suite skipped: TEACHBACK_TEST_POSTGRES_URL is not set",
            );
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
            #[cfg(feature = "kurrentdb")]
            kurrent: None,
            _dir: None,
        })
    }

    /// A second, independent connection pool to the same database (another "process").
    pub async fn reconnect(&self) -> Db {
        Db::connect(&self.url, &self.options).await.unwrap()
    }

    pub async fn store(&self) -> EventStore {
        self.store_with(self.db.clone()).await
    }

    /// A second store on the same log through connections of its own (another "process").
    pub async fn another_store(&self) -> EventStore {
        self.store_with(self.reconnect().await).await
    }

    async fn store_with(&self, db: Db) -> EventStore {
        #[cfg(feature = "kurrentdb")]
        if let Some(log) = &self.kurrent {
            let backend = teachback::store::KurrentBackend::connect_with_namespace(
                &log.url,
                db,
                &log.namespace,
            )
            .unwrap();
            return EventStore::start(Arc::new(backend), Duration::from_millis(50))
                .await
                .unwrap();
        }
        store_on(db).await
    }

    /// Drops a PostgreSQL test schema. Call at the end of a passing test.
    pub async fn cleanup(self) {
        self.db.close().await;
        if let Some(schema) = &self.options.schema {
            // A pool of its own: the app under test may already have closed the shared one.
            let admin = Db::connect(&self.url, &ConnectOptions::default())
                .await
                .unwrap();
            if let Db::Postgres(pool) = &admin {
                // A server's background task may still be finishing a transaction in the
                // schema; a deadlock with it is retried.
                for attempt in 1.. {
                    match sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                        .execute(pool)
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if attempt < 5 && e.to_string().contains("deadlock") => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("dropping {schema}: {e}"),
                    }
                }
            }
            admin.close().await;
        }
    }
}

pub async fn store_on(db: Db) -> EventStore {
    EventStore::start(Arc::new(SqlBackend::new(db)), Duration::from_millis(50))
        .await
        .unwrap()
}

/// Defines each listed `async fn(&TestDb)` as a test on SQLite only: for logic that does not
/// depend on the database.
#[macro_export]
macro_rules! sqlite_only {
    ($($name:ident),* $(,)?) => {
        mod sqlite_only {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::support::TestDb::sqlite().await;
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
    };
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

/// Defines each listed `async fn(&TestDb)` as a test against KurrentDB (the log) and SQLite
/// (the keys), skipped unless the `kurrentdb` feature is on and `TEACHBACK_TEST_KURRENTDB_URL`
/// names a server.
#[macro_export]
macro_rules! on_kurrentdb {
    ($($name:ident),* $(,)?) => {
        mod kurrentdb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $crate::support::TestDb::kurrentdb().await else { return };
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
    };
}

/// A running server on a loopback port, stopped when dropped.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub http: reqwest::Client,
    pub state: teachback::http::AppState,
    _data: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts the app on `db` with the default configuration, a fresh data dir and port 0.
pub async fn spawn_app(db: &TestDb) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

pub async fn spawn_app_with(
    db: &TestDb,
    tweak: impl FnOnce(&mut teachback::config::Config),
) -> TestApp {
    spawn_app_on(db, tweak, None).await
}

/// Starts the app, with its own blob store when one is given.
pub async fn spawn_app_on(
    db: &TestDb,
    tweak: impl FnOnce(&mut teachback::config::Config),
    blobs: Option<Arc<dyn teachback::blob::BlobStore>>,
) -> TestApp {
    spawn_app_on_pool(db.db.clone(), tweak, blobs).await
}

/// Starts the app on a connection pool of its own (a restarted server: the previous app closes
/// its pool when it stops).
pub async fn spawn_app_on_pool(
    db: Db,
    tweak: impl FnOnce(&mut teachback::config::Config),
    blobs: Option<Arc<dyn teachback::blob::BlobStore>>,
) -> TestApp {
    spawn_app_clocked(
        db,
        tweak,
        blobs,
        Arc::new(teachback::notify::clock::SystemClock),
    )
    .await
}

/// The configuration tests start from: the defaults, without rate limits and quotas (tests
/// drive one server hard from one address; `limits.rs` tests those).
pub fn test_config(data_dir: &std::path::Path) -> teachback::config::Config {
    let mut config = teachback::config::Config::defaults();
    config.data_dir = data_dir.to_path_buf();
    config.rate_limits = "off".into();
    config.quota_lectures_per_day = 0;
    config.quota_audio_minutes_per_day = 0;
    config.quota_llm_tokens_per_day = 0;
    config
}

/// Starts the app with the clock quotas read "today" from.
pub async fn spawn_app_clocked(
    db: Db,
    tweak: impl FnOnce(&mut teachback::config::Config),
    blobs: Option<Arc<dyn teachback::blob::BlobStore>>,
    clock: Arc<dyn teachback::notify::clock::Clock>,
) -> TestApp {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    tweak(&mut config);
    let blobs = match blobs {
        Some(blobs) => blobs,
        None => teachback::blob::open(&config.blob_url()).unwrap(),
    };
    let app = teachback::app::App::from_parts_with_clock(&config, db, blobs, clock)
        .await
        .unwrap();
    let state = app.state.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        app.run(listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    TestApp {
        addr,
        http: reqwest::Client::new(),
        state,
        _data: data,
        _stop: stop,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The lecture's view once grading ended (at most 30 s).
    pub async fn graded(&self, token: &str, lecture: &str) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let view = self
                .get_json(&format!("/api/v1/lectures/{lecture}"), Some(token))
                .await;
            if view["processing"] == "graded" {
                return view;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not graded in time: {view}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A text lecture on the starter catalogue's TCP topic, once graded; its id.
    pub async fn graded_text_lecture(&self, token: &str, text: &str) -> String {
        let created = self
            .post_json(
                "/api/v1/lectures",
                token,
                Some(serde_json::json!({
                    "topicId": crate::live_support::TOPIC, "text": text, "language": "en"
                })),
            )
            .await;
        let id = created["lectureId"]
            .as_str()
            .expect("a lecture was created")
            .to_owned();
        self.graded(token, &id).await;
        id
    }

    /// GETs `path` (with a bearer token when given) and parses the JSON body.
    pub async fn get_json(&self, path: &str, token: Option<&str>) -> serde_json::Value {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    /// POSTs `body` (when given) to `path` with a bearer token and parses the JSON answer.
    pub async fn post_json(
        &self,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let mut request = self.http.post(self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    /// Registers a device and returns the credentials body.
    pub async fn register(&self) -> serde_json::Value {
        let response = self
            .http
            .post(self.url("/api/v1/devices"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }
}
