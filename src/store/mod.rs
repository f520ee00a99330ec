//! The event store: append with optimistic concurrency, read streams and the global log, and
//! subscribe to everything that commits.
//!
//! One [`EventStore`] handle fronts a [`Backend`]: SQLite or PostgreSQL ([`SqlBackend`]), or
//! KurrentDB (`KurrentBackend`, cargo feature `kurrentdb`; see `kurrent.rs` for what it can and
//! cannot promise). Appends do not go to the database one by one: they queue for a single
//! writer task that takes everything waiting, checks every request against the stream versions
//! in one transaction, and commits them together: one transaction, one fsync (group commit). An
//! append returns only after that transaction is durable. A request whose check fails is
//! answered with its own error; the others in the batch still commit. (KurrentDB has no
//! transaction over several appends: there each request of a batch is appended on its own.)
//!
//! Positions are opaque ordered `u64`s. Readers ask for events *after* a position and never
//! assume positions are dense.
//!
//! Every row also stores a hash linking it to the row before it (`chain.rs`), computed by the
//! writer under the write lock, so the stored log is tamper-evident (`teachback audit verify`).

pub mod archive;
pub(crate) mod backfill;
pub mod chain;
#[cfg(feature = "kurrentdb")]
mod kurrent;
mod plan;
mod postgres;
mod row;
mod sql;
mod sqlite;

#[cfg(feature = "kurrentdb")]
pub use kurrent::KurrentBackend;
pub use row::{STORED_COLUMNS, StoredEvent};
pub use sql::SqlBackend;

/// Installs the process-wide TLS crypto provider the KurrentDB client needs (see
/// `kurrent::install_crypto_provider`); does nothing in a build without the `kurrentdb` feature.
/// Call it first thing, before anything sets up TLS.
pub fn install_crypto_provider() {
    #[cfg(feature = "kurrentdb")]
    kurrent::install_crypto_provider();
}

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use jiff::Timestamp;
use teachback_events::{NewEvent, RecordedEvent};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

pub use plan::PreparedAppend;
use plan::PreparedEvent;
pub use plan::VersionCache;

/// The most events one group commit takes; larger bursts are split over several transactions.
const MAX_BATCH_EVENTS: usize = 4_096;
/// Most times the writer yields to let more appends join a batch before committing it.
const MAX_GATHER_YIELDS: usize = 8;
/// How many appends may wait for the writer before callers are slowed down (back-pressure).
const QUEUE_DEPTH: usize = 16_384;
/// Page size of the reads behind subscriptions.
const SUBSCRIPTION_PAGE: usize = 1_000;

/// What the caller expects the stream's current version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream holds.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must hold at least one event.
    StreamExists,
    /// The stream's last event must have exactly this (0-based) version.
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Events for one stream, with the version the caller expects that stream to be at.
///
/// In a request over several streams, put the part most likely to be refused (a reservation)
/// first and the parts whose loss is harmless last: a backend that cannot append to several
/// streams atomically (KurrentDB) checks every part, then writes them in request order and
/// stops at the first refusal, so a race can leave the first parts written.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    pub fn new(
        stream: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        Self {
            stream: stream.into(),
            expected,
            events,
        }
    }
}

/// Where one stream's events landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub stream: String,
    /// Version of the stream's last event after the append (the next expected version).
    pub version: u64,
    /// Global position of the stream's last appended event.
    pub position: u64,
}

/// The outcome of an (atomic, possibly multi-stream) append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// One entry per stream, in request order.
    pub streams: Vec<Appended>,
    /// The highest global position written; wait for projections to reach it to read your writes.
    pub position: u64,
}

/// Why the store failed, as opposed to why a request was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(Arc<sqlx::Error>),
    #[error("stored event at position {position} is unreadable: {reason}")]
    Corrupt { position: u64, reason: String },
    #[error("the event store is shut down")]
    Closed,
    #[error("append conflict: {0}")]
    Conflict(String),
    #[error("learner keys: {0}")]
    Keys(String),
    /// A backend other than the SQL one failed (KurrentDB: connection, timeout, server error).
    #[error("event store: {0}")]
    Backend(String),
}

impl From<crate::vault::VaultError> for StoreError {
    fn from(e: crate::vault::VaultError) -> Self {
        StoreError::Keys(e.to_string())
    }
}

/// Whether a database error is a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(Arc::new(e))
    }
}

