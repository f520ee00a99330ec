-- The learning projection: per-learner, per-lecture and per-topic documents (JSON, with the
-- columns queries filter on), co-study counts, active days and daily counters. Days are
-- YYYY-MM-DD in the projection's time zone. `position` is the log position of a row's last
-- change, so in-memory indexes (rankings) can load only what changed.

CREATE TABLE learning_users (
    user_id    UUID   PRIMARY KEY,
    name       TEXT   NOT NULL,
    signup_day TEXT   NOT NULL,
    started    BIGINT NOT NULL,
    finished   BIGINT NOT NULL,
    graded     BIGINT NOT NULL,
    rated      BIGINT NOT NULL,
    position   BIGINT NOT NULL,
    doc        TEXT   NOT NULL
);
CREATE INDEX learning_users_by_position ON learning_users (position);
CREATE INDEX learning_users_by_signup ON learning_users (signup_day);

CREATE TABLE learning_lectures (
    lecture_id     UUID   PRIMARY KEY,
    user_id        UUID   NOT NULL,
    topic_id       TEXT   NOT NULL,
    day            TEXT,              -- finish day
    score          BIGINT,            -- current score
    graded_day     TEXT,
    first_token_ms BIGINT,            -- finish → first feedback token, current grade
    score_ms       BIGINT,            -- finish → score, current grade
    position       BIGINT NOT NULL,
    doc            TEXT   NOT NULL
);
CREATE INDEX learning_lectures_by_position ON learning_lectures (position);
CREATE INDEX learning_lectures_by_graded_day ON learning_lectures (graded_day);
CREATE INDEX learning_lectures_by_user ON learning_lectures (user_id);

CREATE TABLE learning_topics (
    topic_id   TEXT   PRIMARY KEY,
    subject_id TEXT,
    lectures   BIGINT NOT NULL,
    learners   BIGINT NOT NULL,
    position   BIGINT NOT NULL,
    doc        TEXT   NOT NULL
);

-- Learners who started lectures on both topics.
CREATE TABLE learning_costudy (
    topic_id TEXT   NOT NULL,
    other_id TEXT   NOT NULL,
    learners BIGINT NOT NULL,
    PRIMARY KEY (topic_id, other_id)
);

-- Days on which a learner did something (registered, started or rated a lecture, renamed).
CREATE TABLE learning_activity (
    day     TEXT NOT NULL,
    user_id UUID NOT NULL,
    PRIMARY KEY (day, user_id)
);

-- Daily counters: lectures, grades, provider attempts and failures, tokens (see the metric names
-- in the projections crate).
CREATE TABLE learning_daily (
    day    TEXT   NOT NULL,
    metric TEXT   NOT NULL,
    value  BIGINT NOT NULL,
    PRIMARY KEY (day, metric)
);

-- Projection names now carry their version; the unversioned names of earlier builds are
-- version 1 of the same folds, so they keep their rows and positions.
UPDATE projection_checkpoints SET name = name || '.v1' WHERE name IN ('users', 'topics', 'lectures');
