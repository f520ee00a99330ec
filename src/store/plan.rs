//! Planning a group commit: a pure function from a batch of append requests, plus what the
//! database says about the streams and ids they touch, to the rows to insert and one answer per
//! request. Keeping this free of IO lets both SQL backends share it and lets it be tested alone.

use std::collections::HashMap;

use uuid::Uuid;

use super::chain::Head;
pub(crate) use super::chain::Row;
use super::{AppendError, AppendOutcome, Appended, ExpectedVersion};

/// An event whose payload and metadata are already serialised.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    pub(crate) id: Uuid,
    pub(crate) event_type: String,
    pub(crate) schema_version: u32,
    pub(crate) payload: String,
    pub(crate) metadata: String,
}

/// One stream's part of a request.
#[derive(Debug, Clone)]
pub struct PreparedStream {
    pub(crate) stream: String,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: Vec<PreparedEvent>,
}

/// One atomic append request, checked for shape and ready for the writer.
#[derive(Debug, Clone)]
pub struct PreparedAppend {
    pub(crate) parts: Vec<PreparedStream>,
}

impl PreparedAppend {
    pub(crate) fn event_count(&self) -> usize {
        self.parts.iter().map(|p| p.events.len()).sum()
    }
}

/// Every distinct stream named in a batch.
pub(crate) fn streams_of(batch: &[PreparedAppend]) -> Vec<&str> {
    let mut streams: Vec<&str> = batch
        .iter()
        .flat_map(|r| r.parts.iter().map(|p| p.stream.as_str()))
        .collect();
    streams.sort_unstable();
    streams.dedup();
    streams
}

/// Every event id in a batch (ids are unique within a request, not across requests).
pub(crate) fn ids_of(batch: &[PreparedAppend]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = batch
        .iter()
        .flat_map(|r| r.parts.iter().flat_map(|p| p.events.iter().map(|e| e.id)))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Where an already-stored event is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Existing {
    pub stream: String,
    pub version: u64,
    pub position: u64,
}

/// What the database holds for the streams and ids of a batch, read inside the write lock.
#[derive(Debug, Default)]
pub(crate) struct Lookup {
    /// The highest committed position.
    pub head: u64,
    /// The stored hash of the event at `head` (`None` for an empty log, or a row written before
    /// the hash chain existed).
    pub head_hash: Option<String>,
    /// Current last version of each stream in the batch that exists.
    pub versions: HashMap<String, u64>,
    /// Ids of the batch that are already stored.
    pub existing: HashMap<Uuid, Existing>,
}

/// One row of the combined lookup query both SQL backends run: `kind` 0 is the head position
/// (in `a`) and its stored hash (in `stream`), 1 a stream's current version (`stream`, `a`; `a`
/// is NULL for a missing stream), 2 a stored id (`id`, `stream`, version in `a`, position in
/// `b`).
pub(crate) type LookupRow = (i32, Option<String>, Option<i64>, Option<i64>, Option<Uuid>);

impl Lookup {
    /// Builds a lookup from the rows of the combined lookup query.
    pub(crate) fn from_rows(rows: Vec<LookupRow>) -> Lookup {
        let mut lookup = Lookup::default();
        for (kind, stream, a, b, id) in rows {
            match (kind, stream, a, b, id) {
                (0, hash, Some(head), _, _) => {
                    lookup.head = head as u64;
                    lookup.head_hash = hash;
                }
                (1, Some(stream), Some(version), _, _) => {
                    lookup.versions.insert(stream, version as u64);
                }
                (2, Some(stream), Some(version), Some(position), Some(id)) => {
                    let found = Existing {
                        stream,
                        version: version as u64,
                        position: position as u64,
                    };
                    lookup.existing.insert(id, found);
                }
                _ => {}
            }
        }
        lookup
    }
}

/// The group-commit writer's memory of each stream's last version, so the common append needs no
/// lookup at all. It can be stale (another process appended); that is always caught: a stale entry
/// makes the insert hit the `(stream, version)` unique constraint, or makes the plan refuse a
/// request, and both send the batch down the authoritative path, which reads the database.
///
/// It also remembers the head of the hash chain this writer last committed (position and hash),
/// which PostgreSQL's fast path plans from. That can be stale too: the insert is guarded by the
/// real head (see `postgres.rs`), and inserts nothing when it differs.
#[derive(Debug, Default)]
pub struct VersionCache {
    versions: HashMap<String, u64>,
    pub(crate) head: Option<Head>,
}

/// Entries kept before the cache starts over (it refills from appends and lookups).
const VERSION_CACHE_LIMIT: usize = 200_000;

impl VersionCache {
    /// Streams of the batch the cache knows nothing about.
    pub(crate) fn missing<'a>(&self, streams: &[&'a str]) -> Vec<&'a str> {
        streams
            .iter()
            .copied()
            .filter(|s| !self.versions.contains_key(*s))
            .collect()
    }

    /// Adds the cached versions of the batch's streams to a lookup.
    pub(crate) fn fill(&self, streams: &[&str], lookup: &mut Lookup) {
        for s in streams {
            if let Some(v) = self.versions.get(*s) {
                lookup.versions.entry((*s).to_owned()).or_insert(*v);
            }
        }
    }

    /// Remembers what a committed batch wrote and what a lookup read.
    pub(crate) fn learn(
        &mut self,
        lookup: &Lookup,
        results: &[Result<AppendOutcome, AppendError>],
    ) {
        if self.versions.len() > VERSION_CACHE_LIMIT {
            self.versions.clear();
        }
        for (stream, version) in &lookup.versions {
            self.versions.insert(stream.clone(), *version);
        }
        for outcome in results.iter().flatten() {
            for a in &outcome.streams {
                let v = self.versions.entry(a.stream.clone()).or_insert(a.version);
                *v = (*v).max(a.version);
            }
        }
    }

    /// Forgets the batch's streams (after a conflict showed the cache was stale).
    pub(crate) fn forget(&mut self, streams: &[&str]) {
        for s in streams {
            self.versions.remove(*s);
        }
    }
}

