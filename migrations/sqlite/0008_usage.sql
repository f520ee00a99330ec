-- The usage projection: lectures, audio and model tokens per learner and day, and per day over
-- everyone. Days are YYYY-MM-DD in the projection's time zone. Quotas and the spending guard
-- read it.

-- Whose lecture is whose (audio and tokens are counted after the start).
CREATE TABLE usage_lectures (
    lecture_id BLOB PRIMARY KEY,
    user_id    BLOB NOT NULL
);

CREATE TABLE usage_learner_days (
    user_id           BLOB     NOT NULL,
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
