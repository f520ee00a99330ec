//! Per-learner keys: personal data is sealed with its learner's key, so destroying the key erases
//! it everywhere it was copied, the append-only log included (crypto-shredding).
//!
//! What is sealed: the payload fields each event kind declares personal
//! ([`EventKind::personal_fields`]: nicknames, transcripts, feedback, nudge texts), sealed by the
//! event store before an event is queued and opened when it is read; and audio blobs, sealed by
//! [`SealedBlobs`]. A sealed string is `sealed:v1:` + base64url(learner id ‖ nonce ‖ ciphertext
//! and tag), ChaCha20-Poly1305 with the learner id as associated data. A sealed blob starts with
//! [`BLOB_MAGIC`] and carries the same parts. Events written before sealing existed hold plain
//! strings; they are read as they are.
//!
//! Keys live in the SQL database's `learner_keys` table (never in the log, never exported unless
//! asked). Erasing a learner replaces the key with a tombstone: nothing of theirs can be opened
//! again, and personal fields of events appended for them afterwards (a grade still in flight)
//! are written empty. Opening a field whose key is gone yields an empty string (an empty list
//! for lists). Each process caches keys for [`KEY_TTL`], so another instance stops opening an
//! erased learner's data within that time; its read models drop the rows at once, from the
//! `UserErased` event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use dashmap::DashMap;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde_json::Value;
use teachback_events::{EventKind, Owner, RecordedEvent, streams};
use uuid::Uuid;

use crate::blob::{BlobError, BlobStore};
use crate::db::Db;
use crate::with_pool;

/// The prefix of a sealed string.
pub const SEALED_PREFIX: &str = "sealed:v1:";
/// The first bytes of a sealed blob.
pub const BLOB_MAGIC: &[u8; 8] = b"TBSEAL1\0";
/// How long a process trusts a cached key before asking the database again.
pub const KEY_TTL: Duration = Duration::from_secs(30);
const KEY_LEN: usize = 32;

/// Why sealing or opening failed (the database, not the data).
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("key storage: {0}")]
    Db(#[from] sqlx::Error),
    #[error("lecture {0} has no start event, so whose data it holds is unknown")]
    UnknownLecture(Uuid),
    #[error("event log: {0}")]
    Log(String),
}

/// Reads a stream's first event from an event log kept outside the SQL database (KurrentDB).
/// The vault reads one thing from the log: a lecture's start event, which names its learner.
#[async_trait]
pub trait FirstEvents: Send + Sync + 'static {
    /// The payload (JSON text) of the stream's first event; `None` if the stream does not exist.
    async fn first_payload(&self, stream: &str) -> Result<Option<String>, VaultError>;
}

#[derive(Clone)]
enum KeyState {
    Live([u8; KEY_LEN]),
    Erased,
}

/// The keyring of one process. Cheap to share behind an `Arc`.
pub struct Vault {
    db: Db,
    keys: DashMap<Uuid, (KeyState, Instant)>,
    /// Lecture → its learner (a lecture's owner never changes).
    owners: DashMap<Uuid, Uuid>,
    /// Where lectures' start events are read when the log is not the SQL `events` table.
    log: Option<Arc<dyn FirstEvents>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("cached_keys", &self.keys.len())
            .finish()
    }
}

