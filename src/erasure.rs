//! The right to erasure (`DELETE /api/v1/me`, `teachback users erase`) and audio retention
//! (`teachback audio expire`, or hourly with `TEACHBACK_AUDIO_RETENTION_DAYS`).
//!
//! Erasing a learner: their current nickname's reservation is looked up (while it can still be
//! read), their key is destroyed (every nickname, transcript, feedback text and nudge sealed
//! with it becomes unreadable, in the log and in any copy of it), their audio blobs are deleted,
//! and `UserErased` is appended to their stream together with the release of their nickname.
//! Every projection then drops the learner's rows and the ranking boards drop them. Nothing in
//! the log is rewritten, so the hash chain still verifies. On SQLite, deleted rows are zeroed
//! (`secure_delete`) and the write-ahead log is checkpointed and truncated afterwards, so no
//! earlier page image keeps the plaintext either.
//!
//! Retention: segments stored more than N days ago lose their blobs, and `AudioDeleted` records
//! which, per lecture. Transcripts and grades stay.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use teachback_events::{
    AudioDeleted, AudioDeletionReason, ErasureRequester, Event, EventKind, Metadata, NewEvent,
    UserErased, UsernameReleased, streams,
};
use uuid::Uuid;

use crate::blob::{BlobError, BlobStore};
use crate::db::Db;
use crate::store::{AppendError, EventStore, ExpectedVersion, StoreError, StreamAppend};

/// Why an erasure did not happen.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error("no learner {0}")]
    UnknownUser(Uuid),
    #[error("learner {0} was already erased")]
    AlreadyErased(Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error("deleting audio: {0}")]
    Blob(#[from] BlobError),
    #[error("learner keys: {0}")]
    Keys(#[from] crate::vault::VaultError),
    #[error("this event store keeps no learner keys, so it cannot erase")]
    NoVault,
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Erased {
    pub user_id: Uuid,
    pub lectures: u32,
    pub blobs_deleted: u32,
    /// The position of `UserErased`: the read models have dropped the learner once they reach it.
    pub position: u64,
}

const PAGE: usize = 1_000;

/// Erases a learner (see the module docs). `progress` is told the lectures handled so far and
/// their number.
pub async fn erase(
    store: &EventStore,
    blobs: &Arc<dyn BlobStore>,
    user: Uuid,
    requested_by: ErasureRequester,
    metadata: Metadata,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Erased, EraseError> {
    let vault = store.vault().ok_or(EraseError::NoVault)?.clone();
    let own = store.read_stream_all(&streams::user(user)).await?;
    if own.is_empty() {
        return Err(EraseError::UnknownUser(user));
    }
    let mut name = None;
    for event in &own {
        match event.decode() {
            Ok(Event::DeviceRegistered(e)) if name.is_none() => name = Some(e.name),
            Ok(Event::UserRenamed(e)) => name = Some(e.name),
            Ok(Event::UserErased(_)) => return Err(EraseError::AlreadyErased(user)),
            _ => {}
        }
    }
    // The reservation to release, found while the name can still be opened.
    let mut release = None;
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        let stream = crate::users::reservation_stream(&crate::users::name_key(&name));
        if let Some(last) = store.last_event(&stream).await?
            && matches!(last.decode(), Ok(Event::UsernameClaimed(c)) if c.user_id == user)
        {
            release = Some((stream, last.stream_version));
        }
    }

    let lectures = lectures_of(store, user).await?;
    vault.destroy(user).await?;
    let mut blobs_deleted = 0u32;
    for (done, lecture) in lectures.iter().enumerate() {
        let direct = crate::blob::direct_upload_key(*lecture);
        for key in blob_keys(store, *lecture)
            .await?
            .into_values()
            .chain([direct])
        {
            if blobs.delete(&key).await? {
                blobs_deleted += 1;
            }
        }
        progress(done as u64 + 1, lectures.len() as u64);
    }

    let erased = Event::UserErased(UserErased {
        user_id: user,
        requested_by,
        lectures: lectures.len() as u32,
        blobs_deleted,
    });
    let mut appends = vec![StreamAppend::new(
        streams::user(user),
        ExpectedVersion::Any,
        vec![NewEvent::from_event(&erased, metadata.clone())],
    )];
    if let Some((stream, version)) = release {
        let released = Event::UsernameReleased(UsernameReleased { user_id: user });
        appends.push(StreamAppend::new(
            stream,
            ExpectedVersion::Exact(version),
            vec![NewEvent::from_event(&released, metadata)],
        ));
    }
    let outcome = match store.append(appends.clone()).await {
        Ok(outcome) => outcome,
        // The name changed hands in between (it cannot be ours any more): erase without it.
        Err(AppendError::WrongExpectedVersion { .. }) if appends.len() > 1 => {
            appends.truncate(1);
            store.append(appends).await?
        }
        Err(e) => return Err(e.into()),
    };
    metrics::counter!("teachback_erasures_total").increment(1);
    Ok(Erased {
        user_id: user,
        lectures: lectures.len() as u32,
        blobs_deleted,
        position: outcome.position,
    })
}

/// Every lecture the learner started, from the log (not a read model that may lag).
async fn lectures_of(store: &EventStore, user: Uuid) -> Result<Vec<Uuid>, StoreError> {
    let types = [EventKind::LectureStarted.type_name().to_owned()];
    let mut lectures = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_all_of_types(after, PAGE, &types).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            return Ok(lectures);
        };
        for event in &page {
            if let Ok(Event::LectureStarted(e)) = event.decode()
                && e.user_id == user
            {
                lectures.push(e.lecture_id);
            }
        }
        after = last;
    }
}

