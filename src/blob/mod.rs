//! Blob storage for audio: a small interface with a local filesystem backend (the default, under
//! the data dir) and an S3-compatible backend (cargo feature `s3`).
//!
//! Keys are relative, `/`-separated paths such as `lectures/{id}/segment-000001.wav`. A `put`
//! returns only once the blob is durable: on the local backend its bytes and its directory entry
//! are fsynced; on S3 the PUT has been acknowledged. Putting the same key again replaces the blob
//! atomically (readers see the old or the new bytes, never a mix).

pub mod local;
#[cfg(feature = "s3")]
pub mod s3;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob `{0}` not found")]
    NotFound(String),
    #[error("invalid blob key `{0}`")]
    InvalidKey(String),
    #[error("blob storage error: {0}")]
    Io(#[from] std::io::Error),
    #[error("blob storage error: {0}")]
    Backend(String),
}

/// A blob store. Cheap to share behind an `Arc`.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `bytes` under `key`, durably, replacing any blob already there.
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError>;
    /// The whole blob.
    async fn get(&self, key: &str) -> Result<Bytes, BlobError>;
    /// Whether a blob exists under `key`.
    async fn exists(&self, key: &str) -> Result<bool, BlobError> {
        match self.get(key).await {
            Ok(_) => Ok(true),
            Err(BlobError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
    /// A URL a client may `PUT` the blob to directly, valid for `expires`; `None` when the
    /// store has no such URLs (the local store: uploads then go through the server).
    async fn signed_put_url(
        &self,
        _key: &str,
        _expires: std::time::Duration,
    ) -> Result<Option<String>, BlobError> {
        Ok(None)
    }
    /// Deletes the blob; `false` if there was none. Deleting is durable when it returns.
    async fn delete(&self, key: &str) -> Result<bool, BlobError>;
    /// A short description for logs (never containing credentials).
    fn describe(&self) -> String;
}

/// Where a recording uploaded straight to the blob store (by a pre-signed URL) waits for the
/// server to take it in. It is not sealed until then; erasure deletes it too.
pub fn direct_upload_key(lecture_id: uuid::Uuid) -> String {
    format!("uploads/{lecture_id}/recording")
}

/// Checks that a key is a relative path of plain segments: no `..`, no empty segments, no
/// leading `/`, only `[A-Za-z0-9._-]` per segment. Every backend refuses other keys, so a key can
/// never escape its root.
pub fn validate_key(key: &str) -> Result<(), BlobError> {
    let ok = !key.is_empty()
        && key.len() <= 512
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(BlobError::InvalidKey(key.to_owned()))
    }
}

/// Opens the blob store a URL names: `file:///abs/path` or a plain path for the local backend,
/// `s3://bucket/prefix` for S3 (with the `s3` feature; credentials and endpoint from the usual
/// `AWS_*` variables).
pub fn open(url: &str) -> anyhow::Result<Arc<dyn BlobStore>> {
    if let Some(rest) = url.strip_prefix("s3://") {
        #[cfg(feature = "s3")]
        {
            return Ok(Arc::new(s3::S3BlobStore::from_url(rest)?));
        }
        #[cfg(not(feature = "s3"))]
        {
            let _ = rest;
            anyhow::bail!("blob store `{url}` needs S3 support: build with `--features s3`");
        }
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    Ok(Arc::new(local::LocalBlobStore::new(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_their_root() {
        for good in ["a", "lectures/0191/segment-000001.wav", "x.y_z-1/b"] {
            assert!(validate_key(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/abs", "a//b", "../x", "a/../b", "a/./b", "a b", "a\\b", "é", "a/",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }
}
