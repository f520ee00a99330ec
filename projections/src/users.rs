//! The users projection: who the learners are, what they are called, and their devices.

use std::collections::BTreeMap;

use jiff::Timestamp;
use teachback_events::{DecodeError, Event, EventKind, RecordedEvent};
use uuid::Uuid;

/// The projection's name; its checkpoint is stored under it.
pub const NAME: &str = "users.v1";

/// A change to the users read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsersChange {
    /// A new learner. Replaying the event again must not create a second row.
    UserCreated {
        user_id: Uuid,
        name: String,
        created_at: Timestamp,
    },
    /// A device that may exchange its token for access tokens.
    DeviceAdded {
        device_id: Uuid,
        user_id: Uuid,
        token_hash: String,
        created_at: Timestamp,
    },
    /// The learner's current nickname.
    NameChanged {
        user_id: Uuid,
        name: String,
        updated_at: Timestamp,
    },
    /// The learner was erased: their row and their devices go.
    UserErased { user_id: Uuid },
}

fn wanted(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::DeviceRegistered | EventKind::UserRenamed | EventKind::UserErased
    )
}

/// Whether the projection reads events of this type.
pub fn reads(event_type: &str) -> bool {
    EventKind::from_type_name(event_type).is_some_and(wanted)
}

/// Maps one event to the changes it makes. Pure: same event, same changes.
pub fn project(event: &RecordedEvent) -> Result<Vec<UsersChange>, DecodeError> {
    let Some(decoded) = crate::decode_kinds(event, wanted)? else {
        return Ok(Vec::new());
    };
    let at = event.recorded_at;
    Ok(match decoded {
        Event::DeviceRegistered(e) => vec![
            UsersChange::UserCreated {
                user_id: e.user_id,
                name: e.name,
                created_at: at,
            },
            UsersChange::DeviceAdded {
                device_id: e.device_id,
                user_id: e.user_id,
                token_hash: e.device_token_hash,
                created_at: at,
            },
        ],
        Event::UserRenamed(e) => vec![UsersChange::NameChanged {
            user_id: e.user_id,
            name: e.name,
            updated_at: at,
        }],
        Event::UserErased(e) => vec![UsersChange::UserErased { user_id: e.user_id }],
        _ => Vec::new(),
    })
}

/// A learner row, as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub user_id: Uuid,
    pub name: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The users read model in memory: the reference the SQL tables must equal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsersView {
    pub users: BTreeMap<Uuid, UserRow>,
    /// Device token hash → (device id, user id).
    pub devices: BTreeMap<String, (Uuid, Uuid)>,
}

impl UsersView {
    /// Folds one event in.
    pub fn apply(&mut self, event: &RecordedEvent) -> Result<(), DecodeError> {
        for change in project(event)? {
            self.apply_change(change);
        }
        Ok(())
    }

