//! Study nudges as a read model: each learner's notification preferences, and every scheduled
//! nudge with its delivery state. The server's delivery worker reads the pending ones (the
//! outbox); analytics count them.

use jiff::Timestamp;
use teachback_events::{DecodeError, Event, EventKind, NotificationPreferencesSet, RecordedEvent};
use uuid::Uuid;

/// The projection's name; its checkpoint is stored under it.
pub const NAME: &str = "notifications.v1";

/// The event kinds this projection reads.
const READS: [EventKind; 7] = [
    EventKind::NotificationPreferencesSet,
    EventKind::NotificationScheduled,
    EventKind::NotificationSent,
    EventKind::NotificationFailed,
    EventKind::NotificationParked,
    EventKind::NotificationCancelled,
    EventKind::NotificationOpened,
];

/// Whether the projection reads events of this type.
pub fn reads(event_type: &str) -> bool {
    READS.iter().any(|k| k.type_name() == event_type)
}

/// Where a scheduled nudge is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Waiting for its send time or for a retry.
    Pending,
    Sent,
    /// Delivery gave up.
    Parked,
    /// The learner opted out before it was sent.
    Cancelled,
}

impl Status {
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sent => "sent",
            Status::Parked => "parked",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Pending,
            Status::Sent,
            Status::Parked,
            Status::Cancelled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// What a nudge says, kept with it as JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    pub language: String,
    pub title: String,
    pub body: String,
    pub link: String,
}

/// One change to the read model.
#[derive(Debug, Clone, PartialEq)]
pub enum NotificationsChange {
    /// A learner's preferences, replacing the earlier ones.
    Preferences {
        prefs: NotificationPreferencesSet,
        at: Timestamp,
    },
    Scheduled {
        id: Uuid,
        user_id: Uuid,
        kind: String,
        period: String,
        key: String,
        channel: String,
        send_at: Timestamp,
        message: StoredMessage,
        version: u64,
        at: Timestamp,
    },
    /// A delivery attempt's outcome: the nudge's new state.
    Delivery {
        id: Uuid,
        status: Status,
        attempts: Option<u32>,
        /// Pending: the next attempt's time.
        retry_at: Option<Timestamp>,
        /// Sent: when.
        sent_at: Option<Timestamp>,
        error: Option<String>,
        version: u64,
    },
    Opened {
        id: Uuid,
        at: Timestamp,
        version: u64,
    },
}

/// The changes one event makes.
pub fn project(event: &RecordedEvent) -> Result<Vec<NotificationsChange>, DecodeError> {
    let Some(decoded) = crate::decode_kinds(event, |k| READS.contains(&k))? else {
        return Ok(Vec::new());
    };
    let at = event.recorded_at;
    let version = event.stream_version;
    let delivery = |id, status, attempts, retry_at, sent_at, error| NotificationsChange::Delivery {
        id,
        status,
        attempts,
        retry_at,
        sent_at,
        error,
        version,
    };
    Ok(vec![match decoded {
        Event::NotificationPreferencesSet(prefs) => NotificationsChange::Preferences { prefs, at },
        Event::NotificationScheduled(e) => NotificationsChange::Scheduled {
            id: e.notification_id,
            user_id: e.user_id,
            kind: e.kind,
            period: e.period,
            key: e.key,
            channel: e.channel,
            send_at: e.send_at,
            message: StoredMessage {
                language: e.language,
                title: e.title,
                body: e.body,
                link: e.link,
            },
            version,
            at,
        },
        Event::NotificationSent(e) => delivery(
            e.notification_id,
            Status::Sent,
            Some(e.attempt),
            None,
            Some(at),
            None,
        ),
        Event::NotificationFailed(e) => delivery(
            e.notification_id,
            Status::Pending,
            Some(e.attempt),
            Some(e.retry_at),
            None,
            Some(format!("{}: {}", e.code, e.message)),
        ),
        Event::NotificationParked(e) => delivery(
            e.notification_id,
            Status::Parked,
            Some(e.attempts),
            None,
            None,
            Some(format!("{}: {}", e.code, e.message)),
        ),
        Event::NotificationCancelled(e) => delivery(
            e.notification_id,
            Status::Cancelled,
            None,
            None,
            None,
            Some(e.reason),
        ),
        Event::NotificationOpened(e) => NotificationsChange::Opened {
            id: e.notification_id,
            at,
            version,
        },
        _ => return Ok(Vec::new()),
    }])
}
