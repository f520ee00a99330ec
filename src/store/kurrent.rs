//! The KurrentDB backend (cargo feature `kurrentdb`, `TEACHBACK_EVENT_STORE=kurrentdb`): the
//! event log kept in a KurrentDB database, through its gRPC client. Learners' keys, the read
//! models and the projection checkpoints stay in the SQL database, so [`KurrentBackend`] takes a
//! [`Db`] too and seals personal fields with the same [`Vault`] as the SQL backend.
//!
//! # How an event is stored
//! A TeachBack stream `s` is the KurrentDB stream `{namespace}s` (the namespace is empty in
//! production; tests give each run its own). The event id is the TeachBack id, the event type is
//! the TeachBack type name, the data is the payload exactly as serialised (content type JSON), and
//! the custom metadata is the TeachBack metadata object with the schema version added as
//! `$schemaVersion`. The recorded time is KurrentDB's `created` stamp (its 100 ns ticks, read to
//! the microsecond), not the writer's clock. System streams and events (`$`-prefixed) are never
//! TeachBack's and are skipped by every read. TeachBack expects a KurrentDB database (or
//! namespace) of its own: anything else in it must be TeachBack-shaped JSON.
//!
//! # Positions
//! An event's TeachBack position is its `$all` commit position. Every append through the gRPC
//! API is implicitly committed, and KurrentDB reports an implicitly committed event at
//! `{commit = prepare = the event's own log offset}` (its `AllReader`), so every event has a
//! commit position of its own, and they increase in log order. KurrentDB has one writer per
//! node, and `$all` reads only return events up to the last indexed (quorum-committed) offset,
//! which advances in log order: a reader asking for events after its checkpoint can never see
//! a later event before an earlier one is readable. That is TeachBack's "position order is
//! commit order" invariant, which the SQL backends get from their write locks. Positions are
//! byte offsets, so they are ordered but far from dense; TeachBack never assumes density.
//! Stream reads report the same positions (on servers whose stream reads report positions at
//! all: older EventStoreDB releases do not, and the backend stops with an error there).
//! Reading "after `p`" starts the `$all` read at `{p, p}`, which is valid only for `p` = 0 or a
//! position an event was read at (a checkpoint always is; KurrentDB refuses anything else with
//! an invalid-position error rather than guessing). Events of the legacy explicit transactions
//! (the removed TCP API) share a commit position; a read meeting two of them stops with
//! [`StoreError::Corrupt`] instead of skipping one.
//!
//! # Appends
//! The group-commit writer hands over a batch. Requests touching disjoint streams go to
//! KurrentDB concurrently (a later request on a stream an earlier one touches waits for it, so
//! the batch behaves as if its requests ran one by one). A request to one stream (almost every
//! request) is one KurrentDB append with the expected version mapped one to one (`Any`,
//! `NoStream`, `StreamExists`, `Exact(v)` → `StreamRevision(v)`), atomic and checked by the
//! server. After it is accepted the backend reads the last event back, to learn its position
//! and to confirm it holds this request's ids (KurrentDB's idempotency answers a retry with the
//! original placement). That is two round trips per append.
//!
//! # Multi-stream requests are not atomic here
//! TeachBack's API makes a request over several streams atomic (a learner's registration with
//! its nickname claim, a rename with the claim of the new name and the release of the old one,
//! an erasure with the release of the name). KurrentDB appends are per stream, and the 1.2 Rust
//! client has no multi-stream append, so this backend:
//! 1. checks every part's expected version first, by reading each stream's last revision, and
//!    refuses the whole request, writing nothing, if one fails (a part whose events are already
//!    there is a retry, not a failure);
//! 2. then appends the parts one by one **in request order**, each with its expected version,
//!    stopping at the first that fails. The parts before it stay written; the error (a wrong
//!    expected version, or the store's) is returned and a warning names them.
//!
//! Between the check and the appends another writer can move a stream, so a request can end up
//! half written. Callers order their parts so that what is left is safe: the contested
//! reservation first, the learner's stream next, the release of an old name last
//! (`src/users.rs`). A half-written registration leaves a claimed default name that nobody uses;
//! a half-written rename leaves the new name claimed by the learner, which the retry (or the
//! learner's next rename to it) takes as theirs; a release that fails leaves the old name
//! reserved. An erasure appends `UserErased` first and the release last, and retries without the
//! release when that is refused (`src/erasure.rs`). No half-written request can give one name to
//! two learners.
//!
//! # Idempotency
//! Event ids are idempotency keys in KurrentDB too, within limits: an append with an exact
//! expected version (or `NoStream`) whose events are already at that place in the stream is
//! answered with their placement, however old they are; with `Any` or `StreamExists`, KurrentDB
//! only recognises ids in its cache of recent writes (its idempotency window), and an older
//! retry is appended again. Ids are unique per stream only: reusing an id in another stream is
//! accepted. A request reusing some stored ids beside new ones is refused
//! ([`AppendError::DuplicateEventId`]) when KurrentDB notices it. The one caller that relied on
//! ids alone across restarts, the starter catalogue republished with `Any` at every start, now
//! skips the ids its stream already holds (`src/catalog`).
//!
//! # Subscriptions
//! They are the store's own (`EventStore::subscribe_all` pages through [`Backend::read_all`]):
//! this process's commits wake them at once, other processes' at the next poll. KurrentDB's
//! catch-up subscription could push those too; it is not used yet.
//!
//! Not here: the hash chain that makes the SQL log tamper-evident. KurrentDB is its own
//! system of record; the chain belongs to the SQL backends.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use jiff::Timestamp;
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, EventData, Position,
    ReadAllOptions, ReadStream, ReadStreamOptions, RecordedEvent as StoredEvent, StreamPosition,
    StreamState, SubscriptionFilter,
};
use serde_json::Value;
use teachback_events::{Metadata, RecordedEvent};
use uuid::Uuid;

