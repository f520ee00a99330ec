-- Per-learner keys. Personal fields of events and audio blobs are sealed with their learner's key;
-- erasing a learner sets `key` to NULL (a tombstone), which makes everything sealed with it
-- unreadable, the log included. Never exported with the log unless asked.
CREATE TABLE learner_keys (
    user_id    BLOB    PRIMARY KEY,
    key        BLOB,                -- 32 bytes (ChaCha20-Poly1305); NULL once erased
    created_at INTEGER NOT NULL,
    erased_at  INTEGER
);

-- Learners whose rows the read models dropped, with the position of their `UserErased`, so the
-- in-memory ranking boards (which follow the read model by position) drop them too.
CREATE TABLE learning_erased (
    user_id  BLOB    PRIMARY KEY,
    position INTEGER NOT NULL
);
CREATE INDEX learning_erased_by_position ON learning_erased (position);
