//! Which instance holds a live lecture, when several share one PostgreSQL database.
//!
//! An instance holds each lecture it runs an actor for with a session-level advisory lock on a
//! connection of its own. When the learner's connection drops, the actor stores every chunk it
//! received as a segment and lets the lecture go (see `lecture.rs`); the learner may then resume
//! on any instance, which takes the lock and rebuilds the lecture from the log. While an
//! instance holds a lecture (the learner is connected there, or it is still storing), another
//! instance answers a reconnect with `lecture_elsewhere`, to be retried. If the holder dies, its
//! session ends and the locks are free: the lecture is resumed elsewhere from its stored
//! segments, or abandoned by the sweeper once the grace period has passed.

use std::collections::HashSet;
use std::sync::Mutex;

use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// The lecture locks of this instance.
pub struct Holder {
    pool: PgPool,
    conn: tokio::sync::Mutex<Option<PgConnection>>,
    held: Mutex<HashSet<Uuid>>,
}

const LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended('teachback.lecture:' || \
                    current_schema() || ':' || $1, 0))";
const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtextextended('teachback.lecture:' || \
                      current_schema() || ':' || $1, 0))";

impl Holder {
    pub fn new(pool: PgPool) -> Holder {
        Holder {
            pool,
            conn: tokio::sync::Mutex::new(None),
            held: Mutex::new(HashSet::new()),
        }
    }

    /// Takes the lecture for this instance; `false` if another instance (or another actor of
    /// this one) holds it.
    pub async fn try_hold(&self, lecture: Uuid) -> Result<bool, sqlx::Error> {
        let mut guard = self.conn.lock().await;
        // Locks are re-entrant within a session: this instance's own holds are checked here.
        if self.held.lock().expect("holder lock").contains(&lecture) {
            return Ok(false);
        }
        let conn = self.connection(&mut guard).await?;
        let taken: bool = match sqlx::query_scalar(LOCK)
            .bind(lecture.to_string())
            .fetch_one(&mut *conn)
            .await
        {
            Ok(taken) => taken,
            Err(e) => {
                // The session is gone, and every lock with it: start a new one next time.
                *guard = None;
                return Err(e);
            }
        };
        if taken {
            self.held.lock().expect("holder lock").insert(lecture);
        }
        Ok(taken)
    }

    /// Lets the lecture go.
    pub async fn release(&self, lecture: Uuid) {
        if !self.held.lock().expect("holder lock").remove(&lecture) {
            return;
        }
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_mut()
            && sqlx::query(UNLOCK)
                .bind(lecture.to_string())
                .execute(&mut *conn)
                .await
                .is_err()
        {
            *guard = None;
        }
    }

    /// The session, opened again (re-taking the locks this instance holds) if it was lost.
    async fn connection<'a>(
        &self,
        guard: &'a mut Option<PgConnection>,
    ) -> Result<&'a mut PgConnection, sqlx::Error> {
        if guard.is_none() {
            let mut conn = self.pool.acquire().await?.detach();
            let held: Vec<Uuid> = self
                .held
                .lock()
                .expect("holder lock")
                .iter()
                .copied()
                .collect();
            for lecture in held {
                let taken: bool = sqlx::query_scalar(LOCK)
                    .bind(lecture.to_string())
                    .fetch_one(&mut conn)
                    .await?;
                if !taken {
                    tracing::warn!(%lecture, "a lecture this instance held was taken over after its lock session broke");
                }
            }
            *guard = Some(conn);
        }
        Ok(guard.as_mut().expect("just opened"))
    }

    /// Closes the session (at shutdown), freeing every lock at once.
    pub async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            let _ = conn.close().await;
        }
    }
}
