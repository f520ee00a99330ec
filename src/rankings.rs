//! Rankings served from memory: a [`RankingIndex`] loaded from the learning read model and kept
//! up to date as the learning projection advances. Every change to a built board is broadcast,
//! for the live ranking feed.
//!
//! The index follows the read model, not the log: after each step of the learning projection it
//! loads the rows changed since the last step (`position > loaded`). Any instance sharing the
//! database can do the same, so it needs no projection of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use teachback_projections::learning::day_of;
use teachback_projections::rankings::{BoardKey, Change, Ranked, RankingIndex, Scope, Standing};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::db::Db;
use crate::projection::ProjectionStatus;
use crate::projection::learning::{changed_since, topic_docs};

/// Ranking changes buffered per live subscriber before it is told it lagged.
const FEED_BUFFER: usize = 1024;
/// Most live-feed subscribers at once, per instance.
pub const MAX_SUBSCRIBERS: usize = 10_000;

/// The rankings of this instance. Cheap to clone.
#[derive(Clone)]
pub struct Rankings {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    tz: TimeZone,
    index: RwLock<RankingIndex>,
    changes: broadcast::Sender<Arc<Vec<Change>>>,
    subscribers: AtomicUsize,
}

/// A live-feed subscription; counts against [`MAX_SUBSCRIBERS`] until dropped.
pub struct Subscription {
    pub changes: broadcast::Receiver<Arc<Vec<Change>>>,
    rankings: Rankings,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.rankings
            .inner
            .subscribers
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A page of a board, with the caller's standing.
pub struct Page {
    pub key: BoardKey,
    pub rows: Vec<Ranked>,
    pub total: u32,
    pub me: Option<Standing>,
}

impl Rankings {
    /// Loads the index and follows the learning projection from then on.
    pub async fn start(db: Db, tz: TimeZone, learning: ProjectionStatus) -> anyhow::Result<Self> {
        let (changes, _) = broadcast::channel(FEED_BUFFER);
        let rankings = Rankings {
            inner: Arc::new(Inner {
                db,
                tz,
                index: RwLock::new(RankingIndex::new()),
                changes,
                subscribers: AtomicUsize::new(0),
            }),
        };
        let mut loaded = learning.position();
        rankings.load(0).await?;
        let follower = rankings.clone();
        let mut position = learning.position_receiver();
        tokio::spawn(async move {
            while position.changed().await.is_ok() {
                let now = *position.borrow_and_update();
                if now < loaded {
                    // A rebuild swapped fresh tables in behind us: start over from them.
                    *follower.inner.index.write().expect("rankings lock") = RankingIndex::new();
                    loaded = 0;
                }
                loop {
                    match follower.load(loaded).await {
                        Ok(()) => break,
                        Err(e) if follower.inner.db.is_closed() => {
                            tracing::debug!(error = %e, "rankings stop: database closed");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "loading ranking changes failed; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
                loaded = loaded.max(now);
            }
        });
        Ok(rankings)
    }

    /// Applies the rows changed after `position` and broadcasts the moves they cause.
    async fn load(&self, position: u64) -> anyhow::Result<()> {
        let changed = changed_since(&self.inner.db, position).await?;
        let (graded, users, erased) = (changed.graded, changed.users, changed.erased);
        let topics = if position == 0 || changed.topics {
            Some(topic_docs(&self.inner.db).await?)
        } else {
            None
        };
        let mut moves = Vec::new();
        {
            let mut index = self.inner.index.write().expect("rankings lock");
            for topic in topics.iter().flat_map(|t| t.values()) {
                if let (Some(major), Some(subject)) = (&topic.major_id, &topic.subject_id) {
                    index.set_topic(&topic.topic_id, major, subject);
                }
            }
            for (user, name) in &users {
                index.set_name(*user, name);
            }
            for row in graded {
                let (Some(day), Some(score)) = (row.day.and_then(|d| d.parse().ok()), row.score)
                else {
                    continue;
                };
                moves.extend(index.set_grade(
                    row.user_id,
                    row.lecture_id,
                    &row.topic_id,
                    day,
                    score.clamp(0, 100) as u8,
                ));
            }
            for user in erased {
                moves.extend(index.remove_learner(user));
            }
        }
        if !moves.is_empty() {
            // Nobody listening is fine.
            let _ = self.inner.changes.send(Arc::new(moves));
        }
        Ok(())
    }

    /// Today in the rankings' time zone.
    pub fn today(&self) -> Date {
        day_of(jiff::Timestamp::now(), &self.inner.tz)
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.inner.tz
    }

    /// Builds the board if needed (boards not built are not kept up to date).
    pub fn ensure(&self, key: &BoardKey) {
        if !self
            .inner
            .index
            .read()
            .expect("rankings lock")
            .is_built(key)
        {
            self.inner.index.write().expect("rankings lock").ensure(key);
        }
    }

    /// A page of a board after `after`, and `me`'s standing on it.
    pub fn page(
        &self,
        key: BoardKey,
        after: Option<(u32, Uuid)>,
        limit: usize,
        me: Option<Uuid>,
    ) -> Page {
        loop {
            {
                let index = self.inner.index.read().expect("rankings lock");
                if let (Some(rows), Some(total)) =
                    (index.page(&key, after, limit), index.total(&key))
                {
                    let me = me.and_then(|user| index.standing(&key, user));
                    return Page {
                        key,
                        rows,
                        total,
                        me,
                    };
                }
            }
            self.ensure(&key);
        }
    }

    /// Every change to a built board, as it happens; `None` when [`MAX_SUBSCRIBERS`] are
    /// already following.
    pub fn subscribe(&self) -> Option<Subscription> {
        let before = self.inner.subscribers.fetch_add(1, Ordering::Relaxed);
        let subscription = Subscription {
            changes: self.inner.changes.subscribe(),
            rankings: self.clone(),
        };
        (before < MAX_SUBSCRIBERS).then_some(subscription)
    }

    /// Whether any topic belongs to the scope's major or subject.
    pub fn knows(&self, scope: &Scope) -> bool {
        self.inner.index.read().expect("rankings lock").knows(scope)
    }
}
