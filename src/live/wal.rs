//! The audio write-ahead log: where streamed chunks become durable before they are acknowledged.
//!
//! Every chunk of every live lecture is appended to one shared file by one writer thread, which
//! gathers what arrived while the previous fsync ran and makes the whole batch durable with one
//! `fdatasync` (group commit): thousands of lectures cost tens of fsyncs a second, not thousands.
//! A chunk's lecture learns it is durable through a `watch` of its highest durable sequence.
//!
//! Chunks stay in the WAL until their lecture has stored them in a segment (blob + event), which it
//! reports with [`AudioWal::release`]; a lecture that ended is [`AudioWal::forget`]-ed. A WAL file
//! that is no longer current and whose every chunk is released is deleted.
//!
//! # Record format (little-endian)
//! `len: u32` (of what follows the checksum) · `crc32: u32` (of what follows it) ·
//! `lecture: [u8; 16]` · `seq: u64` · `audio: [u8; len - 24]`.
//!
//! After a crash, [`AudioWal::open`] reads every file; a torn or corrupt record ends its file
//! (nothing after it was acknowledged, since acknowledgement waits for the fsync that covers it).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

/// A WAL file is rotated once it is larger than this.
const ROTATE_BYTES: u64 = 64 * 1024 * 1024;
/// Most records gathered into one write and fsync.
const MAX_BATCH: usize = 4_096;
/// Bytes of a record before its audio.
const HEADER: usize = 4 + 4 + 16 + 8;
/// A record longer than this is treated as corruption when reading.
const MAX_RECORD: usize = 16 * 1024 * 1024;

/// What the writer thread is asked to do.
enum Request {
    Write {
        lecture: Uuid,
        seq: u64,
        audio: Bytes,
        durable: Arc<watch::Sender<u64>>,
    },
    Release {
        lecture: Uuid,
        through: u64,
    },
    Forget {
        lecture: Uuid,
    },
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct WalStats {
    pub records: AtomicU64,
    pub syncs: AtomicU64,
    pub bytes: AtomicU64,
    pub files_deleted: AtomicU64,
}

/// A handle to the audio WAL. Cheap to clone.
#[derive(Clone)]
pub struct AudioWal {
    requests: mpsc::UnboundedSender<Request>,
    failed: watch::Receiver<Option<String>>,
    stats: Arc<WalStats>,
}

/// Chunks found in the WAL at start, per lecture, by sequence.
pub type Recovered = HashMap<Uuid, BTreeMap<u64, Bytes>>;

impl AudioWal {
    /// Opens the WAL directory (creating it), reads what earlier runs left, and starts the writer.
    /// New records go to a new file; old files are deleted once everything in them is released.
    pub fn open(dir: &Path) -> anyhow::Result<(AudioWal, Recovered)> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the audio WAL dir {}", dir.display()))?;
        let mut files = list_files(dir)?;
        let mut recovered: Recovered = HashMap::new();
        let mut index = Vec::new();
        for (number, path) in &files {
            // A crash may have left records in the page cache only (written, not yet synced):
            // they are about to be treated as durable, so make them so.
            File::open(path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", path.display()))?;
            let mut maxima: HashMap<Uuid, u64> = HashMap::new();
            read_file(path, |lecture, seq, audio| {
                let m = maxima.entry(lecture).or_default();
                *m = (*m).max(seq);
                recovered.entry(lecture).or_default().insert(seq, audio);
            })?;
            index.push(FileEntry {
                number: *number,
                path: path.clone(),
                maxima,
            });
        }
        let next = files.last().map_or(1, |(n, _)| n + 1);
        files.clear();
        let current = Current::create(dir, next)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (failed_tx, failed) = watch::channel(None);
        let stats = Arc::new(WalStats::default());
        let writer = Writer {
            dir: dir.to_owned(),
            current,
            old: index,
            covered: HashMap::new(),
            failed: failed_tx,
            stats: stats.clone(),
        };
        std::thread::Builder::new()
            .name("audio-wal".into())
            .spawn(move || writer.run(rx))
            .context("starting the audio WAL writer")?;
        Ok((
            AudioWal {
                requests: tx,
                failed,
                stats,
            },
            recovered,
        ))
    }

    /// Queues a chunk. When it (and every chunk queued before it) is on disk, `durable` is raised
    /// to `seq`. Nothing is raised if the WAL has failed: see [`AudioWal::failed`].
    pub fn write(&self, lecture: Uuid, seq: u64, audio: Bytes, durable: &Arc<watch::Sender<u64>>) {
        let _ = self.requests.send(Request::Write {
            lecture,
            seq,
            audio,
            durable: durable.clone(),
        });
    }

    /// The lecture has stored every chunk up to `through` elsewhere (a segment blob and its event).
    pub fn release(&self, lecture: Uuid, through: u64) {
        let _ = self.requests.send(Request::Release { lecture, through });
    }

