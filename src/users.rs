//! Learners' commands: registering a device (which creates the learner) and renaming.
//!
//! Nicknames are unique ignoring case. Uniqueness is decided by the log itself, not by a read
//! model that may lag: every nickname has a reservation stream `username-{hash of its key}`, and the rename
//! (or registration) appends to the learner's stream and to the reservation streams in one atomic
//! multi-stream append, each with an expected version. Of two learners racing for one name,
//! exactly one append succeeds; a crash can never leave a name claimed but unused.
//!
//! On KurrentDB the append is not atomic (see `store/kurrent.rs`): its parts are written in
//! request order, so the claim comes first, then the learner's stream, then the release of the
//! old name. Whatever a failure part-way leaves, no name has two owners: a registration can
//! leave an unused default name claimed, and a rename can leave the new name claimed by the
//! learner, which the retry (or their next rename to it) takes as already theirs.

use rand::Rng;
use teachback_events::{
    DeviceRegistered, Event, Metadata, NewEvent, UserRenamed, UsernameClaimed, UsernameReleased,
    streams,
};
use unicode_normalization::UnicodeNormalization;
use uuid::Uuid;

use crate::auth;
use crate::store::{AppendError, Direction, EventStore, ExpectedVersion, StreamAppend};

/// Default nicknames are this word ("user") plus a short random suffix, as in the original app.
const DEFAULT_NAME_PREFIX: &str = "사용자";
const SUFFIX_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
const SUFFIX_LEN: usize = 6;
/// Longest normalised name key, in bytes (keeps reservation stream names short).
const MAX_KEY_BYTES: usize = 200;
/// Optimistic-concurrency retries before giving up (each retry re-reads the streams).
const RETRIES: usize = 5;

/// Why a rename was refused.
#[derive(Debug, thiserror::Error)]
pub enum RenameError {
    #[error("{0}")]
    Invalid(String),
    #[error("the name `{0}` is already taken")]
    Taken(String),
    #[error("no such learner")]
    UnknownUser,
    #[error(transparent)]
    Store(#[from] AppendError),
}

impl From<crate::store::StoreError> for RenameError {
    fn from(e: crate::store::StoreError) -> Self {
        RenameError::Store(e.into())
    }
}

/// The key a nickname is unique under: compatibility-normalised (NFKC) and lower-cased, so that
/// `Ada`, `ADA` and full-width `Ａｄａ` are one name.
pub fn name_key(name: &str) -> String {
    name.nfkc().collect::<String>().to_lowercase()
}

/// The reservation stream of a name key. The key is hashed so that stream names, which stay in
/// the log for good, never hold a nickname in plain text (nicknames are erasable; see
/// `vault.rs`).
pub fn reservation_stream(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"teachback/username/v1\0")
        .chain_update(key.as_bytes())
        .finalize();
    streams::username(&hex::encode(digest))
}

