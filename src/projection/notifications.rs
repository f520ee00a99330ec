//! The `notification_prefs` and `notifications` read models, from
//! [`teachback_projections::notifications`]: who wants which nudges, and the outbox of scheduled
//! nudges with their delivery state.

use std::sync::Arc;

use async_trait::async_trait;
use teachback_events::RecordedEvent;
use teachback_projections::notifications::{self, NotificationsChange, Status, StoredMessage};
use uuid::Uuid;

use super::{Projector, Suffix};
use crate::db::{Db, DbTx};
use crate::{with_pool, with_tx};

#[derive(Default)]
pub struct NotificationsProjector {
    t: Suffix,
}

#[async_trait]
impl Projector for NotificationsProjector {
    fn name(&self) -> &str {
        notifications::NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["notification_prefs", "notifications"]
    }

    fn with_suffix(&self, suffix: &str) -> Arc<dyn Projector> {
        Arc::new(NotificationsProjector {
            t: Suffix::new(suffix),
        })
    }

    fn reads(&self, event_type: &str) -> bool {
        notifications::reads(event_type) || super::is_erasure(event_type)
    }

    async fn apply(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        for event in events {
            for change in notifications::project(event)? {
                apply_change(&self.t, tx, change).await?;
            }
        }
        Ok(())
    }

    async fn erase(&self, tx: &mut DbTx, user: Uuid, _position: u64) -> anyhow::Result<()> {
        super::delete_user_rows(tx, &self.t, &["notification_prefs", "notifications"], user)
            .await?;
        Ok(())
    }
}

async fn apply_change(
    t: &Suffix,
    tx: &mut DbTx,
    change: NotificationsChange,
) -> anyhow::Result<()> {
    let prefs = t.of("notification_prefs");
    let table = t.of("notifications");
    with_tx!(tx, conn => {
        match change {
            NotificationsChange::Preferences { prefs: p, at } => {
                sqlx::query(&format!(
                    "INSERT INTO {prefs} (user_id, kinds, channel, time_zone, hour, quiet_start, \
                     quiet_end, language, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (user_id) DO UPDATE SET kinds = excluded.kinds, \
                     channel = excluded.channel, time_zone = excluded.time_zone, \
                     hour = excluded.hour, quiet_start = excluded.quiet_start, \
                     quiet_end = excluded.quiet_end, language = excluded.language, \
                     updated_at = excluded.updated_at"
                ))
                .bind(p.user_id)
                .bind(p.kinds.join(","))
                .bind(p.channel)
                .bind(p.time_zone)
                .bind(p.hour.map(i32::from))
                .bind(p.quiet_start.map(i32::from))
                .bind(p.quiet_end.map(i32::from))
                .bind(p.language)
                .bind(at.as_microsecond())
                .execute(&mut *conn)
                .await?;
            }
            NotificationsChange::Scheduled {
                id, user_id, kind, period, key, channel, send_at, message, version, at,
            } => {
                sqlx::query(&format!(
                    "INSERT INTO {table} (notification_id, user_id, kind, period, \
                     notification_key, channel, status, attempts, next_attempt_at, version, \
                     message, scheduled_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $8, $9, $10) \
                     ON CONFLICT (notification_id) DO NOTHING"
                ))
                .bind(id)
                .bind(user_id)
                .bind(kind)
                .bind(period)
                .bind(key)
                .bind(channel)
                .bind(send_at.as_microsecond())
                .bind(version as i64)
                .bind(serde_json::to_string(&message)?)
                .bind(at.as_microsecond())
                .execute(&mut *conn)
                .await?;
            }
            NotificationsChange::Delivery {
                id, status, attempts, retry_at, sent_at, error, version,
            } => {
                sqlx::query(&format!(
                    "UPDATE {table} SET status = $2, attempts = COALESCE($3, attempts), \
                     next_attempt_at = COALESCE($4, next_attempt_at), \
                     sent_at = COALESCE($5, sent_at), last_error = COALESCE($6, last_error), \
                     version = $7 WHERE notification_id = $1"
                ))
                .bind(id)
                .bind(status.as_str())
                .bind(attempts.map(i64::from))
                .bind(retry_at.map(|t| t.as_microsecond()))
                .bind(sent_at.map(|t| t.as_microsecond()))
                .bind(error)
                .bind(version as i64)
                .execute(&mut *conn)
                .await?;
            }
            NotificationsChange::Opened { id, at, version } => {
                sqlx::query(&format!(
                    "UPDATE {table} SET opened_at = COALESCE(opened_at, $2), version = $3 \
                     WHERE notification_id = $1"
                ))
                .bind(id)
                .bind(at.as_microsecond())
                .bind(version as i64)
                .execute(&mut *conn)
                .await?;
            }
        }
    });
    Ok(())
}