impl Vault {
    /// A keyring in `db`, whose `events` table is the log.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            keys: DashMap::new(),
            owners: DashMap::new(),
            log: None,
        }
    }

    /// A keyring in `db` for an event log kept elsewhere (`log`).
    pub fn with_log(db: Db, log: Arc<dyn FirstEvents>) -> Self {
        Self {
            log: Some(log),
            ..Self::new(db)
        }
    }

    /// The learner's key for sealing, created on first use; `None` once they are erased.
    async fn sealing_key(&self, user: Uuid) -> Result<Option<[u8; KEY_LEN]>, VaultError> {
        if let Some(state) = self.cached(user) {
            return Ok(live(state));
        }
        let fresh: [u8; KEY_LEN] = rand::random();
        let now = jiff::Timestamp::now().as_microsecond();
        with_pool!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO learner_keys (user_id, key, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(user)
            .bind(&fresh[..])
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(live(self.load(user).await?))
    }

    /// The learner's key for opening: `None` if they were erased or never had one.
    async fn opening_key(&self, user: Uuid) -> Result<Option<[u8; KEY_LEN]>, VaultError> {
        if let Some(state) = self.cached(user) {
            return Ok(live(state));
        }
        Ok(live(self.load(user).await?))
    }

    fn cached(&self, user: Uuid) -> Option<KeyState> {
        let entry = self.keys.get(&user)?;
        let (state, at) = entry.value();
        // An erasure is final; a live key is re-read now and then (another instance may erase).
        match state {
            KeyState::Erased => Some(KeyState::Erased),
            KeyState::Live(_) if at.elapsed() < KEY_TTL => Some(state.clone()),
            KeyState::Live(_) => None,
        }
    }

    async fn load(&self, user: Uuid) -> Result<KeyState, VaultError> {
        let row: Option<(Option<Vec<u8>>,)> = with_pool!(&self.db, pool => {
            sqlx::query_as("SELECT key FROM learner_keys WHERE user_id = $1")
                .bind(user)
                .fetch_optional(pool)
                .await?
        });
        let state = match row {
            Some((Some(key),)) if key.len() == KEY_LEN => {
                let mut bytes = [0u8; KEY_LEN];
                bytes.copy_from_slice(&key);
                KeyState::Live(bytes)
            }
            // A tombstone (or a key that is not one): nothing can be opened.
            Some(_) => KeyState::Erased,
            // No key yet: nothing was sealed for this learner. Not cached, so a key created
            // later (by another instance) is found.
            None => return Ok(KeyState::Erased),
        };
        self.keys.insert(user, (state.clone(), Instant::now()));
        Ok(state)
    }

    /// Destroys the learner's key for good. Everything sealed with it becomes unreadable, on
    /// every instance within [`KEY_TTL`] and on this one at once.
    pub async fn destroy(&self, user: Uuid) -> Result<(), VaultError> {
        let now = jiff::Timestamp::now().as_microsecond();
        with_pool!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO learner_keys (user_id, key, created_at, erased_at) \
                 VALUES ($1, NULL, $2, $2) \
                 ON CONFLICT (user_id) DO UPDATE SET key = NULL, erased_at = excluded.erased_at",
            )
            .bind(user)
            .bind(now)
            .execute(pool)
            .await?;
        });
        self.keys.insert(user, (KeyState::Erased, Instant::now()));
        Ok(())
    }

    /// Whether the learner was erased.
    pub async fn is_erased(&self, user: Uuid) -> Result<bool, VaultError> {
        // An erasure is final, and a live key is trusted for `KEY_TTL`, as when sealing.
        match self.cached(user) {
            Some(KeyState::Erased) => return Ok(true),
            Some(KeyState::Live(_)) => return Ok(false),
            None => {}
        }
        let erased: Option<(Option<i64>,)> = with_pool!(&self.db, pool => {
            sqlx::query_as("SELECT erased_at FROM learner_keys WHERE user_id = $1")
                .bind(user)
                .fetch_optional(pool)
                .await?
        });
        Ok(matches!(erased, Some((Some(_),))))
    }

    /// The learner a lecture belongs to, from its start event (cached).
    pub async fn lecture_owner(&self, lecture: Uuid) -> Result<Uuid, VaultError> {
        if let Some(owner) = self.owners.get(&lecture) {
            return Ok(*owner);
        }
        let stream = streams::lecture(lecture);
        let payload: Option<String> = match &self.log {
            Some(log) => log.first_payload(&stream).await?,
            None => with_pool!(&self.db, pool => {
                sqlx::query_scalar(
                    "SELECT payload FROM events WHERE stream = $1 AND version = 0",
                )
                .bind(&stream)
                .fetch_optional(pool)
                .await?
            }),
        };
        let owner = payload
            .and_then(|p| serde_json::from_str::<Value>(&p).ok())
            .and_then(|v| uuid_field(&v, "userId"))
            .ok_or(VaultError::UnknownLecture(lecture))?;
        self.owners.insert(lecture, owner);
        Ok(owner)
    }

    /// Seals the personal fields of events about to be appended. `batch` is every event of the
    /// append (type and payload), so a lecture started in the same append is found there.
    pub async fn seal_payloads(&self, batch: &mut [(&str, &mut Value)]) -> Result<(), VaultError> {
        // Lectures started in this very append.
        for (event_type, payload) in batch.iter() {
            if *event_type == EventKind::LectureStarted.type_name()
                && let (Some(lecture), Some(user)) = (
                    uuid_field(payload, "lectureId"),
                    uuid_field(payload, "userId"),
                )
            {
                self.owners.insert(lecture, user);
            }
        }
        for (event_type, payload) in batch.iter_mut() {
            let Some((owner, fields)) =
                EventKind::from_type_name(event_type).and_then(EventKind::personal_fields)
            else {
                continue;
            };
            let Some(user) = self.owner_of(owner, payload).await? else {
                continue;
            };
            let key = self.sealing_key(user).await?;
            for field in fields {
                if let Some(value) = payload.get_mut(*field) {
                    seal_value(value, user, key.as_ref());
                }
            }
        }
        Ok(())
    }

    async fn owner_of(&self, owner: Owner, payload: &Value) -> Result<Option<Uuid>, VaultError> {
        Ok(match owner {
            Owner::UserId => uuid_field(payload, "userId"),
            Owner::LectureId => match uuid_field(payload, "lectureId") {
                Some(lecture) => Some(self.lecture_owner(lecture).await?),
                None => None,
            },
        })
    }

    /// Opens the sealed fields of events read from the log, in place.
    pub async fn open_events(&self, events: &mut [RecordedEvent]) -> Result<(), VaultError> {
        for event in events {
            let Some((_, fields)) =
                EventKind::from_type_name(&event.event_type).and_then(EventKind::personal_fields)
            else {
                continue;
            };
            for field in fields {
                if let Some(value) = event.payload.get_mut(*field) {
                    self.open_value(value).await?;
                }
            }
        }
        Ok(())
    }

    /// Opens a personal field: a string, or a list of strings.
    async fn open_value(&self, value: &mut Value) -> Result<(), VaultError> {
        match value {
            Value::String(s) => self.open_in_place(s).await?,
            Value::Array(items) => {
                for item in items.iter_mut() {
                    if let Value::String(s) = item {
                        self.open_in_place(s).await?;
                    }
                }
                // Entries whose key is gone are dropped rather than left as empty strings.
                items.retain(|v| v.as_str() != Some(""));
            }
            _ => {}
        }
        Ok(())
    }

    async fn open_in_place(&self, s: &mut String) -> Result<(), VaultError> {
        if let Some(opened) = self.open_str(s).await? {
            *s = opened;
        }
        Ok(())
    }

    /// The plain text of a sealed string (empty if its key is gone); `None` if `s` is not sealed.
    pub async fn open_str(&self, s: &str) -> Result<Option<String>, VaultError> {
        let Some(encoded) = s.strip_prefix(SEALED_PREFIX) else {
            return Ok(None);
        };
        let Ok(raw) = URL_SAFE_NO_PAD.decode(encoded) else {
            return Ok(Some(String::new()));
        };
        let Some((user, nonce, sealed)) = split_sealed(&raw) else {
            return Ok(Some(String::new()));
        };
        let Some(key) = self.opening_key(user).await? else {
            return Ok(Some(String::new()));
        };
        Ok(Some(
            open(&key, user, nonce, sealed)
                .and_then(|plain| String::from_utf8(plain).ok())
                .unwrap_or_default(),
        ))
    }

    /// Seals a blob for the learner; `None` if they were erased (nothing of theirs is stored).
    pub async fn seal_blob(&self, user: Uuid, bytes: &[u8]) -> Result<Option<Bytes>, VaultError> {
        let Some(key) = self.sealing_key(user).await? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(BLOB_MAGIC.len() + 16 + NONCE_LEN + bytes.len() + 16);
        out.extend_from_slice(BLOB_MAGIC);
        out.extend_from_slice(&seal(&key, user, bytes));
        Ok(Some(Bytes::from(out)))
    }

    /// Opens a sealed blob; a blob without the magic is returned as it is. `None`: the key is
    /// gone or the blob was altered.
    pub async fn open_blob(&self, bytes: Bytes) -> Result<Option<Bytes>, VaultError> {
        let Some(rest) = bytes.strip_prefix(BLOB_MAGIC.as_slice()) else {
            return Ok(Some(bytes));
        };
        let Some((user, nonce, sealed)) = split_sealed(rest) else {
            return Ok(None);
        };
        let Some(key) = self.opening_key(user).await? else {
            return Ok(None);
        };
        Ok(open(&key, user, nonce, sealed).map(Bytes::from))
    }
}