/// Why an append did not happen. Nothing of a refused request is written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("stream `{stream}` expected {expected} but is at {}", current.map_or_else(|| "no stream".to_owned(), |v| format!("version {v}")))]
    WrongExpectedVersion {
        stream: String,
        expected: ExpectedVersion,
        /// The stream's actual last version (`None`: it does not exist).
        current: Option<u64>,
    },
    #[error("event {id} was already appended, but not as part of this same append")]
    DuplicateEventId { id: Uuid },
    #[error("invalid append: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Direction of a stream read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forwards,
    Backwards,
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum SubscriptionMessage {
    Event(Box<RecordedEvent>),
    /// Every event committed when the subscription started has been delivered; what follows is
    /// live. Sent once, with the position delivered up to.
    CaughtUp {
        position: u64,
    },
}

/// A database behind the store. The group-commit writer is the only caller of `append_batch`.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Checks and writes a whole batch in one durable transaction. `Ok` holds one result per
    /// request; `Err` means the transaction failed as a whole and nothing was written.
    ///
    /// `cache` is the writer's memory of stream versions; a backend may use it to skip lookups,
    /// provided a stale entry can never cause a wrong answer (see [`plan::VersionCache`]).
    async fn append_batch(
        &self,
        batch: &[PreparedAppend],
        now: Timestamp,
        cache: &mut VersionCache,
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError>;

    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Events with a position greater than `after`, in global order, optionally only those whose
    /// stream starts with `prefix`.
    async fn read_all(
        &self,
        after: u64,
        limit: usize,
        prefix: Option<&str>,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Like [`Backend::read_all`] over the whole log, but only events of these types (the
    /// others are not read at all). An empty batch means none is left. The default reads
    /// everything and filters.
    async fn read_all_of_types(
        &self,
        after: u64,
        limit: usize,
        types: &[String],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut out = Vec::new();
        let mut after = after;
        loop {
            let page = self.read_all(after, limit, None).await?;
            let Some(last) = page.last().map(|e| e.position) else {
                return Ok(out);
            };
            let full = page.len() == limit;
            out.extend(page.into_iter().filter(|e| types.contains(&e.event_type)));
            if out.len() >= limit || !full {
                out.truncate(limit);
                return Ok(out);
            }
            after = last;
        }
    }

    /// The highest committed position (0 for an empty log).
    async fn head(&self) -> Result<u64, StoreError>;

    /// Whether the log's positions count its events (1, 2, 3, …), so that a difference of two
    /// positions is a number of events. KurrentDB's (byte offsets) do not.
    fn dense_positions(&self) -> bool {
        true
    }

    /// The keyring sealing learners' personal fields in this backend's events, if it has one.
    fn vault(&self) -> Option<Arc<crate::vault::Vault>> {
        None
    }
}

enum Message {
    Append {
        request: PreparedAppend,
        reply: oneshot::Sender<Result<AppendOutcome, AppendError>>,
    },
    /// Answered once everything queued before it has been committed.
    Flush(oneshot::Sender<()>),
}

/// Counters of the group-commit writer, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed (each one fsync).
    pub commits: AtomicU64,
    /// Append requests answered.
    pub requests: AtomicU64,
    /// Events written.
    pub events: AtomicU64,
}

/// A cheap, cloneable handle to the event store.
#[derive(Clone)]
pub struct EventStore {
    backend: Arc<dyn Backend>,
    stats: Arc<WriterStats>,
    queue: mpsc::Sender<Message>,
    head: watch::Receiver<u64>,
    /// How often idle subscriptions look for events written by other processes.
    poll_interval: Duration,
    /// Seals personal fields before an append, opens them after a read.
    vault: Option<Arc<crate::vault::Vault>>,
}

impl EventStore {
    /// Starts the group-commit writer for `backend`. Must be called inside a Tokio runtime.
    pub async fn start(
        backend: Arc<dyn Backend>,
        poll_interval: Duration,
    ) -> Result<Self, StoreError> {
        let head = backend.head().await?;
        let (head_tx, head_rx) = watch::channel(head);
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(WriterStats::default());
        tokio::spawn(run_writer(backend.clone(), rx, head_tx, stats.clone()));
        Ok(Self {
            vault: backend.vault(),
            backend,
            stats,
            queue,
            head: head_rx,
            poll_interval,
        })
    }

    /// The keyring sealing learners' personal fields, if the backend has one.
    pub fn vault(&self) -> Option<&Arc<crate::vault::Vault>> {
        self.vault.as_ref()
    }

    /// Opens the sealed personal fields of events just read.
    async fn opened(
        &self,
        events: Result<Vec<RecordedEvent>, StoreError>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        open_with(self.vault.as_deref(), events).await
    }

    /// The writer's counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Appends events to one stream.
    pub async fn append_to_stream(
        &self,
        stream: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, AppendError> {
        let mut outcome = self
            .append(vec![StreamAppend::new(stream, expected, events)])
            .await?;
        Ok(outcome.streams.remove(0))
    }

    /// Appends to several streams atomically: every stream's check passes and all events are
    /// written, or nothing is. Re-appending events whose ids are already stored (a retry) is a
    /// no-op that returns where they landed.
    pub async fn append(&self, streams: Vec<StreamAppend>) -> Result<AppendOutcome, AppendError> {
        let started = std::time::Instant::now();
        let events: usize = streams.iter().map(|s| s.events.len()).sum();
        let result = self.append_queued(streams).await;
        let outcome = match &result {
            Ok(_) => "committed",
            Err(AppendError::Store(_)) => "failed",
            Err(_) => "refused",
        };
        metrics::counter!("teachback_store_appends_total", "outcome" => outcome).increment(1);
        metrics::histogram!("teachback_store_append_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        if result.is_ok() {
            metrics::counter!("teachback_store_appended_events_total").increment(events as u64);
        }
        result
    }

    async fn append_queued(
        &self,
        mut streams: Vec<StreamAppend>,
    ) -> Result<AppendOutcome, AppendError> {
        if let Some(vault) = &self.vault {
            let mut payloads: Vec<(&str, &mut serde_json::Value)> = streams
                .iter_mut()
                .flat_map(|s| s.events.iter_mut())
                .map(|e| (e.event_type.as_str(), &mut e.payload))
                .collect();
            vault
                .seal_payloads(&mut payloads)
                .await
                .map_err(StoreError::from)?;
        }
        let request = prepare(streams)?;
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Message::Append { request, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Waits until everything appended before this call is committed (used at shutdown).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Message::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    pub async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.opened(
            self.backend
                .read_stream(stream, from, direction, limit)
                .await,
        )
        .await
    }

    /// After an append to `stream` expecting `version` met a conflict: the stream's current
    /// version if every event after `version` is one that `may_step_over` accepts (another
    /// writer's kind of event, which the appender can safely append after), else `None`.
    pub async fn version_if_only(
        &self,
        stream: &str,
        version: u64,
        may_step_over: impl Fn(&RecordedEvent) -> bool,
    ) -> Result<Option<u64>, StoreError> {
        let since = self
            .read_stream(stream, version + 1, Direction::Forwards, 10_000)
            .await?;
        Ok(match since.last() {
            Some(last) if since.iter().all(may_step_over) => Some(last.stream_version),
            _ => None,
        })
    }

    /// A whole stream, forwards, read in pages.
    pub async fn read_stream_all(&self, stream: &str) -> Result<Vec<RecordedEvent>, StoreError> {
        const PAGE: usize = 1_000;
        let mut events: Vec<RecordedEvent> = Vec::new();
        loop {
            let from = events.last().map_or(0, |e| e.stream_version + 1);
            let page = self
                .opened(
                    self.backend
                        .read_stream(stream, from, Direction::Forwards, PAGE)
                        .await,
                )
                .await?;
            let done = page.len() < PAGE;
            events.extend(page);
            if done {
                return Ok(events);
            }
        }
    }

    /// The last event of a stream, if the stream exists.
    pub async fn last_event(&self, stream: &str) -> Result<Option<RecordedEvent>, StoreError> {
        let mut events = self
            .opened(
                self.backend
                    .read_stream(stream, u64::MAX, Direction::Backwards, 1)
                    .await,
            )
            .await?;
        Ok(events.pop())
    }

    pub async fn read_all(
        &self,
        after: u64,
        limit: usize,
        prefix: Option<&str>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.opened(self.backend.read_all(after, limit, prefix).await)
            .await
    }

    /// Events of these types only, after `after`, in global order: a rebuild reads only what
    /// its projections read (most of a log is audio segments and streamed feedback).
    pub async fn read_all_of_types(
        &self,
        after: u64,
        limit: usize,
        types: &[String],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.opened(self.backend.read_all_of_types(after, limit, types).await)
            .await
    }

    /// The highest committed position, read from the database.
    pub async fn head(&self) -> Result<u64, StoreError> {
        self.backend.head().await
    }

    /// Whether positions count events (see [`Backend::dense_positions`]).
    pub fn dense_positions(&self) -> bool {
        self.backend.dense_positions()
    }

    /// How far the log runs past `position` (up to `head`): the number of events after it and
    /// the seconds between the first of them and the newest one counted. With dense positions
    /// the count is a subtraction (exact, and the seconds are not computed: 0); otherwise the
    /// events are read and counted, at most `cap` of them.
    pub async fn lag_after(
        &self,
        position: u64,
        head: u64,
        cap: u64,
    ) -> Result<(u64, f64), StoreError> {
        if self.dense_positions() {
            return Ok((head.saturating_sub(position), 0.0));
        }
        let (mut count, mut after) = (0u64, position);
        let mut first_at = None;
        let mut last_at = None;
        while count < cap && after < head {
            let want = (cap - count).min(SUBSCRIPTION_PAGE as u64) as usize;
            let page = self.backend.read_all(after, want, None).await?;
            let Some(last) = page.last() else { break };
            first_at = first_at.or(page.first().map(|e| e.recorded_at));
            last_at = Some(last.recorded_at);
            after = last.position;
            count += page.len() as u64;
            if page.len() < want {
                break;
            }
        }
        let seconds = match (first_at, last_at) {
            (Some(first), Some(last)) => last.duration_since(first).as_secs_f64().max(0.0),
            _ => 0.0,
        };
        Ok((count, seconds))
    }

    /// A watch of the highest position this process has committed.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    /// Every event after `after` (optionally only streams starting with `prefix`), exactly once
    /// and in global order, then [`SubscriptionMessage::CaughtUp`] once, then live events as
    /// they commit. Resume from a checkpoint by passing the last position you processed.
    pub fn subscribe_all(
        &self,
        after: u64,
        prefix: Option<String>,
    ) -> impl Stream<Item = Result<SubscriptionMessage, StoreError>> + Send + 'static {
        let backend = self.backend.clone();
        let vault = self.vault.clone();
        let mut head = self.head.clone();
        let poll = self.poll_interval;
        async_stream::try_stream! {
            let mut last = after;
            let mut caught_up = false;
            loop {
                // Mark the current head as seen *before* reading, so a commit that lands after the
                // read still wakes the wait below.
                head.borrow_and_update();
                let page = open_with(
                    vault.as_deref(),
                    backend.read_all(last, SUBSCRIPTION_PAGE, prefix.as_deref()).await,
                )
                .await?;
                let full = page.len() == SUBSCRIPTION_PAGE;
                for event in page {
                    debug_assert!(event.position > last, "read_all must move forwards");
                    last = event.position;
                    yield SubscriptionMessage::Event(Box::new(event));
                }
                if full {
                    continue;
                }
                if !caught_up {
                    caught_up = true;
                    yield SubscriptionMessage::CaughtUp { position: last };
                }
                // Commits from this process wake us at once; other processes' commits are seen
                // at the next poll.
                tokio::select! {
                    changed = head.changed() => {
                        if changed.is_err() {
                            // The writer is gone; keep polling so a read-only tail still follows.
                            tokio::time::sleep(poll).await;
                        }
                    }
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
    }
}

/// Opens the sealed personal fields of events read from a backend.
async fn open_with(
    vault: Option<&crate::vault::Vault>,
    events: Result<Vec<RecordedEvent>, StoreError>,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut events = events?;
    if let Some(vault) = vault {
        vault.open_events(&mut events).await?;
    }
    Ok(events)
}

/// Checks a request's shape and serialises its payloads, off the writer's hot path.
fn prepare(streams: Vec<StreamAppend>) -> Result<PreparedAppend, AppendError> {
    if streams.is_empty() {
        return Err(AppendError::Invalid(
            "an append needs at least one stream".into(),
        ));
    }
    let mut seen_streams = HashSet::new();
    let mut seen_ids = HashSet::new();
    let mut parts = Vec::with_capacity(streams.len());
    for part in streams {
        if part.stream.is_empty() || part.stream.len() > 512 {
            return Err(AppendError::Invalid(
                "a stream name has 1 to 512 bytes".into(),
            ));
        }
        if !seen_streams.insert(part.stream.clone()) {
            return Err(AppendError::Invalid(format!(
                "stream `{}` appears twice in one append",
                part.stream
            )));
        }
        if part.events.is_empty() {
            return Err(AppendError::Invalid(format!(
                "the append to `{}` has no events",
                part.stream
            )));
        }
        let mut events = Vec::with_capacity(part.events.len());
        for e in part.events {
            if !seen_ids.insert(e.id) {
                return Err(AppendError::Invalid(format!(
                    "event id {} appears twice",
                    e.id
                )));
            }
            events.push(PreparedEvent {
                id: e.id,
                event_type: e.event_type,
                schema_version: e.schema_version,
                payload: e.payload.to_string(),
                metadata: serde_json::to_string(&e.metadata).expect("metadata always serialises"),
            });
        }
        parts.push(plan::PreparedStream {
            stream: part.stream,
            expected: part.expected,
            events,
        });
    }
    Ok(PreparedAppend { parts })
}

/// The group-commit loop: take everything queued, commit it in one transaction, answer everyone.
async fn run_writer(
    backend: Arc<dyn Backend>,
    mut rx: mpsc::Receiver<Message>,
    head: watch::Sender<u64>,
    stats: Arc<WriterStats>,
) {
    let mut cache = VersionCache::default();
    let mut requests = Vec::new();
    let mut replies = Vec::new();
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut events = 0;
        let mut next = Some(first);
        let mut yields = 0;
        loop {
            while let Some(message) = next.take() {
                match message {
                    Message::Append { request, reply } => {
                        events += request.event_count();
                        requests.push(request);
                        replies.push(reply);
                    }
                    Message::Flush(done) => flushes.push(done),
                }
                if events < MAX_BATCH_EVENTS {
                    next = rx.try_recv().ok();
                }
            }
            // The callers answered by the last commit are runnable but may not have queued their
            // next append yet. Yielding lets them run first, so their appends join this batch
            // instead of each paying for a transaction of its own. Stop as soon as a yield brings
            // nothing new: an idle store pays a few microseconds, never a timer.
            if events >= MAX_BATCH_EVENTS || yields >= MAX_GATHER_YIELDS {
                break;
            }
            yields += 1;
            tokio::task::yield_now().await;
            match rx.try_recv() {
                Ok(message) => next = Some(message),
                Err(_) => break,
            }
        }
        if !requests.is_empty() {
            let results = commit(&*backend, &requests, &mut cache).await;
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .requests
                .fetch_add(requests.len() as u64, Ordering::Relaxed);
            let written: usize = requests
                .iter()
                .zip(&results)
                .filter(|(_, r)| r.is_ok())
                .map(|(q, _)| q.event_count())
                .sum();
            stats.events.fetch_add(written as u64, Ordering::Relaxed);
            let top = results
                .iter()
                .filter_map(|r| r.as_ref().ok().map(|o| o.position))
                .max();
            if let Some(top) = top {
                head.send_if_modified(|h| {
                    let moved = top > *h;
                    if moved {
                        *h = top;
                    }
                    moved
                });
            }
            for (reply, result) in replies.drain(..).zip(results) {
                // A caller that went away still had its events written; nothing to do.
                let _ = reply.send(result);
            }
            requests.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Commits a batch; if the transaction fails as a whole, retries each request on its own so one
/// request cannot sink the others.
async fn commit(
    backend: &dyn Backend,
    requests: &[PreparedAppend],
    cache: &mut VersionCache,
) -> Vec<Result<AppendOutcome, AppendError>> {
    match backend
        .append_batch(requests, Timestamp::now(), cache)
        .await
    {
        Ok(results) => results,
        Err(e) if requests.len() == 1 => vec![Err(e.into())],
        Err(e) => {
            tracing::warn!(error = %e, size = requests.len(), "group commit failed; retrying its appends one by one");
            let mut results = Vec::with_capacity(requests.len());
            for request in requests {
                let one = backend
                    .append_batch(std::slice::from_ref(request), Timestamp::now(), cache)
                    .await;
                results.push(match one {
                    Ok(mut r) => r.remove(0),
                    Err(e) => Err(e.into()),
                });
            }
            results
        }
    }
}