/// A learner's preferences as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefsRow {
    pub user_id: Uuid,
    pub kinds: Vec<String>,
    pub channel: String,
    pub time_zone: String,
    pub hour: Option<u8>,
    pub quiet_start: Option<u8>,
    pub quiet_end: Option<u8>,
    pub language: String,
}

const PREFS_COLUMNS: &str =
    "user_id, kinds, channel, time_zone, hour, quiet_start, quiet_end, language";

type PrefsTuple = (
    Uuid,
    String,
    String,
    String,
    Option<i32>,
    Option<i32>,
    Option<i32>,
    String,
);

fn prefs_row(row: PrefsTuple) -> PrefsRow {
    let (user_id, kinds, channel, time_zone, hour, quiet_start, quiet_end, language) = row;
    let hour_of = |h: Option<i32>| h.and_then(|h| u8::try_from(h).ok());
    PrefsRow {
        user_id,
        kinds: kinds
            .split(',')
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect(),
        channel,
        time_zone,
        hour: hour_of(hour),
        quiet_start: hour_of(quiet_start),
        quiet_end: hour_of(quiet_end),
        language,
    }
}

/// One learner's preferences, if they ever set any.
pub async fn prefs(db: &Db, user: Uuid) -> Result<Option<PrefsRow>, sqlx::Error> {
    let sql = format!("SELECT {PREFS_COLUMNS} FROM notification_prefs WHERE user_id = $1");
    let row = with_pool!(db, pool => {
        sqlx::query_as::<_, PrefsTuple>(&sql).bind(user).fetch_optional(pool).await?
    });
    Ok(row.map(prefs_row))
}

/// Every learner opted in to at least one kind.
pub async fn opted_in(db: &Db) -> Result<Vec<PrefsRow>, sqlx::Error> {
    let sql = format!("SELECT {PREFS_COLUMNS} FROM notification_prefs WHERE kinds <> ''");
    let rows = with_pool!(db, pool => {
        sqlx::query_as::<_, PrefsTuple>(&sql).fetch_all(pool).await?
    });
    Ok(rows.into_iter().map(prefs_row).collect())
}