fn live(state: KeyState) -> Option<[u8; KEY_LEN]> {
    match state {
        KeyState::Live(key) => Some(key),
        KeyState::Erased => None,
    }
}

fn uuid_field(payload: &Value, field: &str) -> Option<Uuid> {
    payload.get(field)?.as_str()?.parse().ok()
}

/// Seals a string, or every string of a list, in place; without a key (erased) they become empty.
fn seal_value(value: &mut Value, user: Uuid, key: Option<&[u8; KEY_LEN]>) {
    match value {
        Value::String(s) => {
            *s = match key {
                Some(key) => format!(
                    "{SEALED_PREFIX}{}",
                    URL_SAFE_NO_PAD.encode(seal(key, user, s.as_bytes()))
                ),
                None => String::new(),
            };
        }
        Value::Array(items) => {
            if key.is_none() {
                items.clear();
            }
            for item in items {
                seal_value(item, user, key);
            }
        }
        _ => {}
    }
}

/// learner id ‖ nonce ‖ ciphertext and tag.
fn seal(key: &[u8; KEY_LEN], user: Uuid, plain: &[u8]) -> Vec<u8> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let sealing = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte key"));
    let mut data = plain.to_vec();
    sealing
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(user.as_bytes()),
            &mut data,
        )
        .expect("sealing fits in memory");
    let mut out = Vec::with_capacity(16 + NONCE_LEN + data.len());
    out.extend_from_slice(user.as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&data);
    out
}