/// Checks a requested nickname: trimmed, 2 to 20 characters, no control or invisible characters.
pub fn validate_name(raw: &str) -> Result<String, String> {
    let name: String = raw.trim().nfc().collect();
    let count = name.chars().count();
    if !(2..=20).contains(&count) {
        return Err(format!(
            "a name has 2 to 20 characters; this one has {count}"
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || is_invisible(*c)) {
        return Err(format!(
            "a name may not contain control or invisible characters (found U+{:04X})",
            c as u32
        ));
    }
    Ok(name)
}

/// Format characters that render as nothing and would let two names look identical.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}')
}

fn default_name() -> String {
    let mut rng = rand::rng();
    let suffix: String = (0..SUFFIX_LEN)
        .map(|_| SUFFIX_ALPHABET[rng.random_range(0..SUFFIX_ALPHABET.len())] as char)
        .collect();
    format!("{DEFAULT_NAME_PREFIX}{suffix}")
}

/// A new learner and the credentials for their device.
#[derive(Debug, Clone)]
pub struct Registered {
    pub user_id: Uuid,
    pub name: String,
    /// Shown to the client once; only its hash is stored.
    pub device_token: String,
    pub position: u64,
}

/// Creates a learner with a unique default name and a device token.
pub async fn register_device(
    store: &EventStore,
    mut metadata: Metadata,
) -> Result<Registered, AppendError> {
    let user_id = Uuid::now_v7();
    metadata.acting_user = Some(user_id);
    let device_token = auth::new_device_token();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let name = default_name();
        let registered = Event::DeviceRegistered(DeviceRegistered {
            user_id,
            device_id: Uuid::now_v7(),
            name: name.clone(),
            device_token_hash: auth::hash_device_token(&device_token),
        });
        let claimed = Event::UsernameClaimed(UsernameClaimed {
            user_id,
            name: name.clone(),
        });
        // The claim first: see the module docs.
        let result = store
            .append(vec![
                StreamAppend::new(
                    reservation_stream(&name_key(&name)),
                    ExpectedVersion::NoStream,
                    vec![NewEvent::from_event(&claimed, metadata.clone())],
                ),
                StreamAppend::new(
                    streams::user(user_id),
                    ExpectedVersion::NoStream,
                    vec![NewEvent::from_event(&registered, metadata.clone())],
                ),
            ])
            .await;
        match result {
            Ok(outcome) => {
                return Ok(Registered {
                    user_id,
                    name,
                    device_token,
                    position: outcome.position,
                });
            }
            // The random name was taken (or was once): draw another.
            Err(AppendError::WrongExpectedVersion { .. }) if attempt < RETRIES => continue,
            Err(e) => return Err(e),
        }
    }
}

/// What the learner's own stream says about them.
struct UserState {
    name: String,
    version: u64,
}

async fn load_user(store: &EventStore, user_id: Uuid) -> Result<Option<UserState>, AppendError> {
    let stream = streams::user(user_id);
    let mut state: Option<UserState> = None;
    let mut from = 0;
    loop {
        let page = store
            .read_stream(&stream, from, Direction::Forwards, 500)
            .await?;
        let Some(last) = page.last() else { break };
        from = last.stream_version + 1;
        for recorded in &page {
            let event = recorded
                .decode()
                .map_err(|e| AppendError::Invalid(format!("unreadable user stream: {e}")))?;
            match event {
                Event::DeviceRegistered(e) if state.is_none() => {
                    state = Some(UserState {
                        name: e.name,
                        version: recorded.stream_version,
                    })
                }
                Event::UserRenamed(e) => {
                    if let Some(s) = &mut state {
                        s.name = e.name;
                    }
                }
                _ => {}
            }
            if let Some(s) = &mut state {
                s.version = recorded.stream_version;
            }
        }
    }
    Ok(state)
}

/// The result of a rename.
#[derive(Debug, Clone)]
pub struct Renamed {
    pub name: String,
    /// The log position to wait for before reading the new name back; `None` if nothing changed.
    pub position: Option<u64>,
}

