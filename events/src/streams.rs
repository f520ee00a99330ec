//! Stream names. One place builds them so that writers, readers and tools agree.

use uuid::Uuid;

/// Prefix of every learner's own stream.
pub const USER_PREFIX: &str = "user-";
/// Prefix of the name-reservation streams that make nicknames unique.
pub const USERNAME_PREFIX: &str = "username-";
/// Prefix of every lecture's stream.
pub const LECTURE_PREFIX: &str = "lecture-";
/// Prefix of every scheduled nudge's stream.
pub const NOTIFICATION_PREFIX: &str = "notification-";
/// The catalogue stream: every topic ever published.
pub const CATALOG: &str = "catalog";

/// The stream holding a learner's own facts (registration, renames, …).
pub fn user(user_id: Uuid) -> String {
    format!("{USER_PREFIX}{user_id}")
}

/// The reservation stream for a normalised nickname key (see the server's name rules).
pub fn username(key: &str) -> String {
    format!("{USERNAME_PREFIX}{key}")
}

/// The stream of one lecture: its start, audio segments, state changes and end.
pub fn lecture(lecture_id: Uuid) -> String {
    format!("{LECTURE_PREFIX}{lecture_id}")
}

/// The stream of one nudge: scheduled, then its delivery attempts, and whether it was opened.
pub fn notification(notification_id: Uuid) -> String {
    format!("{NOTIFICATION_PREFIX}{notification_id}")
}