/// Which way a batch is being decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// From the version cache, without looking up ids: only accepted if nothing is refused and
    /// no unique constraint fires.
    Fast,
    /// From a full lookup under the write lock: always right.
    Authoritative,
}

/// The answers to a batch, one per request.
pub(crate) type Answers = Vec<Result<AppendOutcome, AppendError>>;

impl Path {
    /// The fast path first; the authoritative one when the fast path could not decide.
    pub(crate) const IN_ORDER: [Path; 2] = [Path::Fast, Path::Authoritative];
}

enum Decision {
    /// Every event of this part is already stored: a retry. Answer with where they are.
    AlreadyStored(Appended),
    /// Append, starting at this stream version.
    Append { first_version: u64 },
}

/// Decides a whole batch. Requests are taken in order; a request sees the effects of the
/// requests before it in the same batch, exactly as if each had been its own transaction.
pub(crate) fn plan<'a>(
    batch: &'a [PreparedAppend],
    lookup: &Lookup,
    recorded_at_us: i64,
) -> (Vec<Row<'a>>, Vec<Result<AppendOutcome, AppendError>>) {
    let mut rows = Vec::with_capacity(batch.iter().map(PreparedAppend::event_count).sum());
    let mut results = Vec::with_capacity(batch.len());
    let mut head = lookup.head;
    let mut staged_versions: HashMap<&str, u64> = HashMap::new();
    let mut staged_ids: HashMap<Uuid, Existing> = HashMap::new();

    for request in batch {
        let decided: Result<Vec<Decision>, AppendError> = request
            .parts
            .iter()
            .map(|part| {
                let known: Vec<&Existing> = part
                    .events
                    .iter()
                    .filter_map(|e| staged_ids.get(&e.id).or_else(|| lookup.existing.get(&e.id)))
                    .collect();
                if !known.is_empty() {
                    return already_stored(part, &known).map(Decision::AlreadyStored);
                }
                let current = staged_versions
                    .get(part.stream.as_str())
                    .or_else(|| lookup.versions.get(&part.stream))
                    .copied();
                let ok = match part.expected {
                    ExpectedVersion::Any => true,
                    ExpectedVersion::NoStream => current.is_none(),
                    ExpectedVersion::StreamExists => current.is_some(),
                    ExpectedVersion::Exact(v) => current == Some(v),
                };
                if !ok {
                    return Err(AppendError::WrongExpectedVersion {
                        stream: part.stream.clone(),
                        expected: part.expected,
                        current,
                    });
                }
                Ok(Decision::Append {
                    first_version: current.map_or(0, |c| c + 1),
                })
            })
            .collect();
        // A retry is all or nothing: parts already stored beside parts not yet stored means the
        // ids are being reused, not retried.
        let decided = decided.and_then(|d| {
            let stored = d
                .iter()
                .filter(|d| matches!(d, Decision::AlreadyStored(_)))
                .count();
            if stored > 0 && stored < d.len() {
                let id = request
                    .parts
                    .iter()
                    .flat_map(|p| &p.events)
                    .map(|e| e.id)
                    .find(|id| staged_ids.contains_key(id) || lookup.existing.contains_key(id));
                Err(AppendError::DuplicateEventId {
                    id: id.expect("a stored part has a stored id"),
                })
            } else {
                Ok(d)
            }
        });
        let decisions = match decided {
            Ok(d) => d,
            Err(e) => {
                results.push(Err(e));
                continue;
            }
        };

        let mut streams = Vec::with_capacity(request.parts.len());
        let mut top = 0;
        for (part, decision) in request.parts.iter().zip(decisions) {
            let appended = match decision {
                Decision::AlreadyStored(appended) => appended,
                Decision::Append { first_version } => {
                    let mut version = first_version;
                    for (i, e) in part.events.iter().enumerate() {
                        head += 1;
                        version = first_version + i as u64;
                        rows.push(Row {
                            position: head,
                            id: e.id,
                            stream: &part.stream,
                            version,
                            event_type: &e.event_type,
                            schema_version: e.schema_version,
                            recorded_at_us,
                            metadata: &e.metadata,
                            payload: &e.payload,
                        });
                        staged_ids.insert(
                            e.id,
                            Existing {
                                stream: part.stream.clone(),
                                version,
                                position: head,
                            },
                        );
                    }
                    staged_versions.insert(&part.stream, version);
                    Appended {
                        stream: part.stream.clone(),
                        version,
                        position: head,
                    }
                }
            };
            top = top.max(appended.position);
            streams.push(appended);
        }
        results.push(Ok(AppendOutcome {
            streams,
            position: top,
        }));
    }
    (rows, results)
}