/// The kinds each of these learners is opted in to now (learners with no preferences are
/// missing from the map).
pub async fn kinds_of(
    db: &Db,
    users: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Vec<String>>, sqlx::Error> {
    let mut out = std::collections::HashMap::with_capacity(users.len());
    for chunk in users.chunks(500) {
        let rows: Vec<(Uuid, String)> = with_pool!(db, pool => {
            let mut query =
                sqlx::QueryBuilder::new("SELECT user_id, kinds FROM notification_prefs WHERE user_id IN (");
            let mut list = query.separated(", ");
            for user in chunk {
                list.push_bind(*user);
            }
            query.push(")");
            query.build_query_as().fetch_all(pool).await?
        });
        for (user, kinds) in rows {
            out.insert(
                user,
                kinds
                    .split(',')
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// The keys of nudges scheduled at or after `since` (microseconds).
pub async fn keys_since(db: &Db, since: i64) -> Result<Vec<String>, sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query_scalar("SELECT notification_key FROM notifications WHERE scheduled_at >= $1")
            .bind(since)
            .fetch_all(pool)
            .await
    })
}

/// A nudge waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub kind: String,
    pub key: String,
    pub channel: String,
    pub attempts: u32,
    /// The stream's last version (the next append expects it).
    pub version: u64,
    pub message: StoredMessage,
}

/// Pending nudges whose time has come (`next_attempt_at <= now`), oldest first.
pub async fn due(db: &Db, now: i64, limit: usize) -> anyhow::Result<Vec<OutboxRow>> {
    let rows = with_pool!(db, pool => {
        sqlx::query_as::<_, (Uuid, Uuid, String, String, String, i64, i64, String)>(
            "SELECT notification_id, user_id, kind, notification_key, channel, attempts, version, \
             message FROM notifications WHERE status = 'pending' AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at LIMIT $2",
        )
        .bind(now)
        .bind(limit as i64)
        .fetch_all(pool)
        .await?
    });
    rows.into_iter()
        .map(
            |(id, user_id, kind, key, channel, attempts, version, message)| {
                Ok(OutboxRow {
                    id,
                    user_id,
                    kind,
                    key,
                    channel,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    version: version as u64,
                    message: serde_json::from_str(&message)?,
                })
            },
        )
        .collect()
}

/// When the next pending nudge is due (microseconds), if any.
pub async fn next_due(db: &Db) -> Result<Option<i64>, sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM notifications WHERE status = 'pending'",
        )
        .fetch_one(pool)
        .await
    })
}

/// A nudge's owner, link, status and whether it was opened, for its tracked link.
pub async fn link(
    db: &Db,
    id: Uuid,
) -> anyhow::Result<Option<(Uuid, StoredMessage, Status, bool)>> {
    let row = with_pool!(db, pool => {
        sqlx::query_as::<_, (Uuid, String, String, Option<i64>)>(
            "SELECT user_id, message, status, opened_at FROM notifications \
             WHERE notification_id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await?
    });
    row.map(|(user, message, status, opened)| {
        let status = Status::parse(&status)
            .ok_or_else(|| anyhow::anyhow!("unknown notification status `{status}`"))?;
        Ok((
            user,
            serde_json::from_str(&message)?,
            status,
            opened.is_some(),
        ))
    })
    .transpose()
}

/// Per kind and status, for nudges scheduled in `[from, to)` (microseconds): how many, how
/// many were opened, and their delivery attempts in all.
pub async fn counts(
    db: &Db,
    from: i64,
    to: i64,
) -> Result<Vec<(String, Status, u64, u64, u64)>, sqlx::Error> {
    let rows = with_pool!(db, pool => {
        sqlx::query_as::<_, (String, String, i64, i64, i64)>(
            "SELECT kind, status, COUNT(*), \
             CAST(SUM(CASE WHEN opened_at IS NULL THEN 0 ELSE 1 END) AS BIGINT), \
             CAST(SUM(attempts) AS BIGINT) FROM notifications \
             WHERE scheduled_at >= $1 AND scheduled_at < $2 GROUP BY kind, status",
        )
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?
    });
    Ok(rows
        .into_iter()
        .filter_map(|(kind, status, n, opened, attempts)| {
            Some((
                kind,
                Status::parse(&status)?,
                n as u64,
                opened as u64,
                attempts as u64,
            ))
        })
        .collect())
}

/// Learners who were sent a nudge, with the time of their first one (microseconds).
pub async fn first_sent(db: &Db) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT user_id, MIN(sent_at) FROM notifications WHERE status = 'sent' \
             GROUP BY user_id",
        )
        .fetch_all(pool)
        .await
    })
}

/// The parked nudges (delivery gave up), newest first, for the team.
pub async fn parked(
    db: &Db,
    limit: usize,
) -> Result<Vec<(Uuid, Uuid, String, String)>, sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT notification_id, user_id, kind, COALESCE(last_error, '') FROM notifications \
             WHERE status = 'parked' ORDER BY scheduled_at DESC LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(pool)
        .await
    })
}