    /// Applies one change with the same semantics the SQL runner gives it.
    pub fn apply_change(&mut self, change: UsersChange) {
        match change {
            UsersChange::UserCreated {
                user_id,
                name,
                created_at,
            } => {
                self.users.entry(user_id).or_insert(UserRow {
                    user_id,
                    name,
                    created_at,
                    updated_at: created_at,
                });
            }
            UsersChange::DeviceAdded {
                device_id,
                user_id,
                token_hash,
                ..
            } => {
                self.devices
                    .entry(token_hash)
                    .or_insert((device_id, user_id));
            }
            UsersChange::NameChanged {
                user_id,
                name,
                updated_at,
            } => {
                if let Some(row) = self.users.get_mut(&user_id) {
                    row.name = name;
                    row.updated_at = updated_at;
                }
            }
            UsersChange::UserErased { user_id } => {
                self.users.remove(&user_id);
                self.devices.retain(|_, (_, user)| *user != user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use teachback_events::{
        DeviceRegistered, ErasureRequester, Metadata, NewEvent, UserErased, UserRenamed,
        UsernameClaimed,
    };

    /// Given/when/then over recorded events, without a database.
    struct Given {
        view: UsersView,
        next_position: u64,
    }

    fn given(events: &[Event]) -> Given {
        let mut g = Given {
            view: UsersView::default(),
            next_position: 1,
        };
        for e in events {
            g.apply(e);
        }
        g
    }

    impl Given {
        fn record(&mut self, event: &Event) -> RecordedEvent {
            let new = NewEvent::from_event(event, Metadata::default());
            let position = self.next_position;
            self.next_position += 1;
            RecordedEvent {
                position,
                id: new.id,
                stream: "user-x".into(),
                stream_version: position - 1,
                event_type: new.event_type,
                schema_version: new.schema_version,
                recorded_at: Timestamp::from_second(1_700_000_000 + position as i64).unwrap(),
                metadata: new.metadata,
                payload: new.payload,
            }
        }

        fn apply(&mut self, event: &Event) -> RecordedEvent {
            let recorded = self.record(event);
            self.view.apply(&recorded).unwrap();
            recorded
        }
    }

    fn registered(user: u128, name: &str, hash: &str) -> Event {
        Event::DeviceRegistered(DeviceRegistered {
            user_id: Uuid::from_u128(user),
            device_id: Uuid::from_u128(user + 1000),
            name: name.into(),
            device_token_hash: hash.into(),
        })
    }

    #[test]
    fn a_registered_device_creates_the_learner_and_its_device() {
        let g = given(&[registered(1, "사용자abc123", "h1")]);
        let row = &g.view.users[&Uuid::from_u128(1)];
        assert_eq!(row.name, "사용자abc123");
        assert_eq!(
            g.view.devices["h1"],
            (Uuid::from_u128(1001), Uuid::from_u128(1))
        );
    }

    #[test]
    fn a_rename_changes_only_that_learners_name_and_its_update_time() {
        let mut g = given(&[registered(1, "a1", "h1"), registered(2, "b2", "h2")]);
        let created = g.view.users[&Uuid::from_u128(1)].created_at;
        let recorded = g.apply(&Event::UserRenamed(UserRenamed {
            user_id: Uuid::from_u128(1),
            name: "Ada".into(),
            previous_name: "a1".into(),
        }));
        let row = &g.view.users[&Uuid::from_u128(1)];
        assert_eq!(row.name, "Ada");
        assert_eq!(row.created_at, created);
        assert_eq!(row.updated_at, recorded.recorded_at);
        assert_eq!(g.view.users[&Uuid::from_u128(2)].name, "b2");
    }

    #[test]
    fn an_erasure_drops_only_that_learner_and_their_devices() {
        let mut g = given(&[
            registered(1, "a1", "h1"),
            registered(1, "a1", "h1b"),
            registered(2, "b2", "h2"),
        ]);
        g.apply(&Event::UserErased(UserErased {
            user_id: Uuid::from_u128(1),
            requested_by: ErasureRequester::Learner,
            lectures: 0,
            blobs_deleted: 0,
        }));
        assert!(!g.view.users.contains_key(&Uuid::from_u128(1)));
        assert_eq!(g.view.devices.len(), 1);
        assert_eq!(g.view.users[&Uuid::from_u128(2)].name, "b2");
    }

    #[test]
    fn replaying_a_registration_does_not_reset_a_later_rename() {
        let mut g = given(&[registered(1, "a1", "h1")]);
        let first = g.record(&registered(1, "a1", "h1"));
        g.apply(&Event::UserRenamed(UserRenamed {
            user_id: Uuid::from_u128(1),
            name: "Ada".into(),
            previous_name: "a1".into(),
        }));
        g.view.apply(&first).unwrap();
        assert_eq!(g.view.users[&Uuid::from_u128(1)].name, "Ada");
    }

    #[test]
    fn name_reservations_and_unknown_types_change_nothing() {
        let mut g = given(&[]);
        g.apply(&Event::UsernameClaimed(UsernameClaimed {
            user_id: Uuid::from_u128(1),
            name: "Ada".into(),
        }));
        let mut future = g.record(&registered(3, "c", "h3"));
        future.event_type = "SomethingFromANewerBuild".into();
        g.view.apply(&future).unwrap();
        assert_eq!(g.view, UsersView::default());
    }

    #[test]
    fn a_known_type_with_a_corrupt_payload_is_an_error_not_a_skip() {
        let mut g = given(&[]);
        let mut bad = g.record(&registered(3, "c", "h3"));
        bad.payload = serde_json::json!({"userId": 5});
        assert!(g.view.apply(&bad).is_err());
    }
}