/// A part whose ids are (some of them) stored already: a faithful retry if every event is
/// stored, in this stream, one after another; anything else is a conflicting reuse of ids.
fn already_stored(part: &PreparedStream, known: &[&Existing]) -> Result<Appended, AppendError> {
    let first_known = part
        .events
        .iter()
        .map(|e| e.id)
        .next()
        .expect("parts are never empty");
    let faithful = known.len() == part.events.len()
        && known.iter().all(|k| k.stream == part.stream)
        && known.windows(2).all(|w| w[1].version == w[0].version + 1);
    if !faithful {
        return Err(AppendError::DuplicateEventId { id: first_known });
    }
    let last = known.last().expect("non-empty");
    Ok(Appended {
        stream: part.stream.clone(),
        version: last.version,
        position: last.position,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u128) -> PreparedEvent {
        PreparedEvent {
            id: Uuid::from_u128(id),
            event_type: "T".into(),
            schema_version: 1,
            payload: "{}".into(),
            metadata: "{}".into(),
        }
    }

    fn request(stream: &str, expected: ExpectedVersion, ids: &[u128]) -> PreparedAppend {
        PreparedAppend {
            parts: vec![PreparedStream {
                stream: stream.into(),
                expected,
                events: ids.iter().map(|&i| event(i)).collect(),
            }],
        }
    }

    #[test]
    fn two_creators_of_one_stream_in_one_batch_exactly_one_wins() {
        let batch = [
            request("s", ExpectedVersion::NoStream, &[1]),
            request("s", ExpectedVersion::NoStream, &[2]),
        ];
        let (rows, results) = plan(&batch, &Lookup::default(), 0);
        assert_eq!(rows.len(), 1);
        assert!(results[0].is_ok());
        assert!(matches!(
            results[1],
            Err(AppendError::WrongExpectedVersion {
                current: Some(0),
                ..
            })
        ));
    }

    #[test]
    fn positions_continue_from_the_head_and_versions_from_the_stream() {
        let lookup = Lookup {
            head: 100,
            versions: [("s".to_string(), 4)].into(),
            ..Lookup::default()
        };
        let batch = [
            request("s", ExpectedVersion::Exact(4), &[1, 2]),
            request("t", ExpectedVersion::Any, &[3]),
        ];
        let (rows, results) = plan(&batch, &lookup, 0);
        let placed: Vec<(u64, &str, u64)> = rows
            .iter()
            .map(|r| (r.position, r.stream, r.version))
            .collect();
        assert_eq!(placed, [(101, "s", 5), (102, "s", 6), (103, "t", 0)]);
        assert_eq!(results[0].as_ref().unwrap().position, 102);
    }

    #[test]
    fn a_multi_stream_request_with_one_failing_check_writes_nothing() {
        let batch = [PreparedAppend {
            parts: vec![
                request("a", ExpectedVersion::NoStream, &[1])
                    .parts
                    .remove(0),
                request("b", ExpectedVersion::StreamExists, &[2])
                    .parts
                    .remove(0),
            ],
        }];
        let (rows, results) = plan(&batch, &Lookup::default(), 0);
        assert!(rows.is_empty());
        assert!(results[0].is_err());
    }

    #[test]
    fn a_retry_in_the_same_batch_is_answered_with_the_first_placement() {
        let batch = [
            request("s", ExpectedVersion::NoStream, &[1, 2]),
            request("s", ExpectedVersion::NoStream, &[1, 2]),
        ];
        let (rows, results) = plan(&batch, &Lookup::default(), 0);
        assert_eq!(rows.len(), 2);
        assert_eq!(results[0].as_ref().unwrap(), results[1].as_ref().unwrap());
    }

    #[test]
    fn a_multi_stream_request_half_stored_is_refused_not_half_written() {
        let lookup = Lookup {
            head: 1,
            head_hash: None,
            versions: [("a".to_string(), 0)].into(),
            existing: [(
                Uuid::from_u128(1),
                Existing {
                    stream: "a".into(),
                    version: 0,
                    position: 1,
                },
            )]
            .into(),
        };
        let batch = [PreparedAppend {
            parts: vec![
                request("a", ExpectedVersion::Any, &[1]).parts.remove(0),
                request("b", ExpectedVersion::Any, &[2]).parts.remove(0),
            ],
        }];
        let (rows, results) = plan(&batch, &lookup, 0);
        assert!(rows.is_empty());
        assert!(matches!(
            results[0],
            Err(AppendError::DuplicateEventId { .. })
        ));
    }

    #[test]
    fn reusing_some_stored_ids_with_new_ones_is_refused() {
        let lookup = Lookup {
            head: 1,
            head_hash: None,
            versions: [("s".to_string(), 0)].into(),
            existing: [(
                Uuid::from_u128(1),
                Existing {
                    stream: "s".into(),
                    version: 0,
                    position: 1,
                },
            )]
            .into(),
        };
        let batch = [request("s", ExpectedVersion::Any, &[1, 9])];
        let (rows, results) = plan(&batch, &lookup, 0);
        assert!(rows.is_empty());
        assert!(matches!(
            results[0],
            Err(AppendError::DuplicateEventId { .. })
        ));
    }
}
