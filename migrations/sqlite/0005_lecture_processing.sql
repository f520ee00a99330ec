-- Where each lecture is in its processing (transcription, grading) and its latest score.

ALTER TABLE lectures ADD COLUMN processing TEXT NOT NULL DEFAULT 'none';  -- none | transcribing | transcript_empty | grading | graded | failed
ALTER TABLE lectures ADD COLUMN score INTEGER;
CREATE INDEX lectures_by_processing ON lectures (processing);
