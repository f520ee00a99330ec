-- The usage projection: lectures, audio and model tokens per learner and day, and per day over
-- everyone. Days are YYYY-MM-DD in the projection's time zone. Quotas and the spending guard
-- read it.

-- Whose lecture is whose (audio and tokens are counted after the start).
CREATE TABLE usage_lectures (
    lecture_id UUID PRIMARY KEY,
    user_id    UUID NOT NULL
);

CREATE TABLE usage_learner_days (
    user_id           UUID     NOT NULL,
    day               TEXT   NOT NULL,
    lectures          BIGINT NOT NULL,
    audio_ms          BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    PRIMARY KEY (user_id, day)
);

CREATE TABLE usage_days (
    day               TEXT   PRIMARY KEY,
    lectures          BIGINT NOT NULL,
    audio_ms          BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL
);

-- Rate limits shared by every instance: one theoretical arrival time (GCRA, microseconds since
-- the epoch) per limited key. Rows in the past are expired and swept. (On SQLite, one process
-- keeps them in memory.)
CREATE TABLE rate_limits (
    key TEXT   PRIMARY KEY,
    tat BIGINT NOT NULL
);
