-- The hash chain over the event log (PostgreSQL). Each event's `hash` is the lowercase hex
-- SHA-256 of the previous event's hash and the event's stored columns (see src/store/chain.rs), so
-- altering, removing or reordering a stored event breaks every link after it
-- (`teachback audit verify`).
--
-- Nullable only for the rows written before this migration: the server fills them in at start,
-- in position order, chaining from the last hashed row. That backfill is the only UPDATE of
-- event rows there is; every event appended from now on is inserted with its hash.
ALTER TABLE events ADD COLUMN hash TEXT;