fn split_sealed(raw: &[u8]) -> Option<(Uuid, [u8; NONCE_LEN], &[u8])> {
    if raw.len() < 16 + NONCE_LEN {
        return None;
    }
    let user = Uuid::from_slice(&raw[..16]).ok()?;
    let nonce: [u8; NONCE_LEN] = raw[16..16 + NONCE_LEN].try_into().ok()?;
    Some((user, nonce, &raw[16 + NONCE_LEN..]))
}

fn open(key: &[u8; KEY_LEN], user: Uuid, nonce: [u8; NONCE_LEN], sealed: &[u8]) -> Option<Vec<u8>> {
    let opening = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).ok()?);
    let mut data = sealed.to_vec();
    let plain = opening
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(user.as_bytes()),
            &mut data,
        )
        .ok()?;
    Some(plain.to_vec())
}

/// A blob store whose lecture audio is sealed with the lecture's learner's key. Keys are
/// `lectures/{lecture id}/…`; other keys pass through.
pub struct SealedBlobs {
    inner: Arc<dyn BlobStore>,
    vault: Arc<Vault>,
}

impl SealedBlobs {
    pub fn wrap(inner: Arc<dyn BlobStore>, vault: Arc<Vault>) -> Arc<dyn BlobStore> {
        Arc::new(Self { inner, vault })
    }
}

