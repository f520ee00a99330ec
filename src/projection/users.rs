//! The `users` and `devices` read models, from [`teachback_projections::users`].

use async_trait::async_trait;
use jiff::Timestamp;
use teachback_events::RecordedEvent;
use teachback_projections::users::{self, UsersChange};
use uuid::Uuid;

use std::sync::Arc;

use super::{Projector, Suffix};
use crate::db::{Db, DbTx};
use crate::{with_pool, with_tx};

#[derive(Default)]
pub struct UsersProjector {
    t: Suffix,
}

#[async_trait]
impl Projector for UsersProjector {
    fn name(&self) -> &str {
        users::NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["users", "devices"]
    }

    fn with_suffix(&self, suffix: &str) -> Arc<dyn Projector> {
        Arc::new(UsersProjector {
            t: Suffix::new(suffix),
        })
    }

    fn reads(&self, event_type: &str) -> bool {
        teachback_projections::users::reads(event_type)
    }

    async fn apply(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        for event in events {
            for change in users::project(event)? {
                apply_change(&self.t, tx, change).await?;
            }
        }
        Ok(())
    }

    async fn erase(&self, tx: &mut DbTx, user: Uuid, _position: u64) -> anyhow::Result<()> {
        apply_change(&self.t, tx, UsersChange::UserErased { user_id: user }).await?;
        Ok(())
    }
}

async fn apply_change(t: &Suffix, tx: &mut DbTx, change: UsersChange) -> Result<(), sqlx::Error> {
    with_tx!(tx, conn => {
        match change {
            UsersChange::UserCreated { user_id, name, created_at } => {
                sqlx::query(&format!(
                    "INSERT INTO {} (user_id, name, created_at, updated_at) \
                     VALUES ($1, $2, $3, $3) ON CONFLICT (user_id) DO NOTHING",
                    t.of("users")
                ))
                .bind(user_id)
                .bind(name)
                .bind(created_at.as_microsecond())
                .execute(conn)
                .await?;
            }
            UsersChange::DeviceAdded { device_id, user_id, token_hash, created_at } => {
                sqlx::query(&format!(
                    "INSERT INTO {} (token_hash, device_id, user_id, created_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (token_hash) DO NOTHING",
                    t.of("devices")
                ))
                .bind(token_hash)
                .bind(device_id)
                .bind(user_id)
                .bind(created_at.as_microsecond())
                .execute(conn)
                .await?;
            }
            UsersChange::NameChanged { user_id, name, updated_at } => {
                sqlx::query(&format!(
                    "UPDATE {} SET name = $1, updated_at = $2 WHERE user_id = $3",
                    t.of("users")
                ))
                    .bind(name)
                    .bind(updated_at.as_microsecond())
                    .bind(user_id)
                    .execute(conn)
                    .await?;
            }
            UsersChange::UserErased { user_id } => {
                for table in ["users", "devices"] {
                    sqlx::query(&format!("DELETE FROM {} WHERE user_id = $1", t.of(table)))
                        .bind(user_id)
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
    });
    Ok(())
}

/// A learner as the read model holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub user_id: Uuid,
    pub name: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

type UserRow = (Uuid, String, i64, i64);

fn to_user((user_id, name, created, updated): UserRow) -> User {
    User {
        user_id,
        name,
        created_at: Timestamp::from_microsecond(created).unwrap_or_default(),
        updated_at: Timestamp::from_microsecond(updated).unwrap_or_default(),
    }
}

pub async fn find_user(db: &Db, user_id: Uuid) -> Result<Option<User>, sqlx::Error> {
    let row: Option<UserRow> = with_pool!(db, pool => {
        sqlx::query_as("SELECT user_id, name, created_at, updated_at FROM users WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(pool)
            .await?
    });
    Ok(row.map(to_user))
}

/// The learner a device token (by its hash) belongs to.
pub async fn find_device_user(db: &Db, token_hash: &str) -> Result<Option<Uuid>, sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query_scalar("SELECT user_id FROM devices WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(pool)
            .await
    })
}

/// Every user row, ordered by id (for comparing a rebuild with the live read model).
pub async fn all_users(db: &Db) -> Result<Vec<User>, sqlx::Error> {
    let rows: Vec<UserRow> = with_pool!(db, pool => {
        sqlx::query_as("SELECT user_id, name, created_at, updated_at FROM users ORDER BY user_id")
            .fetch_all(pool)
            .await?
    });
    Ok(rows.into_iter().map(to_user).collect())
}