use super::plan::{PreparedEvent, PreparedStream};
use super::{
    AppendError, AppendOutcome, Appended, Backend, Direction, ExpectedVersion, PreparedAppend,
    StoreError, VersionCache,
};
use crate::db::Db;
use crate::vault::{FirstEvents, Vault, VaultError};

/// The custom-metadata key holding an event's schema version.
const SCHEMA_VERSION_KEY: &str = "$schemaVersion";
/// Appends in flight at once from one batch.
const CONCURRENT_APPENDS: usize = 64;
/// Events read per page when looking backwards (the head, a retried append's events).
const BACKWARD_PAGE: usize = 64;

/// Installs the process-wide rustls crypto provider. The KurrentDB client turns on both of
/// rustls's providers (aws-lc-rs for tonic, ring through reqwest); with both compiled in, rustls
/// picks neither by itself, and TLS set up before the client's first connection would panic
/// ("no process-level CryptoProvider"). Installing aws-lc-rs, the one the client installs on its
/// own first connection, at start makes the order irrelevant. Later calls do nothing.
pub fn install_crypto_provider() {
    // An error only says a provider is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// TeachBack's event log in KurrentDB. See the module docs for the mapping and its limits.
pub struct KurrentBackend {
    log: Arc<KurrentLog>,
    vault: Arc<Vault>,
}

impl KurrentBackend {
    /// A backend on the KurrentDB at `url` (`kurrentdb://host:2113?tls=false`, `esdb://…`, or
    /// `…+discover://` for a cluster), with learners' keys in `db`. Connects lazily: the first
    /// read (the store's start reads the head) says whether the server answers. Must be called
    /// inside a Tokio runtime.
    pub fn connect(url: &str, db: Db) -> Result<Self, StoreError> {
        Self::connect_with_namespace(url, db, "")
    }

    /// Like [`KurrentBackend::connect`], keeping TeachBack's streams under `namespace` (a stream
    /// name prefix), so several logs (test runs) can share one KurrentDB database.
    pub fn connect_with_namespace(url: &str, db: Db, namespace: &str) -> Result<Self, StoreError> {
        install_crypto_provider();
        // The parse error can quote the URL, credentials included: never pass it on.
        let settings: ClientSettings = url.parse().map_err(|_| {
            StoreError::Backend(
                "the KurrentDB URL is not a connection string \
                 (kurrentdb://host:2113?tls=false, esdb://…, kurrentdb+discover://…)"
                    .into(),
            )
        })?;
        let client = Client::new(settings)
            .map_err(|e| StoreError::Backend(format!("KurrentDB client: {e}")))?;
        let log = Arc::new(KurrentLog {
            client,
            namespace: namespace.to_owned(),
        });
        let vault = Arc::new(Vault::with_log(db, log.clone()));
        Ok(Self { log, vault })
    }

    /// Answers one request: one append, or the parts of a multi-stream request in order.
    async fn append_request(&self, request: &PreparedAppend) -> Result<AppendOutcome, AppendError> {
        if let [part] = request.parts.as_slice() {
            let appended = self.append_part(part).await?;
            return Ok(AppendOutcome {
                position: appended.position,
                streams: vec![appended],
            });
        }
        for part in &request.parts {
            self.check_before_writing(part).await?;
        }
        let mut streams: Vec<Appended> = Vec::with_capacity(request.parts.len());
        for part in &request.parts {
            match self.append_part(part).await {
                Ok(appended) => streams.push(appended),
                Err(e) => {
                    if !streams.is_empty() {
                        let written: Vec<&str> =
                            streams.iter().map(|a| a.stream.as_str()).collect();
                        tracing::warn!(
                            failed = %part.stream,
                            ?written,
                            error = %e,
                            "multi-stream append stopped part-way; the parts before it stay written"
                        );
                    }
                    return Err(e);
                }
            }
        }
        let position = streams.iter().map(|a| a.position).max().unwrap_or(0);
        Ok(AppendOutcome { streams, position })
    }

    /// Refuses a part of a multi-stream request whose expected version does not hold now,
    /// unless its events are already there (a retry, which the append answers).
    async fn check_before_writing(&self, part: &PreparedStream) -> Result<(), AppendError> {
        if part.expected == ExpectedVersion::Any {
            return Ok(());
        }
        let stored = self.log.stored(&part.stream);
        let current = self
            .log
            .read_stream_raw(&stored, StreamPosition::End, true, 1)
            .await?
            .first()
            .map(|e| e.revision);
        let holds = match part.expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current.is_none(),
            ExpectedVersion::StreamExists => current.is_some(),
            ExpectedVersion::Exact(v) => current == Some(v),
        };
        if holds || self.is_retry(&stored, part, current).await? {
            return Ok(());
        }
        Err(AppendError::WrongExpectedVersion {
            stream: part.stream.clone(),
            expected: part.expected,
            current,
        })
    }

    /// Whether the event right after the part's expected version is the part's first event.
    async fn is_retry(
        &self,
        stored: &str,
        part: &PreparedStream,
        current: Option<u64>,
    ) -> Result<bool, StoreError> {
        let first = match part.expected {
            ExpectedVersion::NoStream => 0,
            ExpectedVersion::Exact(v) => v + 1,
            ExpectedVersion::Any | ExpectedVersion::StreamExists => return Ok(false),
        };
        if current.is_none_or(|c| c < first) {
            return Ok(false);
        }
        let at = self.log.event_at(stored, first).await?;
        Ok(at.is_some_and(|e| e.id == first_id(part)))
    }

    /// One KurrentDB append, answered with where the part's events are.
    async fn append_part(&self, part: &PreparedStream) -> Result<Appended, AppendError> {
        let stored = self.log.stored(&part.stream);
        let events = part
            .events
            .iter()
            .map(event_data)
            .collect::<Result<Vec<_>, _>>()?;
        let options = AppendToStreamOptions::default().stream_state(stream_state(part.expected));
        match self
            .log
            .client
            .append_to_stream(stored.as_str(), &options, events)
            .await
        {
            Ok(written) => self.placed(part, written.next_expected_version).await,
            Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => {
                let current = match current {
                    CurrentRevision::Current(c) => Some(c),
                    CurrentRevision::NoStream => None,
                };
                Err(self.refusal(part, current).await)
            }
            Err(e) => Err(store_error(e).into()),
        }
    }

    /// Where an accepted part's events are. KurrentDB reports the revision of the last one
    /// (written now, or written before: an idempotent retry); reading it back gives its position
    /// and confirms it is this part's.
    async fn placed(&self, part: &PreparedStream, revision: u64) -> Result<Appended, AppendError> {
        let stored = self.log.stored(&part.stream);
        let last_id = part.events.last().expect("parts are never empty").id;
        if let Some(event) = self.log.event_at(&stored, revision).await?
            && event.id == last_id
        {
            return Ok(Appended {
                stream: part.stream.clone(),
                version: revision,
                position: position_of(&event)?,
            });
        }
        // Not where KurrentDB said: look for the part's events among the stream's latest.
        let latest = self
            .log
            .read_stream_raw(&stored, StreamPosition::End, true, BACKWARD_PAGE)
            .await?;
        if let Some(i) = latest.iter().position(|e| e.id == last_id) {
            let newest = &latest[i];
            let in_order = part.events.iter().rev().enumerate().all(|(k, wanted)| {
                latest
                    .get(i + k)
                    .is_some_and(|e| e.id == wanted.id && e.revision + k as u64 == newest.revision)
            });
            if in_order {
                return Ok(Appended {
                    stream: part.stream.clone(),
                    version: newest.revision,
                    position: position_of(newest)?,
                });
            }
        }
        Err(AppendError::DuplicateEventId { id: first_id(part) })
    }

    /// The answer to a wrong-expected-version refusal. KurrentDB also answers this way when a
    /// request reuses some stored ids beside new ones ("corrupted idempotency"); that is told
    /// apart: with `Any` (or `StreamExists` on an existing stream) no version can be wrong, and
    /// with an exact version the event after it carrying the part's first id gives it away.
    async fn refusal(&self, part: &PreparedStream, current: Option<u64>) -> AppendError {
        let duplicate = AppendError::DuplicateEventId { id: first_id(part) };
        match part.expected {
            ExpectedVersion::Any => return duplicate,
            ExpectedVersion::StreamExists if current.is_some() => return duplicate,
            _ => {}
        }
        let stored = self.log.stored(&part.stream);
        match self.is_retry(&stored, part, current).await {
            Ok(true) => duplicate,
            Ok(false) => AppendError::WrongExpectedVersion {
                stream: part.stream.clone(),
                expected: part.expected,
                current,
            },
            Err(e) => e.into(),
        }
    }
}