/// Renames a learner, enforcing unique names with no race (see the module docs).
pub async fn rename(
    store: &EventStore,
    user_id: Uuid,
    requested: &str,
    metadata: Metadata,
) -> Result<Renamed, RenameError> {
    let name = validate_name(requested).map_err(RenameError::Invalid)?;
    let new_key = name_key(&name);
    if new_key.len() > MAX_KEY_BYTES {
        // A few characters expand a lot under NFKC (U+FDFA becomes 18 letters).
        return Err(RenameError::Invalid(
            "this name is too long once normalised; please choose a shorter one".into(),
        ));
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let user = load_user(store, user_id)
            .await?
            .ok_or(RenameError::UnknownUser)?;
        if user.name == name {
            return Ok(Renamed {
                name,
                position: None,
            });
        }
        let old_key = name_key(&user.name);
        let renamed = Event::UserRenamed(UserRenamed {
            user_id,
            name: name.clone(),
            previous_name: user.name.clone(),
        });
        // The claim (if any) first, then the learner's stream, then the release: see the
        // module docs.
        let mut parts = Vec::with_capacity(3);
        if old_key != new_key {
            // Claim the new key: free if it never existed or its last event is a release.
            let new_stream = reservation_stream(&new_key);
            let expected = match store.last_event(&new_stream).await? {
                None => Some(ExpectedVersion::NoStream),
                Some(last) => match last.decode() {
                    Ok(Event::UsernameReleased(_)) => {
                        Some(ExpectedVersion::Exact(last.stream_version))
                    }
                    // Already ours: a rename that stopped part-way on a store whose multi-stream
                    // appends are not atomic claimed it and went no further.
                    Ok(Event::UsernameClaimed(c)) if c.user_id == user_id => None,
                    _ => return Err(RenameError::Taken(name)),
                },
            };
            if let Some(expected) = expected {
                let claimed = Event::UsernameClaimed(UsernameClaimed {
                    user_id,
                    name: name.clone(),
                });
                parts.push(StreamAppend::new(
                    new_stream,
                    expected,
                    vec![NewEvent::from_event(&claimed, metadata.clone())],
                ));
            }
        }
        parts.push(StreamAppend::new(
            streams::user(user_id),
            ExpectedVersion::Exact(user.version),
            vec![NewEvent::from_event(&renamed, metadata.clone())],
        ));
        if old_key != new_key {
            // Release the old key so someone else may take it, if the claim there is ours
            // (never release someone else's claim, whatever the key function computes today).
            let old_stream = reservation_stream(&old_key);
            let ours = |e: &teachback_events::RecordedEvent| matches!(e.decode(), Ok(Event::UsernameClaimed(c)) if c.user_id == user_id);
            if let Some(last) = store.last_event(&old_stream).await?.filter(ours) {
                let released = Event::UsernameReleased(UsernameReleased { user_id });
                parts.push(StreamAppend::new(
                    old_stream,
                    ExpectedVersion::Exact(last.stream_version),
                    vec![NewEvent::from_event(&released, metadata.clone())],
                ));
            }
        }
        match store.append(parts).await {
            Ok(outcome) => {
                return Ok(Renamed {
                    name,
                    position: Some(outcome.position),
                });
            }
            // Someone moved first (a concurrent rename of ours, or a claim of this name): decide
            // again on fresh state. A name that got taken is then refused as taken.
            Err(AppendError::WrongExpectedVersion { .. }) if attempt < RETRIES => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_ignoring_case_and_width() {
        assert_eq!(name_key("Ada"), name_key("ADA"));
        assert_eq!(name_key("Ａｄａ"), name_key("ada"));
        assert_ne!(name_key("Ada"), name_key("Adam"));
    }

    #[test]
    fn a_name_has_two_to_twenty_visible_characters() {
        assert_eq!(validate_name("  에이다 ").unwrap(), "에이다");
        assert!(validate_name("a").is_err());
        assert!(validate_name(&"가".repeat(21)).is_err());
        assert!(validate_name(&"가".repeat(20)).is_ok());
        assert!(validate_name("ab\u{0007}c").is_err());
        assert!(validate_name("a\u{200B}b").is_err());
        assert!(validate_name("a\nb").is_err());
    }

    #[test]
    fn twenty_characters_that_expand_under_nfkc_make_a_key_over_the_limit() {
        let name = "\u{FDFA}".repeat(20);
        assert!(validate_name(&name).is_ok());
        assert!(name_key(&name).len() > MAX_KEY_BYTES);
    }

    #[test]
    fn default_names_carry_a_short_random_suffix() {
        let a = default_name();
        assert!(a.starts_with(DEFAULT_NAME_PREFIX));
        assert_eq!(
            a.chars().count(),
            DEFAULT_NAME_PREFIX.chars().count() + SUFFIX_LEN
        );
        assert!(validate_name(&a).is_ok());
        assert_ne!(a, default_name());
    }
}