/// A lecture's audio blobs by segment index, minus those already deleted.
async fn blob_keys(store: &EventStore, lecture: Uuid) -> Result<BTreeMap<u32, String>, StoreError> {
    let mut keys = BTreeMap::new();
    for event in store.read_stream_all(&streams::lecture(lecture)).await? {
        match event.decode() {
            Ok(Event::AudioSegmentStored(e)) => {
                keys.insert(e.index, e.blob_key);
            }
            Ok(Event::AudioDeleted(e)) => {
                for index in e.segments {
                    keys.remove(&index);
                }
            }
            _ => {}
        }
    }
    Ok(keys)
}

/// After the read models have dropped an erased learner: on SQLite, checkpoints the
/// write-ahead log into the database file and truncates it, so that no page image from before
/// the deletion survives in it. Retries while readers hold old snapshots.
pub async fn compact(db: &Db) -> Result<bool, sqlx::Error> {
    let Db::Sqlite(pool) = db else {
        return Ok(true);
    };
    for _ in 0..50 {
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(pool)
            .await?;
        if busy == 0 {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}

/// What a retention run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Expired {
    pub lectures: u32,
    pub blobs_deleted: u32,
    /// Segments whose blob was already gone (deleted by hand, or a run that stopped midway).
    pub already_gone: u32,
}

/// Deletes the audio of every segment stored before `cutoff`, recording `AudioDeleted` per
/// lecture. `progress` is told the lectures handled and their number.
pub async fn expire_audio(
    store: &EventStore,
    blobs: &Arc<dyn BlobStore>,
    cutoff: Timestamp,
    retention_days: u32,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Expired, EraseError> {
    // Segments stored before the cutoff and not deleted yet, per lecture.
    let types = [
        EventKind::AudioSegmentStored.type_name().to_owned(),
        EventKind::AudioDeleted.type_name().to_owned(),
    ];
    let mut due: BTreeMap<Uuid, BTreeMap<u32, String>> = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = store.read_all_of_types(after, PAGE, &types).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            break;
        };
        for event in &page {
            match event.decode() {
                Ok(Event::AudioSegmentStored(e)) if event.recorded_at < cutoff => {
                    due.entry(e.lecture_id)
                        .or_default()
                        .insert(e.index, e.blob_key);
                }
                Ok(Event::AudioDeleted(e)) => {
                    if let Some(segments) = due.get_mut(&e.lecture_id) {
                        for index in e.segments {
                            segments.remove(&index);
                        }
                    }
                }
                _ => {}
            }
        }
        after = last;
    }
    due.retain(|_, segments| !segments.is_empty());

    let mut report = Expired::default();
    let total = due.len() as u64;
    for (done, (lecture, segments)) in due.into_iter().enumerate() {
        for key in segments.values() {
            if blobs.delete(key).await? {
                report.blobs_deleted += 1;
            } else {
                report.already_gone += 1;
            }
        }
        let deleted = Event::AudioDeleted(AudioDeleted {
            lecture_id: lecture,
            segments: segments.into_keys().collect(),
            reason: AudioDeletionReason::Retention,
            retention_days: Some(retention_days),
        });
        store
            .append_to_stream(
                streams::lecture(lecture),
                ExpectedVersion::Any,
                vec![NewEvent::from_event(&deleted, Metadata::default())],
            )
            .await?;
        report.lectures += 1;
        progress(done as u64 + 1, total);
    }
    if report.blobs_deleted > 0 {
        metrics::counter!("teachback_audio_expired_blobs_total")
            .increment(u64::from(report.blobs_deleted));
    }
    Ok(report)
}

/// The retention cutoff `days` before `now`.
pub fn cutoff(now: Timestamp, days: u32) -> Timestamp {
    now.checked_sub(jiff::SignedDuration::from_hours(24 * i64::from(days)))
        .unwrap_or(Timestamp::MIN)
}