#[async_trait]
impl Backend for KurrentBackend {
    async fn append_batch(
        &self,
        batch: &[PreparedAppend],
        _now: Timestamp,
        _cache: &mut VersionCache,
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError> {
        // Each request stands alone here (KurrentDB has no transaction over appends): a request
        // that fails is answered with its error, and the writer's whole-batch retry never runs.
        let mut results = Vec::with_capacity(batch.len());
        let mut start = 0;
        while start < batch.len() {
            // A run of requests on streams no earlier request of the run touches can go at once.
            let mut touched: HashSet<&str> = HashSet::new();
            let mut end = start;
            while end < batch.len()
                && batch[end]
                    .parts
                    .iter()
                    .all(|p| !touched.contains(p.stream.as_str()))
            {
                touched.extend(batch[end].parts.iter().map(|p| p.stream.as_str()));
                end += 1;
            }
            // By index: a closure over `&PreparedAppend` would not be `Send` for every lifetime.
            let answers: Vec<_> = futures::stream::iter(start..end)
                .map(|i| self.append_request(&batch[i]))
                .buffered(CONCURRENT_APPENDS)
                .collect()
                .await;
            results.extend(answers);
            start = end;
        }
        Ok(results)
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stored = self.log.stored(stream);
        let raw = match direction {
            Direction::Forwards => {
                self.log
                    .read_stream_raw(&stored, StreamPosition::Position(from), false, limit)
                    .await?
            }
            Direction::Backwards if from == u64::MAX => {
                self.log
                    .read_stream_raw(&stored, StreamPosition::End, true, limit)
                    .await?
            }
            Direction::Backwards => {
                // KurrentDB reads the revisions `from - limit + 1 ..= from`, so from past the
                // stream's end it returns too few; then read the last `limit` instead.
                let page = self
                    .log
                    .read_stream_raw(&stored, StreamPosition::Position(from), true, limit)
                    .await?;
                if page.first().is_some_and(|e| e.revision == from) {
                    page
                } else {
                    let mut last = self
                        .log
                        .read_stream_raw(&stored, StreamPosition::End, true, limit)
                        .await?;
                    last.retain(|e| e.revision <= from);
                    last
                }
            }
        };
        raw.into_iter()
            .filter_map(|e| self.log.recorded(e).transpose())
            .collect()
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
        prefix: Option<&str>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.log
            .read_forward(after, limit, self.log.stream_filter(prefix))
            .await
    }

    async fn read_all_of_types(
        &self,
        after: u64,
        limit: usize,
        types: &[String],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if types.is_empty() {
            return Ok(Vec::new());
        }
        // The server filters on the type; the namespace is checked here.
        let alternatives: Vec<String> = types.iter().map(|t| regex_escape(t)).collect();
        let filter =
            SubscriptionFilter::on_event_type().regex(format!("^(?:{})$", alternatives.join("|")));
        self.log.read_forward(after, limit, filter).await
    }

    async fn head(&self) -> Result<u64, StoreError> {
        let mut start = StreamPosition::End;
        loop {
            let options = ReadAllOptions::default()
                .position(start)
                .backwards()
                .max_count(BACKWARD_PAGE)
                .filter(self.log.stream_filter(None));
            let page = self.log.read_all_raw(&options).await?;
            if let Some(newest) = page.iter().find(|e| self.log.is_ours(e)) {
                return Ok(newest.position.commit);
            }
            match page.last() {
                // A backward read from a position starts before it.
                Some(oldest) if page.len() == BACKWARD_PAGE => {
                    start = StreamPosition::Position(oldest.position);
                }
                _ => return Ok(0),
            }
        }
    }

    fn dense_positions(&self) -> bool {
        false
    }

    fn vault(&self) -> Option<Arc<Vault>> {
        Some(self.vault.clone())
    }
}

/// The client and the stream namespace: everything that reads, shared with the vault (which
/// reads a lecture's start event to learn whose it is).
struct KurrentLog {
    client: Client,
    namespace: String,
}

impl KurrentLog {
    /// The KurrentDB name of a TeachBack stream.
    fn stored(&self, stream: &str) -> String {
        format!("{}{stream}", self.namespace)
    }