    /// The lecture has ended; none of its chunks are needed any more.
    pub fn forget(&self, lecture: Uuid) {
        let _ = self.requests.send(Request::Forget { lecture });
    }

    /// Set once a write or fsync failed. The WAL then stops: nothing more is acknowledged.
    pub fn failed(&self) -> watch::Receiver<Option<String>> {
        self.failed.clone()
    }

    /// Whether the WAL has failed (cheap: no receiver is cloned).
    pub fn has_failed(&self) -> bool {
        self.failed.borrow().is_some()
    }

    pub fn stats(&self) -> &WalStats {
        &self.stats
    }
}

fn file_name(number: u64) -> String {
    format!("audio-{number:012}.wal")
}

fn list_files(dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix("audio-"))
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        files.push((number, entry.path()));
    }
    files.sort();
    Ok(files)
}

/// Reads every intact record of a file, in order; stops at the first torn or corrupt one.
fn read_file(path: &Path, mut each: impl FnMut(Uuid, u64, Bytes)) -> anyhow::Result<()> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .with_context(|| format!("reading {}", path.display()))?;
    let mut at = 0;
    while data.len() - at >= HEADER {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
        if !(24..=MAX_RECORD).contains(&len) || data.len() - at - 8 < len {
            break;
        }
        let body = &data[at + 8..at + 8 + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        let lecture = Uuid::from_bytes(body[..16].try_into().expect("16 bytes"));
        let seq = u64::from_le_bytes(body[16..24].try_into().expect("8 bytes"));
        each(lecture, seq, Bytes::copy_from_slice(&body[24..]));
        at += 8 + len;
    }
    if at < data.len() {
        tracing::warn!(
            file = %path.display(),
            offset = at,
            trailing_bytes = data.len() - at,
            "audio WAL ends in a torn or corrupt record; it was never acknowledged"
        );
    }
    Ok(())
}

