-- Study nudges: each learner's preferences, and the outbox of scheduled nudges with their
-- delivery state (the notifications projection). Times are microseconds since the Unix epoch.

CREATE TABLE notification_prefs (
    user_id     UUID   PRIMARY KEY,
    kinds       TEXT   NOT NULL,   -- comma-separated: daily_reminder,streak_warning,weekly_digest
    channel     TEXT   NOT NULL,
    time_zone   TEXT   NOT NULL,
    hour        INTEGER,
    quiet_start INTEGER,
    quiet_end   INTEGER,
    language    TEXT   NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE notifications (
    notification_id UUID   PRIMARY KEY,
    user_id         UUID   NOT NULL,
    kind            TEXT   NOT NULL,
    period          TEXT   NOT NULL,
    notification_key TEXT  NOT NULL UNIQUE,
    channel         TEXT   NOT NULL,
    status          TEXT   NOT NULL,   -- pending | sent | parked | cancelled
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,   -- pending: not before this
    version         BIGINT NOT NULL,   -- the stream's last version
    message         TEXT   NOT NULL,   -- JSON: {language, title, body, link}
    scheduled_at    BIGINT NOT NULL,
    sent_at         BIGINT,
    opened_at       BIGINT,
    last_error      TEXT
);
CREATE INDEX notifications_due ON notifications (status, next_attempt_at);
CREATE INDEX notifications_by_user ON notifications (user_id, scheduled_at);
CREATE INDEX notifications_by_time ON notifications (scheduled_at);