    /// Whether a KurrentDB event is one of TeachBack's (not a system event, in the namespace).
    fn is_ours(&self, event: &StoredEvent) -> bool {
        let stream = event.stream_id();
        !stream.starts_with('$')
            && !event.event_type.starts_with('$')
            && stream.starts_with(&self.namespace)
    }

    /// A server-side filter for TeachBack's streams, optionally only those starting with
    /// `prefix` (KurrentDB's stream prefixes are exact and case-sensitive, like the SQL ones).
    fn stream_filter(&self, prefix: Option<&str>) -> SubscriptionFilter {
        let full = format!("{}{}", self.namespace, prefix.unwrap_or(""));
        if full.is_empty() {
            SubscriptionFilter::on_stream_name().regex("^[^$]")
        } else {
            SubscriptionFilter::on_stream_name().add_prefix(full)
        }
    }

    /// Events of `$all` after `after`, through `filter`, that are TeachBack's: at most `limit`,
    /// fewer only when the log has no more.
    async fn read_forward(
        &self,
        after: u64,
        limit: usize,
        filter: SubscriptionFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut out = Vec::new();
        let mut cursor = after;
        while out.len() < limit {
            let start = if cursor == 0 {
                StreamPosition::Start
            } else {
                StreamPosition::Position(Position {
                    commit: cursor,
                    prepare: cursor,
                })
            };
            // A read from a position starts *at* it: that event comes back first, so ask for
            // one more.
            let asked = limit - out.len() + usize::from(cursor > 0);
            let options = ReadAllOptions::default()
                .position(start)
                .forwards()
                .max_count(asked)
                .filter(filter.clone());
            let page = self.read_all_raw(&options).await?;
            let full = page.len() == asked;
            for (i, event) in page.into_iter().enumerate() {
                let position = event.position.commit;
                if position == cursor && i == 0 {
                    continue;
                }
                if position <= cursor {
                    return Err(StoreError::Corrupt {
                        position,
                        reason: format!(
                            "KurrentDB returned it after position {cursor}: events sharing a \
                             commit position (an explicit transaction) cannot be told apart"
                        ),
                    });
                }
                cursor = position;
                if let Some(recorded) = self.recorded(event)? {
                    out.push(recorded);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(out)
    }

    async fn read_all_raw(&self, options: &ReadAllOptions) -> Result<Vec<StoredEvent>, StoreError> {
        let read = self.client.read_all(options).await.map_err(store_error)?;
        drain(read).await.map_err(store_error)
    }

    /// Up to `count` events of a stream from `start`; nothing if the stream does not exist.
    async fn read_stream_raw(
        &self,
        stored: &str,
        start: StreamPosition<u64>,
        backwards: bool,
        count: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let options = ReadStreamOptions::default()
            .position(start)
            .max_count(count);
        let options = if backwards {
            options.backwards()
        } else {
            options.forwards()
        };
        let read = match self.client.read_stream(stored, &options).await {
            Ok(read) => drain(read).await,
            Err(e) => Err(e),
        };
        match read {
            Ok(events) => Ok(events),
            Err(kurrentdb::Error::ResourceNotFound | kurrentdb::Error::ResourceDeleted) => {
                Ok(Vec::new())
            }
            Err(e) => Err(store_error(e)),
        }
    }

    /// The event at `revision` of a stream, if there is one.
    async fn event_at(
        &self,
        stored: &str,
        revision: u64,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let mut events = self
            .read_stream_raw(stored, StreamPosition::Position(revision), false, 1)
            .await?;
        Ok(events.pop().filter(|e| e.revision == revision))
    }

    /// A KurrentDB event as TeachBack's, or `None` if it is not TeachBack's.
    fn recorded(&self, event: StoredEvent) -> Result<Option<RecordedEvent>, StoreError> {
        if !self.is_ours(&event) {
            return Ok(None);
        }
        let position = position_of(&event)?;
        let corrupt = |reason: String| StoreError::Corrupt { position, reason };
        let (schema_version, metadata) = split_metadata(&event.custom_metadata)
            .map_err(|e| corrupt(format!("metadata: {e}")))?;
        let payload =
            serde_json::from_slice(&event.data).map_err(|e| corrupt(format!("payload: {e}")))?;
        let recorded_at = created_at(&event).map_err(|e| corrupt(format!("time: {e}")))?;
        let stream = event.stream_id()[self.namespace.len()..].to_owned();
        Ok(Some(RecordedEvent {
            position,
            id: event.id,
            stream,
            stream_version: event.revision,
            event_type: event.event_type,
            schema_version,
            recorded_at,
            metadata,
            payload,
        }))
    }
}

#[async_trait]
impl FirstEvents for KurrentLog {
    async fn first_payload(&self, stream: &str) -> Result<Option<String>, VaultError> {
        let first = self
            .event_at(&self.stored(stream), 0)
            .await
            .map_err(|e| VaultError::Log(e.to_string()))?;
        Ok(first.map(|e| String::from_utf8_lossy(&e.data).into_owned()))
    }
}

/// Every event a read returns.
async fn drain(mut read: ReadStream) -> Result<Vec<StoredEvent>, kurrentdb::Error> {
    let mut events = Vec::new();
    while let Some(resolved) = read.next().await? {
        if let Some(event) = resolved.event {
            events.push(event);
        }
    }
    Ok(events)
}

/// An event's TeachBack position: its commit position. Servers that predate positions in stream
/// reads send "the end" there instead; TeachBack cannot work without them.
fn position_of(event: &StoredEvent) -> Result<u64, StoreError> {
    match event.position.commit {
        u64::MAX => Err(StoreError::Backend(
            "KurrentDB read an event without its log position; this server is too old for \
             TeachBack (its stream reads must report positions)"
                .into(),
        )),
        commit => Ok(commit),
    }
}

fn store_error(e: kurrentdb::Error) -> StoreError {
    StoreError::Backend(format!("KurrentDB: {e}"))
}

fn stream_state(expected: ExpectedVersion) -> StreamState {
    match expected {
        ExpectedVersion::Any => StreamState::Any,
        ExpectedVersion::NoStream => StreamState::NoStream,
        ExpectedVersion::StreamExists => StreamState::StreamExists,
        ExpectedVersion::Exact(v) => StreamState::StreamRevision(v),
    }
}

fn first_id(part: &PreparedStream) -> Uuid {
    part.events.first().expect("parts are never empty").id
}

/// A prepared event as KurrentDB's: the payload bytes as they are, the metadata with the schema
/// version.
fn event_data(event: &PreparedEvent) -> Result<EventData, AppendError> {
    let payload = serde_json::value::RawValue::from_string(event.payload.clone())
        .map_err(|e| AppendError::Invalid(format!("payload: {e}")))?;
    let data = EventData::json(&event.event_type, &payload)
        .map_err(|e| AppendError::Invalid(format!("payload: {e}")))?;
    Ok(data
        .id(event.id)
        .metadata(custom_metadata(&event.metadata, event.schema_version)?))
}

/// The custom metadata stored with an event: its metadata object plus its schema version.
fn custom_metadata(metadata: &str, schema_version: u32) -> Result<Bytes, AppendError> {
    let mut object: serde_json::Map<String, Value> = serde_json::from_str(metadata)
        .map_err(|e| AppendError::Invalid(format!("metadata: {e}")))?;
    object.insert(SCHEMA_VERSION_KEY.to_owned(), schema_version.into());
    Ok(Bytes::from(
        serde_json::to_vec(&object).expect("a JSON object serialises"),
    ))
}

/// The schema version and the metadata back out of stored custom metadata (an event without
/// a schema version is version 1).
fn split_metadata(stored: &[u8]) -> Result<(u32, Metadata), serde_json::Error> {
    if stored.is_empty() {
        return Ok((1, Metadata::default()));
    }
    let mut object: serde_json::Map<String, Value> = serde_json::from_slice(stored)?;
    let schema_version = object
        .remove(SCHEMA_VERSION_KEY)
        .and_then(|v| v.as_u64())
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(1);
    Ok((
        schema_version,
        serde_json::from_value(Value::Object(object))?,
    ))
}

/// When KurrentDB wrote the event: its `created` stamp is in 100 ns ticks since the Unix epoch
/// (the client's own `created` keeps whole seconds only).
fn created_at(event: &StoredEvent) -> Result<Timestamp, jiff::Error> {
    match event
        .metadata
        .get("created")
        .and_then(|t| t.parse::<i64>().ok())
    {
        Some(ticks) => Timestamp::from_microsecond(ticks / 10),
        None => Timestamp::from_second(event.created.timestamp()),
    }
}

/// `s` as a .NET regular expression matching exactly `s` (KurrentDB filters are .NET regexes).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_punctuation() && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_schema_version_round_trip_through_custom_metadata() {
        let metadata = Metadata {
            correlation_id: Some(Uuid::from_u128(7)),
            ..Metadata::default()
        };
        let json = serde_json::to_string(&metadata).unwrap();
        let stored = custom_metadata(&json, 3).unwrap();
        assert_eq!(split_metadata(&stored).unwrap(), (3, metadata));
        // Events written without TeachBack's envelope read as version 1 with no metadata.
        assert_eq!(split_metadata(b"").unwrap(), (1, Metadata::default()));
    }

    #[test]
    fn the_payload_is_stored_byte_for_byte() {
        let payload = r#"{"b":1,"a":"x  y","n":1.50}"#;
        let data = event_data(&PreparedEvent {
            id: Uuid::from_u128(1),
            event_type: "TestHappened".into(),
            schema_version: 1,
            payload: payload.into(),
            metadata: "{}".into(),
        })
        .unwrap();
        let proposed: kurrentdb::EventData = data;
        // The client keeps the bytes private; its Debug shows them.
        assert!(format!("{proposed:?}").contains(r#"{\"b\":1,\"a\":\"x  y\",\"n\":1.50}"#));
    }

    #[test]
    fn type_names_become_exact_regular_expressions() {
        assert_eq!(regex_escape("LectureGraded"), "LectureGraded");
        assert_eq!(regex_escape("a.b+c_d"), "a\\.b\\+c_d");
    }

    #[test]
    fn expected_versions_map_one_to_one() {
        assert_eq!(stream_state(ExpectedVersion::Any), StreamState::Any);
        assert_eq!(
            stream_state(ExpectedVersion::NoStream),
            StreamState::NoStream
        );
        assert_eq!(
            stream_state(ExpectedVersion::StreamExists),
            StreamState::StreamExists
        );
        assert_eq!(
            stream_state(ExpectedVersion::Exact(4)),
            StreamState::StreamRevision(4)
        );
    }
}