fn encode(buf: &mut Vec<u8>, lecture: Uuid, seq: u64, audio: &[u8]) {
    let len = 24 + audio.len();
    let start = buf.len();
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(lecture.as_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(audio);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

struct Current {
    number: u64,
    path: PathBuf,
    file: File,
    len: u64,
    maxima: HashMap<Uuid, u64>,
}

impl Current {
    fn create(dir: &Path, number: u64) -> anyhow::Result<Current> {
        let path = dir.join(file_name(number));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        // Make the new file's directory entry durable before anything in it is acknowledged.
        File::open(dir)?.sync_all()?;
        Ok(Current {
            number,
            path,
            file,
            len: 0,
            maxima: HashMap::new(),
        })
    }
}

struct FileEntry {
    number: u64,
    path: PathBuf,
    maxima: HashMap<Uuid, u64>,
}

struct Writer {
    dir: PathBuf,
    current: Current,
    /// Older files, still holding unreleased chunks.
    old: Vec<FileEntry>,
    /// Per lecture, the sequence through which its chunks are released (`u64::MAX`: forgotten).
    covered: HashMap<Uuid, u64>,
    failed: watch::Sender<Option<String>>,
    stats: Arc<WalStats>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let mut buf = Vec::with_capacity(1 << 20);
        let mut done: Vec<(Arc<watch::Sender<u64>>, u64)> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            let mut housekeeping = false;
            let mut n = 0;
            while let Some(request) = next.take() {
                match request {
                    Request::Write {
                        lecture,
                        seq,
                        audio,
                        durable,
                    } => {
                        encode(&mut buf, lecture, seq, &audio);
                        let m = self.current.maxima.entry(lecture).or_default();
                        *m = (*m).max(seq);
                        done.push((durable, seq));
                        n += 1;
                    }
                    Request::Release { lecture, through } => {
                        let c = self.covered.entry(lecture).or_default();
                        *c = (*c).max(through);
                        housekeeping = true;
                    }
                    Request::Forget { lecture } => {
                        self.covered.insert(lecture, u64::MAX);
                        housekeeping = true;
                    }
                }
                if n < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if !buf.is_empty() {
                if self.failed.borrow().is_some() {
                    buf.clear();
                    done.clear();
                    continue;
                }
                let result = self
                    .current
                    .file
                    .write_all(&buf)
                    .and_then(|()| self.current.file.sync_data());
                if let Err(e) = result {
                    tracing::error!(error = %e, "audio WAL write failed; no more audio is acknowledged");
                    self.failed.send_replace(Some(e.to_string()));
                    buf.clear();
                    done.clear();
                    continue;
                }
                self.current.len += buf.len() as u64;
                self.stats.records.fetch_add(n as u64, Ordering::Relaxed);
                self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                buf.clear();
                for (durable, seq) in done.drain(..) {
                    durable.send_if_modified(|d| {
                        let raise = seq > *d;
                        if raise {
                            *d = seq;
                        }
                        raise
                    });
                }
                if self.current.len >= ROTATE_BYTES
                    && let Err(e) = self.rotate()
                {
                    tracing::error!(error = format!("{e:#}"), "audio WAL rotation failed");
                    self.failed.send_replace(Some(format!("{e:#}")));
                }
            }
            if housekeeping {
                self.collect();
            }
        }
    }

    fn rotate(&mut self) -> anyhow::Result<()> {
        let next = Current::create(&self.dir, self.current.number + 1)?;
        let old = std::mem::replace(&mut self.current, next);
        self.old.push(FileEntry {
            number: old.number,
            path: old.path,
            maxima: old.maxima,
        });
        self.collect();
        Ok(())
    }

    fn is_covered(&self, lecture: &Uuid, max: u64) -> bool {
        self.covered.get(lecture).is_some_and(|c| *c >= max)
    }

    /// Deletes old files whose every chunk is released, and forgets what no file refers to.
    fn collect(&mut self) {
        let mut kept = Vec::with_capacity(self.old.len());
        for entry in std::mem::take(&mut self.old) {
            if entry.maxima.iter().all(|(l, m)| self.is_covered(l, *m)) {
                match std::fs::remove_file(&entry.path) {
                    Ok(()) => {
                        self.stats.files_deleted.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(file = entry.number, "audio WAL file released");
                    }
                    Err(e) => {
                        tracing::warn!(file = %entry.path.display(), error = %e, "could not delete a released audio WAL file");
                        kept.push(entry);
                    }
                }
            } else {
                kept.push(entry);
            }
        }
        self.old = kept;
        // Drop the current file's entries that are released, so that an idle lecture does not
        // keep its memory; and coverage no file needs any more.
        let covered = &self.covered;
        self.current
            .maxima
            .retain(|l, m| covered.get(l).is_none_or(|c| *c < *m));
        if self.covered.len() > 1024 {
            let old = &self.old;
            let current = &self.current;
            self.covered.retain(|l, _| {
                current.maxima.contains_key(l) || old.iter().any(|f| f.maxima.contains_key(l))
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn wait(durable: &Arc<watch::Sender<u64>>, seq: u64) {
        let mut rx = durable.subscribe();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            rx.wait_for(|d| *d >= seq),
        )
        .await
        .expect("durable in time")
        .unwrap();
    }

    #[tokio::test]
    async fn chunks_survive_a_reopen_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        {
            let (wal, recovered) = AudioWal::open(dir.path()).unwrap();
            assert!(recovered.is_empty());
            let da = Arc::new(watch::channel(0).0);
            let db = Arc::new(watch::channel(0).0);
            for seq in 1..=5 {
                wal.write(a, seq, Bytes::from(vec![seq as u8; 100]), &da);
                wal.write(b, seq, Bytes::from(vec![seq as u8 + 100; 7]), &db);
            }
            wait(&da, 5).await;
            wait(&db, 5).await;
            assert_eq!(*da.borrow(), 5);
        }
        // A torn record at the end of the file, as a crash mid-write leaves it.
        let files = list_files(dir.path()).unwrap();
        let (_, last) = files.last().unwrap();
        let mut f = OpenOptions::new().append(true).open(last).unwrap();
        let mut torn = Vec::new();
        encode(&mut torn, a, 6, &[6; 100]);
        f.write_all(&torn[..torn.len() - 10]).unwrap();
        drop(f);

        let (wal, recovered) = AudioWal::open(dir.path()).unwrap();
        assert_eq!(recovered.len(), 2);
        let ra = &recovered[&a];
        assert_eq!(ra.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert_eq!(&ra[&3][..], &[3u8; 100][..]);
        assert_eq!(&recovered[&b][&5][..], &[105u8; 7][..]);

        // Releasing and forgetting everything lets the old file go.
        wal.release(a, 5);
        wal.forget(b);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while list_files(dir.path()).unwrap().len() > 1
            || wal.stats().files_deleted.load(Ordering::Relaxed) == 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "old WAL file not deleted"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(wal.stats().files_deleted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_flipped_bit_ends_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(1));
        let lecture = Uuid::now_v7();
        let mut buf = Vec::new();
        encode(&mut buf, lecture, 1, b"first");
        let second = buf.len();
        encode(&mut buf, lecture, 2, b"second");
        encode(&mut buf, lecture, 3, b"third");
        buf[second + HEADER + 2] ^= 0x10;
        std::fs::write(&path, &buf).unwrap();
        let mut seen = Vec::new();
        read_file(&path, |_, seq, audio| seen.push((seq, audio))).unwrap();
        assert_eq!(seen, vec![(1, Bytes::from_static(b"first"))]);
    }
}
