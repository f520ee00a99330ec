-- The lectures read model: one row per lecture, with its owner and status.

CREATE TABLE lectures (
    lecture_id UUID   PRIMARY KEY,
    user_id    UUID   NOT NULL,
    topic_id   TEXT   NOT NULL,
    mode       TEXT   NOT NULL,   -- live | upload
    status     TEXT   NOT NULL,   -- recording | paused | finished | cancelled | abandoned
    started_at BIGINT NOT NULL,   -- microseconds since the Unix epoch
    updated_at BIGINT NOT NULL
);
CREATE INDEX lectures_by_user ON lectures (user_id, started_at);
CREATE INDEX lectures_by_status ON lectures (status);
