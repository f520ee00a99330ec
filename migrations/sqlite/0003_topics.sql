-- The topics read model: the latest TopicPublished of every topic, kept as its JSON payload.

CREATE TABLE topics (
    topic_id   TEXT   PRIMARY KEY,
    major_id   TEXT   NOT NULL,
    subject_id TEXT   NOT NULL,
    topic      TEXT   NOT NULL,   -- the TopicPublished payload (JSON)
    updated_at BIGINT NOT NULL
);
CREATE INDEX topics_by_subject ON topics (major_id, subject_id, topic_id);