fn lecture_of(key: &str) -> Option<Uuid> {
    key.strip_prefix("lectures/")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

fn vault_error(e: VaultError) -> BlobError {
    BlobError::Backend(e.to_string())
}

#[async_trait]
impl BlobStore for SealedBlobs {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        let Some(lecture) = lecture_of(key) else {
            return self.inner.put(key, bytes).await;
        };
        let user = self
            .vault
            .lecture_owner(lecture)
            .await
            .map_err(vault_error)?;
        match self
            .vault
            .seal_blob(user, &bytes)
            .await
            .map_err(vault_error)?
        {
            Some(sealed) => self.inner.put(key, sealed).await,
            None => Err(BlobError::Backend(
                "the learner was erased; their audio is not stored".into(),
            )),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        let bytes = self.inner.get(key).await?;
        self.vault
            .open_blob(bytes)
            .await
            .map_err(vault_error)?
            .ok_or_else(|| BlobError::NotFound(key.to_owned()))
    }

    async fn exists(&self, key: &str) -> Result<bool, BlobError> {
        self.inner.exists(key).await
    }

    async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        self.inner.delete(key).await
    }

    async fn signed_put_url(
        &self,
        key: &str,
        expires: std::time::Duration,
    ) -> Result<Option<String>, BlobError> {
        // Only for keys outside `lectures/`: what a client uploads directly is not sealed until
        // the server takes it in (see `http/lectures.rs`).
        match lecture_of(key) {
            Some(_) => Ok(None),
            None => self.inner.signed_put_url(key, expires).await,
        }
    }

    fn describe(&self) -> String {
        format!("{} (audio sealed per learner)", self.inner.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_string_opens_only_with_its_key_and_learner() {
        let key: [u8; KEY_LEN] = rand::random();
        let user = Uuid::now_v7();
        let sealed = seal(&key, user, "비밀 이야기".as_bytes());
        let (u, nonce, body) = split_sealed(&sealed).unwrap();
        assert_eq!(u, user);
        assert_eq!(
            open(&key, user, nonce, body).unwrap(),
            "비밀 이야기".as_bytes()
        );
        let other: [u8; KEY_LEN] = rand::random();
        assert!(open(&other, user, nonce, body).is_none());
        assert!(open(&key, Uuid::now_v7(), nonce, body).is_none());
        let mut flipped = body.to_vec();
        flipped[0] ^= 1;
        assert!(open(&key, user, nonce, &flipped).is_none());
    }

    #[test]
    fn sealing_a_list_seals_each_entry_and_an_erased_learner_gets_nothing() {
        let key: [u8; KEY_LEN] = rand::random();
        let user = Uuid::now_v7();
        let mut list = serde_json::json!(["one", "two"]);
        seal_value(&mut list, user, Some(&key));
        let items = list.as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert!(
            items
                .iter()
                .all(|v| v.as_str().unwrap().starts_with(SEALED_PREFIX))
        );
        let mut erased = serde_json::json!({"text": "hello", "list": ["a"]});
        seal_value(&mut erased["text"], user, None);
        seal_value(&mut erased["list"], user, None);
        assert_eq!(erased, serde_json::json!({"text": "", "list": []}));
    }

    #[test]
    fn blob_keys_name_their_lecture() {
        let id = Uuid::now_v7();
        assert_eq!(
            lecture_of(&format!("lectures/{id}/segment-000001.wav")),
            Some(id)
        );
        assert_eq!(lecture_of("exports/x"), None);
        assert_eq!(lecture_of("lectures/not-a-uuid/x"), None);
    }
}
