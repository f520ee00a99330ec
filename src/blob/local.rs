//! The local filesystem blob store: one file per key under a root directory.
//!
//! A put writes a temporary file beside the target, fsyncs it, renames it over the target and
//! fsyncs the directory, so a crash leaves either the old blob or the new one, never a torn file.

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlobError, BlobStore, validate_key};

pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    pub fn new(root: impl Into<PathBuf>) -> LocalBlobStore {
        LocalBlobStore { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

fn put_sync(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("blob paths have a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("blob"),
        uuid::Uuid::now_v7().simple()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || put_sync(&path, &bytes))
            .await
            .map_err(|e| BlobError::Backend(format!("blob writer task failed: {e}")))??;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Bytes::from(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(BlobError::NotFound(key.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, BlobError> {
        Ok(tokio::fs::try_exists(self.path(key)?).await?)
    }

    async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        })
        .await
        .map_err(|e| BlobError::Backend(format!("blob deleter task failed: {e}")))?
        .map_err(Into::into)
    }

    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_replaces_and_get_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::new(dir.path());
        assert!(matches!(
            store.get("a/b.wav").await,
            Err(BlobError::NotFound(_))
        ));
        assert!(!store.exists("a/b.wav").await.unwrap());
        store
            .put("a/b.wav", Bytes::from_static(b"one"))
            .await
            .unwrap();
        store
            .put("a/b.wav", Bytes::from_static(b"two"))
            .await
            .unwrap();
        assert_eq!(&store.get("a/b.wav").await.unwrap()[..], b"two");
        assert!(store.exists("a/b.wav").await.unwrap());
        assert!(store.delete("a/b.wav").await.unwrap());
        assert!(!store.delete("a/b.wav").await.unwrap());
        assert!(!store.exists("a/b.wav").await.unwrap());
        store
            .put("a/b.wav", Bytes::from_static(b"two"))
            .await
            .unwrap();
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("b.wav")]);
        assert!(matches!(
            store.put("../escape", Bytes::new()).await,
            Err(BlobError::InvalidKey(_))
        ));
    }
}
